"""Actions against real processes: kill only the unit's own processes (TERM, then KILL),
never the watchdog itself; free_port reports a foreign owner and never touches it."""

import os
import subprocess
import sys
import time

import pytest

from glmtts.watchdog.actions import ACTIONS, Context
from glmtts.host import Host
from glmtts.watchdog.incidents import Incident
from glmtts.watchdog.instances import Instance
from tests.support.watchdog_fakes import FakeManager, settings_for

LISTENER = """
import signal, socket, sys, time
if sys.argv[2] == "ignore_term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen()
print("ready", flush=True)
time.sleep(120)
"""


@pytest.fixture
def listener():
    procs = []

    def start(ignore_term=False):
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        p = subprocess.Popen([sys.executable, "-c", LISTENER, str(port), "ignore_term" if ignore_term else "-"],
                             stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready"
        procs.append(p)
        return p, port

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()  # the child we started, by PID
            p.wait()


def ctx_for(tmp_path, port, unit_pid):
    s = settings_for(tmp_path, url="http://127.0.0.1:%d" % port)
    inst = Instance("glmtts", s.watchdog.url, {})
    return Context(s, inst, Host(), FakeManager(pid=unit_pid), Incident("i", "glmtts", inst.url, 0.0))


def test_free_port_reports_a_foreign_owner_and_leaves_it_alone(tmp_path, listener):
    p, port = listener()
    res = ACTIONS["free_port"]()(ctx_for(tmp_path, port, unit_pid=None))
    assert res.status == "failed"
    assert "not ours" in res.detail and "pid %d" % p.pid in res.detail
    time.sleep(0.2)
    assert p.poll() is None  # still running


def test_free_port_terminates_our_own_stale_process(tmp_path, listener):
    p, port = listener()
    res = ACTIONS["free_port"]()(ctx_for(tmp_path, port, unit_pid=p.pid))
    assert res.status == "ok"
    assert p.wait(10) is not None


def test_kill_unit_processes_escalates_term_to_kill(tmp_path, listener):
    p, port = listener(ignore_term=True)
    t0 = time.monotonic()
    res = ACTIONS["kill_unit_processes"]()(ctx_for(tmp_path, port, unit_pid=p.pid), grace_s=1.0)
    took = time.monotonic() - t0
    assert res.status == "ok" and res.data["pids"] == [p.pid]
    # "ok" means the action saw it die: dead now, not within some later wait, and of SIGKILL
    # after the grace SIGTERM was given (the child ignores SIGTERM)
    assert p.poll() == -9, p.poll()
    assert took >= 1.0, took


def test_kill_unit_processes_never_kills_the_watchdog_itself(tmp_path):
    res = ACTIONS["kill_unit_processes"]()(ctx_for(tmp_path, 9, unit_pid=os.getpid()), grace_s=0.5)
    assert res.status == "ok" and res.data["pids"] == []


def test_dry_run_kills_nothing(tmp_path, listener):
    p, port = listener()
    ctx = ctx_for(tmp_path, port, unit_pid=p.pid)
    ctx.dry_run = True
    assert ACTIONS["kill_unit_processes"]()(ctx).status == "dry_run"
    assert ACTIONS["free_port"]()(ctx).status == "dry_run"
    assert p.poll() is None


def test_prune_outputs_calls_the_batch_retention_and_checks_the_floor(tmp_path):
    ctx = ctx_for(tmp_path, 9, unit_pid=None)
    res = ACTIONS["prune_outputs"]()(ctx)
    assert res.status == "ok" and "pruned 0 finished job(s)" in res.detail
    ctx.settings = ctx.settings.replace(watchdog__disk_free_floor_mb=10**9)  # more than any disk has
    res = ACTIONS["prune_outputs"]()(ctx)
    assert res.status == "failed" and "still below watchdog.disk_free_floor_mb" in res.detail
