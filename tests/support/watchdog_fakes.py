"""Shared pieces for the watchdog tests (no tests here). Fakes stand in only where a
unit test must not start the real service: the OS seam's recording host and its clock
(tests/support/host.py), a service manager that records what it was asked, and tiny HTTP
servers (a health endpoint with a controllable answer, an alert receiver). The integration
tests use the real service under a real supervisord."""

import io
import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import soundfile

from glmtts import config
from glmtts.host import Completed
from glmtts.watchdog.managers import RUNNING, UnitStatus
from tests.support.host import FakeClock, RecordingHost  # noqa: F401 (the OS seam's fake, re-exported)


class FakeManager:
    """Records start/stop/restart; status() answers what the test sets."""

    name = "fake"

    def __init__(self, state=RUNNING, pid=None, on_restart=None):
        self.calls = []
        self.state = state
        self.pid = pid
        self.on_restart = on_restart
        self.unit_times = {}     # what times() answers: main_exited_at, active_since

    def status(self, unit):
        return UnitStatus(unit, self.name, self.state, self.state.upper(), self.pid, None)

    def _do(self, verb, unit):
        self.calls.append((verb, unit))
        if verb in ("restart", "start") and self.on_restart:
            self.on_restart()
        return Completed([verb, unit], 0)

    def restart(self, unit):
        return self._do("restart", unit)

    def start(self, unit):
        return self._do("start", unit)

    def stop(self, unit):
        return self._do("stop", unit)

    def unit_pids(self, unit):
        return [self.pid] if self.pid else []

    def times(self, unit):
        return dict(self.unit_times)

    def account(self, lines, unit):
        """The manager's account of the unit: ``account_lines`` parsed in supervisord's or
        systemd's words (``account_as``), so a test can tell the cycle what the manager said."""
        from glmtts.watchdog.managers import MANAGERS
        return MANAGERS[self.account_as](None).account(list(lines) + self.account_lines, unit) if self.account_lines else []

    account_lines = []
    account_as = "systemd"

    @staticmethod
    def account_filter():
        return None

    def manager_logs(self):
        return []

    def program_logs(self, unit):
        return {}

    def command(self, verb, unit):
        return "fake %s %s" % (verb, unit)


def wav_bytes(seconds=1.0, rate=24000, amplitude=0.3):
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    soundfile.write(buf, (amplitude * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate, format="WAV")
    return buf.getvalue()


class _Server:
    def __init__(self, handler_cls, port=0):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), handler_cls)
        self.httpd.owner = self
        self.port = self.httpd.server_address[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


class HealthServer(_Server):
    """/healthz answers ``status_code`` with body {"status": ...}; /v1/audio/speech answers
    a real WAV when healthy."""

    def __init__(self, status_code=200):
        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                srv = self.server.owner
                srv.probes += 1
                body = json.dumps({"status": "ok" if srv.status_code == 200 else srv.status, "reason": srv.reason,
                                   "uptime_s": 1000}).encode()
                self.send_response(srv.status_code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                srv = self.server.owner
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                data = wav_bytes() if srv.status_code == 200 else b'{"error": {"message": "not ready"}}'
                self.send_response(200 if srv.status_code == 200 else 503)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        super().__init__(H)
        self.status_code = status_code
        self.status = "degraded"
        self.reason = "worker heartbeat stale"
        self.probes = 0


class AlertReceiver(_Server):
    """Collects apprise json:// notifications (POST bodies)."""

    def __init__(self, port=0):
        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    self.server.owner.received.append(json.loads(raw))
                except ValueError:
                    self.server.owner.received.append({"raw": raw.decode(errors="replace")})
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.received = []
        super().__init__(H, port)


def settings_for(tmp_path, url="http://127.0.0.1:9", **overrides):
    """Settings with every path under tmp_path (nothing touches /var)."""
    env = {"GLMTTS_CONFIG": ""}
    s = config.load(path="", env=env)
    base = dict(paths__state_dir=str(tmp_path / "state"), paths__log_dir=str(tmp_path / "log"),
                paths__output_dir=str(tmp_path / "outputs"), paths__prompt_root=str(tmp_path / "prompts"),
                watchdog__url=url, watchdog__probe_retries=1, watchdog__probe_retry_interval_s=0.0,
                watchdog__probe_timeout_s=2.0, watchdog__disk_free_floor_mb=0, watchdog__ready_timeout_s=5.0,
                watchdog__kernel_log=str(tmp_path / "kern.log"))
    base.update(overrides)
    for d in ("state", "log", "outputs", "prompts"):
        os.makedirs(tmp_path / d, exist_ok=True)
    return s.replace(**base)


def alert_ids(received):
    """incident id -> [what] for each alert (the body names the incident)."""
    out = {}
    for m in received:
        found = re.search(r"incident (\S+) detected", m.get("message", ""))
        what = re.search(r"glmtts \S+ (\w+):", m.get("title", ""))
        if found and what:
            out.setdefault(found.group(1), []).append(what.group(1))
    return out
