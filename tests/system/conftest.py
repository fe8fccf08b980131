"""System-test fixtures: a private systemd (tests/system/privsys.py), glmtts installed into
it by `glmtts-system install`, a local alert receiver, and the recovery-time results file.

A machine that cannot boot a private systemd skips these tests, except when
GLMTTS_TEST_REQUIRE_SYSTEMD=1 (CI: .ci/run), where that is a failure.
"""

import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from privsys import BootError, PrivateSystemd  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
# The console scripts beside the interpreter running the tests: this clone's venv, wherever it is.
TOOLS = Path(sys.executable).parent
REQUIRE = os.environ.get("GLMTTS_TEST_REQUIRE_SYSTEMD") == "1"
RESULTS = ROOT / "artifacts" / "recovery.json"


def unavailable(reason):
    if REQUIRE:
        pytest.fail("GLMTTS_TEST_REQUIRE_SYSTEMD=1 but: %s" % reason, pytrace=False)
    pytest.skip(reason)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def record_recovery(scenario, seconds, detail="", verification_s=None):
    """Merge one scenario's time to recover into artifacts/recovery.json (atomic write).
    For a watchdog incident, ``seconds`` is its outage (fault -> healthy again) and
    ``verification_s`` the time from healthy again to the watchdog's smoke test."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    try:
        data = json.loads(RESULTS.read_text())
    except (FileNotFoundError, ValueError):
        data = {}
    data[scenario] = {"seconds": None if seconds is None else round(seconds, 2), "detail": detail,
                      "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if verification_s is not None:
        data[scenario]["verification_s"] = round(verification_s, 2)
    fd, tmp = tempfile.mkstemp(dir=RESULTS.parent, prefix=".recovery.")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, RESULTS)


class AlertReceiver:
    """What apprise's json://127.0.0.1:PORT posts to: every JSON body, in order."""

    def __init__(self):
        self.bodies = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    received.append(json.loads(raw))
                except ValueError:
                    received.append({"raw": raw.decode("utf-8", "replace")})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = "json://127.0.0.1:%d/alerts" % self.port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def texts(self):
        return [json.dumps(b, ensure_ascii=False) for b in self.bodies]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def private_systemd():
    if not (shutil.which("unshare") and shutil.which("nsenter") and os.path.exists("/lib/systemd/systemd")):
        unavailable("systemd, unshare or nsenter is not installed")
    if os.geteuid() != 0:
        unavailable("booting a private systemd needs root")
    sd = PrivateSystemd("glmtts")
    try:
        sd.start()
    except (BootError, OSError) as e:
        unavailable("cannot boot a private systemd here: %s" % e)
    # the system bus, as on any server: `systemd-run --wait --pipe` (the install preflight)
    # talks to PID 1 through it, not through the private socket
    sd.systemctl("start", "dbus.socket", check=False, timeout=30)
    try:
        yield sd
    finally:
        sd.stop()
        shutil.rmtree(sd.state, ignore_errors=True)


@pytest.fixture(scope="session")
def alerts():
    receiver = AlertReceiver()
    yield receiver
    receiver.close()


# -- glmtts installed into the private systemd -------------------------------------------

TEST_DROP_IN = """# tests only: small limits so every scenario fits in seconds
[Unit]
StartLimitIntervalSec=120
StartLimitBurst=3
[Service]
RestartSec=1
WatchdogSec=10
TimeoutStartSec=180
TimeoutStopSec=15
TimeoutAbortSec=5
LimitCORE=0
"""

WATCHDOG_DROP_IN = """# tests only: keep each cycle's report (no journald in the private systemd)
[Service]
StandardOutput=append:/var/lib/glmtts/watchdog-cycles.log
StandardError=append:/var/lib/glmtts/watchdog-cycles.log
TimeoutStartSec=300
"""

FAULT_FILE = "/var/lib/glmtts/fault"
ENGINE = "tests.plugins.faults:FaultEngine"


def config_text(port, alert_url, instances=()):
    inst = ", ".join('"%s"' % i for i in instances)
    return f"""[server]
port = {port}
ui = false

[engine]
name = "{ENGINE}"

[limits]
rate_limit_per_minute = 0

[watchdog]
url = "http://127.0.0.1:{port}"
unit = "glmtts"
instances = [{inst}]
manager = "systemd"
probe_timeout_s = 3.0
probe_retries = 2
probe_retry_interval_s = 1.0
ready_timeout_s = 120.0
smoke_timeout_s = 60.0
disk_free_floor_mb = 1

[alerts]
urls = ["{alert_url}"]
min_severity = "info"
timeout_s = 5.0
"""


