"""Batch jobs on shared storage: two REAL service processes on one state_dir, output_dir
and prompt_root (glmtts/batch/lease.py). A replica killed with kill -9 mid-job (on
another host: its lease expires first; on this node: at once), frozen with SIGSTOP (its
lease expires, and once woken it commits nothing), or drained with SIGTERM (it releases
its lease: the other takes over at once): the other replica finishes the job, every
output exactly once, each task journalled once, no temp file left. And two live
replicas with two jobs synthesize each task exactly once (a plug-in engine counts the
syntheses of both processes in one file: tests/plugins/counting.py)."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.plugins.counting import SYNTH_LOG_ENV, read_log
from tests.support import fleet
from tests.support.batch import PROMPT_TEXT, assert_speech, reference_wav
from tests.support.service import REPO, ServiceProcess

pytestmark = pytest.mark.integration

ENGINE = "tests.plugins.counting:CountingEngine"
JOB_FILES = {"input.jsonl", "tasks.jsonl", "job.json", "journal.jsonl"}

# Run by `unshare --uts` for a replica that is "another host": its own host name, so the
# other replica's flock cannot tell it anything and only the lease's expiry counts.
OTHER_HOST = ("import runpy, socket, sys; socket.sethostname(sys.argv[1]); sys.argv = ['service']; "
              "runpy.run_module('service', run_name='__main__', alter_sys=True)")


class Shared:
    """One state_dir, output_dir and prompt_root for every replica; a log per replica."""

    def __init__(self, tmp_path, lease_s, slow=0.1):
        self.root = str(tmp_path)
        self.state_dir = os.path.join(self.root, "shared", "state")
        self.output_dir = os.path.join(self.root, "shared", "outputs")
        self.prompt_root = os.path.join(self.root, "shared", "prompts")
        for d in (self.state_dir, self.output_dir, self.prompt_root):
            os.makedirs(d, exist_ok=True)
        with open(os.path.join(self.prompt_root, "voice.wav"), "wb") as f:
            f.write(reference_wav())
        self.fault = os.path.join(self.root, "fault")
        with open(self.fault, "w") as f:
            f.write("slow:%g\n" % slow)  # each task takes a little while, so a kill lands mid-job
        self.synth_log = os.path.join(self.root, "synth.log")
        self.lease_s = lease_s
        self.replicas = []

    def replica(self, name, other_host=None, **env):
        env = dict({
            "GLMTTS_PATHS_STATE_DIR": self.state_dir, "GLMTTS_PATHS_OUTPUT_DIR": self.output_dir,
            "GLMTTS_PATHS_PROMPT_ROOT": self.prompt_root, "GLMTTS_BATCH_LEASE_S": str(self.lease_s),
            "GLMTTS_TEST_FAULT_FILE": self.fault, SYNTH_LOG_ENV: self.synth_log,
            "GLMTTS_SERVER_DRAIN_DELAY_S": "0"}, **env)
        svc = ServiceProcess(self.root, env, engine=ENGINE, name=name)
        self.replicas.append(svc)
        if other_host is None:
            return svc.start()
        with open(svc.stdout_path, "ab") as out, open(svc.stderr_path, "ab") as err:
            svc.proc = subprocess.Popen([fleet.tool("unshare"), "--uts", sys.executable, "-c", OTHER_HOST, other_host],
                                        cwd=REPO, env=svc.env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
        svc.wait_healthy()
        return svc

    def stop_all(self):
        for svc in self.replicas:
            if svc.proc is not None and svc.proc.poll() is None:
                os.kill(svc.proc.pid, signal.SIGCONT)  # a frozen one could not handle SIGTERM
            svc.stop(timeout=30)

    # -- what the shared directories say --------------------------------------------------

    def job_dir(self, job_id):
        return os.path.join(self.state_dir, "batches", job_id)

    def journal(self, job_id):
        path = os.path.join(self.job_dir(job_id), "journal.jsonl")
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in data.split(b"\n") if line.strip().endswith(b"}")]

    def done(self, job_id):
        return [r for r in self.journal(job_id) if r["t"] == "done"]

    def lease(self, job_id):
        """The current lease record (highest epoch), or None."""
        paths = glob.glob(os.path.join(self.job_dir(job_id), "lease.*"))
        if not paths:
            return None
        path = max(paths, key=lambda p: int(p.rsplit(".", 1)[1]))
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def holder(self, job_id):
        """The replica named by the current, unreleased lease."""
        rec = self.lease(job_id)
        if not rec or rec.get("released_at") or rec["expires_at"] < time.time():
            return None
        return next((s for s in self.replicas if rec["owner"]["role"] == "service:%d" % s.port), None)


def jsonl(n, text):
    return "".join(json.dumps({"prompt_audio": "voice.wav", "prompt_text": PROMPT_TEXT, "input_text": text % i,
                               "output_name": "clip_%03d" % i}) + "\n" for i in range(n)).encode()


def submit(svc, n, text):
    r = svc.post("/v1/batches", data=jsonl(n, text), headers={"Content-Type": "application/x-ndjson"})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def wait_for(predicate, timeout, what, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("timed out after %ds waiting for %s" % (timeout, what))


def assert_exactly_once(shared, job_id, n):
    """Every output once, valid audio, each task journalled done once, no temp files."""
    out = os.path.join(shared.output_dir, job_id)
    names = sorted(os.listdir(out))
    assert names == ["clip_%03d.wav" % i for i in range(n)], "extra or missing files: %s" % (
        set(names) ^ {"clip_%03d.wav" % i for i in range(n)})
    for name in names:
        assert_speech(os.path.join(out, name))
    per_task = {}
    for rec in shared.done(job_id):
        per_task[rec["task"]] = per_task.get(rec["task"], 0) + 1
        assert os.path.getsize(os.path.join(out, rec["file"])) == rec["bytes"]  # journal and file agree
    assert sorted(per_task) == list(range(n)) and set(per_task.values()) == {1}, \
        "tasks journalled more than once: %s" % {t: c for t, c in per_task.items() if c > 1}
    state = set(os.listdir(shared.job_dir(job_id)))
    leases = {f for f in state if f.startswith("lease.")}
    assert state - leases <= JOB_FILES, "stray files in the job's state dir: %s" % (state - leases - JOB_FILES)
    assert len(leases) == 1 and shared.lease(job_id)["released_at"], "the finished job's lease is not released"
    strays = [f for f in os.listdir(os.path.join(shared.state_dir, "batches")) if f.startswith(".")]
    assert not strays, strays
    with open(os.path.join(shared.job_dir(job_id), "job.json")) as f:
        assert json.load(f)["status"] == "done"


def by_replica(shared, job_id, svc):
    return [r["task"] for r in shared.done(job_id) if r["by"].startswith("service:%d/" % svc.port)]


def job_running_on_one_of_two(shared, n, finished=8, other_host=None):
    """Two replicas (``b`` on another host if ``other_host``), one job of n tasks submitted
    to ``a`` and ``finished`` of its tasks done: (job id, the replica holding its lease,
    the other one)."""
    a = shared.replica("a")
    b = shared.replica("b", other_host=other_host)
    job_id = submit(a, n, "Clip %d.")
    wait_for(lambda: len(shared.done(job_id)) >= finished, 120, "%d finished tasks" % finished)
    first = shared.holder(job_id)
    assert first is not None, "nobody holds the running job's lease"
    return job_id, first, (b if first is a else a)


def test_kill_9_on_another_host_the_lease_expires_and_the_other_replica_finishes_the_job(tmp_path):
    fleet.require_root("a replica with its own host name (unshare --uts)")
    shared = Shared(tmp_path, lease_s=3)
    n = 30
    try:
        job_id, first, second = job_running_on_one_of_two(shared, n, other_host="replica-b.test")
        first.proc.kill()  # SIGKILL, by the PID we started: no release, no checkpoint
        first.proc.wait(30)
        killed_at = time.time()
        dead = shared.lease(job_id)
        finished_by_first = len(shared.done(job_id))
        # what a kill in the middle of writing an output leaves: a partial temp file
        partial = os.path.join(shared.output_dir, job_id, ".clip_%03d.wav.%s.%s.part" % (
            finished_by_first, job_id, dead["token"]))
        with open(partial, "wb") as f:
            f.write(b"RIFF\x00\x00half-written")

        taken = wait_for(lambda: (shared.lease(job_id) or {}).get("epoch", 0) > dead["epoch"] and shared.lease(job_id),
                         3 * shared.lease_s + 30, "the other replica to take the job over")
        assert taken["owner"]["role"] == "service:%d" % second.port
        # It honoured the dead replica's lease: not one moment before its expiry ...
        assert taken["acquired_at"] >= dead["expires_at"], "taken over %.2f s before the lease expired" % (
            dead["expires_at"] - taken["acquired_at"])
        assert dead["expires_at"] - killed_at > 0, "the lease had already expired at the kill"
        # ... and took it within lease_s plus its poll interval (and CI slack)
        assert taken["acquired_at"] - killed_at < shared.lease_s + 1.0 + 5.0

        final = wait_for(lambda: (lambda s: s if s["state"] == "done" else None)(
            second.get("/v1/batches/%s" % job_id).json()), 180, "the job to finish", step=0.2)
        assert final["progress"] == {"total": n, "done": n, "failed": 0, "pending": 0, "percent": 100.0}
        assert_exactly_once(shared, job_id, n)
        assert not os.path.exists(partial)
        assert sorted(by_replica(shared, job_id, first)) == list(range(finished_by_first))
        assert len(by_replica(shared, job_id, second)) == n - finished_by_first  # nothing done was redone
        assert "took over epoch %d" % dead["epoch"] in second.stderr() and "whose lease was expired" in second.stderr()
    finally:
        shared.stop_all()


def test_kill_9_on_the_same_node_the_other_replica_takes_over_at_once(tmp_path):
    shared = Shared(tmp_path, lease_s=30)  # long: a take-over within seconds cannot be the expiry
    n = 30
    try:
        job_id, first, second = job_running_on_one_of_two(shared, n)
        first.proc.kill()
        first.proc.wait(30)
        killed_at = time.time()
        dead = shared.lease(job_id)
        taken = wait_for(lambda: (shared.lease(job_id) or {}).get("epoch", 0) > dead["epoch"] and shared.lease(job_id),
                         60, "the other replica to take the job over")
        assert taken["owner"]["role"] == "service:%d" % second.port
        assert taken["acquired_at"] < dead["expires_at"] - 15, "it waited for the expiry"
        assert taken["acquired_at"] - killed_at < 10.0
        wait_for(lambda: second.get("/v1/batches/%s" % job_id).json()["state"] == "done", 180, "the job to finish",
                 step=0.2)
        assert_exactly_once(shared, job_id, n)
        assert "whose lease was dead" in second.stderr()
    finally:
        shared.stop_all()


def test_a_frozen_replica_loses_its_lease_and_once_woken_commits_nothing(tmp_path):
    shared = Shared(tmp_path, lease_s=3)
    n = 30
    try:
        job_id, first, second = job_running_on_one_of_two(shared, n)
        os.kill(first.proc.pid, signal.SIGSTOP)  # alive (its flock held) but not renewing: a hung host
        frozen = shared.lease(job_id)
        frozen_done = len(shared.done(job_id))
        wait_for(lambda: second.get("/v1/batches/%s" % job_id).json()["state"] == "done", 180,
                 "the other replica to finish the job", step=0.2)
        taken = shared.lease(job_id)
        assert taken["epoch"] > frozen["epoch"] and taken["acquired_at"] >= frozen["expires_at"]
        os.kill(first.proc.pid, signal.SIGCONT)  # it wakes up in the middle of its task
        wait_for(lambda: "lease lost" in first.stderr(), 60, "the woken replica to notice its lease is lost")
        time.sleep(1.0)  # time enough to commit anything it still would
        assert_exactly_once(shared, job_id, n)
        assert len(by_replica(shared, job_id, first)) == frozen_done
        assert first.get("/healthz").status_code == 200  # losing a lease is not an error of the process
        assert "Traceback" not in first.stderr()
    finally:
        shared.stop_all()


def test_two_live_replicas_and_two_jobs_synthesize_each_task_exactly_once(tmp_path):
    shared = Shared(tmp_path, lease_s=3, slow=0.05)
    n = 25
    try:
        a = shared.replica("a")
        b = shared.replica("b")
        jobs = {submit(a, n, "First job, clip %d."): "First job, clip %d.",
                submit(b, n, "Second job, clip %d."): "Second job, clip %d."}
        for job_id in jobs:
            wait_for(lambda: a.get("/v1/batches/%s" % job_id).json()["state"] == "done", 180, "job %s" % job_id,
                     step=0.2)
        log = read_log(shared.synth_log)
        for job_id, text in jobs.items():
            assert_exactly_once(shared, job_id, n)
            for event in ("start", "end"):
                counts = {}
                for ev, _pid, t in log:
                    if ev == event:
                        counts[t] = counts.get(t, 0) + 1
                twice = {t: c for t, c in counts.items() if t.startswith(text.split(",")[0]) and c != 1}
                assert not twice, "synthesized more than once: %s" % twice
                assert sum(1 for i in range(n) if counts.get(text % i) == 1) == n
        pids = {pid for _ev, pid, _t in log}
        assert pids == {a.pid, b.pid}, "both replicas should have worked (one job each): %s" % pids
        done_by = {job_id: {r["by"].split("/")[0] for r in shared.done(job_id)} for job_id in jobs}
        assert all(len(who) == 1 for who in done_by.values()), "a job was split between live replicas: %s" % done_by
    finally:
        shared.stop_all()


def test_sigterm_drains_the_replica_and_the_other_takes_the_job_over_at_once(tmp_path):
    # The other replica is "another host": neither a dead process nor the expiry (30 s)
    # can explain a take-over within seconds, only the release.
    fleet.require_root("a replica with its own host name (unshare --uts)")
    shared = Shared(tmp_path, lease_s=30, slow=0.2)
    n = 30
    try:
        job_id, first, second = job_running_on_one_of_two(shared, n, finished=5, other_host="replica-b.test")
        t0 = time.monotonic()
        first.proc.send_signal(signal.SIGTERM)
        code = first.proc.wait(60)
        exit_s = time.monotonic() - t0
        stopped_at = time.time()
        print("drained in %.1f s" % exit_s)
        assert code == 0, first.stderr()[-3000:]
        assert exit_s < 15, "the drain took %.1f s" % exit_s
        assert "lease released" in first.stderr()
        done_by_first = by_replica(shared, job_id, first)
        # the checkpoint: every task it started and synthesized to the end is journalled
        ended = {t for ev, pid, t in read_log(shared.synth_log) if ev == "end" and pid == first.pid}
        assert {"Clip %d." % i for i in done_by_first} == ended, "a finished synthesis was not journalled"

        taken = wait_for(lambda: (lambda r: r if r and r["owner"]["role"] == "service:%d" % second.port else None)(
            shared.lease(job_id)), 60, "the other replica to take the job over")
        print("taken over %.2f s after the exit" % (taken["acquired_at"] - stopped_at))
        assert taken["acquired_at"] - stopped_at < 5.0, "taken over %.1f s after the drain: that is the expiry, " \
            "not the release" % (taken["acquired_at"] - stopped_at)
        wait_for(lambda: second.get("/v1/batches/%s" % job_id).json()["state"] == "done", 180, "the job to finish",
                 step=0.2)
        assert_exactly_once(shared, job_id, n)
        assert sorted(by_replica(shared, job_id, second)) == sorted(set(range(n)) - set(done_by_first))
        assert "took over" not in second.stderr()  # it was handed over, nothing had to be taken
    finally:
        shared.stop_all()


def test_a_task_longer_than_the_drain_budget_is_abandoned_in_time_and_not_failed(tmp_path):
    # BatchService.shutdown(): a task still running at drain_timeout_s - RELEASE_S (2 s)
    # after the signal is abandoned; the runner thread is gone within drain_timeout_s.
    shared = Shared(tmp_path, lease_s=30, slow=60)  # one task takes a minute
    try:
        a = shared.replica("a", GLMTTS_SERVER_DRAIN_TIMEOUT_S="4")
        job_id = submit(a, 3, "Clip %d.")
        wait_for(lambda: any(ev == "start" for ev, _p, _t in read_log(shared.synth_log)), 60,
                 "the first task to reach the engine")
        t0 = time.monotonic()
        a.proc.send_signal(signal.SIGTERM)
        assert a.proc.wait(60) == 0, a.stderr()[-3000:]
        took = time.monotonic() - t0
        print("exit %.1f s after SIGTERM" % took)
        assert took < 4 + 6, "exit took %.1f s with drain_timeout_s = 4" % took
        assert "lease released" in a.stderr()
        journal = shared.journal(job_id)
        assert [r["t"] for r in journal] == ["start"], "the abandoned task was journalled as %s" % journal
        with open(os.path.join(shared.job_dir(job_id), "job.json")) as f:
            assert json.load(f)["status"] == "queued"  # resumable: the next holder redoes the task
        assert shared.lease(job_id)["released_at"]
        assert os.listdir(os.path.join(shared.output_dir, job_id)) == []
    finally:
        shared.stop_all()
