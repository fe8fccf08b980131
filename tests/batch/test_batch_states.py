"""The batch job's machine (glmtts/batch/states.py JOB) walked arrow by arrow through a real
BatchJob in a sandbox: every arrow of the table stamps the job and saves job.json
atomically with the new status (started_at the first time it runs, finished_at when it
finishes); every arrow outside it (a finished job run again, say) raises and leaves the
job and its file as they were; a cancel of a job finished meanwhile says so and changes
nothing. And no module but the owner writes a job's status."""

import argparse
import ast
import errno
import json
import os
import pathlib

import pytest

from glmtts.batch import states, store
from glmtts.batch.cmd import cmd_cancel
from glmtts.batch.store import JobStore
from glmtts.batch.validate import validate_file
from tests.support.batch import Sandbox

ROOT = pathlib.Path(__file__).resolve().parents[2]
ARROWS = states.JOB.pairs
T0 = 1_800_000_000.0


@pytest.fixture
def box(tmp_path):
    return Sandbox(tmp_path / "box")


def new_job(box):
    path = box.write_job("job.jsonl", [box.task(0), box.task(1)])
    report = validate_file(path, box.settings)
    assert report.ok, report.format_text()
    return JobStore(box.settings).create(path, report, source=path, now=T0)


def path_to(state):
    """The arrows from queued to ``state`` (breadth first through the table)."""
    paths, frontier = {states.QUEUED: []}, [states.QUEUED]
    while frontier:
        nxt = []
        for s in frontier:
            for t in states.JOB.arrows.get(s, ()):
                if t not in paths:
                    paths[t] = paths[s] + [t]
                    nxt.append(t)
        frontier = nxt
    return paths[state]


def on_disk(job):
    with open(os.path.join(job.dir, "job.json"), encoding="utf-8") as f:
        return json.load(f)


def test_the_table_covers_every_state_and_finished_jobs_have_no_way_out():
    reached = {states.QUEUED} | {new for _, new in ARROWS}
    assert reached == set(states.ALL)
    assert not any(old in states.FINISHED for old, _ in ARROWS)
    assert set(states.JOB.entry) == set(states.ALL)  # entering any state saves job.json
    assert all(names[-1] == "save" for names in states.JOB.entry.values())  # saved with every stamp made


@pytest.mark.parametrize("old, new", ARROWS, ids=["%s->%s" % a for a in ARROWS])
def test_every_arrow_stamps_the_job_and_saves_it_atomically(box, monkeypatch, old, new):
    job = new_job(box)
    t = T0
    for s in path_to(old):
        t += 10
        job.transition(s, now=t, reason="on the way")
    started_before = job.state["started_at"]
    writes = []
    real = store.atomic_write

    def spy(path, data, **kw):
        writes.append((path, json.loads(data)["status"], kw.get("tmp")))
        return real(path, data, **kw)
    monkeypatch.setattr(store, "atomic_write", spy)

    assert job.transition(new, now=t + 10, reason="because") == old

    saved = on_disk(job)
    assert job.status == saved["status"] == new
    assert saved["updated_at"] == t + 10 and saved["reason"] == "because"
    # one write, of the new status, through a temp file beside job.json, none left behind
    [(path, status, tmp)] = writes
    assert path == os.path.join(job.dir, "job.json") and status == new
    assert tmp and os.path.dirname(tmp) == job.dir and tmp != path
    assert not [n for n in os.listdir(job.dir) if ".tmp" in n]
    if new == states.RUNNING:
        assert saved["started_at"] == (started_before or t + 10)  # the first run's time, kept on a resume
    else:
        assert saved["started_at"] == started_before
    assert saved["finished_at"] == (t + 10 if new in states.FINISHED else None)


def reachable():
    return [states.QUEUED] + sorted({new for _, new in ARROWS} - {states.QUEUED})


@pytest.mark.parametrize("old", reachable())
def test_every_arrow_outside_the_table_raises_and_changes_nothing(box, old):
    job = new_job(box)
    for s in path_to(old):
        job.transition(s, now=T0 + 1, reason="on the way")
    for new in states.ALL:
        if new == old or (old, new) in ARROWS:
            continue
        before_file = open(os.path.join(job.dir, "job.json"), "rb").read()
        before = dict(job.state)
        with pytest.raises(states.InvalidTransition, match=r"batch %s: %s -> %s is not allowed" % (job.id, old, new)):
            job.transition(new, now=T0 + 99, reason="not allowed")
        assert job.state == before
        assert open(os.path.join(job.dir, "job.json"), "rb").read() == before_file


