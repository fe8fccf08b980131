"""The watchdog against the real service under a real supervisord (its own temp conf and
socket): kill -9, SIGSTOP (a hang), a genuine CUDA OOM traceback followed by a wedged
worker, and a real SIGSEGV. Each must be detected, handled by the right runbook,
recovered, proven by a smoke synthesis, recorded with its time to recover, and alerted."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import requests

from glmtts.watchdog.actions.capture_diagnostics import DIAGNOSTICS_PROBE_S
from glmtts.watchdog import diagnose
from glmtts.watchdog.cycle import EXIT_OK, EXIT_WARNING, Watchdog
from glmtts.host import Host
from glmtts.watchdog.incidents import IncidentLog
from glmtts.watchdog.managers import SupervisorManager
from tests.support.service import FAULT_ENGINE, REPO, free_port
from tests.support.watchdog_fakes import AlertReceiver, settings_for

pytestmark = pytest.mark.integration

CONF = """
[supervisord]
nodaemon=true
logfile={root}/log/supervisord.log
pidfile={root}/supervisord.pid
childlogdir={root}/log

[unix_http_server]
file={root}/supervisor.sock
chmod=0700

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{root}/supervisor.sock

[program:glmtts]
command={python} -m service
directory={repo}
autostart=true
autorestart=true
startsecs={startsecs}
startretries=2
stopsignal=TERM
stopwaitsecs=10
stopasgroup=true
killasgroup=true
stdout_logfile={root}/log/access.log
stdout_logfile_maxbytes=0
stderr_logfile={root}/log/error.log
stderr_logfile_maxbytes=0
"""


class Rig:
    def __init__(self, root, engine=FAULT_ENGINE, startsecs=1, env=None):
        env_extra = env
        self.root = root
        self.port = free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.fault = os.path.join(root, "fault")
        self.conf = os.path.join(root, "supervisord.conf")
        for d in ("log", "state", "outputs", "prompts"):
            os.makedirs(os.path.join(root, d), exist_ok=True)
        with open(self.conf, "w") as f:
            f.write(CONF.format(root=root, python=sys.executable, repo=REPO, startsecs=startsecs))
        open(self.fault, "w").close()
        env = {k: v for k, v in os.environ.items() if not k.startswith("GLMTTS_")}
        env.update({
            "GLMTTS_CONFIG": "", "GLMTTS_SERVER_PORT": str(self.port), "GLMTTS_SERVER_UI": "false",
            "GLMTTS_ENGINE_NAME": engine, "GLMTTS_TEST_FAULT_FILE": self.fault,
            "GLMTTS_LIMITS_RATE_LIMIT_PER_MINUTE": "0", "GLMTTS_LIMITS_WORKER_STALL_S": "2",
            "GLMTTS_PATHS_STATE_DIR": os.path.join(root, "svc-state"), "GLMTTS_PATHS_LOG_DIR": os.path.join(root, "log"),
            "GLMTTS_PATHS_OUTPUT_DIR": os.path.join(root, "outputs"), "GLMTTS_PATHS_PROMPT_ROOT": os.path.join(root, "prompts"),
            "PYTHONPATH": REPO, "PYTHONUNBUFFERED": "1", "GRADIO_ANALYTICS_ENABLED": "False",
        })
        env.update(env_extra or {})
        self.supervisord = subprocess.Popen([sys.executable, "-m", "supervisor.supervisord", "-c", self.conf],
                                            env=env, cwd=root, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def watchdog(self, rx_port):
        from pathlib import Path
        s = settings_for(Path(self.root), url=self.url, watchdog__manager="supervisor", watchdog__supervisor_conf=self.conf,
                         watchdog__probe_retries=2, watchdog__probe_retry_interval_s=0.5, watchdog__probe_timeout_s=2.0,
                         watchdog__ready_timeout_s=60.0, watchdog__smoke_timeout_s=30.0,
                         alerts__urls=["json://127.0.0.1:%d/alerts" % rx_port], alerts__timeout_s=5.0)
        host = Host()
        return Watchdog(s, host=host, manager=SupervisorManager(host, self.conf))

    def wait_healthy(self, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise AssertionError("service not healthy under supervisord; error.log:\n" + self.read("log/error.log")[-3000:])

    def read(self, rel):
        try:
            with open(os.path.join(self.root, rel), errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def wait_for(self, rel, text, timeout=30, offset=0):
        """Wait until text appears in rel after byte offset (lines earlier tests left do not count)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.read(rel)[offset:]:
                return
            time.sleep(0.2)
        raise AssertionError("%r never appeared in %s" % (text, rel))

    def set_fault(self, word):
        with open(self.fault, "w") as f:
            f.write(word)

    def request_in_background(self):
        def go():
            try:
                requests.post(self.url + "/v1/audio/speech", json={"input": "今天天气很好。"}, timeout=15)
            except requests.RequestException:
                pass
        t = threading.Thread(target=go, daemon=True)
        t.start()
        return t

    def stop(self):
        ctl = [sys.executable, "-m", "supervisor.supervisorctl", "-c", self.conf, "shutdown"]
        subprocess.run(ctl, capture_output=True, timeout=60)
        try:
            self.supervisord.wait(30)
        except subprocess.TimeoutExpired:
            self.supervisord.kill()  # the supervisord we started, by PID
            self.supervisord.wait(10)


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("supervised"))
    r = Rig(root)
    rx = AlertReceiver().__enter__()
    try:
        r.wait_healthy()
        r.wd = r.watchdog(rx.port)
        r.rx = rx
        rep = r.wd.check()
        assert rep.code == EXIT_OK, rep.summary()
        yield r
    finally:
        r.stop()
        rx.__exit__(None, None, None)


