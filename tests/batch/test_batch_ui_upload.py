"""The Batch tab for real servers (issue 12 item 7): reference files uploaded into the
prompt root are checked by content with the API's messages; the validation report wraps
instead of scrolling sideways; Cancel on a finished job says so; outputs can be played.

What a user sees is asserted in a real headless Chromium; the rest of the upload rules
through the Gradio HTTP API (tests/support/gradio_api.py)."""

import io
import json
import os

import numpy as np
import pytest
import soundfile as sf

from tests.support.batch import PROMPT_TEXT, reference_wav
from tests.support.gradio_api import GradioAPI
from tests.support.service import ServiceProcess

pytestmark = [pytest.mark.integration]

ART = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "artifacts")
NOT_AUDIO = b"these are my notes, not a recording\n" * 20


def tone_wav(seconds):
    t = np.arange(int(16000 * seconds)) / 16000.0
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000, format="WAV")
    return buf.getvalue()


@pytest.mark.browser
def test_batch_tab_rejects_a_non_audio_reference_wraps_the_report_plays_and_cannot_cancel_a_finished_job(tmp_path):
    from tests.support.browser import chromium

    svc = ServiceProcess(tmp_path, ui=True)
    notes = tmp_path / "notes.wav"  # a text file named .wav
    notes.write_bytes(NOT_AUDIO)
    ref = tmp_path / "anna.wav"
    ref.write_bytes(reference_wav())
    long_name = "chapter_" + "x" * 300
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"input_text": "Hello.", "output_name": long_name, "speed": 7}) + "\n")
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"prompt_audio": "anna.wav", "prompt_text": PROMPT_TEXT,
                                "input_text": "Hello from the uploaded reference.", "output_name": "hello",
                                "response_format": "mp3"}) + "\n")
    os.makedirs(ART, exist_ok=True)
    try:
        svc.start(timeout=120)
        with chromium() as driver:
            from selenium.webdriver.common.by import By
            from selenium.webdriver.support import expected_conditions as EC
            from selenium.webdriver.support.ui import WebDriverWait

            driver.set_window_size(1280, 1100)
            wait = WebDriverWait(driver, 60)

            def open_tab():
                driver.get(svc.url + "/")
                wait.until(EC.element_to_be_clickable(
                    (By.XPATH, "//button[@role='tab' and contains(., 'Batch')]"))).click()

            def choose(elem_id, path):
                field = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#%s input[type=file]" % elem_id))
                field.send_keys(str(path))
                wait.until(lambda d: os.path.basename(str(path)) in d.find_element(By.ID, elem_id).text.replace(
                    "\n", ""))

            def text(elem_id):
                return driver.find_element(By.ID, elem_id).text

            open_tab()
            choose("batch-refs", notes)
            driver.find_element(By.ID, "batch-refs-save").click()
            wait.until(lambda d: "Not saved" in text("batch-refs-status"))
            assert "notes.wav: prompt_audio is not a recognised audio file" in text("batch-refs-status")
            assert not os.path.exists(os.path.join(svc.prompt_root, "notes.wav"))

            open_tab()  # a fresh page: empty upload fields
            choose("batch-refs", ref)
            driver.find_element(By.ID, "batch-refs-save").click()
            wait.until(lambda d: "Saved in the prompt root" in text("batch-refs-status"))
            with open(os.path.join(svc.prompt_root, "anna.wav"), "rb") as f:
                assert f.read() == reference_wav()

            # the report wraps: the "what to fix" end of a long message stays on screen
            choose("batch-file", bad)
            driver.find_element(By.ID, "batch-submit").click()
            wait.until(lambda d: "Not started" in text("batch-report"))
            pre = driver.find_element(By.CSS_SELECTOR, "#batch-report pre")
            assert pre.value_of_css_property("white-space") == "pre-wrap"
            width, scroll = driver.execute_script(
                "var e = arguments[0]; return [e.clientWidth, e.scrollWidth];", pre)
            assert scroll <= width + 1, (scroll, width)
            assert "at most 120 characters" in pre.text and "speed 7 is out of range" in pre.text
            box = driver.execute_script("var r = arguments[0].getBoundingClientRect(); return [r.left, r.right];", pre)
            assert box[1] <= driver.execute_script("return window.innerWidth;")

            open_tab()
            choose("batch-file", good)
            driver.find_element(By.ID, "batch-submit").click()
            wait.until(lambda d: "Started job" in text("batch-report"))
            wait.until(lambda d: "1/1 finished" in text("batch-progress"))
            # the output can be played: chosen in the list, loaded into the player
            wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#batch-output input").get_attribute("value")
                       == "hello.mp3")
            # the player holds the mp3 itself, and the browser decoded it: a duration shows
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#batch-player a[download='hello.mp3']"))
            wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#batch-player #duration").text not in ("", "0:00"))
            driver.find_element(By.ID, "batch-cancel").click()
            wait.until(lambda d: "nothing to cancel" in text("batch-cancel-status"))
            assert "is already finished: there is nothing to cancel" in text("batch-cancel-status")
            driver.save_screenshot(os.path.join(ART, "batch-ui-upload.png"))
    finally:
        svc.stop()
    [job_id] = [j for j in os.listdir(os.path.join(svc.state_dir, "batches")) if j[0].isdigit()]
    with open(os.path.join(svc.state_dir, "batches", job_id, "job.json")) as f:
        assert json.load(f)["status"] == "done"  # the click changed nothing


