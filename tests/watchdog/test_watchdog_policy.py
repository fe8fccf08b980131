"""The remediation policy as a state machine with an injected clock, and whole cycles
against a controllable health endpoint and a recording service manager."""

import json
import os

import pytest

from glmtts.watchdog import policy as P
from glmtts.watchdog.cycle import EXIT_CRITICAL, EXIT_OK, EXIT_UNKNOWN, EXIT_WARNING, Watchdog
from glmtts.watchdog.incidents import IncidentLog
from glmtts.watchdog.lock import CycleLock
from glmtts.watchdog.runbook import default_dir, load_all
from glmtts.watchdog.states import InvalidTransition, IncidentState, incident_transition
from tests.support.watchdog_fakes import FakeClock, FakeManager, HealthServer, RecordingHost, settings_for

RUNBOOKS = load_all(default_dir())


def policy(max_=3, window=3600):
    return P.Policy(RUNBOOKS, max_, window, {})


def test_rate_limit_then_escalation_then_resume():
    pol, t = policy(), 1000.0
    for i in range(3):
        d = pol.decide(["unhealthy"], "unhealthy", now=t + i * 60, unit="glmtts")
        assert (d.kind, d.runbook.id) == (P.REMEDIATE, "service-down")
        pol.begin("glmtts", d.runbook.id, t + i * 60)
    d = pol.decide(["unhealthy"], "unhealthy", now=t + 200, unit="glmtts")
    assert d.kind == P.ESCALATE and "3 remediations" in d.reason
    pol.escalate("glmtts", d.reason, "inc-1", t + 200)
    # escalated: no action, whatever is seen, until a human resumes
    assert pol.decide(["unhealthy", "segfault"], "unhealthy", now=t + 10_000, unit="glmtts").kind == P.SUPPRESSED
    assert pol.decide([], "healthy", now=t + 10_000, unit="glmtts").kind == P.SUPPRESSED
    assert pol.resume() == ["glmtts"]
    assert pol.decide(["unhealthy"], "unhealthy", now=t + 10_001, unit="glmtts").kind == P.REMEDIATE


def test_window_slides_with_the_clock():
    pol = policy(max_=2, window=600)
    pol.begin("u", "service-down", 0)
    pol.begin("u", "service-down", 100)
    assert pol.decide(["unhealthy"], "unhealthy", now=500, unit="u").kind == P.ESCALATE
    assert pol.decide(["unhealthy"], "unhealthy", now=650, unit="u").kind == P.REMEDIATE


def test_counters_reset_after_a_verified_remediation():
    pol = policy(max_=2)
    pol.begin("u", "segfault", 0)
    pol.begin("u", "segfault", 10)
    pol.verified("u", "segfault")
    assert pol.decide(["segfault"], "healthy", now=20, unit="u").kind == P.REMEDIATE


def test_oom_with_healthy_probe_is_a_warning_only():
    d = policy().decide(["cuda_oom"], "healthy", now=0, unit="u")
    assert d.kind == P.WARNING and d.runbook.id == "cuda-oom"
    d = policy().decide(["cuda_oom", "unhealthy"], "unhealthy", now=0, unit="u")
    assert (d.kind, d.runbook.id) == (P.REMEDIATE, "cuda-oom")


def test_cause_wins_over_symptom():
    d = policy().decide(["crash_loop", "port_in_use", "unhealthy"], "unhealthy", now=0, unit="u")
    assert d.runbook.id == "port-in-use"
    d = policy().decide(["unhealthy", "crash_loop"], "unhealthy", now=0, unit="u")
    assert d.runbook.id == "crash-loop"


def test_xid_43_is_recorded_and_ignored_79_is_acted_on():
    assert policy().decide(["gpu_xid"], "healthy", xids=[43], now=0, unit="u").kind == P.WARNING
    d = policy().decide(["gpu_xid"], "healthy", xids=[79], now=0, unit="u")
    assert (d.kind, d.runbook.id) == (P.REMEDIATE, "gpu-xid")


def test_stopped_unit_is_left_alone():
    assert policy().decide([], "unhealthy", unit_state="stopped", now=0, unit="u").kind == P.STOPPED


def test_incident_transitions_are_checked():
    class I:
        key, state, history = "i", IncidentState.OPENED, []
    i = I()
    incident_transition(i, IncidentState.REMEDIATING, "x")
    with pytest.raises(InvalidTransition):
        incident_transition(i, IncidentState.WARNING, "x")


# -- whole cycles -------------------------------------------------------------------

@pytest.fixture
def rig(tmp_path):
    with HealthServer(status_code=503) as srv:
        clock = FakeClock()
        s = settings_for(tmp_path, url=srv.url, watchdog__max_remediations=2, watchdog__ready_timeout_s=3.0)
        mgr = FakeManager()
        wd = Watchdog(s, host=RecordingHost(clock=clock), manager=mgr, runbooks=RUNBOOKS)
        yield wd, srv, mgr, clock, s


def incidents(s):
    return IncidentLog(os.path.join(s.paths.state_dir, "incidents.jsonl")).read()


