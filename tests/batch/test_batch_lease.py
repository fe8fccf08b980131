"""The job lease (glmtts/batch/lease.py) as a state machine, on a real directory with a
fake clock and a fake node (which owners share this kernel, which of them died): acquire,
renew, expire, take over after expiry, release, dead owner on this node, a stale owner
that wakes up and cannot commit, the link race. Then the real node's flock liveness with
a real child process (kill -9, SIGSTOP), and a runner that loses its lease mid-task."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from glmtts.batch import lease as lease_mod
from glmtts.batch import states
from glmtts.batch.lease import DEAD, EXPIRED, HELD, RELEASED, Heartbeat, Lease, LeaseLost
from glmtts.batch.runner import EngineSynthesizer, JobBusy, Runner
from glmtts.batch.store import JobStore, Journal
from glmtts.batch.validate import validate_file
from tests.support.batch import REPO, Sandbox

LEASE_S = 30.0


class Clock:
    """Wall time the test moves by hand."""

    def __init__(self, now=1_000_000.0):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


class Kernel:
    """What a kernel knows about liveness locks: which are held by a live process."""

    def __init__(self, boot_id):
        self.boot_id = boot_id
        self.locks = set()

    def kill(self, lease):
        """The owner of ``lease`` dies: the kernel drops its lock (what kill -9 does)."""
        self.locks.discard(os.path.join(lease.dir, lease_mod.ALIVE_PREFIX + lease.token))


class FakeNode:
    """Stands in for node.Node (glmtts/batch/node.py; no real flock): a host on a Kernel."""

    def __init__(self, kernel, host="node-a"):
        self.kernel = kernel
        self.host = host
        self.boot_id = kernel.boot_id

    def same(self, owner):
        return owner.get("host") == self.host and owner.get("boot_id") == self.boot_id

    def hold(self, path):
        open(path, "w").close()
        self.kernel.locks.add(path)
        return path

    def drop(self, fd):
        self.kernel.locks.discard(fd)

    def gone(self, path):
        return path not in self.kernel.locks


@pytest.fixture
def rig(tmp_path):
    d = tmp_path / "job"
    d.mkdir()
    clock = Clock()
    here = Kernel("boot-1")
    elsewhere = Kernel("boot-2")

    def lease(node="here", **kw):
        n = {"here": FakeNode(here), "here2": FakeNode(here), "remote": FakeNode(elsewhere, host="node-b")}[node]
        return Lease(str(d), kw.pop("lease_s", LEASE_S), clock=clock, node=n, **kw)
    return type("Rig", (), {"dir": str(d), "clock": clock, "here": here, "lease": staticmethod(lease)})


def files(rig):
    return sorted(os.listdir(rig.dir))


def record(rig, epoch):
    with open(os.path.join(rig.dir, "lease.%d" % epoch)) as f:
        return json.load(f)


def test_acquire_a_free_job_then_nobody_else_can(rig):
    a, b = rig.lease(role="service:7860"), rig.lease("remote")
    assert a.state(None) == lease_mod.FREE
    assert a.acquire() and a.held and a.epoch == 1
    rec = record(rig, 1)
    assert rec["owner"]["role"] == "service:7860" and rec["owner"]["pid"] == os.getpid()
    assert rec["expires_at"] == rig.clock.now + LEASE_S and rec["released_at"] is None
    assert not b.acquire() and not b.held
    assert b.holder()["token"] == a.token
    assert b.state(b.holder()) == HELD
    assert files(rig) == ["alive." + a.token, "lease.1"]  # no temp file left behind


def test_renew_moves_the_expiry_so_a_live_owner_is_never_taken_over(rig):
    a, b = rig.lease(), rig.lease("remote")
    assert a.acquire()
    for _ in range(9):  # three lease lengths, renewed every lease_s/3 as the heartbeat does
        rig.clock.advance(LEASE_S / 3)
        a.renew()
        assert record(rig, 1)["expires_at"] == rig.clock.now + LEASE_S
        assert not b.acquire()
    a.fence()  # still ours: commits allowed


def test_expired_lease_is_taken_over_with_the_next_epoch_and_the_stale_owner_cannot_commit(rig):
    a, b = rig.lease(), rig.lease("remote")
    assert a.acquire()
    token_a = a.token
    rig.clock.advance(LEASE_S - 0.01)
    assert not b.acquire(), "taken before the lease expired"
    rig.clock.advance(0.01)
    assert b.state(b.holder() or record(rig, 1)) == EXPIRED
    assert b.acquire() and b.epoch == 2
    assert files(rig) == ["alive." + b.token, "lease.2"]  # the old epoch and its liveness file are gone
    # the stale owner wakes up (it was frozen, or its host lost the disk for a while)
    for commit in (a.fence, a.renew):
        with pytest.raises(LeaseLost):
            commit()
    assert not a.held and a.lost
    assert not a.release(), "a lost lease must not be released over the new holder"
    rec = record(rig, 2)
    assert rec["token"] == b.token and rec["token"] != token_a and not rec["released_at"]
    b.fence()


def test_a_frozen_owner_that_wakes_after_its_expiry_stops_even_if_nobody_took_over(rig):
    a = rig.lease()
    assert a.acquire()
    rig.clock.advance(LEASE_S + 5)
    with pytest.raises(LeaseLost) as e:
        a.fence()
    assert "expired" in str(e.value)
    # it may try again like anyone else, with a new epoch (so anything it fenced before is old)
    assert a.acquire() and a.epoch == 2


def test_fence_renews_on_the_spot_when_the_heartbeat_is_late_and_renewal_stops_near_expiry(rig):
    a = rig.lease()
    assert a.acquire()
    rig.clock.advance(LEASE_S * 0.7)  # less than lease_s/3 left: a commit now would be too close
    a.fence()
    assert record(rig, 1)["expires_at"] == rig.clock.now + LEASE_S
    rig.clock.advance(LEASE_S * 0.95)  # within skew (lease_s/10) of expiry: a taker may already act
    with pytest.raises(LeaseLost):
        a.renew()


def test_release_lets_another_replica_take_the_job_at_once(rig):
    a, b = rig.lease(), rig.lease("remote")
    assert a.acquire()
    rig.clock.advance(1)
    assert a.release() and not a.held
    rec = record(rig, 1)
    assert rec["released_at"] == rig.clock.now and b.state(rec) == RELEASED
    assert "alive." + rec["token"] not in files(rig)
    assert b.holder() is None
    assert b.acquire() and b.epoch == 2  # 1 s after the start, not lease_s


def test_a_dead_owner_on_this_node_is_taken_over_at_once_but_a_remote_one_only_after_expiry(rig):
    a = rig.lease()
    assert a.acquire()
    same_kernel, remote = rig.lease("here2"), rig.lease("remote")
    rig.clock.advance(1)
    assert not same_kernel.acquire(), "a live owner on this node was taken over"
    rig.here.kill(a)  # kill -9: the kernel drops the owner's flock
    assert same_kernel.state(record(rig, 1)) == DEAD
    assert not remote.acquire(), "another host cannot see our locks; it must wait for the expiry"
    assert same_kernel.acquire() and same_kernel.epoch == 2


def test_of_many_replicas_taking_over_one_expired_lease_exactly_one_wins(rig):
    a = rig.lease()
    assert a.acquire()
    rig.clock.advance(LEASE_S + 1)
    takers = [rig.lease("remote") for _ in range(8)]
    barrier = threading.Barrier(len(takers))
    won = []

    def take(lease):
        barrier.wait()
        if lease.acquire():
            won.append(lease)
    threads = [threading.Thread(target=take, args=(t,)) for t in takers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(won) == 1, "%d replicas won the same lease" % len(won)
    assert lease_mod.LEASE_FILE.fullmatch(files(rig)[-1]) and files(rig).count("lease.2") == 1
    assert record(rig, 2)["token"] == won[0].token
    assert [f for f in files(rig) if f.startswith(".lease-")] == []


def test_an_unreadable_lease_file_counts_as_held_until_lease_s_after_it_was_written(rig):
    path = os.path.join(rig.dir, "lease.1")
    with open(path, "w") as f:
        f.write("{not json")
    written = os.stat(path).st_mtime
    rig.clock.now = written + 1
    b = rig.lease("remote")
    assert not b.acquire()
    rig.clock.now = written + LEASE_S + 1
    assert b.acquire() and b.epoch == 2


def test_heartbeat_keeps_a_short_lease_alive_in_real_time(tmp_path):
    node = FakeNode(Kernel("boot-1"))
    remote = FakeNode(Kernel("boot-2"), host="node-b")
    a = Lease(str(tmp_path), 0.9, node=node)
    b = Lease(str(tmp_path), 0.9, node=remote)
    assert a.acquire()
    with Heartbeat(a):
        time.sleep(2.0)  # more than two lease lengths
        assert not b.acquire(), "the heartbeat did not renew"
    time.sleep(1.2)
    assert b.acquire()


HOLDER = r"""
import sys, time
from glmtts.batch.lease import Lease
lease = Lease(sys.argv[1], 600.0, role="child")
assert lease.acquire()
print(lease.token, flush=True)
time.sleep(600)
"""


def test_real_node_a_kill_9_owner_is_dead_at_once_a_frozen_one_is_alive(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE,
                             text=True, env=dict(os.environ, PYTHONPATH=REPO))
    try:
        token = child.stdout.readline().strip()
        assert token, "the child did not take the lease"
        here = Lease(str(tmp_path), 600.0)  # the real Node: host name, boot id, flock
        assert here.holder()["token"] == token and not here.acquire()
        child.send_signal(signal.SIGSTOP)  # frozen is not dead: only the expiry frees it
        time.sleep(0.2)
        assert not here.acquire()
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        assert here.state(here.current()[1]) == DEAD
        assert here.acquire() and here.epoch == 2  # at once: 600 s are far from over
        assert here.release()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(30)


# -- the runner under a lease --------------------------------------------------------------


class Gate(EngineSynthesizer):
    """The real espeak engine, held at the given task's text until released."""

    def __init__(self, engine, text):
        super().__init__(engine)
        self.text = text
        self.reached = threading.Event()
        self.go = threading.Event()

    def synthesize(self, request):
        if request.text == self.text:
            self.reached.set()
            self.go.wait(60)
        return super().synthesize(request)


