"""`make run` — the README's first command — on this machine: the service and its
watchdog under a real supervisord, on the embedded engine, and a Mandarin sample that
is audible speech."""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import soundfile as sf

from glmtts import audio, prosody

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_make_run_serves_supervised_with_watchdog_and_writes_audible_mandarin(tmp_path):
    run_dir = tmp_path / "run"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLMTTS_")}
    env.update(GLMTTS_RUN_DIR=str(run_dir), GLMTTS_SERVER_PORT=str(port))
    out = open(tmp_path / "make-run.out", "w+")
    proc = subprocess.Popen(["make", "-s", "run"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    sample = run_dir / "hello.wav"
    try:
        deadline = time.monotonic() + 180
        while not sample.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
        out.seek(0)
        printed = out.read()
        assert sample.exists(), "no sample after 180 s; make run printed:\n" + printed
        assert "http://127.0.0.1:%d/" % port in printed  # the URL is printed
        time.sleep(0.5)  # the sample is written by one write(); let it close

        health = requests.get("http://127.0.0.1:%d/healthz" % port, timeout=5)
        assert health.status_code == 200 and health.json()["engine"]["name"] == "espeak"

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
        pidfile = run_dir / "supervisord.pid"
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGTERM)  # supervisord stops both programs
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # our own process group only
            proc.wait()
        out.close()
