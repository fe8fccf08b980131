"""Durable batch job store.

Layout (one directory per job, under ``<paths.state_dir>/batches/``)::

    <id>/input.jsonl    the submitted file, byte for byte
    <id>/tasks.jsonl    the validated tasks, normalised (what the runner reads)
    <id>/job.json       the job's state, written atomically (temp + fsync + rename)
    <id>/journal.jsonl  append-only outcome of each task, one JSON object per line
    <id>/lease.<epoch>  who runs the job: owner, heartbeat, expiry (lease.py); the highest
                        epoch is current, a clean stop leaves it released
    <id>/alive.<token>  flock'd by the lease's owner while it lives (the kernel drops it
                        when that process dies, even by kill -9)
    <id>/cancel         present once cancellation was requested

Outputs go to ``job.out_dir``: ``<paths.output_dir>/<id>/`` by default (service jobs),
or the directory given to `glmtts batch run --out DIR`. Each output is written to a
hidden temp file in that directory (named after the job and the lease holding it) and
renamed into place, so a file named ``<output_name>.wav`` is always complete; the next
holder of the job removes the temp files a killed holder left.

Any number of processes (service replicas, `glmtts batch run`) may share one state_dir:
a job is run only by the holder of its lease, which fences every commit (lease.py), so
each task's outcome is journalled once and each output renamed into place by one process.

The journal is the truth about tasks: a task is finished when the journal holds its
``done`` or ``failed`` record (appended and fsync'd *after* the output was renamed into
place). A crash between rename and journal only means the task is redone and its file
replaced by an identical one. A torn last line (crash mid-append) is cut off on open.
"""

import datetime
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import time

from ..errors import DiskFullError, InputError, NotFoundError
from . import states
from ..fsutil import append_line, atomic_write, fsync_dir, is_disk_full
from ..host import Host
from .lease import Lease, describe
from .schema import Task
from .validate import duration, human_bytes

log = logging.getLogger(__name__)

JOB_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{6}")
# Room a job's outputs need beyond the validator's estimate: the speaking-rate heuristic
# is rough, and the journal, job.json and the output being written need some too.
OUTPUT_MARGIN = 1.25
OUTPUT_SLACK = 1 << 20


def new_job_id(now=None):
    stamp = datetime.datetime.fromtimestamp(time.time() if now is None else now, datetime.timezone.utc)
    return "%s-%s" % (stamp.strftime("%Y%m%d-%H%M%S"), secrets.token_hex(3))


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_output_space(settings, report, *, free_bytes=None):
    """Refuse a job whose outputs will not fit in paths.output_dir before anything is
    stored: DiskFullError (507) naming the directory, its free space, the estimate and
    what to do. ``free_bytes(path)`` is statvfs (glmtts.host.Host) unless a test passes
    figures. Returns (needed, free). A job that fills the disk anyway pauses (runner)."""
    root = settings.paths.output_dir
    est = report.estimate or {}
    needed = int(est.get("output_bytes", 0) * OUTPUT_MARGIN) + OUTPUT_SLACK
    where = os.path.abspath(root)
    while not os.path.isdir(where) and where != os.path.dirname(where):
        where = os.path.dirname(where)  # outputs/ not created yet: its filesystem is the parent's
    free = (free_bytes or Host().free_bytes)(where)
    if free >= needed:
        return needed, free
    raise DiskFullError(
        "not enough space for this batch's outputs: %s has %s free, the job needs about %s (%d task(s), about %s "
        "of audio as 16-bit WAV, plus margin); nothing was stored. Free space there, then submit again: "
        "`glmtts batch prune --older-than DAYS` deletes finished jobs and their outputs (runbooks/disk-full.md), "
        "or remove other files on that disk" % (root, human_bytes(free), human_bytes(needed), len(report.tasks),
                                                duration(est.get("audio_s", 0))))


