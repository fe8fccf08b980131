"""Incidents as a write-ahead journal (folded by id), their exact times, and the pieces of
one restart per remediation, against fakes. The real kills are in
tests/watchdog/test_watchdog_interrupted.py and tests/watchdog/test_watchdog_supervisord.py."""

import os
import time

import pytest

from glmtts.watchdog.actions import Context
from glmtts.watchdog.actions.capture_diagnostics import DIAGNOSTICS_PROBE_S, CaptureDiagnostics
from glmtts.watchdog.actions.restart import Restart
from glmtts.watchdog.cycle import EXIT_OK, EXIT_WARNING, Watchdog
from glmtts.host import Host
from glmtts.watchdog.incidents import Incident, IncidentLog, Lifecycle, fold
from glmtts.watchdog.instances import configured
from glmtts.watchdog.managers import RUNNING, STARTING, SystemdManager
from glmtts.watchdog.runbook import default_dir, load_all
from glmtts.watchdog.states import IncidentState
from tests.support.watchdog_fakes import RecordingHost, FakeClock, FakeManager, HealthServer, settings_for

RUNBOOKS = load_all(default_dir())


def journal(s):
    return IncidentLog(os.path.join(s.paths.state_dir, "incidents.jsonl"))


# -- the journal ----------------------------------------------------------------------

def test_fold_keeps_one_record_per_id_latest_state_in_opening_order():
    recs = [{"id": "a", "state": "opened"}, {"id": "b", "state": "opened"}, {"id": "a", "state": "recovered"}]
    assert fold(recs) == [{"id": "a", "state": "recovered"}, {"id": "b", "state": "opened"}]


def test_incident_log_reads_folded_and_lists_open_ones(tmp_path):
    log = IncidentLog(str(tmp_path / "incidents.jsonl"))
    inc = Incident("i1", "glmtts", "http://x", 100.0, ["unhealthy"])
    lc = Lifecycle(log, clock=lambda: 105.0)
    lc.open(inc)
    assert [d["state"] for d in log.open_incidents()] == ["opened"] and log.read()[0]["outcome"] is None
    lc.advance(inc, IncidentState.REMEDIATING, "runbook x")
    lc.advance(inc, IncidentState.RECOVERED, "ok")
    assert len(log.records()) == 3
    [d] = log.read()
    assert d["outcome"] == "recovered" and d["ended_at"] == 105.0 and log.open_incidents() == []
    with open(log.path, "a") as f:
        f.write('{"id": "half')  # a disk that filled mid-write
    assert len(log.read()) == 1


def test_lifecycle_journals_before_it_alerts(tmp_path):
    log = IncidentLog(str(tmp_path / "incidents.jsonl"))
    seen = []

    class Alerter:
        def send(self, key, severity, title, body):
            seen.append((key, log.read()[-1]["state"]))
            return "sent"
    inc = Incident("i2", "glmtts", "http://x", 100.0, ["unhealthy"])
    lc = Lifecycle(log, Alerter(), clock=lambda: 101.0)
    lc.open(inc)
    lc.advance(inc, IncidentState.REMEDIATING, "runbook x")
    lc.advance(inc, IncidentState.FAILED, "no")
    assert seen == [("i2:opened", "remediating"), ("i2:failed", "failed")]
    assert log.read()[-1]["notes"] == [{"alert": "opened", "result": "sent"}, {"alert": "failed", "result": "sent"}]


def test_times_outage_and_verification_are_separate():
    inc = Incident("i3", "glmtts", "http://x", 130.0, ["unhealthy"], state=IncidentState.RECOVERED)
    inc.note_time("fault_at", 120.0, "probe")
    inc.note_time("fault_at", 110.0, "log line")        # earlier evidence wins
    inc.note_time("service_back_at", 100.0, "before the fault: ignored")
    inc.note_time("service_back_at", 140.0, "probe")
    inc.note_time("service_back_at", 125.0, "manager ready")
    inc.verified_at = 200.0
    d = inc.to_dict()
    assert (d["outage_s"], d["verification_s"], d["time_to_recover_s"]) == (15.0, 75.0, 90.0)
    assert d["times_from"] == {"fault_at": "log line", "service_back_at": "manager ready"}
    assert "outage 15.0 s, verified 75.0 s later" in inc.summary()


# -- whole cycles against fakes -------------------------------------------------------

def signal_recording_host(clock):
    """Fake pids must never reach os.kill: the recording host keeps signals in its calls,
    and its process table is empty (every pid is gone)."""
    return RecordingHost(clock=clock, pids=set())


