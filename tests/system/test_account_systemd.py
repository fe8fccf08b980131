"""The watchdog's account under the real private systemd, for the scenarios the
supervisord tests also run (tests/watchdog/test_watchdog_interrupted.py, test_watchdog_supervisord.py):

- a hang that only the watchdog heals (systemd's own WatchdogSec turned off for these
  tests, so the glmtts watchdog is the one acting) is healed with exactly one restart:
  the runbook kills, systemd's Restart=always replaces the process, and the runbook's
  restart step stands down; the diagnostics probe of the hung process is short;
- the watchdog cycle (the glmtts-watchdog.service oneshot) SIGKILLed by systemd while the
  kill step is under way: the next cycle closes the incident as interrupted, the opened and
  closing alerts are paired, nothing is restarted twice;
- the watchdog's verification of a busy service: a flood of outside requests has spent the
  rate limit, the remediation's smoke test still passes (the watchdog lane), and an outside
  client still gets its 429.
"""

import json
import threading
import time

import pytest
import requests
import yaml

from conftest import ROOT, TOOLS

from glmtts.watchdog.actions.capture_diagnostics import DIAGNOSTICS_PROBE_S
from tests.plugins.slow_step import with_slow_step
from tests.support.watchdog_fakes import alert_ids

pytestmark = [pytest.mark.system, pytest.mark.timeout(900)]

NO_SD_WATCHDOG = """# this test: systemd's own watchdog off, so the glmtts watchdog heals the hang
[Service]
WatchdogSec=0
"""
SLOW_RUNBOOKS = "/var/lib/glmtts/runbooks-slow"
MARKER = "/var/lib/glmtts/step.sleeping"
SLOW = "tests.plugins.slow_step:SlowStep"


def healthy_again(d, timeout=120):
    d.fault("")
    if d.unit()["ActiveState"] != "active":
        d.start()
    d.wait_healthy(timeout)


def resume(d):
    """Every test starts from an armed guard, whatever an earlier one left."""
    d.sd.run([str(TOOLS / "glmtts-watchdog"), "resume"], check=False, timeout=60)


def starts(d):
    """How many times systemd has started glmtts.service so far (its journal's own account)."""
    out = d.sd.run(["journalctl", "--no-pager", "-u", "glmtts.service"], check=False).stdout
    return sum("Started glmtts.service" in l for l in out.splitlines())


@pytest.fixture
def hang_rig(deployed):
    """glmtts with systemd's WatchdogSec off; put back (and restarted) afterwards."""
    d = deployed
    dropin = "/etc/systemd/system/glmtts.service.d/70-no-sd-watchdog.conf"
    d.write(dropin, NO_SD_WATCHDOG)
    d.sd.systemctl("daemon-reload")
    d.sd.systemctl("reset-failed", "glmtts.service", check=False)
    d.sd.systemctl("restart", "glmtts.service", timeout=180)
    healthy_again(d)
    resume(d)
    d.watchdog_check()  # baseline: what happened before is not this test's
    try:
        yield d
    finally:
        d.sd.run(["rm", "-f", dropin], check=False)
        d.sd.systemctl("daemon-reload", check=False)
        d.sd.systemctl("reset-failed", "glmtts.service", check=False)
        d.sd.systemctl("restart", "glmtts.service", check=False, timeout=180)
        healthy_again(d)
        resume(d)


def stop(d, pid):
    d.sd.run(["kill", "-STOP", str(pid)])


def cont(d, pid):
    d.sd.run(["kill", "-CONT", str(pid)], check=False)  # leave no stopped process behind


