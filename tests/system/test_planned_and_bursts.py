"""The watchdog under a real systemd reads the manager's own account: an operator's
restart/reload is a planned event (no incident, no page) while a kill is an incident;
five separate faults that run into the unit's start limit are healed (reset-failed,
start) and paged once with their history, not escalated as a crash loop; `diagnose`
names the runbook the cycle then runs."""

import json
import time

import pytest

from conftest import TOOLS

pytestmark = [pytest.mark.system, pytest.mark.timeout(900)]


def healthy_again(d, timeout=120):
    d.fault("")
    if d.unit()["ActiveState"] != "active":
        d.start()
    d.wait_healthy(timeout)


def diagnosed(d):
    out = d.sd.run([str(TOOLS / "glmtts-watchdog"), "diagnose", "--json"], check=False, timeout=180)
    return json.loads(out.stdout)["instances"][0]


def journal(d, since):
    return d.sd.run(["journalctl", "--no-pager", "-u", "glmtts.service", "--since", "@%d" % since], check=False).stdout


def test_systemctl_restart_and_reload_are_planned_a_kill_is_an_incident(deployed, alerts):
    d = deployed
    healthy_again(d)
    d.watchdog_check()  # baseline: what happened before is not this test's
    before, sent = len(d.incidents()), len(alerts.bodies)
    u0, wall0 = d.unit(), time.time()
    d.sd.systemctl("restart", "glmtts.service", timeout=180)
    d.wait_healthy(120)
    u1 = d.unit()
    # systemd 252's own account of a planned restart: a stop job, NRestarts unchanged, Result=success
    assert u1["MainPID"] != u0["MainPID"] and u1["NRestarts"] == u0["NRestarts"] and u1["Result"] == "success", (u0, u1)
    words = journal(d, wall0 - 1)
    assert "Stopping glmtts.service" in words and "Scheduled restart job" not in words, words
    assert diagnosed(d)["runbook_id"] is None
    rc, report, _ = d.watchdog_check()
    assert rc == 0 and "glmtts: planned restart" in report and "not an incident" in report, report
    [rec] = d.incidents()[before:]
    assert rec["kind"] == "planned" and rec["outcome"] == "planned" and rec["signatures"] == [], rec

    d.sd.systemctl("reload", "glmtts.service")
    rc, report, _ = d.watchdog_check()
    assert rc == 0 and "planned reload" in report, report
    assert [r["kind"] for r in d.incidents()[before:]] == ["planned", "planned"]
    time.sleep(1)
    assert len(alerts.bodies) == sent, alerts.texts()[sent:]  # nobody was paged for either

    pid = d.main_pid()
    d.sd.run(["kill", "-9", str(pid)])
    d.sd.wait_for(lambda: d.main_pid() not in (0, pid), 60, what="a new main PID")
    d.wait_healthy(120)
    assert int(d.unit()["NRestarts"]) == int(u1["NRestarts"]) + 1
    said = diagnosed(d)["runbook_id"]
    rc, report, _ = d.watchdog_check()
    inc = d.incidents()[-1]
    assert inc.get("kind") is None and "unexpected_exit" in inc["signatures"] and inc["outcome"] == "recovered", inc
    assert said == inc["runbook"] == "service-down"


SHIPPED_LIMITS = """# this test: the shipped unit's start limit (the session drop-in shortens it)
[Unit]
StartLimitIntervalSec=600
StartLimitBurst=5
"""


def crash_by_request(d, word):
    d.fault(word)
    try:
        d.speech(timeout=30)
    except Exception:
        pass
    d.fault("")


def test_five_separate_faults_are_healed_and_paged_once_not_escalated(deployed, alerts):
    d = deployed
    healthy_again(d)
    dropin = "/etc/systemd/system/glmtts.service.d/60-shipped-start-limit.conf"
    d.write(dropin, SHIPPED_LIMITS)
    d.sd.systemctl("daemon-reload")
    timer_was = d.sd.show("glmtts-watchdog.timer", "ActiveState")["ActiveState"]
    d.sd.systemctl("stop", "glmtts-watchdog.timer", check=False)
    try:
        d.sd.systemctl("reset-failed", "glmtts.service", check=False)
        d.sd.systemctl("restart", "glmtts.service", timeout=180)
        d.wait_healthy(120)
        d.watchdog_check()  # baseline
        before, sent = len(d.incidents()), len(alerts.bodies)
        t0, wall0 = time.monotonic(), time.time()

        def kill(sig):
            return lambda: d.sd.run(["kill", "-%s" % sig, str(d.main_pid())])
        faults = [("segfault", lambda: crash_by_request(d, "segfault")), ("kill -9", kill("KILL")),
                  ("cuda_fatal", lambda: crash_by_request(d, "cuda_fatal")), ("SIGSTOP hang", kill("STOP")),
                  ("kill -ABRT", kill("ABRT"))]
        for i, (name, act) in enumerate(faults):
            pid = d.main_pid()
            act()
            if i < len(faults) - 1:
                d.sd.wait_for(lambda: d.main_pid() not in (0, pid), 60, what="systemd to replace pid %d after %s" % (pid, name))
                d.wait_healthy(120)
        # the fifth start in 600 s was the last one allowed: what is left is a failed unit
        d.sd.wait_for(lambda: d.unit()["ActiveState"] == "failed" and "Start request repeated too quickly" in journal(d, wall0 - 1),
                      60, what="the start limit")
        faults_s = time.monotonic() - t0

        said = diagnosed(d)
        rc, report, _ = d.watchdog_check()
        incidents = d.incidents()[before:]
        assert incidents, report
        inc = incidents[-1]
        assert said["runbook_id"] == inc["runbook"] == "fault-burst", (said["now"], inc)
        assert "fault_burst" in inc["signatures"] and "crash_loop" not in inc["signatures"], inc["signatures"]
        assert inc["outcome"] == "recovered" and rc == 1, (rc, report)
        history = [e["line"] for e in inc["evidence"] if e["path"] == "history"]
        assert history and "5 separate faults" in history[0], inc["evidence"]
        for words in ("11/SEGV", "9/KILL", "75/TEMPFAIL", "watchdog timeout", "6/ABRT"):
            assert words in history[0], (words, history[0])
        assert d.unit()["ActiveState"] == "active" and d.healthz()[0] == 200
        d.smoke()
        d.sd.wait_for(lambda: len(alerts.bodies) > sent, 15, what="the page")
        pages = [t for t in alerts.texts()[sent:] if "CRITICAL" in t]
        assert pages and all("fault_burst" in t for t in pages) and any("5 separate faults" in t for t in pages), pages

        rc, report, _ = d.watchdog_check()  # healed: a quiet cycle, no second page
        assert rc == 0, report
        time.sleep(1)
        assert len([t for t in alerts.texts()[sent:] if "CRITICAL" in t]) == len(pages)
        print("five faults in %.0f s, healed by the watchdog: %s" % (faults_s, inc["summary"] if "summary" in inc else inc["outcome"]))
    finally:
        d.sd.run(["rm", "-f", dropin], check=False)
        d.sd.systemctl("daemon-reload", check=False)
        if timer_was == "active":
            d.sd.systemctl("start", "glmtts-watchdog.timer", check=False)
    healthy_again(d)
