"""Real Prometheus and Alertmanager on loopback for the alerting tests and the bench, fed
with the shipped ops/prometheus/ files, and a webhook receiver that records what
Alertmanager delivers.

    hook = Webhook().start()
    am = Alertmanager(tmp, alertmanager_config(hook.url, group_wait="1s")).start()
    prom = Prometheus(tmp, targets=[a.url, b.url], rule_files=fast_rules(tmp, for_s=2),
                      alertmanager=am.address).start()
    ...
    prom.stop(); am.stop(); hook.stop()

``FleetInstance`` is a glmtts service process (tests/support/service.py) made for these
faults: the fault-injecting engine with a fault file, a FAKE NVML (tests/support/fake_nvml:
this machine has no GPU) whose free memory the test sets, and its watchdog URL pointing at
itself so that incidents recorded for it are exported on its /metrics.

Each program gets a free port on 127.0.0.1, its own storage directory under ``tmp``, and
is stopped by the PID this module started (SIGTERM, then SIGKILL). Alertmanager runs with
an empty --cluster.listen-address so it never gossips. A missing program skips the test
(fails it in CI: tests/support/fleet.py)."""

import http.server
import json
import os
import signal
import subprocess
import threading
import time

import requests
import yaml

from .fleet import tool
from .service import FAULT_ENGINE, REPO, ServiceProcess, free_port

OPS = os.path.join(REPO, "ops", "prometheus")
RULE_FILES = ("recording-rules.yml", "alert-rules.yml")
FAKE_NVML = os.path.join(REPO, "tests", "support", "fake_nvml")
GIB = 1024 ** 3


def _for_seconds(text):
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for suffix in ("ms", "s", "m", "h"):
        if text.endswith(suffix):
            return float(text[:-len(suffix)]) * units[suffix]
    raise ValueError("unexpected duration %r" % text)


def fast_rules(tmp, for_s=None, src=OPS):
    """Copies of the shipped rule files in ``tmp``; with ``for_s`` every alert's `for` is
    cut to at most that many seconds (expressions untouched), so a test waits seconds,
    not minutes. Returns their paths."""
    out = []
    for name in RULE_FILES:
        with open(os.path.join(src, name), encoding="utf-8") as f:
            doc = yaml.safe_load(f)
        for group in doc["groups"]:
            for rule in group["rules"]:
                if for_s is not None and "for" in rule and _for_seconds(rule["for"]) > for_s:
                    rule["for"] = "%ds" % for_s
        path = os.path.join(str(tmp), "fast-" + name)
        with open(path, "w", encoding="utf-8") as f:
            yaml.safe_dump(doc, f, sort_keys=False)
        out.append(path)
    return out


