"""A real headless Chromium (Debian /usr/bin/chromium + /usr/bin/chromedriver) for UI
tests. If it cannot start: skip, or FAIL when GLMTTS_TEST_REQUIRE_BROWSER=1 (CI)."""

import contextlib
import os
import shutil
import tempfile

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _unavailable(reason):
    if os.environ.get("GLMTTS_TEST_REQUIRE_BROWSER") == "1":
        pytest.fail("browser required (GLMTTS_TEST_REQUIRE_BROWSER=1) but unavailable: %s" % reason)
    pytest.skip("no usable headless browser: %s" % reason)


@contextlib.contextmanager
def chromium():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as e:
        _unavailable("selenium not installed (%s)" % e)
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        _unavailable("%s or %s missing (make system-deps installs them)" % (CHROMIUM, CHROMEDRIVER))
    profile = tempfile.mkdtemp(prefix="glmtts-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS + ["--user-data-dir=" + profile]:
        options.add_argument(flag)
    driver = None
    try:
        try:
            driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        except Exception as e:  # selenium wraps every start failure differently
            _unavailable("chromium did not start: %s" % str(e).splitlines()[0])
        yield driver
    finally:
        if driver is not None:
            driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