def test_a_hang_the_watchdog_heals_under_systemd_takes_one_restart(hang_rig):
    d = hang_rig
    before, u0, started0 = len(d.incidents()), d.unit(), starts(d)
    pid = d.main_pid()
    stop(d, pid)
    try:
        rc, report, _ = d.watchdog_check()
    finally:
        cont(d, pid)
    [inc] = [i for i in d.incidents()[before:] if i.get("kind") != "planned"]
    assert inc["runbook"] == "service-down" and inc["outcome"] == "recovered", report
    killed = [s for s in inc["steps"] if s["action"] == "kill_unit_processes"][0]
    assert killed["status"] == "ok" and pid in killed["data"]["pids"], killed
    [restart] = [s for s in inc["steps"] if s["action"] == "restart"]
    assert restart["status"] == "skipped" and "already replaced" in restart["detail"], restart
    # exactly one new process: systemd's Restart=always, not a second one from the runbook
    u1 = d.unit()
    assert int(u1["NRestarts"]) == int(u0["NRestarts"]) + 1, (u0, u1)
    assert starts(d) == started0 + 1
    [diag] = [s for s in inc["steps"] if s["action"] == "capture_diagnostics"]
    assert diag["duration_s"] < DIAGNOSTICS_PROBE_S + 1.5, diag
    assert inc["outage_s"] is not None and inc["verification_s"] is not None
    assert d.healthz()[0] == 200 and d.main_pid() != pid


def slow_runbooks(d, k):
    """The shipped runbooks, with service-down step k wrapped in SlowStep (it runs the
    step, writes MARKER, then sleeps), written inside the namespace."""
    d.sd.run(["mkdir", "-p", SLOW_RUNBOOKS])
    for src in (ROOT / "runbooks").iterdir():
        text = src.read_text(encoding="utf-8")
        if src.name == "service-down.md":
            text = with_slow_step(text, k, MARKER)
        d.write("%s/%s" % (SLOW_RUNBOOKS, src.name), text)


def test_a_watchdog_cycle_killed_during_the_kill_step_is_closed_as_interrupted_under_systemd(hang_rig, alerts):
    d = hang_rig
    steps = yaml.safe_load((ROOT / "runbooks" / "service-down.md").read_text().split("---")[1])["steps"]
    k = next(i for i, s in enumerate(steps) if (s if isinstance(s, str) else next(iter(s))) == "kill_unit_processes")
    slow_runbooks(d, k)
    d.sd.run(["rm", "-f", MARKER], check=False)
    dropin = "/etc/systemd/system/glmtts-watchdog.service.d/70-slow-step.conf"
    d.write(dropin, "[Service]\nEnvironment=GLMTTS_WATCHDOG_RUNBOOKS_DIR=%s PYTHONPATH=%s\n" % (SLOW_RUNBOOKS, ROOT))
    d.sd.systemctl("daemon-reload")
    known = {i["id"] for i in d.incidents()}
    sent, u0, started0 = len(alerts.bodies), d.unit(), starts(d)
    pid = d.main_pid()
    stop(d, pid)
    try:
        d.sd.systemctl("reset-failed", "glmtts-watchdog.service", check=False)
        d.sd.systemctl("start", "--no-block", "glmtts-watchdog.service")
        d.sd.wait_for(lambda: d.file(MARKER).exists(), 180, what="the slow kill step")
        # the cycle dies as the OOM killer or an operator's kill would leave it
        d.sd.systemctl("kill", "--signal=KILL", "glmtts-watchdog.service")
        d.sd.wait_for(lambda: d.sd.show("glmtts-watchdog.service", "ActiveState")["ActiveState"] in ("failed", "inactive"),
                      60, what="the killed cycle to end")
    finally:
        cont(d, pid)
        d.sd.run(["rm", "-f", dropin], check=False)
        d.sd.systemctl("daemon-reload", check=False)
    [dead] = [i for i in d.incidents() if i["id"] not in known]
    assert dead["outcome"] is None and dead["current_step"]["action"] == SLOW, dead
    assert len(dead["steps"]) == k

    rc, report, _ = d.watchdog_check()  # the next cycle, with the shipped runbooks
    new = [i for i in d.incidents() if i["id"] not in known and i.get("kind") != "planned"]
    first = new[0]
    assert first["id"] == dead["id"] and first["outcome"] == "interrupted", (first, report)
    assert "died during step %s" % SLOW in first["reason"], first["reason"]
    assert first["interruption"]["steps_done"] == [s["action"] for s in first["steps"]]
    assert all(i["outcome"] for i in new), [(i["id"], i["state"]) for i in new]
    d.sd.wait_for(lambda: all(len(alert_ids(alerts.bodies[sent:]).get(i["id"], [])) == 2 for i in new), 20,
                  what="opened and closing alerts for each incident")
    for i in new:
        whats = alert_ids(alerts.bodies[sent:])[i["id"]]
        assert whats == ["opened", i["outcome"]], (i["id"], whats)
    # the killed step had done its work (systemd replaced the process): nothing restarted twice
    assert int(d.unit()["NRestarts"]) == int(u0["NRestarts"]) + 1, d.unit()
    assert starts(d) == started0 + 1
    assert d.healthz()[0] == 200 and d.main_pid() != pid
    rc, report, _ = d.watchdog_check()
    assert rc == 0, "the cycle after the recovery still found something: %s" % report