class Deployment:
    """glmtts as installed by `glmtts-system install` in the private systemd, seen from the test."""

    def __init__(self, sd, port, alerts):
        self.sd, self.port, self.alerts = sd, port, alerts
        self.url = "http://127.0.0.1:%d" % port

    # files inside the namespace
    def file(self, p):
        return self.sd.path(p)

    def write(self, p, text, mode=0o644):
        f = self.file(p)
        f.write_text(text)
        os.chmod(f, mode)

    def fault(self, word):
        self.write(FAULT_FILE, word + "\n" if word else "")

    # HTTP
    def healthz(self, timeout=3.0):
        import requests
        try:
            r = requests.get(self.url + "/healthz", timeout=timeout)
            return r.status_code, r.json()
        except (requests.RequestException, ValueError) as e:
            return None, {"error": str(e)}

    def wait_healthy(self, timeout=120.0):
        return self.sd.wait_for(lambda: self.healthz()[0] == 200, timeout, 0.5, "%s/healthz 200" % self.url)

    def speech(self, text="你好，这是一次测试。", timeout=60.0):
        import requests
        return requests.post(self.url + "/v1/audio/speech", timeout=timeout,
                             json={"model": "glmtts", "input": text, "voice": "default", "response_format": "wav"})

    def smoke(self):
        """What a user checks: 200, the audio decodes, it is long enough and not silent."""
        import io

        import numpy as np
        import soundfile as sf
        r = self.speech()
        assert r.status_code == 200, (r.status_code, r.text[:500])
        audio, rate = sf.read(io.BytesIO(r.content), dtype="float32")
        assert len(audio) / rate > 0.5 and float(np.sqrt(np.mean(audio ** 2))) > 1e-3
        return r

    # systemd
    def main_pid(self, unit="glmtts.service"):
        return int(self.sd.show(unit, "MainPID").get("MainPID", "0"))

    def unit(self, unit="glmtts.service"):
        return self.sd.show(unit, "ActiveState", "SubState", "Result", "NRestarts", "MainPID", "ExecMainStatus")

    def start(self, unit="glmtts.service", timeout=180):
        self.sd.systemctl("reset-failed", unit, check=False)
        self.sd.systemctl("start", unit, timeout=timeout)

    def watchdog_check(self, timeout=300):
        """One cycle, exactly as the timer runs it: the glmtts-watchdog.service oneshot."""
        log = self.file("/var/lib/glmtts/watchdog-cycles.log")
        offset = log.stat().st_size if log.exists() else 0
        self.sd.systemctl("reset-failed", "glmtts-watchdog.service", check=False)
        proc = self.sd.systemctl("start", "glmtts-watchdog.service", check=False, timeout=timeout)
        status = self.sd.show("glmtts-watchdog.service", "ExecMainStatus", "Result")
        text = log.read_bytes()[offset:].decode("utf-8", "replace") if log.exists() else ""
        return int(status.get("ExecMainStatus", "-1")), text, proc

    def incidents(self):
        """One dict per incident: the journal's latest record of each id, in the order they opened."""
        f = self.file("/var/lib/glmtts/incidents.jsonl")
        if not f.exists():
            return []
        latest = {}  # a dict keeps the position of a key's first insertion: the order incidents opened
        for line in f.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                latest[rec["id"]] = rec
        return list(latest.values())

    def log_text(self, name):
        f = self.file("/var/log/glmtts/" + name)
        return f.read_text(errors="replace") if f.exists() else ""


def install_glmtts(sd, port, alerts, instances=()):
    """`glmtts-system install` inside the namespace (the glmtts user is created in its private
    /etc overlay), then the test's config and drop-ins."""
    args = [str(TOOLS / "glmtts-system"), "install", "--no-start", "--deploy-dir", str(ROOT)]
    if instances:
        args += ["--instances", ",".join(str(i) for i in instances)]
    out = sd.run(args).stdout
    cfg = config_text(port, alerts.url, ["glmtts@%d=http://127.0.0.1:%d" % (i, port + 1 + i) for i in instances])
    deployment = Deployment(sd, port, alerts)
    deployment.write("/etc/glmtts/glmtts.toml", cfg, 0o640)
    sd.run(["chgrp", "glmtts", "/etc/glmtts/glmtts.toml"])
    deployment.write("/etc/glmtts/glmtts.env", "GLMTTS_TEST_FAULT_FILE=%s\n" % FAULT_FILE, 0o640)
    for i in instances:  # instance ports next to the main one, all free
        deployment.write("/etc/glmtts/instance-%d.env" % i, "GLMTTS_SERVER_PORT=%d\n" % (port + 1 + i), 0o640)
    deployment.fault("")
    for unit in ("glmtts.service", "glmtts@.service"):
        sd.run(["mkdir", "-p", "/etc/systemd/system/%s.d" % unit])
        deployment.write("/etc/systemd/system/%s.d/50-test.conf" % unit, TEST_DROP_IN)
    sd.run(["mkdir", "-p", "/etc/systemd/system/glmtts-watchdog.service.d"])
    deployment.write("/etc/systemd/system/glmtts-watchdog.service.d/50-test.conf", WATCHDOG_DROP_IN)
    sd.systemctl("daemon-reload")
    deployment.install_output = out
    return deployment


@pytest.fixture(autouse=True)
def clean_watchdog_state(request):
    """Every test that uses the shared deployment starts from a clean account: the start
    limit counter reset (the session drop-in allows 3 starts in 120 s, and planned
    restarts count too) and the watchdog's guard re-armed, so one test's escalation or
    spent start limit cannot fail the tests after it. Each test reads incidents from its
    own offset (``before = len(d.incidents())``)."""
    if "deployed" in request.fixturenames:
        d = request.getfixturevalue("deployed")
        d.sd.systemctl("reset-failed", "glmtts.service", check=False)
        d.sd.run([str(TOOLS / "glmtts-watchdog"), "resume"], check=False, timeout=60)
    yield


@pytest.fixture(scope="session")
def deployed(private_systemd, alerts):
    d = install_glmtts(private_systemd, free_port(), alerts)
    yield d
    keep = ROOT / "artifacts" / "system"
    keep.mkdir(parents=True, exist_ok=True)
    for name in ("access.log", "error.log"):
        src = d.file("/var/log/glmtts/" + name)
        if src.exists():
            shutil.copy(src, keep / name)
    for name in ("incidents.jsonl", "watchdog-cycles.log"):
        src = d.file("/var/lib/glmtts/" + name)
        if src.exists():
            shutil.copy(src, keep / name)
