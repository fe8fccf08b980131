"""Durability of `glmtts batch run` as a real subprocess: kill -9 at random points and
resume (every output exactly once, no temp files), and ENOSPC on a real tiny tmpfs
mounted in a private mount namespace (the job pauses, then completes, nothing lost)."""

import glob
import json
import os
import random
import shutil
import signal
import subprocess
import time

import pytest

from tests.support.batch import Sandbox, assert_speech

pytestmark = pytest.mark.integration


def journal_of(box):
    paths = glob.glob(os.path.join(box.state_dir, "batches", "*", "journal.jsonl"))
    return paths[0] if paths else None


def done_records(box):
    path = journal_of(box)
    if not path:
        return []
    out = []
    with open(path, "rb") as f:
        for line in f.read().split(b"\n"):
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("t") == "done":
                out.append(rec)
    return out


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.005)
    raise AssertionError("timed out after %ds waiting for %s" % (timeout, what))


def test_kill_9_at_three_random_points_then_resume_produces_every_output_exactly_once(tmp_path):
    box = Sandbox(tmp_path / "box")
    n = 200
    job = box.write_job("job.jsonl", [box.task(i) for i in range(n)])
    out = str(tmp_path / "out")
    cmd = box.glmtts("batch", "run", job, "--local", "--out", out, "--quiet")
    rng = random.Random(os.getpid())
    points = sorted(rng.sample(range(10, n - 20), 3))
    print("kill -9 after %s finished tasks" % points)  # shown if the test fails
    killed_at = []
    for point in points:
        with open(tmp_path / "stderr.log", "ab") as err:
            proc = subprocess.Popen(cmd, env=box.env(), stdout=subprocess.DEVNULL, stderr=err)
            try:
                wait_for(lambda: len(done_records(box)) >= point or proc.poll() is not None, 120,
                         "%d finished tasks" % point)
                assert proc.poll() is None, "the runner ended before the kill point: %s" % (
                    (tmp_path / "stderr.log").read_text()[-2000:])
                proc.send_signal(signal.SIGKILL)
            finally:
                proc.kill()
                proc.wait(30)
        killed_at.append(len(done_records(box)))
    assert killed_at[-1] < n, "the job finished before the last kill"
    res = subprocess.run(cmd, env=box.env(), capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming" in res.stderr and "done: %d done, 0 failed of %d" % (n, n) in res.stdout

    names = sorted(os.listdir(out))
    assert names == ["clip_%03d.wav" % i for i in range(n)], "extra or missing files: %s" % (
        set(names) ^ {"clip_%03d.wav" % i for i in range(n)})
    done = done_records(box)
    per_task = {}
    for rec in done:
        per_task[rec["task"]] = per_task.get(rec["task"], 0) + 1
    assert sorted(per_task) == list(range(n)) and set(per_task.values()) == {1}, "a task was journalled twice"
    for rec in done:  # journal and files agree
        assert os.path.getsize(os.path.join(out, rec["file"])) == rec["bytes"]
    for name in names[::10]:
        assert_speech(os.path.join(out, name))
    status = subprocess.run(box.glmtts("batch", "list", "--json"), env=box.env(), capture_output=True, text=True,
                            timeout=60)
    [summary] = json.loads(status.stdout)
    assert summary["status"] == "done" and summary["progress"]["done"] == n


def _can_unshare():
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return "needs root and unshare(1) to mount a private tmpfs"
    probe = subprocess.run(["unshare", "--mount", "sh", "-c", "mount --make-rprivate / && mount -t tmpfs "
                            "-o size=64k tmpfs /mnt"], capture_output=True, text=True, timeout=30)
    return None if probe.returncode == 0 else "cannot mount a tmpfs in a mount namespace: %s" % probe.stderr.strip()


SCRIPT = r"""
set -u
mount --make-rprivate /
mount -t tmpfs -o size=2m tmpfs "$OUT"
# leave room for only a few outputs
head -c $((1800 * 1024)) /dev/zero > "$OUT/filler" 2>/dev/null
"$@" 2> "$ERRLOG" &
pid=$!
i=0
while [ ! -e "$FREE_FLAG" ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done
rm -f "$OUT/filler"
wait $pid
rc=$?
ls -A "$OUT" > "$LISTING"
cp "$OUT"/*.wav "$COPY"/ 2>/dev/null
exit $rc
"""


def test_enospc_on_a_real_tmpfs_pauses_the_job_then_completes_when_space_is_freed(tmp_path):
    why = _can_unshare()
    if why:
        if os.environ.get("GLMTTS_TEST_REQUIRE_SYSTEMD"):
            pytest.fail(why)
        pytest.skip(why)
    box = Sandbox(tmp_path / "box")
    n = 30
    job = box.write_job("job.jsonl", [box.task(i) for i in range(n)])
    out = str(tmp_path / "small")  # the tmpfs is mounted over this directory, in the namespace only
    os.makedirs(out)
    copy = tmp_path / "copy"
    copy.mkdir()
    env = box.env(OUT=out, ERRLOG=str(tmp_path / "runner.err"), FREE_FLAG=str(tmp_path / "free"),
                  LISTING=str(tmp_path / "listing"), COPY=str(copy))
    proc = subprocess.Popen(["unshare", "--mount", "sh", "-c", SCRIPT, "sh"] +
                            box.glmtts("batch", "run", job, "--local", "--out", out, "--quiet"),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def paused():
            files = glob.glob(os.path.join(box.state_dir, "batches", "*", "job.json"))
            return files and json.load(open(files[0]))["status"] == "paused"
        wait_for(lambda: paused() or proc.poll() is not None, 120, "the job to pause on ENOSPC")
        assert proc.poll() is None, proc.communicate()
        stuck = len(done_records(box))
        assert 0 < stuck < n
        time.sleep(1.0)
        assert len(done_records(box)) == stuck, "the job went on while the disk was full"
        err = (tmp_path / "runner.err").read_text()
        assert "No space left on device" in err and "job paused, no task failed" in err
        (tmp_path / "free").write_text("go")
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    err = (tmp_path / "runner.err").read_text()
    assert proc.returncode == 0, err[-3000:] + stderr
    assert "done: %d done, 0 failed of %d" % (n, n) in stdout
    assert "resumed after" in err
    listing = (tmp_path / "listing").read_text().split()
    assert sorted(listing) == ["clip_%03d.wav" % i for i in range(n)], listing  # no temp files, no filler
    for i in range(n):
        assert_speech(str(copy / ("clip_%03d.wav" % i)))
    assert not os.listdir(out), "the tmpfs leaked out of the mount namespace"