def last_incident(r):
    return IncidentLog(os.path.join(r.root, "state", "incidents.jsonl")).read(last=1)[0]


def assert_recovered(r, rep, runbook, signature):
    inc = last_incident(r)
    assert inc["outcome"] == "recovered", rep.summary() + "\n" + str(inc["steps"])
    assert inc["runbook"] == runbook and signature in inc["signatures"], inc["signatures"]
    smoke = [s for s in inc["steps"] if s["action"] == "smoke_test"][-1]
    assert smoke["status"] == "ok" and smoke["data"]["duration_s"] > 0.2
    assert inc["time_to_recover_s"] and 0 < inc["time_to_recover_s"] < 300
    assert any(signature in l["line"] or signature in l["signature"] for l in inc["evidence"])
    titles = [m["title"] for m in r.rx.received]
    assert any("recovered" in t and signature in t for t in titles), titles
    assert requests.get(r.url + "/healthz", timeout=5).status_code == 200
    return inc


def main_pid(r):
    return r.wd.manager.status("glmtts").main_pid


def diagnosed(r):
    """The runbook `glmtts-watchdog diagnose` names now (it must be the one the cycle then runs)."""
    return diagnose.report(r.wd)["instances"][0]["runbook_id"]


def records(r):
    return IncidentLog(os.path.join(r.root, "state", "incidents.jsonl")).read()


def supervisorctl(r, *args):
    return subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", r.conf] + list(args),
                          capture_output=True, text=True, timeout=120)


def test_kill_9_is_detected_and_recovered(rig):
    pid = main_pid(rig)
    os.kill(pid, signal.SIGKILL)
    rig.wait_for("log/supervisord.log", "terminated by SIGKILL")
    said = diagnosed(rig)
    rep = rig.wd.check()
    inc = assert_recovered(rig, rep, "service-down", "unexpected_exit")
    assert main_pid(rig) != pid
    assert said == inc["runbook"]


def test_a_restart_supervisord_healed_is_dated_by_the_services_ready_time_not_the_cycle(rig):
    """supervisord keeps no ready time: the watchdog looking a while later (the timer) must
    still report the outage the clients saw, from /healthz's ready_at of the new process."""
    pid = main_pid(rig)
    killed_at = time.time()
    os.kill(pid, signal.SIGKILL)
    rig.wait_for("log/supervisord.log", "terminated by SIGKILL")
    deadline = time.monotonic() + 120
    while True:
        try:
            r = requests.get(rig.url + "/healthz", timeout=3)
            if r.status_code == 200 and r.json()["pid"] != pid:
                break
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, "supervisord did not bring it back"
        time.sleep(0.2)
    back_seen = time.time()
    time.sleep(4.0)  # the cycle comes later, as a timer's would
    rig.wd.check()
    inc = last_incident(rig)
    assert "unexpected_exit" in inc["signatures"] and inc["outcome"] == "recovered", inc
    assert "ready_at" in inc["times_from"]["service_back_at"], inc["times_from"]
    assert killed_at - 1 <= inc["fault_at"] and inc["service_back_at"] <= back_seen + 0.5, inc
    assert inc["outage_s"] < back_seen - killed_at + 1.5, (inc["outage_s"], back_seen - killed_at)


