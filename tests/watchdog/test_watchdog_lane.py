"""The watchdog is never refused by the service it guards (glmtts/watchdog_token.py): with
the rate limit exhausted and the queue full, the watchdog's smoke test (the verification
step of every runbook) still passes, while an outside client without the token, or with a
wrong one, still gets its 429, and a wrong token never appears in a log."""

import os
import threading
import time

import pytest
import requests

from glmtts import config, watchdog_token
from glmtts.watchdog.actions import ACTIONS, Context
from glmtts.host import Host
from glmtts.watchdog.incidents import Incident
from glmtts.watchdog.instances import Instance
from tests.support.service import FAULT_ENGINE, ServiceProcess
from tests.support.watchdog_fakes import FakeManager

WRONG = "not-the-token-" + "x" * 40


def test_smoke_test_passes_with_rate_limit_exhausted_and_queue_full(tmp_path):
    token = watchdog_token.new_token()
    cfg = tmp_path / "glmtts.toml"
    fault = tmp_path / "fault"
    fault.write_text("")
    svc = ServiceProcess(tmp_path, {"GLMTTS_CONFIG": str(cfg), "GLMTTS_TEST_FAULT_FILE": str(fault),
                                    "GLMTTS_LIMITS_RATE_LIMIT_PER_MINUTE": "3", "GLMTTS_LIMITS_MAX_QUEUE": "1"},
                         engine=FAULT_ENGINE)
    cfg.write_text('[server]\nport = %d\n\n[watchdog]\nsmoke_timeout_s = 30.0\n' % svc.port)
    (tmp_path / "watchdog.token").write_text(token + "\n")
    os.chmod(tmp_path / "watchdog.token", 0o600)
    svc.start()
    try:
        speak = {"input": "你好，这是一次测试。", "response_format": "wav"}
        answers = {}

        def post(name, headers=None):
            answers[name] = requests.post(svc.url + "/v1/audio/speech", json=speak, headers=headers or {}, timeout=60)

        fault.write_text("slow:4\n")
        busy = threading.Thread(target=post, args=("in_flight",))
        busy.start()
        deadline = time.monotonic() + 20
        while svc.get("/healthz").json()["in_flight"] < 1:
            assert time.monotonic() < deadline, "the first request never started"
            time.sleep(0.05)
        queued = threading.Thread(target=post, args=("queued",))
        queued.start()
        while svc.get("/healthz").json()["queue_depth"] < 1:
            assert time.monotonic() < deadline, "the second request never queued"
            time.sleep(0.05)
        fault.write_text("")  # what runs next is fast; the one in flight still sleeps

        full = svc.post("/v1/audio/speech", json=speak)  # 3rd request this minute: the queue is full
        assert full.status_code == 429 and full.json()["error"]["code"] == "queue_full", full.text
        limited = svc.post("/v1/audio/speech", json=speak)  # 4th: over rate_limit_per_minute = 3
        assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limit_exceeded", limited.text
        assert int(limited.headers["Retry-After"]) >= 1

        # the watchdog's verification, exactly as a runbook runs it, with the settings it loads
        settings = config.load(str(cfg), env={})
        assert watchdog_token.path_for(settings) == str(tmp_path / "watchdog.token")
        inst = Instance("glmtts", settings.watchdog.url, {})
        incident = Incident("i", "glmtts", inst.url, 0.0)
        res = ACTIONS["smoke_test"]()(Context(settings, inst, Host(), FakeManager(pid=svc.pid), incident))
        assert res.status == "ok", res.detail
        assert incident.verified_at is not None

        # an outside client without the token, or with a wrong one, is still refused
        for headers in ({}, {watchdog_token.HEADER: WRONG}, {watchdog_token.HEADER: token[:-1]}):
            r = svc.post("/v1/audio/speech", json=speak, headers=headers)
            assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded", (headers, r.text)
        busy.join(30)
        queued.join(30)
        assert answers["in_flight"].status_code == 200 and answers["queued"].status_code == 200
        # the token (right or wrong) never reaches a log; the wrong one is reported as such
        logs = svc.stderr() + svc.stdout()
        assert token not in logs and WRONG not in logs and token[:-1] not in logs
        assert "is not this host's watchdog token" in svc.stderr()
        metrics = svc.get("/metrics").text
        assert 'glmtts_worker_job_seconds_count{priority="watchdog"} 1.0' in metrics, metrics
    finally:
        svc.stop()