def test_reference_uploads_are_checked_like_the_api_and_never_overwrite(tmp_path):
    svc = ServiceProcess(tmp_path, ui=True)
    try:
        svc.start(timeout=120)
        ui = GradioAPI(svc.url)

        def save(*files):
            paths = [ui.file(ui.upload(name, data), name) for name, data in files]
            [status] = ui.call("batch_upload_references", [paths])
            return status

        short = save(("short.wav", tone_wav(1.0)))
        assert "short.wav: prompt_audio is 1.0 s long; it must be at least 2 s" in short
        empty = save(("empty.wav", b""))
        assert "empty.wav: prompt_audio is empty (0 bytes)" in empty
        # the same words as POST /v1/audio/speech for the same bad file
        r = svc.post("/v1/audio/speech", data={"input": "Hi.", "prompt_text": "hi"},
                     files={"prompt_audio": ("notes.wav", NOT_AUDIO)})
        api_message = r.json()["error"]["message"]
        status = save(("notes.wav", NOT_AUDIO), ("good.wav", reference_wav()))
        assert "notes.wav: " + api_message in status
        assert "Saved in the prompt root:</b> good.wav" in status
        assert sorted(os.listdir(svc.prompt_root)) == ["good.wav"]
        # the same name again with other content: refused, the file a job may use is kept
        again = save(("good.wav", tone_wav(3.0)))
        assert "good.wav: a different file of this name is already in the prompt root" in again
        with open(os.path.join(svc.prompt_root, "good.wav"), "rb") as f:
            assert f.read() == reference_wav()
        odd = save(("../escape.wav", reference_wav()))
        assert "escape.wav" in odd and not os.path.exists(os.path.join(os.path.dirname(svc.prompt_root),
                                                                       "escape.wav"))

        # cancel on a finished job, over the same click handler
        data = json.dumps({"prompt_audio": "good.wav", "prompt_text": PROMPT_TEXT, "input_text": "Hi there.",
                           "output_name": "a"}) + "\n"
        job = svc.post("/v1/batches", data=data.encode()).json()
        import time
        deadline = time.monotonic() + 60
        while svc.get("/v1/batches/%s" % job["id"]).json()["status"] != "done":
            assert time.monotonic() < deadline, "batch did not finish"
            time.sleep(0.2)
        out = ui.call("batch_cancel", ["%s  (upload.jsonl)" % job["id"]])
        assert "Job %s is already finished: there is nothing to cancel." % job["id"] in out[0]
        assert svc.get("/v1/batches/%s" % job["id"]).json()["status"] == "done"
    finally:
        svc.stop()
