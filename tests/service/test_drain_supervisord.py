"""`supervisorctl stop glmtts` under load, with the shipped supervisord conf as `make run`
renders it (ops/supervisord.conf, stopwaitsecs = config.stop_grace_s()): every request
queued before the stop gets its audio, nothing answers 5xx but 503 draining, the service
exits 0 and supervisord says so."""

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

from glmtts import localrun
from tests.plugins.drain_load import DrainLoad

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
DELAY_S = 2.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_config(run_dir, port):
    """make run's own generated config, on the slow test engine, one synthesis at a time."""
    text = localrun.GENERATED_TOML.format(port=port, run=run_dir)
    text = text.replace('name = "espeak"', 'name = "tests.plugins.faults:FaultEngine"')
    text = text.replace("drain_delay_s = 0.0", "drain_delay_s = %g" % DELAY_S)
    return text + "\n[limits]\nmax_concurrency = 1\nmax_queue = 32\nrate_limit_per_minute = 0\n"


def supervisorctl(run_dir, *args, timeout=60):
    return subprocess.run([str(ROOT / ".venv/bin/supervisorctl"), "-c", str(run_dir / "supervisord.conf")] + list(args),
                          capture_output=True, text=True, timeout=timeout)


def test_supervisorctl_stop_under_load_loses_nothing_and_exits_0(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    port = free_port()
    (run_dir / "glmtts.toml").write_text(run_config(run_dir, port))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLMTTS_")}
    env.update(GLMTTS_RUN_DIR=str(run_dir), GLMTTS_TEST_FAULT="slow:0.5")  # each synthesis sleeps 0.5 s first
    out = open(tmp_path / "make-run.out", "w+")
    proc = subprocess.Popen(["make", "-s", "run"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = "http://127.0.0.1:%d" % port
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            out.seek(0)
            if "glmtts: ready at" in out.read():
                break
            time.sleep(0.5)
        out.seek(0)
        assert "glmtts: ready at" in out.read(), open(tmp_path / "make-run.out").read()
        conf = (run_dir / "supervisord.conf").read_text()
        assert re.search(r"(?m)^stopwaitsecs=%d$" % int(DELAY_S + 60 + 10 + 0.999), conf), "the drain's budget"
        pid = requests.get(url + "/healthz", timeout=5).json()["pid"]

        load = DrainLoad(url, n=12)
        load.queue()
        t0 = time.monotonic()
        stop = subprocess.Popen([str(ROOT / ".venv/bin/supervisorctl"), "-c", str(run_dir / "supervisord.conf"),
                                 "stop", "glmtts"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        load.signal_sent()
        said = stop.communicate(timeout=120)[0]
        stopped_after = time.monotonic() - t0
        load.finish(60)
        assert "glmtts: stopped" in said, said
        status = supervisorctl(run_dir, "status", "glmtts").stdout
        assert "STOPPED" in status, status
    finally:
        pidfile = run_dir / "supervisord.pid"
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text()), signal.SIGTERM)  # the supervisord this test started
            except (ProcessLookupError, ValueError):
                pass
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # our own process group only
            proc.wait()
        out.close()

    report = load.report()
    assert load.failures() == [], report
    assert report["queued_ok"] == 12 and report["lost"] == 0 and report["bad_5xx"] == 0, report
    assert report["late_503_draining"] >= 1, report
    assert DELAY_S <= stopped_after < DELAY_S + 12 * 0.5 + 30, stopped_after
    sup_log = (run_dir / "log" / "supervisord.log").read_text()
    assert "stopped: glmtts (exit status 0)" in sup_log, sup_log[-2000:]
    err = (run_dir / "log" / "error.log").read_text()
    assert "Traceback" not in err and "drain: finishing -> done" in err, err[-3000:]
    assert "with SIGKILL" not in sup_log, sup_log[-2000:]  # never needed the kill after stopwaitsecs
    assert re.search(r"waiting for glmtts to stop", sup_log), sup_log[-2000:]
    assert "exited: glmtts" not in sup_log.split("spawned: 'glmtts' with pid %d" % pid)[-1], "a stop, not a crash"