def test_no_token_file_means_no_lane(tmp_path):
    """Without a token file on the service's side, a presented token is no identity."""
    svc = ServiceProcess(tmp_path, {"GLMTTS_LIMITS_RATE_LIMIT_PER_MINUTE": "1"})
    svc.start()
    try:
        speak = {"input": "你好。", "response_format": "wav"}
        assert svc.post("/v1/audio/speech", json=speak).status_code == 200
        r = svc.post("/v1/audio/speech", json=speak, headers={watchdog_token.HEADER: WRONG})
        assert r.status_code == 429, r.text
        assert WRONG not in svc.stderr() + svc.stdout()
    finally:
        svc.stop()


def test_token_file_reading(tmp_path):
    assert watchdog_token.read("") == ""
    assert watchdog_token.read(str(tmp_path / "missing")) == ""
    short = tmp_path / "short"
    short.write_text("abc\n")
    assert watchdog_token.read(str(short)) == ""
    good = tmp_path / "watchdog.token"
    token = watchdog_token.new_token()
    good.write_text(token + "\n")
    assert watchdog_token.read(str(good)) == token
    assert len(token) >= watchdog_token.MIN_LENGTH



@pytest.mark.integration
def test_the_watchdog_lane_holds_for_a_whole_cycle_under_supervisord(tmp_path):
    """A whole remediation under a real supervisord while an outside client keeps its rate
    limit spent (before the fault and in the new process): the hang is healed and verified
    (the smoke test takes the lane: the token beside the config file both sides read), and
    the outside client still gets its 429."""
    import dataclasses
    import signal

    from glmtts.watchdog.cycle import EXIT_OK
    from glmtts.watchdog.incidents import IncidentLog
    from tests.support.watchdog_fakes import AlertReceiver
    from tests.watchdog.test_watchdog_supervisord import Rig, main_pid

    cfg = tmp_path / "glmtts.toml"
    cfg.write_text("[limits]\nrate_limit_per_minute = 2\n")
    token = tmp_path / watchdog_token.FILENAME
    token.write_text(watchdog_token.new_token() + "\n")
    os.chmod(token, 0o600)
    rig = Rig(str(tmp_path), env={"GLMTTS_CONFIG": str(cfg), "GLMTTS_LIMITS_RATE_LIMIT_PER_MINUTE": "2"})
    codes, stop = [], threading.Event()

    def flood():  # the outside client, bounded
        deadline = time.monotonic() + 180
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                codes.append(requests.post(rig.url + "/v1/audio/speech", json={"input": "你好。"}, timeout=10).status_code)
            except requests.RequestException:
                codes.append(None)
            time.sleep(0.2)
    t = threading.Thread(target=flood, daemon=True)
    try:
        with AlertReceiver() as rx:
            rig.wait_healthy()
            wd = rig.watchdog(rx.port)
            wd.settings = dataclasses.replace(wd.settings, config_path=str(cfg))  # where the token is
            rig.wd = wd
            assert watchdog_token.for_settings(wd.settings), "the watchdog must find the token"
            assert wd.check().code == EXIT_OK
            t.start()
            deadline = time.monotonic() + 60
            while 429 not in codes:
                assert time.monotonic() < deadline, codes
                time.sleep(0.2)
            pid = main_pid(rig)
            os.kill(pid, signal.SIGSTOP)
            try:
                rep = wd.check()
            finally:
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            n = len(codes)
            deadline = time.monotonic() + 30
            while 429 not in codes[n:]:
                assert time.monotonic() < deadline, "no 429 for the outside client after the recovery: %s" % codes[n:]
                time.sleep(0.2)
            stop.set()
            t.join(15)
            inc = IncidentLog(str(tmp_path / "state" / "incidents.jsonl")).read(last=1)[0]
            assert inc["runbook"] == "service-down" and inc["outcome"] == "recovered", rep.summary()
            [smoke] = [s for s in inc["steps"] if s["action"] == "smoke_test"]
            assert smoke["status"] == "ok", smoke
            assert main_pid(rig) != pid
    finally:
        stop.set()
        rig.stop()