class Journal:
    """Append-only JSONL file of task outcomes."""

    def __init__(self, path):
        self.path = path
        self._fd = None

    def replay(self, repair=True):
        """All complete records. A torn last line is skipped, and with ``repair`` (only
        the job's lease holder may: it is the only writer) truncated away so the next
        append starts on a fresh line."""
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return []
        good = data.rfind(b"\n") + 1
        if good < len(data) and repair:
            log.warning("journal %s: dropping a torn last line (%d bytes) left by a crash", self.path, len(data) - good)
            with open(self.path, "r+b") as f:
                f.truncate(good)
                os.fsync(f.fileno())
        records = []
        for n, line in enumerate(data[:good].splitlines(), 1):
            try:
                rec = json.loads(line)
            except ValueError:
                log.warning("journal %s: skipping unreadable line %d", self.path, n)
                continue
            if isinstance(rec, dict):
                records.append(rec)
        return records

    def append(self, record, *, sync=True):
        """Append one record. On failure (e.g. ENOSPC) the file is cut back to where it
        was, so a retried append never leaves half a line behind."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        append_line(self._fd, line, sync=sync)  # cut back on failure: never half a line

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Progress:
    """Task outcomes folded from the journal."""

    def __init__(self, total, records=()):
        self.total = total
        self.done = {}  # task index -> done record
        self.failed = {}  # task index -> failed record
        self.starts = {}  # task index -> times started
        for rec in records:
            self.add(rec)

    def add(self, rec):
        i = rec.get("task")
        kind = rec.get("t")
        if kind == states.TASK_START:
            self.starts[i] = self.starts.get(i, 0) + 1
        elif kind == states.TASK_DONE:
            self.done[i] = rec
        elif kind == states.TASK_FAILED and i not in self.done:
            self.failed[i] = rec

    def finished(self, index):
        return index in self.done or index in self.failed

    @property
    def pending(self):
        return self.total - len(self.done) - len(self.failed)

    def to_dict(self):
        return {"total": self.total, "done": len(self.done), "failed": len(self.failed), "pending": self.pending,
                "percent": round(100.0 * (self.total - self.pending) / self.total, 1) if self.total else 100.0}


class BatchJob:
    def __init__(self, path, state, *, lease_s=30.0):
        self.dir = path
        self.state = state
        self.lease_s = lease_s
        self._tasks = None
        self.journal = Journal(os.path.join(path, "journal.jsonl"))
        self.lease = None  # the Lease while this process runs the job (runner.py)

    id = property(lambda self: self.state["id"])
    status = property(lambda self: self.state["status"])
    out_dir = property(lambda self: self.state["out_dir"])
    input_path = property(lambda self: os.path.join(self.dir, "input.jsonl"))

    @property
    def tasks(self):
        if self._tasks is None:
            with open(os.path.join(self.dir, "tasks.jsonl"), encoding="utf-8") as f:
                self._tasks = [Task.from_dict(json.loads(line)) for line in f if line.strip()]
        return self._tasks

    def save(self):
        path = os.path.join(self.dir, "job.json")
        data = json.dumps(self.state, indent=1, ensure_ascii=False).encode()
        for attempt in (1, 2):
            # A temp name of its own: replicas in containers may all be pid 1.
            try:
                atomic_write(path, data, tmp="%s.tmp-%s" % (path, secrets.token_hex(4)))
                return
            except FileNotFoundError:
                if attempt == 2 or not os.path.isdir(self.dir):
                    raise  # (a new lease holder sweeping temp files removed ours: once more)

    def reload(self):
        """Re-read job.json in place: another process may have changed it (finished,
        cancelled) since this object was read."""
        with open(os.path.join(self.dir, "job.json"), encoding="utf-8") as f:
            state = json.load(f)
        self.state.clear()
        self.state.update(state)

    def transition(self, new, *, now=None, reason=None, save=True):
        """The one place a job changes state: states.JOB validates the arrow (an arrow not
        in its table raises InvalidTransition, nothing changed), logs it and runs the new
        state's entry effects, supplied here. ``save=False`` keeps the change in memory
        only (job.json cannot be written now; the journal stays the truth). Returns the
        old status."""
        now = time.time() if now is None else now

        def stamp(job, old, new, why):
            job.state["updated_at"] = now
            if why is not None:
                job.state["reason"] = why

        def started(job, old, new, why):
            if not job.state.get("started_at"):
                job.state["started_at"] = now

        def finished(job, old, new, why):
            job.state["finished_at"] = now

        return states.JOB.advance(self, new, reason, {
            "stamp": stamp, "started": started, "finished": finished,
            "save": (lambda job, old, new, why: job.save()) if save else (lambda *a: None)})

    def cancel(self, now=None):
        """Cancel a job no live process runs (the caller checked ``locked_by_other``):
        re-read job.json first, since a runner may have finished it after this object was
        read. Returns False, changing nothing, when it is finished by now."""
        self.reload()
        if self.status in states.FINISHED:
            return False
        self.transition(states.CANCELLED, now=now, reason="cancelled on request")
        return True

    def progress(self, repair=False):
        return Progress(self.state["tasks"], self.journal.replay(repair=repair))

    # -- cancellation and ownership ---------------------------------------------

    def request_cancel(self):
        with open(os.path.join(self.dir, "cancel"), "w") as f:
            f.write("%f\n" % time.time())

    def cancel_requested(self):
        return os.path.exists(os.path.join(self.dir, "cancel"))

    def holder(self):
        """The lease record of the process running this job now (maybe this one), or None."""
        return Lease(self.dir, self.lease_s).holder()

    def locked_by_other(self):
        """True when another live process holds this job's lease right now."""
        rec = self.holder()
        return rec is not None and (self.lease is None or rec.get("token") != self.lease.token)

    def summary(self):
        """What `glmtts batch status` and GET /v1/batches/{id} show."""
        progress = self.progress()
        tasks = self.tasks
        failures = []
        for i, rec in sorted(progress.failed.items()):
            t = tasks[i] if 0 <= i < len(tasks) else None
            failures.append({"task": i, "line": rec.get("line", t.line if t else None),
                             "output_name": rec.get("output_name", t.output_name if t else None),
                             "reason": rec.get("reason", "")})
        out = {k: self.state.get(k) for k in ("id", "status", "reason", "source", "created_at", "started_at",
                                              "finished_at", "updated_at", "out_dir", "engine", "skipped_lines")}
        status = self.status
        holder = self.holder() if status in states.RESUMABLE else None
        if status in (states.RUNNING, states.PAUSED) and holder is None:
            status = "interrupted"  # the process running it died; resumes on the next run / service start
        out["state"] = status
        out["runner"] = describe(holder.get("owner")) if holder else None
        out["progress"] = progress.to_dict()
        out["failures"] = failures
        out["audio_s"] = round(sum(r.get("audio_s", 0.0) for r in progress.done.values()), 2)
        return out