@pytest.fixture
def rig(tmp_path):
    with HealthServer(status_code=503) as srv:
        clock = FakeClock()
        s = settings_for(tmp_path, url=srv.url, watchdog__ready_timeout_s=3.0, watchdog__probe_timeout_s=2.0)
        mgr = FakeManager(pid=None)
        wd = Watchdog(s, host=signal_recording_host(clock), manager=mgr, runbooks=RUNBOOKS)
        yield wd, srv, mgr, clock, s


def test_fault_at_is_the_first_failed_probes_start_and_back_the_managers_ready_time(rig):
    wd, srv, mgr, clock, s = rig
    t_probe = clock.now()

    def heal():
        clock.advance(7)
        srv.status_code = 200
        mgr.pid = 101
        mgr.unit_times = {"active_since": clock.now() - 2}  # ready before the watchdog's probe saw it
    mgr.on_restart = heal
    wd.check()
    [inc] = journal(s).read()
    assert inc["outcome"] == "recovered"
    assert inc["fault_at"] == t_probe and inc["times_from"]["fault_at"].startswith("probe")
    assert inc["service_back_at"] == inc["fault_at"] + 5 and "ready time" in inc["times_from"]["service_back_at"]
    assert inc["outage_s"] == 5 and inc["verification_s"] >= 2


def test_an_exit_the_manager_already_healed_reports_the_managers_times(rig):
    wd, srv, mgr, clock, s = rig
    srv.status_code = 200
    mgr.pid = 100
    assert wd.check().code == EXIT_OK  # remembers pid 100
    clock.advance(300)
    mgr.pid = 101
    mgr.unit_times = {"main_exited_at": clock.now() - 200, "active_since": clock.now() - 188}
    rep = wd.check()
    assert rep.code == EXIT_WARNING, rep.summary()
    [inc] = journal(s).read()
    assert "unexpected_exit" in inc["signatures"] and inc["outcome"] == "recovered"
    assert inc["outage_s"] == 12 and inc["verification_s"] == 188, inc["times_from"]
    assert "outage 12.0 s" in rep.summary()


def test_cycle_journals_each_step_before_and_after(rig):
    wd, srv, mgr, clock, s = rig
    mgr.on_restart = lambda: setattr(srv, "status_code", 200)
    wd.check()
    recs = journal(s).records()
    assert len({r["id"] for r in recs}) == 1
    assert recs[0]["state"] == "opened" and recs[0]["steps"] == []
    running = [r["current_step"]["action"] for r in recs if r["current_step"]]
    assert running == ["capture_diagnostics", "kill_unit_processes", "restart", "wait_ready", "smoke_test"]
    assert recs[-1]["outcome"] == "recovered" and recs[-1]["current_step"] is None


def test_an_interrupted_incident_of_a_still_broken_service_is_closed_then_handled_afresh(rig):
    wd, srv, mgr, clock, s = rig

    def die():
        raise KeyboardInterrupt("killed")
    mgr.on_restart = die
    with pytest.raises(KeyboardInterrupt):
        wd.check()
    mgr.on_restart = lambda: setattr(srv, "status_code", 200)
    rep = wd.check()
    old, new = journal(s).read()
    assert old["outcome"] == "interrupted" and old["interruption"]["probe"]["verdict"] == "unhealthy"
    assert new["follows"] == old["id"] and new["outcome"] == "recovered"
    assert new["fault_at"] == old["fault_at"]  # one outage, told across two incidents
    assert "interrupted" in rep.summary() and "recovered" in rep.summary()


