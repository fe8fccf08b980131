"""`make run` — the README's first command — on this machine: the service and its
watchdog under a real supervisord, on the embedded engine, and a Mandarin sample that
is audible speech. The tools find that instance with no exports (./run/glmtts.toml of
the directory they run from); `make status` / `make stop`; a port held by someone else is
a one-line failure that supervisord does not retry; the watchdog follows the port."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import soundfile as sf

from glmtts import audio, prosody
from tests.support.batch import PROMPT_TEXT, reference_wav

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLMTTS_")}
    env.update(extra)
    return env


def start_make_run(tmp_path, run_dir, port, name="make-run.out"):
    out = open(tmp_path / name, "w+")
    proc = subprocess.Popen(["make", "-s", "run"], cwd=ROOT, env=clean_env(GLMTTS_RUN_DIR=str(run_dir),
                            GLMTTS_SERVER_PORT=str(port)), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, out


def printed(out):
    out.seek(0)
    return out.read()


def wait_ready(proc, out, timeout=180):
    deadline = time.monotonic() + timeout
    while "glmtts: ready at" not in printed(out) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert "glmtts: ready at" in printed(out), "not ready after %d s; make run printed:\n%s" % (timeout, printed(out))


def make(verb, run_dir, timeout=150):
    return subprocess.run(["make", "-s", verb], cwd=ROOT, env=clean_env(GLMTTS_RUN_DIR=str(run_dir)),
                          capture_output=True, text=True, timeout=timeout)


def tool(argv, cwd, timeout=60):
    """A tool from the checkout's venv with no GLMTTS_* in its environment, run from cwd
    (which holds run/, as a checkout does after `make run`)."""
    return subprocess.run([str(ROOT / ".venv/bin" / argv[0])] + argv[1:], cwd=cwd, env=clean_env(),
                          capture_output=True, text=True, timeout=timeout)


def port_free(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def stop_all(run_dir, proc, out):
    pidfile = run_dir / "supervisord.pid"
    if pidfile.exists():
        try:
            os.kill(int(pidfile.read_text()), signal.SIGTERM)  # supervisord stops both programs
        except (ProcessLookupError, ValueError):
            pass
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # our own process group only
        proc.wait()
    out.close()


def test_make_run_serves_supervised_with_watchdog_and_writes_audible_mandarin(tmp_path):
    run_dir = tmp_path / "run"
    port = free_port()
    proc, out = start_make_run(tmp_path, run_dir, port)
    sample = run_dir / "hello.wav"
    try:
        wait_ready(proc, out)
        printed_text = printed(out)
        assert sample.exists(), printed_text
        assert "http://127.0.0.1:%d/" % port in printed_text  # the URL is printed

        health = requests.get("http://127.0.0.1:%d/healthz" % port, timeout=5)
        assert health.status_code == 200 and health.json()["engine"]["name"] == "espeak"
        assert "(pid %d," % health.json()["pid"] in printed_text  # ready was said by OUR process

        # supervisord calls a program RUNNING once it has stayed up `startsecs`
        for _ in range(30):
            status = subprocess.run([str(ROOT / ".venv/bin/supervisorctl"), "-s", "unix://%s/supervisor.sock" % run_dir,
                                     "status"], capture_output=True, text=True, timeout=30).stdout
            if status.count("RUNNING") == 2:
                break
            time.sleep(0.5)
        assert "glmtts " in status and "glmtts-watchdog" in status
        assert status.count("RUNNING") == 2, status

        data, rate = sf.read(str(sample), dtype="float32")
        assert rate == 24000
        duration = len(data) / rate
        assert 1.0 < duration < 8.0  # 13 Mandarin syllables
        assert audio.loudness_dbfs(data) > -35
        f0, _ = prosody.track_f0(data, rate)
        assert 70 < prosody.pitch_median(f0) < 300  # a voiced pitch in the speech range
        assert (run_dir / "log" / "access.log").read_text().count("POST /v1/audio/speech 200") >= 1
    finally:
        stop_all(run_dir, proc, out)


def test_tools_find_the_local_instance_status_stop_and_the_watchdog_follows_the_port(tmp_path):
    run_dir = tmp_path / "run"
    port = free_port()
    proc, out = start_make_run(tmp_path, run_dir, port)
    url = "http://127.0.0.1:%d" % port
    try:
        wait_ready(proc, out)
        pid = requests.get(url + "/healthz", timeout=5).json()["pid"]
        (run_dir / "prompts" / "voice.wav").write_bytes(reference_wav())
        task = {"prompt_audio": "voice.wav", "prompt_text": PROMPT_TEXT, "input_text": "你好。", "output_name": "one"}
        r = requests.post(url + "/v1/batches", data=(json.dumps(task, ensure_ascii=False) + "\n").encode(),
                          headers={"Content-Type": "application/x-ndjson"}, timeout=30)
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]

        # (a) no GLMTTS_* exports: the tools read ./run/glmtts.toml and its supervisord.conf
        listed = tool(["glmtts", "batch", "list"], tmp_path)
        assert listed.returncode == 0 and job_id in listed.stdout, listed.stdout + listed.stderr
        for _ in range(30):
            ctl = tool(["supervisorctl", "-c", "run/supervisord.conf", "status"], tmp_path)
            if ctl.stdout.count("RUNNING") == 2:
                break
            time.sleep(0.5)
        assert ctl.returncode == 0 and ctl.stdout.count("RUNNING") == 2, ctl.stdout + ctl.stderr
        assert "pid %d," % pid in ctl.stdout
        diag = tool(["glmtts-watchdog", "diagnose"], tmp_path, timeout=120)
        assert "service manager: supervisor" in diag.stdout, diag.stdout + diag.stderr
        assert "== glmtts (%s)" % url in diag.stdout and "pid %d" % pid in diag.stdout, diag.stdout

        # (b) make status / make stop
        st = make("status", run_dir)
        assert st.returncode == 0, st.stdout + st.stderr
        assert "RUNNING" in st.stdout and "healthz: ok at %s" % url in st.stdout and "pid %d" % pid in st.stdout
        t0 = time.monotonic()
        stopped = make("stop", run_dir)
        assert stopped.returncode == 0 and "glmtts: stopped" in stopped.stdout, stopped.stdout + stopped.stderr
        print("make stop: %.1f s" % (time.monotonic() - t0))
        proc.wait(timeout=30)  # make run ends with its supervisord
        assert proc.returncode == 0, printed(out)
        assert not os.path.exists("/proc/%d" % pid) and port_free(port)
        assert make("stop", run_dir).returncode == 0  # idempotent
        down = make("status", run_dir)
        assert down.returncode != 0 and "glmtts: not running" in down.stdout, down.stdout
        assert subprocess.run(["bash", "ops/run-local.sh", "status"], cwd=ROOT, env=clean_env(GLMTTS_RUN_DIR=str(run_dir)),
                              capture_output=True, timeout=60).returncode == 3  # LSB: not running
        out.close()

        # (d) a new port on the same run dir: written to run/glmtts.toml; the watchdog follows
        port2 = free_port()
        proc, out = start_make_run(tmp_path, run_dir, port2, name="make-run-2.out")
        wait_ready(proc, out)
        shown = tool(["glmtts", "config", "show"], tmp_path)
        assert 'url = "http://127.0.0.1:%d"' % port2 in shown.stdout and "port = %d " % port2 in shown.stdout, shown.stdout
        diag = tool(["glmtts-watchdog", "diagnose"], tmp_path, timeout=120)
        assert "== glmtts (http://127.0.0.1:%d)" % port2 in diag.stdout, diag.stdout
        env = open("/proc/%s/environ" % supervised_pid(tmp_path, "glmtts-watchdog"), "rb").read().split(b"\0")
        wd = subprocess.run([sys.executable, "-c", "from glmtts import config; print(config.load().watchdog.url)"],
                            env=dict(e.decode().split("=", 1) for e in env if b"=" in e), cwd=str(ROOT),
                            capture_output=True, text=True, timeout=60)
        assert wd.stdout.strip() == "http://127.0.0.1:%d" % port2, wd.stdout + wd.stderr
    finally:
        stop_all(run_dir, proc, out)


def supervised_pid(cwd, program):
    ctl = tool(["supervisorctl", "-c", "run/supervisord.conf", "pid", program], cwd)
    return int(ctl.stdout.strip())


def test_a_taken_port_is_one_line_naming_its_owner_and_is_not_retried(tmp_path):
    run_dir = tmp_path / "run"
    port = free_port()
    holder = subprocess.Popen([sys.executable, "-c", "import socket, time\n"
                               "s = socket.socket(); s.bind(('127.0.0.1', %d)); s.listen(); print('up', flush=True)\n"
                               "while True: c, _ = s.accept(); c.close()" % port], stdout=subprocess.PIPE, text=True)
    proc = out = None
    try:
        assert holder.stdout.readline().strip() == "up"
        t0 = time.monotonic()
        proc, out = start_make_run(tmp_path, run_dir, port)
        proc.wait(timeout=90)
        took = time.monotonic() - t0
        print("make run failed after %.1f s" % took)
        text = printed(out)
        assert proc.returncode != 0, text
        assert "glmtts: ready" not in text, text
        [line] = [x for x in text.splitlines() if "make run failed" in x]
        assert "port %d on 127.0.0.1 is already in use by pid %d" % (port, holder.pid) in line, text
        log = (run_dir / "log" / "supervisord.log").read_text()
        assert log.count("spawned: 'glmtts'") == 1, log
        assert "exited: glmtts (exit status 4; expected)" in log, log
        assert "already in use" in (run_dir / "log" / "error.log").read_text()
    finally:
        holder.kill()  # by the pid we started
        holder.wait()
        if proc is not None:
            stop_all(run_dir, proc, out)