def test_sigstop_hang_is_detected_and_recovered(rig):
    pid = main_pid(rig)
    sup_offset = len(rig.read("log/supervisord.log"))
    os.kill(pid, signal.SIGSTOP)
    try:
        said = diagnosed(rig)
        rep = rig.wd.check()
    finally:
        try:
            os.kill(pid, signal.SIGCONT)  # whatever happened, leave no stopped process behind
        except ProcessLookupError:
            pass
    inc = assert_recovered(rig, rep, "service-down", "unhealthy")
    assert said == inc["runbook"]
    killed = [s for s in inc["steps"] if s["action"] == "kill_unit_processes"][0]
    assert killed["status"] == "ok" and pid in killed["data"]["pids"]
    assert main_pid(rig) != pid
    # One restart: supervisord respawned the killed process, so the restart step stood down.
    assert rig.read("log/supervisord.log")[sup_offset:].count("spawned: 'glmtts'") == 1
    [restart] = [s for s in inc["steps"] if s["action"] == "restart"]
    assert restart["status"] == "skipped" and "already replaced" in restart["detail"], restart
    # Diagnostics probe the hung process once, briefly (DIAGNOSTICS_PROBE_S), not for probe_timeout_s.
    [diag] = [s for s in inc["steps"] if s["action"] == "capture_diagnostics"]
    assert diag["duration_s"] < DIAGNOSTICS_PROBE_S + 1.5, diag
    assert inc["fault_at"] <= inc["detected_at"] - 2.0  # the first failed probe's start, before its timeout
    assert inc["outage_s"] is not None and inc["verification_s"] is not None


def test_cuda_oom_then_wedge_is_detected_and_recovered(rig):
    rig.set_fault("oom_wedge")
    rig.request_in_background()
    rig.wait_for("log/error.log", "torch.OutOfMemoryError: CUDA out of memory")
    deadline = time.monotonic() + 30
    while requests.get(rig.url + "/healthz", timeout=5).status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.3)
    rig.set_fault("")
    said = diagnosed(rig)
    rep = rig.wd.check()
    inc = assert_recovered(rig, rep, "cuda-oom", "cuda_oom")
    assert "unhealthy" in inc["signatures"]
    assert said == inc["runbook"]


def test_segfault_is_detected_and_recovered(rig):
    pid = main_pid(rig)
    rig.set_fault("segfault")
    rig.request_in_background()
    rig.wait_for("log/supervisord.log", "terminated by SIGSEGV")
    rig.set_fault("")
    said = diagnosed(rig)
    rep = rig.wd.check()
    assert said == assert_recovered(rig, rep, "segfault", "segfault")["runbook"]
    assert main_pid(rig) != pid


def test_cuda_fatal_exits_75_is_restarted_by_supervisord_and_recorded(rig):
    pid = main_pid(rig)
    rig.set_fault("cuda_fatal")
    rig.request_in_background()
    rig.wait_for("log/supervisord.log", "exited: glmtts (exit status 75; not expected)")
    rig.set_fault("")
    rig.wait_healthy()  # supervisord alone brought it back, before any watchdog cycle
    assert main_pid(rig) not in (None, pid)
    said = diagnosed(rig)
    rep = rig.wd.check()
    inc = assert_recovered(rig, rep, "cuda-fatal", "cuda_fatal")
    assert said == inc["runbook"]
    assert "unexpected_exit" in inc["signatures"]
    assert [s["status"] for s in inc["steps"] if s["action"] == "restart"] == ["skipped"], inc["steps"]


def test_supervisorctl_restart_and_stop_are_planned_not_incidents(rig):
    before, alerts = len(records(rig)), len(rig.rx.received)
    pid = main_pid(rig)
    r = supervisorctl(rig, "restart", "glmtts")
    assert "glmtts: started" in r.stdout, r.stdout + r.stderr
    rig.wait_healthy()
    assert main_pid(rig) != pid
    assert diagnosed(rig) is None
    rep = rig.wd.check()
    assert rep.code == EXIT_OK and "glmtts: planned restart" in rep.summary(), rep.summary()
    [rec] = records(rig)[before:]
    assert rec["kind"] == "planned" and rec["outcome"] == "planned" and "stopped: glmtts" in rec["reason"], rec

    supervisorctl(rig, "stop", "glmtts")
    rep = rig.wd.check()  # left stopped: the operator's doing, reported, not undone
    assert rep.code == EXIT_WARNING and "stopped (by an operator)" in rep.summary(), rep.summary()
    assert main_pid(rig) is None and [r["what"] for r in records(rig)[-1]["planned"]] == ["stop"]
    assert len(records(rig)) == before + 2 and len(rig.rx.received) == alerts  # nobody was paged
    supervisorctl(rig, "start", "glmtts")
    rig.wait_healthy()
    assert rig.wd.check().code == EXIT_OK