def _espeak(settings):
    from glmtts import engines
    e = engines.create(settings)
    e.load()
    return e


def _job(box, n):
    path = box.write_job("job.jsonl", [box.task(i) for i in range(n)])
    report = validate_file(path, box.settings)
    return JobStore(box.settings).create(path, report, source=path)


def test_a_runner_that_lost_its_lease_mid_task_commits_nothing_and_the_new_holder_finishes(tmp_path):
    box = Sandbox(tmp_path / "box")
    job = _job(box, 4)
    clock = Clock()
    here = Kernel("boot-1")
    synth = Gate(_espeak(box.settings), "Clip 2.")
    runner = Runner(job, synth, box.settings, wall=clock, node=FakeNode(here), lease_s=LEASE_S)
    result = {}
    t = threading.Thread(target=lambda: result.update(runner.run()))
    t.start()
    try:
        assert synth.reached.wait(60), "the runner never reached task 2"
        # the runner is stuck past its expiry (a frozen host); a replica elsewhere takes over
        clock.advance(LEASE_S + 1)
        other = Lease(job.dir, LEASE_S, clock=clock, node=FakeNode(Kernel("boot-2"), host="node-b"))
        assert other.acquire()
    finally:
        synth.go.set()
        t.join(60)
    journal = job.journal.replay(repair=False)
    assert sorted(r["task"] for r in journal if r["t"] == states.TASK_DONE) == [0, 1], "the stale runner committed"
    assert sorted(os.listdir(job.out_dir)) == ["clip_000.wav", "clip_001.wav"]  # no output, no temp file
    assert JobStore(box.settings).get(job.id).status == states.RUNNING  # job.json untouched by the stale runner
    assert result["id"] == job.id
    # while the new holder has it, nobody else may run it
    with pytest.raises(JobBusy) as e:
        Runner(JobStore(box.settings).get(job.id), EngineSynthesizer(synth.engine), box.settings, wall=clock,
               node=FakeNode(here)).run()
    assert "node-b" in str(e.value) and e.value.code == "batch_busy"
    other.release()
    summary = Runner(JobStore(box.settings).get(job.id), EngineSynthesizer(synth.engine), box.settings, wall=clock,
                     node=FakeNode(here)).run()
    assert summary["status"] == states.DONE and summary["progress"]["done"] == 4
    assert sorted(os.listdir(job.out_dir)) == ["clip_%03d.wav" % i for i in range(4)]
    done = [r["task"] for r in job.journal.replay() if r["t"] == states.TASK_DONE]
    assert sorted(done) == [0, 1, 2, 3], "a task journalled twice or never: %s" % done


def test_status_readers_never_cut_the_journal_only_its_holder_repairs_it(tmp_path):
    path = str(tmp_path / "journal.jsonl")
    with open(path, "w") as f:
        f.write('{"t":"done","task":0}\n{"t":"do')  # a holder mid-append, or killed mid-append
    size = os.path.getsize(path)
    assert Journal(path).replay(repair=False) == [{"t": "done", "task": 0}]
    assert os.path.getsize(path) == size
    assert Journal(path).replay() == [{"t": "done", "task": 0}]
    assert os.path.getsize(path) == len('{"t":"done","task":0}\n')