@pytest.fixture
def busy_rig(hang_rig):
    """The same service with a rate limit of 3 requests per minute per client."""
    d = hang_rig
    env_file = "/etc/glmtts/glmtts.env"
    was = d.file(env_file).read_text()
    d.write(env_file, was + "GLMTTS_LIMITS_RATE_LIMIT_PER_MINUTE=3\n", 0o640)
    d.sd.run(["chgrp", "glmtts", env_file])
    d.sd.systemctl("reset-failed", "glmtts.service", check=False)  # planned restarts count toward the start limit
    d.sd.systemctl("restart", "glmtts.service", timeout=180)
    healthy_again(d)
    d.watchdog_check()
    try:
        yield d
    finally:
        d.write(env_file, was, 0o640)
        d.sd.run(["chgrp", "glmtts", env_file], check=False)
        d.sd.systemctl("reset-failed", "glmtts.service", check=False)
        d.sd.systemctl("restart", "glmtts.service", check=False, timeout=180)
        healthy_again(d)


def test_the_watchdog_verifies_a_busy_rate_limited_service_under_systemd(busy_rig):
    d = busy_rig
    before = len(d.incidents())
    codes, stop_flood = [], threading.Event()

    def flood():  # an outside client over its limit, all through the remediation (bounded)
        deadline = time.monotonic() + 240
        while not stop_flood.is_set() and time.monotonic() < deadline:
            try:
                codes.append(requests.post(d.url + "/v1/audio/speech", json={"input": "你好。"}, timeout=10).status_code)
            except requests.RequestException:
                codes.append(None)
            time.sleep(0.2)
    t = threading.Thread(target=flood, daemon=True)
    t.start()
    try:
        d.sd.wait_for(lambda: 429 in codes, 60, what="the outside client to spend its rate limit")
        pid = d.main_pid()
        stop(d, pid)
        try:
            rc, report, _ = d.watchdog_check()
        finally:
            cont(d, pid)
        n_after = len(codes)
        d.sd.wait_for(lambda: 429 in codes[n_after:], 30, what="a 429 for the outside client after the recovery")
    finally:
        stop_flood.set()
        t.join(15)
    [inc] = [i for i in d.incidents()[before:] if i.get("kind") != "planned"]
    assert inc["runbook"] == "service-down" and inc["outcome"] == "recovered", report
    [smoke] = [s for s in inc["steps"] if s["action"] == "smoke_test"]
    assert smoke["status"] == "ok", smoke
    r = requests.post(d.url + "/v1/audio/speech", json={"input": "你好。"}, timeout=30)
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded", r.text
    print("outside client during the remediation: %s" % json.dumps({str(c): codes.count(c) for c in set(codes)}))
