"""The service manager's own account of a unit (systemd 252's journal, supervisord's log):
planned stops/restarts/reloads told from deaths the manager did not ask for, the starts
it records, and a crash loop told from separate faults. Table-driven on the managers'
real words (the lines are copied from systemd 252 and supervisord 4 logs)."""

import pytest

from glmtts.watchdog import checks, managers as M
from glmtts.watchdog import policy as P
from glmtts.watchdog.managers import SupervisorManager, SystemdManager, UnitStatus
from glmtts.watchdog.runbook import default_dir, load_all
from glmtts.watchdog.scanner import Evidence, classify_lines

RUNBOOKS = load_all(default_dir())
J = "2026-12-01T15:%s+0000 host systemd[1]: "
S = "2026-12-01 15:%s INFO "

SYSTEMD_RESTART = [  # systemctl restart glmtts: a stop job, then a start job; NRestarts unchanged
    J % "10:00.000001" + "Stopping glmtts.service - GLM-TTS speech synthesis...",
    J % "10:01.000001" + "glmtts.service: Main process exited, code=killed, status=15/TERM",
    J % "10:01.000002" + "glmtts.service: Deactivated successfully.",
    J % "10:01.000003" + "Stopped glmtts.service - GLM-TTS speech synthesis.",
    J % "10:01.000004" + "Starting glmtts.service - GLM-TTS speech synthesis...",
    J % "10:05.000001" + "Started glmtts.service - GLM-TTS speech synthesis.",
]
SYSTEMD_KILL = [  # kill -9: Restart=always restarts it and counts NRestarts
    J % "20:00.000001" + "glmtts.service: Main process exited, code=killed, status=9/KILL",
    J % "20:00.000002" + "glmtts.service: Failed with result 'signal'.",
    J % "20:01.000001" + "glmtts.service: Scheduled restart job, restart counter is at 1.",
    J % "20:01.000002" + "Stopped glmtts.service - GLM-TTS speech synthesis.",
    J % "20:01.000003" + "Starting glmtts.service - GLM-TTS speech synthesis...",
    J % "20:05.000001" + "Started glmtts.service - GLM-TTS speech synthesis.",
]
SUPERVISOR_RESTART = [S % "10:00,001 waiting for glmtts to stop", S % "10:01,002 stopped: glmtts (terminated by SIGTERM)",
                      S % "10:01,100 spawned: 'glmtts' with pid 4242",
                      S % "10:02,200 success: glmtts entered RUNNING state, process has stayed up for > than 1 seconds (startsecs)"]
SUPERVISOR_KILL = [S % "20:00,001 exited: glmtts (terminated by SIGKILL; not expected)",
                   S % "20:00,900 spawned: 'glmtts' with pid 4343",
                   S % "20:02,000 success: glmtts entered RUNNING state, process has stayed up for > than 1 seconds (startsecs)"]


def st(manager, state="running", pid=200, restarts=None):
    return UnitStatus("glmtts", manager, state, state, pid, restarts)


@pytest.mark.parametrize("mgr, lines, status, previous, planned, unexpected", [
    (SystemdManager, SYSTEMD_RESTART, st("systemd", restarts=0), {"last_pid": 100, "last_restarts": 0}, ["restart"], False),
    (SystemdManager, SYSTEMD_KILL, st("systemd", restarts=1), {"last_pid": 100, "last_restarts": 0}, [], True),
    # no journal at all: NRestarts unchanged with a new pid is still the manager's word for a start job
    (SystemdManager, [], st("systemd", restarts=0), {"last_pid": 100, "last_restarts": 0}, ["restart"], False),
    (SystemdManager, [J % "30:00.1" + "Reloading glmtts.service - GLM-TTS speech synthesis...",
                      J % "30:00.2" + "Reloaded glmtts.service - GLM-TTS speech synthesis."],
     st("systemd", pid=100, restarts=0), {"last_pid": 100, "last_restarts": 0}, ["reload"], False),
    (SupervisorManager, SUPERVISOR_RESTART, st("supervisor"), {"last_pid": 100}, ["restart"], False),
    (SupervisorManager, SUPERVISOR_KILL, st("supervisor"), {"last_pid": 100}, [], True),
    # supervisord's log unreadable: a new pid is not explained, so it stays an incident
    (SupervisorManager, [], st("supervisor"), {"last_pid": 100}, [], True),
    (SupervisorManager, SUPERVISOR_RESTART[:2], st("supervisor", "stopped", pid=None), {"last_pid": 100}, ["stop"], False),
])
def test_planned_or_not_from_the_managers_own_words(mgr, lines, status, previous, planned, unexpected):
    events = mgr(None).account(lines, "glmtts")
    evidence = checks.drop_planned_exits(classify_lines(lines, "journal"), events) + checks.unit_evidence(status, previous, events)
    assert [p["what"] for p in checks.planned(status, previous, events)] == planned
    assert any(e.signature == "unexpected_exit" for e in evidence) == unexpected, evidence