def test_dry_run_reports_an_open_incident_without_closing_it(rig):
    wd, srv, mgr, clock, s = rig
    mgr.on_restart = lambda: (_ for _ in ()).throw(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        wd.check()
    n = len(journal(s).records())
    wd.dry_run = True
    assert "left open by a watchdog cycle that died" in wd.check().summary()
    assert len(journal(s).records()) == n


# -- one restart per remediation; bounded diagnostics --------------------------------

def ctx_for(s, mgr, clock, inc):
    inst = configured(s, mgr)[0]
    return Context(s, inst, signal_recording_host(clock), mgr, inc)


def test_restart_is_skipped_when_the_manager_replaced_the_killed_process(tmp_path):
    s = settings_for(tmp_path)
    clock, mgr = FakeClock(), FakeManager(pid=200)
    inc = Incident("i", "glmtts", "http://x", 0.0)
    inc.steps.append({"action": "kill_unit_processes", "status": "ok", "data": {"pids": [100, 101], "main_pid": 100}})
    r = Restart()(ctx_for(s, mgr, clock, inc))
    assert r.status == "skipped" and "100/101 -> 200" in r.detail and mgr.calls == []


def test_restart_waits_briefly_for_the_managers_respawn(tmp_path):
    s = settings_for(tmp_path)
    clock, mgr = FakeClock(), FakeManager(state=STARTING, pid=None)
    inc = Incident("i", "glmtts", "http://x", 0.0)
    inc.steps.append({"action": "kill_unit_processes", "status": "ok", "data": {"pids": [100], "main_pid": 100}})
    t0 = clock.now()
    orig = clock.sleep

    def sleep(sec):
        orig(sec)
        if clock.now() - t0 >= 1.0:
            mgr.state, mgr.pid = RUNNING, 300
    clock.sleep = sleep
    r = Restart()(ctx_for(s, mgr, clock, inc))
    assert r.status == "skipped" and mgr.calls == [] and 1.0 <= clock.now() - t0 < 2.0


def test_restart_runs_when_nothing_replaced_the_process(tmp_path):
    s = settings_for(tmp_path)
    clock, mgr = FakeClock(), FakeManager(pid=100)
    inc = Incident("i", "glmtts", "http://x", 0.0)
    inc.steps.append({"action": "kill_unit_processes", "status": "ok", "data": {"pids": [100], "main_pid": 100}})
    assert Restart()(ctx_for(s, mgr, clock, inc)).status == "ok" and mgr.calls == [("restart", "glmtts")]
    mgr.calls.clear()
    assert Restart()(ctx_for(s, mgr, clock, Incident("j", "glmtts", "http://x", 0.0))).status == "ok"
    assert mgr.calls == [("restart", "glmtts")]  # no kill step: a plain restart


def test_diagnostics_of_a_hung_service_use_a_short_probe(tmp_path):
    import socket
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(1)  # accepts the connection, never answers: a SIGSTOPped service
    try:
        s = settings_for(tmp_path, url="http://127.0.0.1:%d" % hung.getsockname()[1], watchdog__probe_timeout_s=10.0)
        mgr = FakeManager(pid=None)
        inst = configured(s, mgr)[0]
        inc = Incident("i", "glmtts", inst.url, 0.0)
        t0 = time.monotonic()
        r = CaptureDiagnostics()(Context(s, inst, Host(), mgr, inc))
        took = time.monotonic() - t0
    finally:
        hung.close()
    assert r.status == "ok" and inc.diagnostics["healthz"]["verdict"] == "unhealthy"
    assert took < DIAGNOSTICS_PROBE_S + 1.5, took


def test_systemd_times_come_from_the_monotonic_properties(tmp_path):
    clock = FakeClock(start=1000.0)

    out = ("ExecMainStartTimestampMonotonic=950000000\nExecMainExitTimestampMonotonic=0\n"
           "ActiveEnterTimestampMonotonic=960000000\nActiveExitTimestampMonotonic=940000000\nActiveState=active\n")
    # FakeClock: now == monotonic, so monotonic seconds read as epoch seconds
    t = SystemdManager(RecordingHost(clock=clock, answers={"systemctl show": (0, out, "")})).times("glmtts")
    assert t == {"main_exited_at": 940.0, "active_since": 960.0}


def test_incidents_verb_lists_each_incident_once_with_its_times(tmp_path, capsys, monkeypatch):
    from glmtts.watchdog import cli
    state = tmp_path / "state"
    cfg = tmp_path / "glmtts.toml"
    cfg.write_text('[paths]\nstate_dir = "%s"\n' % state)
    for k in [k for k in os.environ if k.startswith("GLMTTS_")]:
        monkeypatch.delenv(k)
    log = IncidentLog(str(state / "incidents.jsonl"))
    done = Incident("a", "glmtts", "http://x", 100.0, ["unhealthy"])
    lc = Lifecycle(log, clock=lambda: 130.0)
    lc.open(done)
    lc.advance(done, IncidentState.REMEDIATING, "runbook service-down")
    done.note_time("fault_at", 95.0, "probe")
    done.note_time("service_back_at", 110.0, "probe")
    done.verified_at = 112.0
    lc.advance(done, IncidentState.RECOVERED, "verified")
    lc.open(Incident("b", "glmtts", "http://x", 200.0, ["segfault"]))
    assert cli.main(["--config", str(cfg), "incidents"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert "recovered" in lines[0] and "outage 15.0s verify 2.0s" in lines[0]
    assert "open:opened" in lines[1]


def test_a_fault_the_service_answered_through_has_no_outage(rig):
    wd, srv, mgr, clock, s = rig
    srv.status_code = 200
    wd.check()  # first sight of the log
    with open(os.path.join(s.paths.log_dir, "error.log"), "a") as f:
        f.write("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n")
    clock.advance(30)
    wd.check()
    [inc] = journal(s).read()
    assert inc["outcome"] == "warning" and inc["outage_s"] == 0.0 and "never down" in inc["times_from"]["service_back_at"]