class JobStore:
    """All jobs under ``<state_dir>/batches``."""

    def __init__(self, settings):
        self.settings = settings
        self.root = os.path.join(settings.paths.state_dir, "batches")

    def _path(self, job_id):
        if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
            raise NotFoundError("no batch job %r (job ids look like 20250101-120000-a1b2c3)" % (job_id,))
        return os.path.join(self.root, job_id)

    def create(self, data, report, *, source="", out_dir=None, skip_invalid=False, origin="cli", now=None):
        """Persist a validated job and return it (status queued). The job directory is
        built under a temporary name and renamed, so a crash never leaves half a job.
        ``origin`` says who resumes it: "service" jobs resume at service start, "cli"
        jobs when `glmtts batch run` is run again (Ctrl-C means stop, not hand over)."""
        if not report.ok and not skip_invalid:
            raise InputError("the batch file has %d error(s); fix them or skip the invalid lines"
                             % len(report.errors))
        if not report.tasks:
            raise InputError("the batch file has no valid task")
        now = time.time() if now is None else now
        job_id = new_job_id(now)
        managed = out_dir is None
        out_dir = os.path.abspath(out_dir or os.path.join(self.settings.paths.output_dir, job_id))
        os.makedirs(self.root, exist_ok=True)
        tmp = os.path.join(self.root, ".new-" + job_id)
        os.makedirs(tmp)
        try:
            if isinstance(data, (bytes, bytearray)):
                atomic_write(os.path.join(tmp, "input.jsonl"), bytes(data))
                digest = hashlib.sha256(data).hexdigest()
            else:  # a path: copied by streaming, a batch file may be large
                shutil.copyfile(data, os.path.join(tmp, "input.jsonl"))
                digest = file_sha256(data)
            tasks = "".join(json.dumps(t.to_dict(), ensure_ascii=False) + "\n" for t in report.tasks)
            atomic_write(os.path.join(tmp, "tasks.jsonl"), tasks.encode())
            state = {"id": job_id, "status": states.QUEUED, "reason": None, "source": source,
                     "created_at": now, "updated_at": now, "started_at": None, "finished_at": None,
                     "input_sha256": digest, "tasks": len(report.tasks),
                     "skipped_lines": report.invalid_lines, "out_dir": out_dir, "managed_out": managed,
                     "engine": self.settings.engine.name, "estimate": report.estimate, "origin": origin}
            job = BatchJob(tmp, state, lease_s=self.settings.batch.lease_s)
            job.save()
            os.makedirs(out_dir, exist_ok=True)
            os.rename(tmp, os.path.join(self.root, job_id))
            fsync_dir(self.root)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if is_disk_full(e):
                raise DiskFullError("no space left on device to store the batch job (%s): free space, e.g. "
                                    "`glmtts batch prune`, and submit again" % (e.filename or self.root)) from None
            raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        job.dir = os.path.join(self.root, job_id)
        job.journal = Journal(os.path.join(job.dir, "journal.jsonl"))
        log.info("batch %s: created with %d tasks from %s, outputs in %s", job_id, len(report.tasks),
                 source or "upload", out_dir)
        return job

    def get(self, job_id):
        path = self._path(job_id)
        try:
            with open(os.path.join(path, "job.json"), encoding="utf-8") as f:
                state = json.load(f)
        except FileNotFoundError:
            raise NotFoundError("no batch job %s (see `glmtts batch list`)" % job_id) from None
        return BatchJob(path, state, lease_s=self.settings.batch.lease_s)

    def list(self):
        """Jobs, oldest first."""
        try:
            names = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return []
        jobs = []
        for name in names:
            if JOB_ID.fullmatch(name):
                try:
                    jobs.append(self.get(name))
                except (NotFoundError, OSError, ValueError) as e:
                    log.warning("batch store: skipping unreadable job %s: %s", name, e)
        jobs.sort(key=lambda j: (j.state.get("created_at") or 0, j.id))
        return jobs

    def resumable(self, origin=None):
        return [j for j in self.list() if j.status in states.RESUMABLE
                and (origin is None or j.state.get("origin", "cli") == origin)]

    def find_latest(self, input_sha256, out_dir, *, unfinished_only=False):
        """The newest job of this input and output directory: what `glmtts batch run
        FILE --out DIR` resumes (or reports as already done)."""
        out_dir = os.path.abspath(out_dir) if out_dir else None
        for job in reversed(self.resumable() if unfinished_only else self.list()):
            if job.state.get("origin", "cli") != "cli":
                continue  # the service's jobs are resumed by the service
            if job.state.get("input_sha256") == input_sha256 and (out_dir is None or job.out_dir == out_dir):
                return job
        return None

    def delete(self, job):
        shutil.rmtree(job.dir)
