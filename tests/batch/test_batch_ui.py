"""The Batch tab in a real headless Chromium: upload, validation report, progress bar
to the end, download button enabled, and the zip it serves holds the outputs."""

import os

import pytest

from tests.support.batch import reference_wav
from tests.support.service import ServiceProcess
from tests.batch.test_batch_service import jsonl

pytestmark = [pytest.mark.integration, pytest.mark.browser]

ART = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "artifacts")


def test_batch_tab_uploads_validates_shows_progress_and_offers_the_zip(tmp_path):
    from tests.support.browser import chromium

    svc = ServiceProcess(tmp_path, ui=True)
    with open(os.path.join(svc.prompt_root, "voice.wav"), "wb") as f:
        f.write(reference_wav())
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(jsonl(2) + b"{not json\n")
    good = tmp_path / "good.jsonl"
    good.write_bytes(jsonl(6))
    os.makedirs(ART, exist_ok=True)
    try:
        svc.start(timeout=120)
        with chromium() as driver:
            from selenium.webdriver.common.by import By
            from selenium.webdriver.support import expected_conditions as EC
            from selenium.webdriver.support.ui import WebDriverWait

            driver.set_window_size(1280, 1100)
            driver.get(svc.url + "/")
            wait = WebDriverWait(driver, 60)
            tab = wait.until(EC.element_to_be_clickable((By.XPATH, "//button[@role='tab' and contains(., 'Batch')]")))
            tab.click()

            def upload(path):
                field = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#batch-file input[type=file]"))
                field.send_keys(str(path))
                # Gradio may split the name over two elements ("good" / ".jsonl")
                wait.until(lambda d: os.path.basename(str(path)) in d.find_element(By.ID, "batch-file").text.replace(
                    "\n", ""))
                driver.find_element(By.ID, "batch-submit").click()

            upload(bad)
            wait.until(lambda d: "Not started" in d.find_element(By.ID, "batch-report").text)
            report = driver.find_element(By.ID, "batch-report").text
            assert "line 3: error: not valid JSON" in report and "2 of 3 lines valid" in report

            driver.refresh()  # a fresh page: a new, empty upload field
            wait.until(EC.element_to_be_clickable((By.XPATH, "//button[@role='tab' and contains(., 'Batch')]"))).click()
            upload(good)
            wait.until(lambda d: "Started job" in d.find_element(By.ID, "batch-report").text)
            wait.until(lambda d: "6/6 finished" in d.find_element(By.ID, "batch-progress").text)
            assert driver.find_elements(By.CSS_SELECTOR, "#batch-progress progress")
            wait.until(lambda d: d.find_element(By.ID, "batch-download").is_enabled())
            driver.save_screenshot(os.path.join(ART, "batch-ui.png"))
    finally:
        svc.stop()
    jobs = os.listdir(os.path.join(svc.state_dir, "batches"))
    [job_id] = [j for j in jobs if j[0].isdigit()]
    assert sorted(os.listdir(os.path.join(svc.output_dir, job_id))) == ["clip_%03d.wav" % i for i in range(6)]
    assert os.path.getsize(os.path.join(ART, "batch-ui.png")) > 10000
