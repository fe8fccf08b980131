"""The OS seam (glmtts/host): every method says whether it changes the machine, a dry run's
ReadOnlyHost refuses every change, the file writes are glmtts/fsutil.py's, the recording
fake records, and no production module asks whether it runs under a test."""

import ast
import errno
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from glmtts import fsutil
from glmtts.host import Completed, Host, HttpError, ReadOnlyHost
from glmtts.host.seam import KINDS, declared
from tests.support.host import FakeClock, RecordingHost
from tests.support.watchdog_fakes import HealthServer

REPO = Path(__file__).resolve().parents[2]
PRODUCTION = [p for top in ("glmtts", "service", "ops") for p in sorted((REPO / top).rglob("*.py"))]

# One call per change the host can make, with arguments that would change this machine
# if the call got through. A method added to Host without a row here fails below.
# The commands are harmless should one get through (a --root tree, a child process).
def change_calls(tree, child_pid):
    return {
        "run": (["systemctl", "--root", str(tree), "disable", "glmtts-test-none.service"],),
        "run_checked": (["systemctl", "--root", str(tree), "enable", "glmtts-test-none.service"],),
        "run_preflight": (["systemd-run", "--wait", "--quiet", "true"], 10),
        "systemctl": ("enable", "glmtts-test-none.service"),
        "kill": (child_pid, signal.SIGKILL),
        "atomic_write": ("/etc/glmtts/glmtts.toml", "x = 1\n"),
        "append_jsonl": ("/var/lib/glmtts/incidents.jsonl", {"id": "x"}),
        "makedir": ("/var/lib/glmtts", 0o750, 0, 0),
        "chown": ("/etc", 0o700, 0, 0),
        "remove": ("/etc",),
        "unlink_quietly": ("/etc/passwd",),
        "add_group": ("glmtts-test",),
        "add_user": ("glmtts-test", "glmtts-test", "/var/lib/glmtts"),
        "del_user": ("glmtts-test",),
        "del_group": ("glmtts-test",),
        "request": ("POST", "http://127.0.0.1:9/v1/audio/speech"),
    }


def test_every_public_method_of_the_host_declares_whether_it_changes_the_machine():
    effects = declared(Host)
    assert [n for n, kind in effects.items() if kind == "undeclared"] == []
    assert set(k for k in effects.values() if k) <= set(KINDS)
    changes, decided = {n for n, kind in effects.items() if kind}, set(change_calls("/nonexistent", 0))
    assert changes == decided, "a change without a dry-run decision here: %s" % (changes ^ decided)


def test_a_read_only_host_refuses_every_change_and_none_reaches_the_machine(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    inner = RecordingHost(tmp_path, real=KINDS, answers={"systemctl show": (0, "ActiveState=active\n", "")})
    ro = ReadOnlyHost(inner)  # everything would be real, if it got through
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        calls = change_calls(tmp_path, child.pid)
        for name, args in calls.items():
            before = len(ro.refused)
            kw = {"timeout": 1} if name == "request" else {}
            try:
                getattr(ro, name)(*args, **kw)
            except HttpError as e:
                assert name == "request" and "dry run" in str(e)
            assert len(ro.refused) == before + 1, "ReadOnlyHost let %s through" % name
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()
    assert inner.calls == []
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["etc", "passwd"]
    # reads go through: a dry run still looks at the machine (and probes with a GET)
    assert ro.run(["systemctl", "show", "glmtts"]).out == "ActiveState=active\n"
    assert inner.calls == [("run", ["systemctl", "show", "glmtts"])]
    assert ro.exists("/etc/passwd") and ro.listdir("/etc") == ["passwd"]
    with HealthServer(200) as srv:
        assert ro.request("GET", srv.url + "/healthz", timeout=5).status == 200


def test_the_hosts_writes_are_fsutils_under_its_root(tmp_path, monkeypatch):
    seen = []
    real_write, real_append = fsutil.atomic_write, fsutil.append_jsonl
    monkeypatch.setattr(fsutil, "atomic_write", lambda path, data, **kw: seen.append(("atomic_write", path))
                        or real_write(path, data, **kw))
    monkeypatch.setattr(fsutil, "append_jsonl", lambda path, rec, **kw: seen.append(("append_jsonl", path))
                        or real_append(path, rec, **kw))
    host = Host(tmp_path)
    host.atomic_write("/etc/glmtts/glmtts.toml", "x = 1\n", mode=0o640)
    host.append_jsonl("/var/lib/glmtts/incidents.jsonl", {"id": "a"})
    assert seen == [("atomic_write", str(tmp_path / "etc/glmtts/glmtts.toml")),
                    ("append_jsonl", str(tmp_path / "var/lib/glmtts/incidents.jsonl"))]
    assert (tmp_path / "etc/glmtts/glmtts.toml").read_text() == "x = 1\n"
    assert host.owner("/etc/glmtts/glmtts.toml")[2] == 0o640 and host.listdir("/etc/glmtts") == ["glmtts.toml"]
    assert Host().path("relative/out") == Path("relative/out")  # root "/": a path is itself


def test_durable_state_is_written_by_fsutil_alone():
    """No module outside glmtts/fsutil.py and glmtts/host/ dumps JSON into a file; the
    renames left elsewhere are listed with why they are not a file write."""
    renames_allowed = {
        "glmtts/engines/wetext_cache.py": "a built cache directory committed whole",
        "glmtts/batch/store.py": "a new job directory committed whole",
        "glmtts/batch/lease.py": "the lease's fenced epoch file (its own protocol, over fsutil.write_file)",
        "glmtts/watchdog/state.py": "an unreadable state file moved aside, not written",
        "service/voices.py": "a saved voice's directory committed whole, or moved to the trash",
        "service/batch_ui.py": "scratch copies in the temp dir for the UI (a zip, a player copy), not state",
    }
    renames, dumps = set(), set()
    for path in PRODUCTION:
        rel = str(path.relative_to(REPO))
        if rel == "glmtts/fsutil.py" or rel.startswith("glmtts/host/"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), rel)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and isinstance(node.func.value, ast.Name):
                called = "%s.%s" % (node.func.value.id, node.func.attr)
                if called in ("os.replace", "os.rename"):
                    renames.add(rel)
                elif called == "json.dump":
                    dumps.add(rel)
    assert dumps == set()
    assert renames - set(renames_allowed) == set(), "write state with fsutil.atomic_write (or Host.atomic_write)"