def test_other_units_lines_are_not_this_units_account():
    lines = [S % "20:00,001 exited: glmtts-watchdog (terminated by SIGKILL; not expected)",
             J % "20:00.1" + "glmtts@1.service: Main process exited, code=killed, status=9/KILL"]
    assert SupervisorManager(None).account(lines, "glmtts") == []
    assert [e.unit for e in SystemdManager(None).account(lines, "glmtts@1")] == ["glmtts@1"]


def test_a_planned_restart_still_loading_is_in_progress():
    events = SystemdManager(None).account(SYSTEMD_RESTART[:5], "glmtts")
    status = st("systemd", "starting", restarts=0)
    planned = checks.planned(status, {"last_pid": 100, "last_restarts": 0}, events)
    assert checks.planned_in_progress(status, events, planned)
    events = SystemdManager(None).account(SYSTEMD_RESTART, "glmtts")
    assert not checks.planned_in_progress(st("systemd", restarts=0), events, planned)


# -- a crash loop or separate faults -----------------------------------------------------

def crash(minute, how, started=True, ready=True):
    out = []
    if started:
        out.append(J % ("%02d:00.1" % minute) + "Starting glmtts.service - GLM-TTS speech synthesis...")
    if ready:
        out.append(J % ("%02d:05.1" % minute) + "Started glmtts.service - GLM-TTS speech synthesis.")
    out += [J % ("%02d:30.1" % minute) + "glmtts.service: Main process exited, %s" % how,
            J % ("%02d:31.1" % minute) + "glmtts.service: Scheduled restart job, restart counter is at %d." % minute]
    return out


LIMIT = [J % "59:00.1" + "glmtts.service: Start request repeated too quickly.",
         J % "59:00.2" + "glmtts.service: Failed with result 'exit-code'."]
FIVE_FAULTS = (crash(1, "code=dumped, status=11/SEGV") + crash(2, "code=exited, status=75/TEMPFAIL")
               + crash(3, "code=killed, status=9/KILL") + crash(4, "code=dumped, status=6/ABRT") + crash(5, "code=killed, status=9/KILL"))
BROKEN = sum((crash(m, "code=exited, status=3/NOTIMPLEMENTED", ready=False) for m in range(1, 4)), [])
SAME = crash(1, "code=dumped, status=11/SEGV") + crash(2, "code=dumped, status=11/SEGV")


@pytest.mark.parametrize("lines, verdict", [(FIVE_FAULTS, "burst"), (BROKEN, "loop"), (SAME, "loop"), (crash(1, "code=killed, status=9/KILL"), None)])
def test_loop_or_burst(lines, verdict):
    runs = checks.update_runs([], SystemdManager(None).account(lines, "glmtts"), [], now=2e9)
    kind, why, tail = checks.loop_or_burst(runs)
    assert kind == verdict, why
    evidence = checks.judge_start_limit(classify_lines(lines + LIMIT, "journal"), runs)
    sigs = {e.signature for e in evidence}
    assert ("fault_burst" in sigs) == (verdict == "burst") and ("crash_loop" in sigs) == (verdict != "burst")
    if verdict == "burst":
        history = [e.line for e in evidence if e.path == "history"][0]
        assert "5 separate faults" in history and "11/SEGV" in history and "75/TEMPFAIL" in history


