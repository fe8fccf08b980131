"""The System tab, an operator's live dashboard, in a real headless Chromium against a
real service: healthy, then escalated (an incident journaled and the watchdog's guard
written the way the watchdog writes them), refreshing itself; its polling is counted in
/metrics and writes no access lines; the GPU view (plot, clear button) only where a GPU
exists (a FAKE NVML on the service's path: this machine has none). Screenshots land in
artifacts/ (ignored by git)."""

import json
import os
import re
import time

import pytest

from tests.support.service import REPO, ServiceProcess

ART = os.path.join(REPO, "artifacts")
FAKE_NVML = os.path.join(REPO, "tests", "support", "fake_nvml")
UNIT = "glmtts"  # watchdog.unit's default: the instance at server.port


def _system_tab(driver, url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    driver.set_window_size(1280, 1100)
    driver.get(url + "/")
    wait = WebDriverWait(driver, 90)
    wait.until(EC.element_to_be_clickable((By.XPATH, "//button[@role='tab' and contains(., 'System')]"))).click()
    wait.until(lambda d: d.find_element(By.ID, "dash-state").is_displayed())
    return wait


def _text(driver, css):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css).text


def _clear_shown(driver):
    from selenium.webdriver.common.by import By

    return any(e.is_displayed() for e in driver.find_elements(By.ID, "dash-clear"))


def _journal_and_escalate(svc, now):
    """What the watchdog writes: two incidents of this instance, then its guard escalated."""
    from glmtts import config
    from glmtts.watchdog.incidents import Incident, IncidentLog, incidents_path
    from glmtts.watchdog.policy import Policy
    from glmtts.watchdog.state import WatchdogState, watchdog_dir

    settings = config.load(path="", env={"GLMTTS_PATHS_STATE_DIR": svc.state_dir,
                                         "GLMTTS_SERVER_PORT": str(svc.port)})
    journal = IncidentLog(incidents_path(settings))
    ok = Incident(id="20261201T100000Z-glmtts-aaaa", unit=UNIT, url=svc.url, detected_at=now - 600,
                  signatures=["cuda_oom"], state="recovered", runbook="cuda-oom", fault_at=now - 605,
                  service_back_at=now - 593.5, verified_at=now - 590, reason="smoke test passed")
    bad = Incident(id="20261201T101000Z-glmtts-bbbb", unit=UNIT, url=svc.url, detected_at=now - 60,
                   signatures=["crash_loop"], state="escalated", runbook="crash-loop", fault_at=now - 62,
                   reason="3 remediations in 3600 s: rate limit spent")
    other = Incident(id="20261201T101500Z-other-cccc", unit="other", url="http://127.0.0.1:1", detected_at=now,
                     signatures=["segfault"], state="failed", runbook="segfault", reason="someone else's")
    for inc in (ok, bad, other):
        journal.append(inc)
    state = WatchdogState.load(os.path.join(watchdog_dir(settings), "state.json"))
    Policy({}, guards=state.section("guards")).escalate(UNIT, bad.reason, bad.id, now)
    state.save()
    return ok, bad


def _metric(svc, route):
    total = 0.0
    for line in svc.get("/metrics").text.splitlines():
        if line.startswith("glmtts_http_requests_total{") and 'route="%s"' % route in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.parametrize("fn_index, status, logged", [(99991, 200, False), (99991, 500, True), (5, 200, True)],
                         ids=["poll", "failed-poll", "other-event"])
def test_ui_polls_are_counted_in_metrics_but_not_logged(fn_index, status, logged, monkeypatch):
    """service/access.py through its real middleware: a registered polling event's request
    gets no access line unless it fails; every request is counted."""
    import asyncio

    from service import access
    from service.metrics import Metrics

    lines = []
    monkeypatch.setattr(access.logs, "write_access", lambda **f: lines.append(f))
    monkeypatch.setattr(access, "QUIET_UI_FNS", {99991})
    metrics = Metrics()

    async def app(scope, receive, send):  # Gradio's /run/predict, as far as the middleware can tell
        await receive()
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def receive():
        return {"type": "http.request", "body": json.dumps({"fn_index": fn_index, "data": []}).encode(),
                "more_body": False}

    async def send(message):
        pass

    scope = {"type": "http", "method": "POST", "path": "/gradio_api/run/predict", "headers": [],
             "client": ("127.0.0.1", 1234)}
    asyncio.run(access.AccessMiddleware(app, metrics=metrics)(scope, receive, send))
    assert bool(lines) == logged
    route = "ui_poll" if fn_index == 99991 else "ui"
    assert metrics.requests.labels(route, "POST", str(status))._value.get() == 1