def test_nothing_asks_whether_it_runs_under_a_test():
    """Tests replace the seam; production code has no test switch (config ignores
    GLMTTS_TEST_* variables as someone else's, without reading them)."""
    asks = []
    for path in PRODUCTION:
        rel = str(path.relative_to(REPO))
        for node in ast.walk(ast.parse(path.read_text(), rel)):
            text = None
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                text = " ".join([getattr(node, "module", None) or ""] + [a.name for a in node.names])
            elif isinstance(node, ast.Name):
                text = node.id
            if text and any(w in text for w in ("PYTEST_CURRENT_TEST", "pytest", "GLMTTS_TEST", "unittest")):
                asks.append("%s:%d %s" % (rel, node.lineno, text[:60]))
    assert asks == []


def test_production_builds_the_real_host(tmp_path):
    from glmtts.batch.client import BatchClient
    from glmtts.watchdog.cycle import Watchdog
    from tests.support.watchdog_fakes import FakeManager, settings_for
    s = settings_for(tmp_path)
    assert type(Watchdog(s, manager=FakeManager()).host) is Host
    assert type(Watchdog(s, manager=FakeManager(), dry_run=True).host) is ReadOnlyHost
    assert type(BatchClient(s).host) is Host


def test_the_recording_host_records_scripts_and_faults(tmp_path):
    clock = FakeClock(100.0)
    host = RecordingHost(tmp_path, clock=clock, answers={"systemctl": (0, "any", ""),
                                                         "systemctl show glmtts": (0, "x", "")},
                         responses={("POST", "/v1/audio/speech"): (503, b"busy")}, free=123, euid=1000)
    assert host.run(["systemctl", "show", "glmtts", "--property=MainPID"]).out == "x"  # the longest prefix wins
    assert host.run(["systemctl", "restart", "glmtts"]).out == "any"
    assert host.run(["nvidia-smi", "-r"]).rc == 127  # not scripted: never run
    assert host.request("POST", "http://127.0.0.1:7860/v1/audio/speech", timeout=1).status == 503
    host.fail("atomic_write", OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(OSError) as e:
        host.atomic_write("/out/a.wav", b"RIFF")
    assert fsutil.is_disk_full(e.value) and not (tmp_path / "out/a.wav").exists()
    host.atomic_write("/out/a.wav", b"RIFF", owner=(990, 990))
    assert (tmp_path / "out/a.wav").read_bytes() == b"RIFF" and host.owner("/out/a.wav")[:2] == (990, 990)
    host.systemctl("daemon-reload")
    assert (host.free_bytes("/"), host.euid(), host.gpus()) == (123, 1000, [])
    clock.sleep(5)
    assert host.clock.now() == 105.0
    assert host.calls == [
        ("run", ["systemctl", "show", "glmtts", "--property=MainPID"]), ("run", ["systemctl", "restart", "glmtts"]),
        ("run", ["nvidia-smi", "-r"]), ("request", "POST", "http://127.0.0.1:7860/v1/audio/speech"),
        ("atomic_write", "/out/a.wav"), ("atomic_write", "/out/a.wav"), ("systemctl", "daemon-reload")]


def test_a_recorded_signal_never_reaches_the_process():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        host = RecordingHost()
        host.kill(child.pid, signal.SIGKILL)
        assert host.calls == [("kill", child.pid, signal.SIGKILL)]
        assert child.poll() is None and host.alive(child.pid)  # the real process table, read
    finally:
        child.kill()
        child.wait()


def test_the_real_host_answers_commands_and_http_without_raising(tmp_path):
    host = Host()
    argv = [sys.executable, "-c", "print('hi')"]
    assert host.run(argv) == Completed(argv, 0, "hi\n", "")
    assert host.run(["glmtts-no-such-tool"]).rc == 127
    with HealthServer(200) as srv:
        r = host.request("GET", srv.url + "/healthz", timeout=5)
        assert r.status == 200 and r.json()["status"] == "ok"
        port = srv.port
    with pytest.raises(HttpError, match="(?i)refused"):
        host.request("GET", "http://127.0.0.1:%d/healthz" % port, timeout=2)