def test_cycle_healthy_is_ok(rig):
    wd, srv, mgr, clock, s = rig
    srv.status_code = 200
    rep = wd.check()
    assert rep.code == EXIT_OK and "GLMTTS OK - glmtts: healthy" in rep.summary()
    assert mgr.calls == [] and incidents(s) == []


def test_cycle_remediates_recovers_and_records_time_to_recover(rig):
    wd, srv, mgr, clock, s = rig

    def heal():
        clock.advance(7)
        srv.status_code = 200
    mgr.on_restart = heal
    rep = wd.check()
    assert rep.code == EXIT_WARNING, rep.summary()
    assert ("restart", "glmtts") in mgr.calls
    [inc] = incidents(s)
    assert inc["outcome"] == "recovered" and inc["runbook"] == "service-down"
    assert inc["runbook_path"].endswith("runbooks/service-down.md")
    assert inc["time_to_recover_s"] >= 7
    assert [st["action"] for st in inc["steps"]] == ["capture_diagnostics", "kill_unit_processes", "restart", "wait_ready", "smoke_test"]
    assert all("duration_s" in st for st in inc["steps"])
    assert inc["evidence"][0]["signature"] == "unhealthy"


def test_cycle_rate_limit_escalates_then_stops_acting_until_resume(rig):
    wd, srv, mgr, clock, s = rig
    for i in range(2):  # max_remediations = 2, each fails to verify
        rep = wd.check()
        assert rep.code == EXIT_CRITICAL and "failed" in rep.summary()
        clock.advance(300)
    restarts = len([c for c in mgr.calls if c[0] in ("restart", "start")])
    rep = wd.check()
    assert rep.code == EXIT_CRITICAL and "escalated" in rep.summary()
    clock.advance(300)
    rep = wd.check()
    assert "waiting for `glmtts-watchdog resume`" in rep.summary()
    assert len([c for c in mgr.calls if c[0] in ("restart", "start")]) == restarts  # no action while escalated
    outcomes = [i["outcome"] for i in incidents(s)]
    assert outcomes == ["failed", "failed", "escalated"]
    assert wd.resume() == ["glmtts"]
    wd.check()
    assert len([c for c in mgr.calls if c[0] in ("restart", "start")]) > restarts


def test_lock_held_means_no_action(rig):
    wd, srv, mgr, clock, s = rig
    other = CycleLock(wd.lock_path)
    assert other.acquire()
    try:
        rep = wd.check()
    finally:
        other.release()
    assert rep.code == EXIT_UNKNOWN and "another watchdog cycle" in rep.summary()
    assert mgr.calls == [] and srv.probes == 0 and incidents(s) == []


def test_oom_line_with_healthy_probe_only_warns(rig):
    wd, srv, mgr, clock, s = rig
    srv.status_code = 200
    wd.check()  # first sight of the log
    with open(os.path.join(s.paths.log_dir, "error.log"), "a") as f:
        f.write("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n")
    rep = wd.check()
    assert rep.code == EXIT_WARNING and "cuda_oom -> warning" in rep.summary()
    assert mgr.calls == []
    [inc] = incidents(s)
    assert inc["outcome"] == "warning" and inc["steps"] == []


def test_crash_mid_cycle_leaves_consistent_state(rig):
    wd, srv, mgr, clock, s = rig

    def die():
        raise KeyboardInterrupt("watchdog killed mid-runbook")
    mgr.on_restart = die
    with pytest.raises(KeyboardInterrupt):
        wd.check()
    with open(wd.state_path) as f:
        state = json.load(f)  # whole, parseable
    assert len(state["guards"]["glmtts"]["attempts"]["service-down"]) == 1  # the attempt was written ahead
    probe_lock = CycleLock(wd.lock_path)
    assert probe_lock.acquire()  # and the lock is free again
    probe_lock.release()
    [inc] = incidents(s)  # journaled ahead: open, with the step that was under way
    assert inc["state"] == "remediating" and inc["outcome"] is None
    assert inc["current_step"]["action"] == "restart" and [st["action"] for st in inc["steps"]] == [
        "capture_diagnostics", "kill_unit_processes"]
    mgr.on_restart = None
    srv.status_code = 200
    rep = wd.check()  # the next cycle closes it, says so, and does not restart again
    assert rep.code == EXIT_WARNING and "interrupted" in rep.summary(), rep.summary()
    assert mgr.calls == [("restart", "glmtts")]
    [inc] = incidents(s)
    assert inc["outcome"] == "interrupted" and "during step restart" in inc["reason"]
    assert inc["interruption"]["probe"]["verdict"] == "healthy" and inc["service_back_at"] is not None
    assert wd.check().code == EXIT_OK


def test_dry_run_changes_nothing(rig):
    from tests.watchdog.test_watchdog_dryrun import tree
    wd, srv, mgr, clock, s = rig
    before = tree(s.paths.state_dir)
    dry = Watchdog(s, host=RecordingHost(clock=clock), manager=mgr, runbooks=RUNBOOKS, dry_run=True)
    rep = dry.check()
    assert "dry_run" in rep.summary() and "service-down" in rep.summary(), rep.summary()
    assert mgr.calls == [] and incidents(s) == [] and tree(s.paths.state_dir) == before
    assert "service-down" in wd.check().summary()  # the real cycle still sees the fault