def alertmanager_config(webhook_url, group_wait="1s", group_interval="1s", src=OPS):
    """The shipped alertmanager.yml with routes and inhibitions as they are, its receivers'
    integrations (PagerDuty, Slack) replaced by a webhook to ``webhook_url``/<receiver>,
    and shorter grouping waits."""
    with open(os.path.join(src, "alertmanager.yml"), encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    for r in doc["receivers"]:
        name = r["name"]
        r.clear()
        r.update({"name": name, "webhook_configs": [{"url": "%s/%s" % (webhook_url, name), "send_resolved": False}]})
    doc["route"].update({"group_wait": group_wait, "group_interval": group_interval, "repeat_interval": "1h"})
    for route in doc["route"].get("routes", []):
        route.pop("repeat_interval", None)
    return doc


class Webhook:
    """Alertmanager's webhook receiver: every POST body is kept with its arrival time."""

    def __init__(self):
        self.received = []   # [(monotonic time, receiver path, payload)]
        self._lock = threading.Lock()
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with hook._lock:
                    hook.received.append((time.monotonic(), self.path.strip("/"), json.loads(body or b"{}")))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        self._thread = None

    def start(self):
        self._thread = threading.Thread(target=self.server.serve_forever, name="webhook", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def alerts(self):
        """[(arrival, receiver, alert)] for every firing alert delivered so far."""
        with self._lock:
            return [(t, recv, a) for t, recv, p in self.received for a in p.get("alerts", [])
                    if a.get("status") == "firing"]

    def wait_for(self, timeout, **labels):
        """The first delivered firing alert whose labels include ``labels``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, recv, a in self.alerts():
                if all(a["labels"].get(k) == v for k, v in labels.items()):
                    return t, recv, a
            time.sleep(0.1)
        raise AssertionError("no alert %s at the webhook within %ss; delivered: %s"
                             % (labels, timeout, [(r, a["labels"]) for _, r, a in self.alerts()]))


class _Program:
    name = "?"

    def __init__(self, tmp, label):
        self.dir = os.path.join(str(tmp), label)
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        self.address = "127.0.0.1:%d" % self.port
        self.url = "http://" + self.address
        self.log_path = os.path.join(self.dir, "%s.log" % label)
        self.proc = None

    def _spawn(self, argv):
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=self.dir, start_new_session=True)

    def log(self):
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def wait_ready(self, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("%s exited with %s:\n%s" % (self.name, self.proc.returncode, self.log()[-3000:]))
            try:
                if requests.get(self.url + "/-/ready", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise AssertionError("%s not ready within %ss:\n%s" % (self.name, timeout, self.log()[-3000:]))

    def stop(self, timeout=15):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # the PID we started, nothing else
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


class Alertmanager(_Program):
    name = "alertmanager"

    def __init__(self, tmp, config):
        super().__init__(tmp, "alertmanager")
        self.config_path = os.path.join(self.dir, "alertmanager.yml")
        with open(self.config_path, "w", encoding="utf-8") as f:
            yaml.safe_dump(config, f, sort_keys=False)

    def start(self, timeout=60):
        self._spawn([tool("prometheus-alertmanager", "alertmanager"), "--config.file=" + self.config_path,
                     "--storage.path=" + os.path.join(self.dir, "data"), "--web.listen-address=" + self.address,
                     "--cluster.listen-address="])
        return self.wait_ready(timeout)

    def post_alerts(self, alerts):
        r = requests.post(self.url + "/api/v2/alerts", json=alerts, timeout=10)
        r.raise_for_status()


class Prometheus(_Program):
    name = "prometheus"

    def __init__(self, tmp, targets, rule_files, alertmanager, scrape_s=1, evaluation_s=1, job="glmtts"):
        super().__init__(tmp, "prometheus")
        self.config_path = os.path.join(self.dir, "prometheus.yml")
        config = {
            "global": {"scrape_interval": "%ds" % scrape_s, "scrape_timeout": "%ds" % scrape_s,
                       "evaluation_interval": "%ds" % evaluation_s},
            "rule_files": list(rule_files),
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]},
            "scrape_configs": [{"job_name": job, "metrics_path": "/metrics",
                                "static_configs": [{"targets": [t.split("://", 1)[-1] for t in targets]}]}],
        }
        with open(self.config_path, "w", encoding="utf-8") as f:
            yaml.safe_dump(config, f, sort_keys=False)

    def start(self, timeout=60):
        self._spawn([tool("prometheus"), "--config.file=" + self.config_path,
                     "--storage.tsdb.path=" + os.path.join(self.dir, "data"), "--web.listen-address=" + self.address])
        return self.wait_ready(timeout)

    def api(self, path, **params):
        r = requests.get(self.url + "/api/v1/" + path, params=params, timeout=10)
        body = r.json()
        if body.get("status") != "success":
            raise AssertionError("prometheus %s %s: %s %s" % (path, params, body.get("errorType"), body.get("error")))
        return body["data"]

    def query(self, expr):
        """The instant vector (list of {metric, value}) of ``expr``; a parse error raises."""
        return self.api("query", query=expr)["result"]

    def alerts(self):
        return self.api("alerts")["alerts"]

    def wait_up(self, instances, timeout=60):
        """Until every target in ``instances`` (host:port) has been scraped successfully."""
        deadline = time.monotonic() + timeout
        want = set(instances)
        up = set()
        while time.monotonic() < deadline:
            up = {r["metric"]["instance"] for r in self.query("up == 1")}
            if want <= up:
                return
            time.sleep(0.3)
        raise AssertionError("targets %s not up within %ss (up: %s)" % (sorted(want - up), timeout, sorted(up)))


class FleetInstance(ServiceProcess):
    """A glmtts process with a fault file, a fake GPU and its own watchdog identity."""

    def __init__(self, tmp_path, name, drain_delay_s=1.0, env=None):
        root = os.path.join(str(tmp_path), name)
        os.makedirs(root, exist_ok=True)
        self.fault_file = os.path.join(root, "fault")
        self.gpu_file = os.path.join(root, "gpu.json")
        self.unit = "glmtts-" + name
        self.set_gpu(free=40 * GIB)
        super().__init__(tmp_path, name=name, engine=FAULT_ENGINE, env=dict({
            "GLMTTS_TEST_FAULT_FILE": self.fault_file,
            "GLMTTS_TEST_FAKE_NVML_FILE": self.gpu_file,
            "PYTHONPATH": os.pathsep.join([FAKE_NVML, REPO, os.environ.get("PYTHONPATH", "")]),
            "GLMTTS_SERVER_DRAIN_DELAY_S": str(drain_delay_s),
            "GLMTTS_SERVER_DRAIN_TIMEOUT_S": "5",
        }, **(env or {})))
        # The watchdog's URL is this instance's own: its incidents are exported here.
        self.env.update({"GLMTTS_WATCHDOG_URL": self.url, "GLMTTS_WATCHDOG_UNIT": self.unit})

    @property
    def address(self):
        return self.url.split("://", 1)[1]

    def set_gpu(self, free, total=80 * GIB):
        tmp = self.gpu_file + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"devices": [{"total": total, "free": free}]}, f)
        os.replace(tmp, self.gpu_file)

    def fault(self, word):
        with open(self.fault_file, "w", encoding="utf-8") as f:
            f.write(word + "\n")

    def record_incident(self, signature, runbook_id):
        """An incident journaled by the watchdog's own code: opened, remediating, recovered."""
        from glmtts import config
        from glmtts.watchdog.incidents import Incident, IncidentLog, Lifecycle, incidents_path, new_id
        from glmtts.watchdog.states import IncidentState

        now = time.time()
        inc = Incident(id=new_id(self.unit, now), unit=self.unit, url=self.url, detected_at=now,
                       signatures=[signature], fault_at=now - 5)
        inc.runbook = runbook_id
        settings = config.load(path="", env={"GLMTTS_PATHS_STATE_DIR": self.state_dir})
        life = Lifecycle(IncidentLog(incidents_path(settings)))
        life.open(inc)
        life.advance(inc, IncidentState.REMEDIATING, "runbook %s" % runbook_id)
        inc.service_back_at = inc.verified_at = time.time()
        life.advance(inc, IncidentState.RECOVERED, "smoke test passed")
