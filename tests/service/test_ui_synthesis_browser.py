"""The Synthesize tab does what the user meant, in a real headless Chromium against a real
service (embedded espeak engine, which matches the reference's prosody):

- an uploaded reference is used without touching the Voice list: a low- and a
  high-pitched reference give outputs whose *measured* pitch follows them;
- a bad upload (a text file named .wav, a 1 s clip) is an error on the page, the very
  message the HTTP API answers for the same file, never audio in the default voice;
- a voice saved while the page is open is in the Voice list without a reload, and the
  status line names the voice and the engine;
- the shipped example (reference + transcript) fills the form with one click."""

import io
import os
import re

import numpy as np
import pytest
import requests
import soundfile as sf

from glmtts import prosody
from tests.support.service import ServiceProcess

pytestmark = [pytest.mark.integration, pytest.mark.browser]

TRANSCRIPT = "这是一段参考录音，用来测量说话人的音高和语速。"
SR = 24000


def glottal(target_hz, seconds=4.0):
    """A synthetic voice independent of espeak: glottal pulses with a falling intonation
    of +-2 semitones around target_hz and syllable gaps (as tests/engines/test_espeak_engine.py)."""
    t = np.arange(int(seconds * SR)) / SR
    inst = target_hz * 2 ** ((2.0 - 4.0 * (t % 1.0)) / 12)
    phase = 2 * np.pi * np.cumsum(inst) / SR
    x = sum(np.sin(k * phase) / k ** 1.5 for k in range(1, 25))
    x *= (t % 0.25) < 0.18
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


def wav_file(path, audio):
    sf.write(str(path), audio, SR, subtype="PCM_16")
    return str(path)


def median_hz(audio, sr):
    return prosody.pitch_median(prosody.track_f0(audio, sr)[0])


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    s = ServiceProcess(tmp_path_factory.mktemp("ui-synth"), ui=True)
    try:
        s.start(timeout=120)
        yield s
    finally:
        s.stop()


@pytest.fixture
def page(svc):
    from tests.support.browser import chromium

    with chromium() as driver:
        driver.set_window_size(1280, 1400)
        yield Page(driver, svc)


class Page:
    def __init__(self, driver, svc):
        from selenium.webdriver.support import expected_conditions as EC
        from selenium.webdriver.support.ui import WebDriverWait
        from selenium.webdriver.common.by import By

        self.d, self.svc, self.By = driver, svc, By
        self.wait = WebDriverWait(driver, 90)
        self.last = None
        driver.get(svc.url + "/")
        self.wait.until(EC.element_to_be_clickable((By.ID, "tts-go")))

    def el(self, css):
        return self.d.find_element(self.By.CSS_SELECTOR, css)

    def upload(self, path):
        self.wait.until(lambda d: self.el("#tts-ref input[type=file]")).send_keys(path)
        # the upload switches the Voice list to the upload: what is shown is what is used
        self.wait.until(lambda d: "uploaded reference" in self.voice())

    def voice(self):
        return self.el("#tts-voice input").get_attribute("value")

    def type(self, css, text):
        box = self.el(css)
        box.clear()
        box.send_keys(text)

    def status_after_click(self):
        before = self.el("#tts-status").text
        self.el("#tts-go").click()
        self.wait.until(lambda d: self.el("#tts-status").text not in ("", before)
                        and ("Done:" in self.el("#tts-status").text or "Error" in self.el("#tts-status").text))
        return self.el("#tts-status").text

    def result_audio(self):
        """The Result's audio, fetched from the URL its download link names (a new one per result)."""
        def fresh(d):
            links = d.find_elements(self.By.CSS_SELECTOR, "#tts-out a[data-testid=download-link]")
            href = links[0].get_attribute("href") if links else None
            return href if href and href != self.last else None
        self.last = href = self.wait.until(fresh)
        r = requests.get(href, timeout=30)
        assert r.status_code == 200, href
        audio, sr = sf.read(io.BytesIO(r.content), dtype="float32")
        return audio, sr


def test_uploaded_reference_is_used_and_output_pitch_follows_it(svc, page, tmp_path):
    measured = {}
    for name, hz in (("low", 100.0), ("high", 245.0)):
        ref = wav_file(tmp_path / ("%s.wav" % name), glottal(hz))
        if measured:
            page.d.refresh()  # a fresh page: a new, empty upload field
            page.wait.until(lambda d: page.el("#tts-go").is_enabled())
        page.upload(ref)
        page.type("#tts-ptext textarea", TRANSCRIPT)
        status = page.status_after_click()
        assert re.search(r"Done: \d+\.\d s of audio at 24000 Hz", status), status
        assert "voice: uploaded reference %s.wav" % name in status, status   # not "default"
        assert "engine: espeak (cpu)" in status and "prosody matched" in status, status
        audio, sr = page.result_audio()
        measured[name] = (median_hz(glottal(hz), SR), median_hz(audio, sr))
    (ref_lo, out_lo), (ref_hi, out_hi) = measured["low"], measured["high"]
    assert out_lo == pytest.approx(ref_lo, rel=0.2), measured
    assert out_hi == pytest.approx(ref_hi, rel=0.2), measured
    assert out_hi > 1.8 * out_lo, measured  # clearly higher: the upload, not one default voice


def api_error(svc, data, name):
    r = svc.post("/v1/audio/speech", data={"input": "你好。", "prompt_text": TRANSCRIPT},
                 files={"prompt_audio": (name, data)})
    assert r.status_code in (400, 415, 422), r.text
    return r.json()["error"]["message"]