def test_runs_carry_over_cycles_and_collect_their_log_signatures():
    sd = SystemdManager(None)
    lines = crash(1, "code=killed, status=9/KILL")
    runs = checks.update_runs([], sd.account(lines[:2], "glmtts"), [], now=2e9)   # cycle 1: started, ready
    assert runs[-1]["ready_at"] and not runs[-1]["end"]
    oom = Evidence("cuda_oom", "error.log", "torch.OutOfMemoryError", M.SystemdManager(None).account(lines, "glmtts")[-1].at - 1)
    runs = checks.update_runs(runs, sd.account(lines[2:], "glmtts"), [oom], now=2e9)  # cycle 2: it died
    assert len(runs) == 1 and runs[0]["end"] == "code=killed, status=9/KILL" and runs[0]["signatures"] == ["cuda_oom"]


def test_a_planned_restart_ends_the_burst_it_follows():
    lines = crash(1, "code=dumped, status=11/SEGV") + SYSTEMD_RESTART + crash(11, "code=killed, status=9/KILL", started=False, ready=False)
    runs = checks.update_runs([], SystemdManager(None).account(lines, "glmtts"), [], now=2e9)
    kind, why, tail = checks.loop_or_burst(runs)
    assert kind is None and len(tail) == 1


# -- policy ---------------------------------------------------------------------------------

def test_fault_burst_heals_with_a_growing_delay_and_no_rate_limit():
    pol, t = P.Policy(RUNBOOKS, 2, 3600, {}, backoff_s=60), 10_000.0
    d = pol.decide(["fault_burst"], "unhealthy", "failed", now=t, unit="u")
    assert (d.kind, d.runbook.id) == (P.REMEDIATE, "fault-burst")
    waits = []
    for i in range(4):
        pol.begin("u", "fault-burst", t)
        pol.verified("u", "fault-burst")  # a verified recovery does not reset a burst's delay
        d = pol.decide(["fault_burst"], "unhealthy", "failed", now=t + 1, unit="u")
        assert d.kind == P.BACKOFF, d
        wait = pol.backoff_delay(i + 1)
        assert pol.decide(["fault_burst"], "unhealthy", "failed", now=t + wait, unit="u").kind == P.REMEDIATE
        waits.append(wait)
        t += wait
    assert waits == [60, 120, 240, 480]  # and max_remediations=2 never escalated it
    assert pol.decide(["crash_loop"], "unhealthy", "failed", now=t, unit="u").runbook.id == "crash-loop"


def test_planned_restart_in_progress_and_a_stopped_unit_are_not_acted_on():
    pol = P.Policy(RUNBOOKS, 3, 3600, {})
    assert pol.decide(["unhealthy"], "unhealthy", "starting", now=0, unit="u", planned="restart").kind == P.PLANNED
    assert pol.decide(["unhealthy"], "unhealthy", "stopped", now=0, unit="u").kind == P.STOPPED
    # a death the operator did not ask for is acted on even during a planned restart
    assert pol.decide(["segfault", "unhealthy"], "unhealthy", "starting", now=0, unit="u", planned="restart").kind == P.REMEDIATE


# -- whole cycles -----------------------------------------------------------------------------

def cycle_rig(tmp_path, srv, lines):
    from tests.support.watchdog_fakes import RecordingHost, FakeClock, FakeManager, settings_for
    from glmtts.watchdog.cycle import Watchdog
    mgr = FakeManager(pid=100)
    mgr.account_as = "supervisor"
    wd = Watchdog(settings_for(tmp_path, url=srv.url), host=RecordingHost(clock=FakeClock()), manager=mgr, runbooks=RUNBOOKS)
    assert wd.check().code == 0
    mgr.pid, mgr.account_lines = 200, lines
    return wd, mgr


def journal(wd):
    from glmtts.watchdog.incidents import IncidentLog, incidents_path
    return IncidentLog(incidents_path(wd.settings)).read()


def test_cycle_records_a_planned_restart_without_an_incident(tmp_path):
    from tests.support.watchdog_fakes import HealthServer
    with HealthServer(200) as srv:
        wd, mgr = cycle_rig(tmp_path, srv, SUPERVISOR_RESTART)
        rep = wd.check()
        assert rep.code == 0 and "planned restart" in rep.summary() and "not an incident" in rep.summary(), rep.summary()
        [rec] = journal(wd)
        assert rec["kind"] == "planned" and rec["outcome"] == "planned" and rec["signatures"] == []
        assert "stopped: glmtts (terminated by SIGTERM)" in rec["reason"]
        assert mgr.calls == []