def test_a_finished_job_is_never_run_again(box):
    job = new_job(box)
    job.transition(states.RUNNING, now=T0 + 1)
    job.transition(states.DONE, now=T0 + 2)
    for new in (states.RUNNING, states.QUEUED, states.CANCELLED):
        with pytest.raises(states.InvalidTransition, match="from done: no arrow"):
            job.transition(new)
    assert on_disk(job)["status"] == states.DONE and on_disk(job)["finished_at"] == T0 + 2


def test_the_current_state_is_a_no_op_except_a_resumed_running_job(box):
    job = new_job(box)
    job.transition(states.QUEUED, now=T0 + 5, reason="again")  # queued -> queued is no arrow: nothing happens
    assert on_disk(job)["updated_at"] == T0 and on_disk(job)["reason"] is None
    job.transition(states.RUNNING, now=T0 + 10)
    job.transition(states.RUNNING, now=T0 + 20)  # running -> running: resumed after its runner died
    assert on_disk(job)["updated_at"] == T0 + 20 and on_disk(job)["started_at"] == T0 + 10


def test_a_save_that_hits_enospc_leaves_the_change_in_memory_only(box, monkeypatch):
    job = new_job(box)
    job.transition(states.RUNNING, now=T0 + 1)

    def full(path, data, **kw):
        raise OSError(errno.ENOSPC, "No space left on device", path)
    monkeypatch.setattr(store, "atomic_write", full)
    with pytest.raises(OSError):
        job.transition(states.PAUSED, now=T0 + 2, reason="no space left on device in x")
    assert job.status == states.PAUSED and on_disk(job)["status"] == states.RUNNING
    job.transition(states.RUNNING, now=T0 + 3, save=False)  # in memory only, by request: nothing written
    assert job.status == states.RUNNING and on_disk(job)["updated_at"] == T0 + 1


def test_cancel_of_a_job_finished_meanwhile_says_so_and_changes_nothing(box, capsys):
    job = new_job(box)
    stale = JobStore(box.settings).get(job.id)  # read while still queued
    job.transition(states.RUNNING, now=T0 + 1)
    job.transition(states.DONE, now=T0 + 2)  # another process finished it
    assert stale.status == states.QUEUED and stale.cancel() is False
    assert stale.status == states.DONE and on_disk(job)["status"] == states.DONE

    args = argparse.Namespace(config=box.config_path, job=job.id)
    cmd_cancel(args)
    assert capsys.readouterr().out.strip() == "job %s is already done" % job.id

    other = new_job(box)
    cmd_cancel(argparse.Namespace(config=box.config_path, job=other.id))
    assert capsys.readouterr().out.strip() == "job %s cancelled" % other.id
    saved = on_disk(other)
    assert saved["status"] == states.CANCELLED and saved["reason"] == "cancelled on request"
    assert saved["finished_at"] is not None


def _subscript_key(node):
    s = node.slice
    return s.value if isinstance(s, ast.Constant) else None


def test_no_module_but_the_owner_writes_a_jobs_status():
    """Only states.py's JOB (run by store.py BatchJob.transition) writes ``state["status"]``
    of a job: no ``x.state["status"] = ...``, no ``x.state.update(status=...)`` and no
    ``JOB.advance`` / ``JOB.change`` anywhere else in glmtts/ and service/."""
    offenders = []
    for top in ("glmtts", "service"):
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), rel)):
                targets = node.targets if isinstance(node, ast.Assign) else (
                    [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else [])
                for t in targets:
                    if (isinstance(t, ast.Subscript) and _subscript_key(t) == "status"
                            and isinstance(t.value, ast.Attribute) and t.value.attr == "state"
                            and rel != "glmtts/batch/states.py"):
                        offenders.append("%s:%d assigns .state[\"status\"]" % (rel, node.lineno))
                if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                    continue
                func = node.func
                owner = getattr(func.value, "id", None) or getattr(func.value, "attr", None)
                if func.attr == "update" and owner == "state" and any(k.arg == "status" for k in node.keywords):
                    offenders.append("%s:%d updates .state with a status" % (rel, node.lineno))
                if func.attr == "update" and owner == "state" and any(
                        isinstance(a, ast.Dict) and any(isinstance(k, ast.Constant) and k.value == "status"
                                                        for k in a.keys) for a in node.args):
                    offenders.append("%s:%d updates .state with a status" % (rel, node.lineno))
                if owner == "JOB" and func.attr in ("advance", "change") and rel != "glmtts/batch/store.py":
                    offenders.append("%s:%d runs the job's machine" % (rel, node.lineno))
    assert not offenders, offenders