def test_bad_upload_is_the_apis_error_on_the_page(svc, page, tmp_path):
    text_as_wav = tmp_path / "notes.wav"
    text_as_wav.write_text("this is a text file, not a recording\n" * 20)
    short = wav_file(tmp_path / "short.wav", glottal(150.0, seconds=1.0))
    for path, expect in ((str(text_as_wav), "is not a recognised audio file"), (short, "is 1.0 s long")):
        if path != str(text_as_wav):
            page.d.refresh()
            page.wait.until(lambda d: page.el("#tts-go").is_enabled())
        page.el("#tts-ref input[type=file]").send_keys(path)
        page.type("#tts-ptext textarea", TRANSCRIPT)
        page.wait.until(lambda d: "uploaded reference" in page.voice())
        status = page.status_after_click()
        with open(path, "rb") as f:
            message = api_error(svc, f.read(), os.path.basename(path))
        assert expect in message
        assert status == "Error: %s" % message, (status, message)  # the API's words, on the page
        assert "Done" not in status


def test_saved_voice_appears_without_reload_and_is_named_in_the_status(svc, page, tmp_path):
    ref = open(wav_file(tmp_path / "anna.wav", glottal(220.0)), "rb").read()
    r = svc.post("/v1/voices", data={"name": "Anna-UI", "prompt_text": TRANSCRIPT},
                 files={"prompt_audio": ("anna.wav", ref)})
    assert r.status_code in (200, 201), r.text
    voice_id = r.json()["id"]
    box = page.el("#tts-voice input")
    box.click()  # opening the list refreshes it: no page reload
    option = page.wait.until(lambda d: next((o for o in d.find_elements(page.By.CSS_SELECTOR, "ul[role=listbox] li")
                                             if "Anna-UI" in o.text), None))
    option.click()
    status = page.status_after_click()
    assert "voice: saved voice Anna-UI (%s)" % voice_id in status, status
    assert "engine: espeak (cpu)" in status
    audio, sr = page.result_audio()
    assert median_hz(audio, sr) == pytest.approx(220.0, rel=0.2)
    # deleted while the page still lists it: an error naming it, never the default voice
    assert svc.delete("/v1/voices/" + voice_id).status_code in (200, 204)
    status = page.status_after_click()
    assert status.startswith("Error:") and voice_id in status, status


def test_example_fills_reference_and_transcript(svc, page):
    # gr.Examples: a table whose row is clicked; its cells show the transcript
    cell = page.wait.until(lambda d: next((e for e in d.find_elements(
        page.By.XPATH, "//div[contains(@class,'table') and contains(text(),'%s')]" % TRANSCRIPT[:6])), None))
    cell.click()
    page.wait.until(lambda d: TRANSCRIPT in page.el("#tts-ptext textarea").get_attribute("value"))
    page.wait.until(lambda d: "uploaded reference" in page.voice())
    status = page.status_after_click()
    assert "voice: uploaded reference example_reference.wav" in status, status
    assert "prosody matched" in status, status
    art = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "artifacts")
    os.makedirs(art, exist_ok=True)
    page.d.save_screenshot(os.path.join(art, "ui-synthesize.png"))


def test_voice_saved_on_the_voices_tab_is_in_the_synthesize_list_at_once(svc, page, tmp_path):
    from selenium.webdriver.support import expected_conditions as EC

    By, d = page.By, page.d
    ref = wav_file(tmp_path / "bruno.wav", glottal(110.0))
    page.wait.until(EC.element_to_be_clickable((By.XPATH, "//button[@role='tab' and contains(., 'Voices')]"))).click()
    panel = page.wait.until(lambda d: next(p for p in d.find_elements(By.CSS_SELECTOR, "[role=tabpanel]")
                                           if p.is_displayed() and "Save voice" in p.text))
    def box(label):  # a gr.Textbox: its <label> holds the caption and a textarea (or input)
        return panel.find_element(By.XPATH, ".//label[.//*[normalize-space()='%s']]//*[self::textarea or self::input]"
                                  % label)

    box("Name").send_keys("Bruno-Tab")
    box("Transcript").send_keys(TRANSCRIPT)
    # the Voices tab's own audio field (the Synthesize tab's label is longer)
    block = d.find_element(By.XPATH, "//div[contains(@class,'block')][.//label[normalize-space()='Reference audio']]"
                                     "[not(.//div[contains(@class,'block')][.//label[normalize-space()="
                                     "'Reference audio']])]")
    block.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(ref)
    # uploaded: the component shows its waveform player instead of the drop zone
    page.wait.until(lambda d: "Drop Audio Here" not in block.text)
    panel.find_element(By.XPATH, ".//button[normalize-space()='Save voice']").click()
    page.wait.until(lambda d: "Saved voice" in panel.text or "Error" in panel.text)
    assert "Saved voice Bruno-Tab" in panel.text, panel.text
    d.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Synthesize')]").click()
    page.wait.until(lambda d: page.el("#tts-voice input").is_displayed())
    page.el("#tts-voice input").click()
    option = page.wait.until(lambda d: next((o for o in d.find_elements(By.CSS_SELECTOR, "ul[role=listbox] li")
                                             if "Bruno-Tab" in o.text), None))
    option.click()
    status = page.status_after_click()
    assert "voice: saved voice Bruno-Tab (voice_" in status, status