@pytest.mark.integration
@pytest.mark.browser
def test_dashboard_healthy_then_escalated_refreshes_itself_quietly(tmp_path):
    from tests.support.browser import chromium

    svc = ServiceProcess(tmp_path, ui=True)
    os.makedirs(ART, exist_ok=True)
    healthy_png, escalated_png = os.path.join(ART, "dashboard-healthy.png"), os.path.join(ART, "dashboard-escalated.png")
    for p in (healthy_png, escalated_png):
        if os.path.exists(p):
            os.remove(p)
    try:
        svc.start(timeout=120)
        with chromium() as driver:
            wait = _system_tab(driver, svc.url)
            assert "OK" in _text(driver, "#dash-state")
            facts = _text(driver, "#dash-facts")
            assert "espeak on cpu" in facts, facts
            assert re.search(r"0 waiting \(limit \d+\), 0 running \(limit \d+\)", facts), facts
            assert "Prompt cache not offered by this engine" in facts, facts  # espeak has none
            assert "GPU none" in facts, facts                               # no GPU here ...
            assert not _clear_shown(driver)                                 # ... so nothing to clear
            assert "not escalated" in _text(driver, "#dash-watchdog")
            assert "No incidents" in _text(driver, "#dash-incidents")
            driver.save_screenshot(healthy_png)

            # the page polls; a minute of it must not write access lines
            polls = _metric(svc, "ui_poll")
            before = len(open(svc.stdout_path).read().splitlines())
            ok, bad = _journal_and_escalate(svc, time.time())
            # no reload: the timer brings it in (REFRESH_S = 5)
            wait.until(lambda d: "Watchdog escalated for glmtts" in _text(d, "#dash"))
            banner = _text(driver, "#dash-escalated")
            assert "glmtts-watchdog resume" in banner and "rate limit spent" in banner and bad.id in banner, banner
            rows = _text(driver, "#dash-incidents")
            assert "escalated" in rows and "recovered" in rows and "11.5 s" in rows, rows  # outage of `ok`
            assert "someone else's" not in rows  # another instance's incident is not this one's
            assert rows.index("crash_loop") < rows.index("cuda_oom")  # newest first
            from selenium.webdriver.common.by import By

            links = {a.text: a.get_attribute("href") for a in driver.find_elements(By.CSS_SELECTOR, "#dash-incidents a")}
            assert set(links) == {"crash-loop", "cuda-oom"}, links
            r = svc.get(links["crash-loop"].replace(svc.url, ""))
            assert r.status_code == 200 and "crash" in r.text.lower(), r.text[:200]
            assert svc.get("/ui/runbooks/..%2Fsetup").status_code == 404
            driver.save_screenshot(escalated_png)
            time.sleep(6)  # at least one more tick of each timer
            after = open(svc.stdout_path).read().splitlines()[before:]
        assert _metric(svc, "ui_poll") >= polls + 2, "the dashboard's ticks are counted in /metrics"
        # nothing but the timers talked to the UI meanwhile: no Gradio request may have a line
        logged_polls = [line for line in after if "/gradio_api/" in line]
        assert logged_polls == [], logged_polls
    finally:
        svc.stop()
    for p in (healthy_png, escalated_png):
        assert os.path.getsize(p) > 10000, p


@pytest.mark.integration
@pytest.mark.browser
def test_gpu_view_only_where_a_gpu_exists(tmp_path):
    """FAKE NVML (tests/support/fake_nvml) stands in for the GPU this machine lacks."""
    from tests.support.browser import chromium

    device = tmp_path / "gpu.json"
    device.write_text(json.dumps({"devices": [{"total": 80 << 30, "free": 60 << 30}]}))
    svc = ServiceProcess(tmp_path, {"GLMTTS_TEST_FAKE_NVML_FILE": str(device)}, ui=True)
    svc.env["PYTHONPATH"] = FAKE_NVML + os.pathsep + svc.env["PYTHONPATH"]
    os.makedirs(ART, exist_ok=True)
    try:
        svc.start(timeout=120)
        assert svc.get("/healthz").json()["gpu"]["available"] is True
        with chromium() as driver:
            from selenium.webdriver.common.by import By

            wait = _system_tab(driver, svc.url)
            facts = _text(driver, "#dash-facts")
            assert "FAKE GPU" in facts and "20480 of 81920 MB used" in facts, facts
            assert _clear_shown(driver)
            # the plot over the last hour: two samples are 10 s apart (dashboard.SAMPLE_S)
            device.write_text(json.dumps({"devices": [{"total": 80 << 30, "free": 40 << 30}]}))
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "svg#dash-gpu-plot polyline"))
            wait.until(lambda d: "40960 of 81920 MB used" in _text(d, "#dash-facts"))
            driver.save_screenshot(os.path.join(ART, "dashboard-gpu.png"))
    finally:
        svc.stop()

