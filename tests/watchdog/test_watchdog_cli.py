"""`glmtts-watchdog` as a user runs it: exit codes, one-line summaries, verbs."""

import json
import os
import signal
import subprocess
import sys
import time

from tests.support.watchdog_fakes import HealthServer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def env_for(tmp_path, url, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLMTTS_")}
    for d in ("state", "log", "out"):
        os.makedirs(tmp_path / d, exist_ok=True)
    env.update({"GLMTTS_CONFIG": "", "GLMTTS_PATHS_STATE_DIR": str(tmp_path / "state"),
                "GLMTTS_PATHS_LOG_DIR": str(tmp_path / "log"), "GLMTTS_PATHS_OUTPUT_DIR": str(tmp_path / "out"),
                "GLMTTS_WATCHDOG_URL": url, "GLMTTS_WATCHDOG_PROBE_RETRIES": "1", "GLMTTS_WATCHDOG_DISK_FREE_FLOOR_MB": "0",
                "GLMTTS_WATCHDOG_KERNEL_LOG": str(tmp_path / "kern.log"), "GLMTTS_WATCHDOG_MANAGER": "supervisor",
                "GLMTTS_WATCHDOG_SUPERVISOR_CONF": str(tmp_path / "none.conf"), "GLMTTS_WATCHDOG_READY_TIMEOUT_S": "2"})
    env.update(extra)
    return env


def wd(env, *args, timeout=60):
    return subprocess.run([sys.executable, os.path.join(REPO, "ops", "healthcheck.py")] + list(args),
                          env=env, capture_output=True, text=True, timeout=timeout)


def test_check_ok_is_exit_0_with_one_line(tmp_path):
    with HealthServer(200) as srv:
        r = wd(env_for(tmp_path, srv.url), "check")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\n") == 1 and r.stdout.startswith("GLMTTS OK - glmtts: healthy")


def test_check_critical_when_remediation_fails_then_incidents_lists_it(tmp_path):
    with HealthServer(503) as srv:
        env = env_for(tmp_path, srv.url)
        r = wd(env, "check")
    assert r.returncode == 2 and r.stdout.startswith("GLMTTS CRITICAL - glmtts: unhealthy -> failed"), r.stdout + r.stderr
    r = wd(env, "incidents", "--json")
    [inc] = [json.loads(l) for l in r.stdout.splitlines()]
    assert inc["outcome"] == "failed" and inc["runbook"] == "service-down"
    r = wd(env, "incidents")
    assert "service-down" in r.stdout and "failed" in r.stdout


def test_bad_config_is_unknown_with_the_key_named(tmp_path):
    r = wd(env_for(tmp_path, "http://127.0.0.1:9", GLMTTS_WATCHDOG_MANAGER="upstart"), "check")
    assert r.returncode == 3 and "watchdog.manager" in r.stdout


def test_runbook_verbs(tmp_path):
    env = env_for(tmp_path, "http://127.0.0.1:9")
    r = wd(env, "runbook", "list")
    assert r.returncode == 0 and "gpu-xid" in r.stdout and "crash_loop" in r.stdout
    r = wd(env, "runbook", "show", "cuda-oom")
    assert r.stdout.startswith("---\nid: cuda-oom")
    r = wd(env, "runbook", "exec", "service-down")  # no terminal, no --yes: refuses
    assert r.returncode != 0 and "--yes" in r.stderr
    r = wd(env, "runbook", "exec", "service-down", "--dry-run")
    assert r.returncode == 0 and "would run" in r.stdout
    r = wd(env, "runbook", "show", "nope")
    assert r.returncode != 0 and "no runbook 'nope'" in r.stderr


def test_diagnose_names_the_runbook_to_open(tmp_path):
    with HealthServer(503) as srv:
        env = env_for(tmp_path, srv.url)
        with open(tmp_path / "log" / "error.log", "w") as f:
            f.write("RuntimeError: CUDA error: an illegal memory access was encountered\n")
        r = wd(env, "diagnose")
    assert r.returncode == 0, r.stderr
    assert "healthz:   unhealthy HTTP 503" in r.stdout
    assert "[cuda_fatal] " in r.stdout and "runbooks/cuda-fatal.md" in r.stdout


def test_resume_and_run_stops_at_once_on_sigterm(tmp_path):
    with HealthServer(200) as srv:
        env = env_for(tmp_path, srv.url, GLMTTS_WATCHDOG_INTERVAL_S="3600")
        assert "nothing was escalated" in wd(env, "resume").stdout
        p = subprocess.Popen([sys.executable, "-m", "glmtts.cli.watchdog", "run"], env=env, cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 30
            while srv.probes == 0 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert srv.probes >= 1
            t0 = time.monotonic()
            p.send_signal(signal.SIGTERM)
            assert p.wait(10) == 0
            assert time.monotonic() - t0 < 10  # not after the 3600 s interval
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()


DRY_RUN_VERBS = (
    ["check"], ["diagnose"], ["diagnose", "--json"], ["runbook"], ["runbook", "list"], ["runbook", "show", "cuda-fatal"],
    ["runbook", "exec", "service-down", "--yes"], ["runbook", "exec", "service-down"], ["incidents"],
    ["incidents", "--json"], ["resume"], ["resume", "--unit", "glmtts"],
)


def test_every_verb_takes_dry_run_before_or_after_it_without_a_traceback(tmp_path):
    with HealthServer(503) as srv:  # unhealthy: check and exec have real decisions to describe
        env = env_for(tmp_path, srv.url, GLMTTS_WATCHDOG_INTERVAL_S="3600")
        for verb in DRY_RUN_VERBS:
            for argv in (["--dry-run"] + verb, verb + ["--dry-run"]):
                r = wd(env, *argv)
                assert "Traceback" not in r.stderr, (argv, r.stderr)
                assert r.returncode in (0, 2), (argv, r.returncode, r.stdout, r.stderr)
                if "exec" in verb or verb == ["check"]:
                    assert "would run" in r.stdout or "dry_run" in r.stdout, (argv, r.stdout)
        assert wd(env, "incidents", "--json").stdout == ""  # a dry run records nothing
        for argv in (["--dry-run", "run"], ["run", "--dry-run"]):
            p = subprocess.Popen([sys.executable, "-m", "glmtts.cli.watchdog"] + argv, env=env, cwd=REPO,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            try:
                probes = srv.probes
                deadline = time.monotonic() + 30
                while srv.probes == probes and time.monotonic() < deadline:
                    time.sleep(0.1)
                time.sleep(0.5)  # let the dry cycle finish describing its steps
                p.send_signal(signal.SIGTERM)
                _, err = p.communicate(timeout=20)
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            assert p.returncode == 0 and "Traceback" not in err, (argv, err)


def test_dry_run_resume_reports_and_changes_nothing(tmp_path):
    env = env_for(tmp_path, "http://127.0.0.1:9")
    state = tmp_path / "state" / "watchdog" / "state.json"
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps({"guards": {"glmtts": {"state": "escalated", "reason": "test", "attempts": {}}}}))
    r = wd(env, "resume", "--dry-run")
    assert r.returncode == 0 and "would re-arm: glmtts" in r.stdout, r.stdout + r.stderr
    assert json.loads(state.read_text())["guards"]["glmtts"]["state"] == "escalated"
    r = wd(env, "resume")
    assert "re-armed: glmtts" in r.stdout, r.stdout + r.stderr