def test_cycle_treats_a_kill_as_an_incident(tmp_path):
    from tests.support.watchdog_fakes import HealthServer
    with HealthServer(200) as srv:
        wd, mgr = cycle_rig(tmp_path, srv, SUPERVISOR_KILL)
        rep = wd.check()
        assert rep.code == 1 and "unexpected_exit" in rep.summary(), rep.summary()
        [inc] = journal(wd)
        assert inc.get("kind") is None and inc["outcome"] == "recovered" and "unexpected_exit" in inc["signatures"]


def test_cycle_waits_for_a_planned_restart_that_is_still_starting(tmp_path):
    from tests.support.watchdog_fakes import HealthServer
    with HealthServer(200) as srv:
        wd, mgr = cycle_rig(tmp_path, srv, SUPERVISOR_RESTART[:3])
        srv.status_code = 503
        mgr.state = "starting"
        rep = wd.check()
        assert rep.code == 0 and "planned restart is in progress" in rep.summary(), rep.summary()
        assert mgr.calls == [] and [r["kind"] for r in journal(wd)] == ["planned"]


def test_a_clean_planned_stop_without_an_exit_line_ends_its_run():
    lines = [l for l in SYSTEMD_RESTART if "Main process exited" not in l]  # exit 0 is logged at debug level only
    runs = checks.update_runs([], SystemdManager(None).account(crash(1, "code=killed, status=9/KILL")[:2] + lines[:1] + lines[3:], "glmtts"), [], now=2e9)
    assert runs[0]["end"] == "stopped on request" and runs[0]["asked"] and runs[0]["ended_at"]


def test_cycle_heals_a_fault_burst_then_backs_off_before_the_next(tmp_path):
    from tests.support.watchdog_fakes import AlertReceiver, RecordingHost, FakeClock, FakeManager, HealthServer, settings_for
    from glmtts.watchdog.cycle import Watchdog
    with HealthServer(200) as srv, AlertReceiver() as rx:
        clock = FakeClock(2e9)
        mgr = FakeManager(pid=100)
        wd = Watchdog(settings_for(tmp_path, url=srv.url, watchdog__ready_timeout_s=3.0,
                                   alerts__urls=["json://127.0.0.1:%d/" % rx.port]),
                      host=RecordingHost(clock=clock), manager=mgr, runbooks=RUNBOOKS)
        wd.check()

        def heal():
            srv.status_code, mgr.state, mgr.pid = 200, "running", 300 + len(mgr.calls)
        mgr.on_restart = heal

        def burst(lines):
            mgr.account_lines, mgr.state, mgr.pid, srv.status_code = lines, "crash_loop", None, 503
            rep = wd.check()
            mgr.account_lines = []
            return rep
        def pages():
            return [m.get("title", "") for m in rx.received if "[CRITICAL]" in m.get("title", "")]
        rep = burst(FIVE_FAULTS)
        assert "fault_burst" in rep.summary() and "recovered" in rep.summary(), rep.summary()
        assert [c[0] for c in mgr.calls] == ["start"]
        first_pages = pages()
        assert first_pages and all("fault_burst" in t for t in first_pages), rx.received
        rep = burst(crash(7, "code=dumped, status=11/SEGV") + crash(8, "code=killed, status=9/KILL"))
        assert rep.code == 2 and "backing off" in rep.summary() and len(mgr.calls) == 1, rep.summary()
        clock.advance(wd.policy(wd.load_state()).backoff_delay(1))
        sent = len(rx.received)
        rep = wd.check()
        assert "fault_burst" in rep.summary() and "recovered" in rep.summary() and len(mgr.calls) == 2, rep.summary()
        # the same burst healed again: told (as a warning, with why), but not paged twice
        later = rx.received[sent:]
        assert later and all("[WARNING]" in m["title"] and "fault_burst" in m["title"] for m in later), later
        assert any("not paged again: recovery 2 of a fault burst paged at" in m.get("message", "") for m in later), later
        assert pages() == first_pages
        [inc] = [r for r in journal(wd) if r.get("signatures") and r["detected_at"] == clock.now()]
        assert inc["page"] is False and inc["outcome"] == "recovered"