def test_five_separate_faults_under_supervisord_keep_healing_and_page_once(rig):
    """supervisord restarts a process that lived startsecs as often as it dies (no start
    limit), so five separate faults within minutes never leave the service dead: the
    next cycle records them as one incident with their history, pages once, and the
    guard stays armed (nothing escalates, nothing waits for a human)."""
    rig.wd.resume()
    rig.wd.check()  # baseline
    before, sent = len(records(rig)), len(rig.rx.received)

    def by_request(word, line):
        def act(offset):
            rig.set_fault(word)
            rig.request_in_background()
            rig.wait_for("log/supervisord.log", line, timeout=60, offset=offset)
            rig.set_fault("")
        return act

    def by_signal(sig, line):
        def act(offset):
            os.kill(main_pid(rig), sig)
            rig.wait_for("log/supervisord.log", line, timeout=60, offset=offset)
        return act
    faults = [by_request("segfault", "terminated by SIGSEGV"), by_signal(signal.SIGKILL, "terminated by SIGKILL"),
              by_request("cuda_fatal", "exit status 75"), by_signal(signal.SIGABRT, "terminated by SIGABRT"),
              by_signal(signal.SIGKILL, "terminated by SIGKILL")]
    for act in faults:
        pid = main_pid(rig)
        offset = len(rig.read("log/supervisord.log"))
        act(offset)
        assert "FATAL" not in rig.read("log/supervisord.log")[offset:]
        rig.wait_healthy(120)
        assert main_pid(rig) not in (None, pid)
    rep = rig.wd.check()
    new = [r for r in records(rig)[before:] if r.get("kind") != "planned"]
    assert new and all(r["outcome"] == "recovered" for r in new), rep.summary()
    assert "escalated" not in rep.summary() and rig.wd.policy(rig.wd.load_state()).guard("glmtts").state == "armed"
    evidence = " ".join(e["line"] for r in new for e in r["evidence"])
    for words in ("SIGSEGV", "SIGKILL", "exit status 75", "SIGABRT"):
        assert words in evidence, (words, evidence[:2000])
    time.sleep(1)  # apprise posts from a worker thread
    pages = [m["title"] for m in rig.rx.received[sent:] if "[CRITICAL]" in m["title"] and "opened" in m["title"]]
    assert len(pages) == len(new) == 1, (pages, [r["id"] for r in new])
    assert requests.get(rig.url + "/healthz", timeout=5).status_code == 200
    assert rig.wd.check().code == EXIT_OK  # healed: a quiet cycle, no second page


def test_quiet_cycle_after_recoveries_is_ok(rig):
    rep = rig.wd.check()
    assert rep.code == EXIT_OK, rep.summary()


def test_crash_loop_escalates_once_with_the_engines_error_line(tmp_path):
    """An engine that cannot load: supervisord gives up (FATAL); the watchdog escalates
    once, with the engine's own error line in the alert, and then takes no action."""
    # startsecs longer than the failing load, so supervisord counts each try as a failed start
    r = Rig(str(tmp_path), engine="tests.plugins.faults:BrokenEngine", startsecs=8)
    try:
        with AlertReceiver() as rx:
            r.wait_for("log/supervisord.log", "entered FATAL state", timeout=60)
            wd = r.watchdog(rx.port)
            rep = wd.check()
            assert rep.code == 2 and "crash_loop" in rep.summary() and "escalated" in rep.summary()
            inc = last_incident(r)
            assert inc["outcome"] == "escalated" and inc["runbook"] == "crash-loop"
            [alert] = [m for m in rx.received if "escalated" in m["title"]]
            assert "weights file ckpt/missing.safetensors not found" in alert["message"]
            rep = wd.check()  # no further action: nothing restarted, no second page
            assert "waiting for `glmtts-watchdog resume`" in rep.summary()
            assert len([m for m in rx.received if "escalated" in m["title"]]) == 1
            assert wd.manager.status("glmtts").state == "crash_loop"
    finally:
        r.stop()
