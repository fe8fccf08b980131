"""`--dry-run` is a read-only host plus unsaved state: a dry-run cycle observes and decides
like a real one, changes no byte under the state directory, sends no alert (not even the
spooled ones), runs no mutating command, and the real cycle after it still sees the fault
(the log line the dry run read, the failed probes it counted)."""

import hashlib
import os
import signal
import subprocess
import sys

import pytest

from glmtts.watchdog.alerts import Alerter
from glmtts.watchdog.cycle import EXIT_OK, Watchdog
from glmtts.host import ReadOnlyHost, mutates
from glmtts.watchdog.incidents import IncidentLog
from glmtts.watchdog.runbook import default_dir, load_all
from tests.support.service import REPO
from tests.support.watchdog_fakes import AlertReceiver, RecordingHost, FakeClock, FakeManager, HealthServer, settings_for

RUNBOOKS = load_all(default_dir())
SEGFAULT = "Fatal Python error: Segmentation fault\n"


def tree(root):
    """{relative path: sha256 of the bytes} for every file under root (names and contents)."""
    out = {}
    for d, _, files in os.walk(root):
        for n in files:
            p = os.path.join(d, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture
def rig(tmp_path):
    with HealthServer(status_code=200) as srv, AlertReceiver() as rx:
        clock = FakeClock()
        s = settings_for(tmp_path, url=srv.url, watchdog__ready_timeout_s=3.0,
                         alerts__urls=["json://127.0.0.1:%d/" % rx.port])
        (tmp_path / "log" / "error.log").write_text("starting\n")
        mgr = FakeManager(pid=100)

        def heal():
            srv.status_code, mgr.pid = 200, 101
        mgr.on_restart = heal
        real = Watchdog(s, host=RecordingHost(clock=clock), manager=mgr, runbooks=RUNBOOKS)
        assert real.check().code == EXIT_OK  # a real baseline: state, lock file, scanner offsets exist
        # an alert a down channel left in the spool: a dry run must not deliver it
        spool = os.path.join(s.paths.state_dir, "watchdog", "alert-spool")
        Alerter(["json://127.0.0.1:%d/" % rx.port], spool_dir=spool)._spool(
            {"key": "old:opened", "severity": "critical", "title": "[CRITICAL] spooled earlier", "body": "b",
             "first_at": clock.now(), "attempts": 1})
        yield s, srv, rx, mgr, clock, tmp_path


def test_a_dry_run_cycle_changes_no_byte_sends_nothing_and_the_real_cycle_still_sees_the_fault(rig):
    s, srv, rx, mgr, clock, tmp_path = rig
    with open(tmp_path / "log" / "error.log", "a") as f:
        f.write(SEGFAULT)  # the fault: a crash line, and the service not answering
    srv.status_code = 503
    before = tree(s.paths.state_dir)
    dry = Watchdog(s, host=RecordingHost(clock=clock), manager=mgr, runbooks=RUNBOOKS, dry_run=True)
    rep = dry.check()
    assert "segfault" in rep.summary() and "dry_run" in rep.summary(), rep.summary()
    assert "1 alert(s) spooled (a dry run sends none)" in rep.summary()
    assert tree(s.paths.state_dir) == before, "a dry run changed the state directory"
    assert rx.received == [] and mgr.calls == [] and dry.host.refused == []

    real = Watchdog(s, host=RecordingHost(clock=clock), manager=mgr, runbooks=RUNBOOKS)
    rep = real.check()
    assert "segfault" in rep.summary() and "recovered" in rep.summary(), rep.summary()
    assert ("restart", "glmtts") in mgr.calls
    [inc] = [i for i in IncidentLog(os.path.join(s.paths.state_dir, "incidents.jsonl")).read() if i.get("signatures")]
    assert "segfault" in inc["signatures"] and inc["outcome"] == "recovered"
    titles = [m["title"] for m in rx.received]
    assert "[CRITICAL] spooled earlier" in titles and any("segfault" in t for t in titles), titles


def test_a_dry_run_leaves_an_unreadable_state_file_where_it_is(rig):
    s, srv, rx, mgr, clock, tmp_path = rig
    path = os.path.join(s.paths.state_dir, "watchdog", "state.json")
    with open(path, "w") as f:
        f.write("{not json")
    before = tree(s.paths.state_dir)
    Watchdog(s, host=RecordingHost(clock=clock), manager=mgr, runbooks=RUNBOOKS, dry_run=True).check()
    assert tree(s.paths.state_dir) == before  # a real cycle moves it to state.json.corrupt; a dry run does not


def test_a_dry_run_resume_and_runbook_exec_write_nothing(rig, tmp_path):
    s, srv, rx, mgr, clock, _ = rig
    cfg = tmp_path / "wd.toml"
    cfg.write_text('[paths]\nstate_dir = "%s"\nlog_dir = "%s"\noutput_dir = "%s"\nprompt_root = "%s"\n'
                   '[watchdog]\nurl = "%s"\nmanager = "supervisor"\nsupervisor_conf = "%s"\ndisk_free_floor_mb = 0\n'
                   % (s.paths.state_dir, s.paths.log_dir, s.paths.output_dir, s.paths.prompt_root, srv.url,
                      tmp_path / "no-supervisord.conf"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLMTTS_")}
    env.update({"GLMTTS_CONFIG": str(cfg), "PYTHONPATH": REPO})
    before = tree(s.paths.state_dir)
    for argv in (["check", "--dry-run"], ["--dry-run", "check"], ["resume", "--dry-run"],
                 ["runbook", "exec", "service-down", "--yes", "--dry-run"]):
        r = subprocess.run([sys.executable, "-m", "glmtts.watchdog.cli"] + argv, env=env, capture_output=True,
                           text=True, timeout=120)
        assert "Traceback" not in r.stderr, (argv, r.stderr)
        assert tree(s.paths.state_dir) == before, "glmtts-watchdog %s changed the state directory" % " ".join(argv)
    assert rx.received == []


@pytest.mark.parametrize("argv, changes", [
    (["systemctl", "restart", "glmtts"], True), (["systemctl", "reset-failed", "glmtts.service"], True),
    (["systemctl", "kill", "--signal=KILL", "glmtts"], True), (["/usr/bin/systemctl", "start", "glmtts@1"], True),
    (["systemctl", "show", "glmtts", "--property=MainPID"], False), (["systemctl", "is-active", "glmtts"], False),
    (["journalctl", "-u", "glmtts", "--since", "-5min"], False),
    (["supervisorctl", "-c", "/x.conf", "restart", "glmtts"], True), (["supervisorctl", "-c", "/x.conf", "status"], False),
    ([sys.executable, "-m", "supervisor.supervisorctl", "-c", "/x", "stop", "glmtts"], True),
    ([sys.executable, "-m", "supervisor.supervisorctl", "-c", "/x", "pid", "glmtts"], False),
    (["nvidia-smi", "-r", "-i", "0"], True), (["nvidia-smi", "--query-gpu=memory.used", "--format=csv"], False),
    (["ss", "-ltnp"], False), ([], False),
])
def test_which_commands_a_read_only_host_refuses(argv, changes):
    assert mutates(argv) is changes


def test_a_read_only_host_refuses_signals_and_mutating_commands_and_reads_through():
    clock = FakeClock()
    inner = RecordingHost(clock=clock, answers={"systemctl": (0, "ok", "")})
    ro = ReadOnlyHost(inner)
    assert ro.run(["systemctl", "restart", "glmtts"]).rc == 1 and inner.calls == []
    ro.kill(4242, signal.SIGKILL)
    assert inner.calls == [] and ro.refused == [["systemctl", "restart", "glmtts"], ["kill", "-9", "4242"]]
    assert ro.run(["systemctl", "show", "glmtts"]).out == "ok" and inner.calls == [("run", ["systemctl", "show", "glmtts"])]
    assert ro.clock is clock  # everything else is the real host's
