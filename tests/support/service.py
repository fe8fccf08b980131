"""Start the real service process for a test, and stop it again.

    from tests.support.service import ServiceProcess, start_service

    with start_service(tmp_path, env={"GLMTTS_LIMITS_MAX_QUEUE": "1"}) as svc:
        r = svc.post("/v1/audio/speech", json={"input": "你好。"})

or the ``service`` fixture from tests/conftest.py (``svc = service(env=...)``; every
process it started is stopped at teardown, also when the test fails).

What it does: picks a free port on 127.0.0.1, makes ``tmp/state``, ``tmp/log``,
``tmp/prompts``, ``tmp/outputs``, starts ``python -m service`` from the repository root
with configuration from the environment only (GLMTTS_CONFIG="" so no file is read,
inherited GLMTTS_* / NOTIFY_SOCKET variables removed), the repository root on
PYTHONPATH (so ``tests.plugins.faults:FaultEngine`` resolves), stdout appended to
``log/access.log`` and stderr to ``log/error.log``, and waits until /healthz answers
200 (``wait=False`` to skip; ``wait_healthy(status=None)`` waits for any answer).
``stop()`` sends SIGTERM to the PID it started, then SIGKILL after ``timeout``.
Defaults: engine espeak, UI off (``ui=True`` mounts it), rate limit off.
"""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import requests

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAULT_ENGINE = "tests.plugins.faults:FaultEngine"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServiceProcess:
    def __init__(self, tmp_path, env=None, *, engine="espeak", ui=False, port=None, name="svc"):
        self.root = os.path.join(str(tmp_path), name)
        self.port = port or free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.state_dir = os.path.join(self.root, "state")
        self.log_dir = os.path.join(self.root, "log")
        self.prompt_root = os.path.join(self.root, "prompts")
        self.output_dir = os.path.join(self.root, "outputs")
        for d in (self.state_dir, self.log_dir, self.prompt_root, self.output_dir):
            os.makedirs(d, exist_ok=True)
        self.stdout_path = os.path.join(self.log_dir, "access.log")
        self.stderr_path = os.path.join(self.log_dir, "error.log")
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("GLMTTS_") and k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        self.env.update({
            "GLMTTS_CONFIG": "",
            "GLMTTS_SERVER_HOST": "127.0.0.1",
            "GLMTTS_SERVER_PORT": str(self.port),
            "GLMTTS_SERVER_UI": "true" if ui else "false",
            "GLMTTS_ENGINE_NAME": engine,
            "GLMTTS_LIMITS_RATE_LIMIT_PER_MINUTE": "0",
            # no load balancer in front of a test instance: stop at once after SIGTERM
            # (the drain tests set their own delay)
            "GLMTTS_SERVER_DRAIN_DELAY_S": "0",
            "GLMTTS_PATHS_STATE_DIR": self.state_dir,
            "GLMTTS_PATHS_LOG_DIR": self.log_dir,
            "GLMTTS_PATHS_PROMPT_ROOT": self.prompt_root,
            "GLMTTS_PATHS_OUTPUT_DIR": self.output_dir,
            "GRADIO_ANALYTICS_ENABLED": "False",
            "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "PYTHONUNBUFFERED": "1",
        })
        self.env.update(env or {})
        self.ui = self.env.get("GLMTTS_SERVER_UI") == "true"
        self.proc = None

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def start(self, wait=True, timeout=60):
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=REPO, env=self.env,
                                         stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True)
        if wait:
            self.wait_healthy(timeout=timeout)
            if self.ui:
                self.wait_ui(timeout=timeout)
        return self

    def wait_ui(self, timeout=60):
        """The UI is built after ready (service/uigate.py): wait for /healthz "ui": "ready"."""
        deadline = time.monotonic() + timeout
        body = {}
        while time.monotonic() < deadline:
            try:
                body = requests.get(self.url + "/healthz", timeout=2).json()
                if body.get("ui") == "ready":
                    return body
                if body.get("ui") == "failed":
                    break
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.1)
        raise AssertionError("UI not ready within %ss (ui %s); stderr:\n%s"
                             % (timeout, body.get("ui"), self.stderr()[-3000:]))

    def wait_healthy(self, timeout=60, status=200):
        """Wait for /healthz to answer ``status`` (None: any answer). Fails with the stderr tail."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("service exited with %s before healthy; stderr:\n%s"
                                     % (self.proc.returncode, self.stderr()[-3000:]))
            try:
                r = requests.get(self.url + "/healthz", timeout=2)
                last = r.status_code
                if status is None or r.status_code == status:
                    return r
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise AssertionError("service not healthy within %ss (last /healthz %s); stderr:\n%s"
                             % (timeout, last, self.stderr()[-3000:]))

    def wait_exit(self, timeout=60):
        return self.proc.wait(timeout)

    def stop(self, timeout=10):
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # by PID, the one we started
            return self.proc.wait(10)

    def stdout(self):
        return _read(self.stdout_path)

    def stderr(self):
        return _read(self.stderr_path)

    def get(self, path, **kw):
        kw.setdefault("timeout", 60)
        return requests.get(self.url + path, **kw)

    def post(self, path, **kw):
        kw.setdefault("timeout", 60)
        return requests.post(self.url + path, **kw)

    def delete(self, path, **kw):
        kw.setdefault("timeout", 60)
        return requests.delete(self.url + path, **kw)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def _read(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


@contextlib.contextmanager
def start_service(tmp_path, env=None, *, wait=True, timeout=60, **kw):
    svc = ServiceProcess(tmp_path, env, **kw)
    try:
        svc.start(wait=wait, timeout=timeout)
        yield svc
    finally:
        svc.stop()
