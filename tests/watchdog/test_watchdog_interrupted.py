"""A watchdog SIGKILLed mid-runbook, for real: the service under a real supervisord is
hung (SIGSTOP), a real `glmtts-watchdog check` process runs service-down, and is killed
while step k is under way (a slow plug-in step, tests/plugins/slow_step.py, runs step k's
action and then sleeps). The next cycle must close the incident as interrupted, with an
outcome, send the closing alert paired with the opened one, restart nothing twice, and
leave the service healthy."""

import os
import signal
import subprocess
import sys
import time

import pytest
import requests
import yaml

from glmtts.watchdog.cycle import EXIT_OK
from glmtts.watchdog.incidents import IncidentLog
from tests.plugins.slow_step import with_slow_step
from tests.support.service import REPO
from tests.support.watchdog_fakes import AlertReceiver, alert_ids
from tests.watchdog.test_watchdog_supervisord import Rig, main_pid

pytestmark = pytest.mark.integration

SLOW = "tests.plugins.slow_step:SlowStep"
CLOSING = ("recovered", "failed", "escalated", "warning", "interrupted")


def service_down_steps():
    with open(os.path.join(REPO, "runbooks", "service-down.md"), encoding="utf-8") as f:
        meta = yaml.safe_load(f.read().split("---")[1])
    return meta["steps"]


STEPS = service_down_steps()


def runbooks_with_slow_step(root, k, marker):
    """A copy of runbooks/ whose service-down step k runs through SlowStep."""
    out = os.path.join(root, "runbooks-%d" % k)
    os.makedirs(out, exist_ok=True)
    src = os.path.join(REPO, "runbooks")
    for name in os.listdir(src):
        with open(os.path.join(src, name), encoding="utf-8") as f:
            text = f.read()
        if name == "service-down.md":
            text = with_slow_step(text, k, marker)
        with open(os.path.join(out, name), "w", encoding="utf-8") as f:
            f.write(text)
    return out


def config_file(r, rx_port, runbooks_dir, name="watchdog.toml"):
    path = os.path.join(r.root, name)
    with open(path, "w") as f:
        f.write("""[paths]
state_dir = "{root}/state"
log_dir = "{root}/log"
output_dir = "{root}/outputs"
prompt_root = "{root}/prompts"

[watchdog]
url = "{url}"
manager = "supervisor"
supervisor_conf = "{conf}"
probe_retries = 2
probe_retry_interval_s = 0.5
probe_timeout_s = 2.0
ready_timeout_s = 60.0
smoke_timeout_s = 30.0
disk_free_floor_mb = 0
kernel_log = "{root}/kern.log"
runbooks_dir = "{runbooks}"

[alerts]
urls = ["json://127.0.0.1:{rx}/alerts"]
timeout_s = 5.0
""".format(root=r.root, url=r.url, conf=r.conf, rx=rx_port, runbooks=runbooks_dir))
    return path


def watchdog_check(config, **popen):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLMTTS_")}
    env.update({"GLMTTS_CONFIG": config, "PYTHONPATH": REPO})
    return subprocess.Popen([sys.executable, "-m", "glmtts.cli.watchdog", "check"], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("interrupted"))
    r = Rig(root)
    rx = AlertReceiver().__enter__()
    try:
        r.wait_healthy()
        r.rx = rx
        r.wd = r.watchdog(rx.port)
        assert r.wd.check().code == EXIT_OK
        yield r
    finally:
        r.stop()
        rx.__exit__(None, None, None)


@pytest.mark.parametrize("k", range(len(STEPS)), ids=[s if isinstance(s, str) else next(iter(s)) for s in STEPS])
def test_watchdog_killed_at_each_step_leaves_one_closed_incident_and_one_restart(rig, k):
    r = rig
    r.wait_healthy()
    r.wd.resume()  # each case starts with a fresh count: interrupted attempts count toward the guard
    marker = os.path.join(r.root, "step-%d.sleeping" % k)
    config = config_file(r, r.rx.port, runbooks_with_slow_step(r.root, k, marker), "slow-%d.toml" % k)
    shipped = config_file(r, r.rx.port, os.path.join(REPO, "runbooks"))  # the next cycle: the real runbooks
    log = IncidentLog(os.path.join(r.root, "state", "incidents.jsonl"))
    known = {d["id"] for d in log.read()}
    sup_offset = len(r.read("log/supervisord.log"))
    alerts_before = len(r.rx.received)
    pid = main_pid(r)
    os.kill(pid, signal.SIGSTOP)
    p = watchdog_check(config)
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(marker):
            assert p.poll() is None, "the watchdog finished before step %d: %s" % (k, p.stdout.read())
            assert time.monotonic() < deadline, "step %d never started" % k
            time.sleep(0.1)
        p.send_signal(signal.SIGKILL)  # the watchdog we started, by its PID
        p.wait(10)
        [dead] = [d for d in log.read() if d["id"] not in known]
        assert dead["outcome"] is None and dead["current_step"]["action"] == SLOW
        assert len(dead["steps"]) == k

        t0 = time.monotonic()
        nxt = watchdog_check(shipped)
        try:
            out, _ = nxt.communicate(timeout=240)
        finally:
            if nxt.poll() is None:
                nxt.kill()  # ours, by PID
        took = time.monotonic() - t0
    finally:
        if p.poll() is None:
            p.kill()
        try:
            os.kill(pid, signal.SIGCONT)  # whatever happened, leave no stopped process behind
        except ProcessLookupError:
            pass
    new = [d for d in log.read() if d["id"] not in known]
    records = [rec for rec in log.records() if rec["id"] not in known]
    assert len({rec["id"] for rec in records}) == len(new)
    assert all(d["outcome"] in CLOSING for d in new), [(d["id"], d["state"]) for d in new]
    first = new[0]
    assert first["outcome"] == "interrupted" and "died during step %s" % SLOW in first["reason"], first["reason"]
    assert first["interruption"]["steps_done"] == [st["action"] for st in first["steps"]]
    assert "interrupted" in out, out
    if len(new) > 1:  # still hung when the next cycle looked (killed during capture_diagnostics)
        assert new[1]["follows"] == first["id"] and new[1]["outcome"] == "recovered", out
        assert new[1]["fault_at"] == first["fault_at"]

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # apprise posts from a worker thread
        paired = alert_ids(r.rx.received[alerts_before:])
        if all(i in paired and len(paired[i]) == 2 for i in (d["id"] for d in new)):
            break
        time.sleep(0.2)
    for d in new:
        whats = paired.get(d["id"], [])
        assert whats[0] == "opened" and whats[1:] == [d["outcome"]], (d["id"], whats)

    spawned = r.read("log/supervisord.log")[sup_offset:].count("spawned: 'glmtts'")
    assert spawned == 1, r.read("log/supervisord.log")[sup_offset:]
    assert main_pid(r) != pid
    assert requests.get(r.url + "/healthz", timeout=5).status_code == 200
    assert r.wd.check().code == EXIT_OK, "the cycle after the recovery still found something"
    print("step %d: next cycle took %.1f s" % (k, took))
