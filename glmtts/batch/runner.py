"""Run a batch job to the end, resumably.

One runner serves both faces: `glmtts batch run` (engine in-process) and the service
(tasks go through the shared inference worker at batch priority). The ``synthesizer``
object is the seam: ``synthesize(SynthesisRequest) -> SynthesisResult``,
``prepare_prompt(audio, rate, text) -> PromptFeatures`` (may raise NotImplementedError)
and ``release_memory()``.

Guarantees:
- a task whose outcome is in the journal is never redone; one in flight at a crash is;
- a bad task is recorded as failed with its reason and the job goes on;
- CUDA OOM: release memory, retry once at 24 kHz, then fail that task only;
- ENOSPC on an output or the journal pauses the job (nothing is failed), logs the
  ``enospc`` signature on stderr and resumes by itself once space is back;
- a task that killed the process ``max_starts`` times is failed, so a poisonous line
  cannot crash-loop the service forever;
- only the holder of the job's lease runs it (lease.py): any number of processes may
  share the state_dir. Every commit (journal record, output rename, state change) is
  fenced first, so a process that lost its lease (froze past its expiry, its job taken
  over) commits nothing more and stops; a stop releases the lease at once.

What a task asks the engine for (its request and voice) is task_request.py.
"""

import logging
import os
import re
import threading
import time

import numpy as np

from .. import audio as audio_mod
from ..errors import EngineOOMError, GlmttsError
from . import states
from ..fsutil import is_disk_full, unlink_quietly
from ..host import Host
from .lease import INSTANCE, Heartbeat, Lease, LeaseLost, describe
from .speed import Speed
from .task_request import TaskRequests, is_cuda_fatal, is_oom
from .validate import SavedVoices

log = logging.getLogger(__name__)

LOW_MEMORY_RATE = 24000
SPACE_MARGIN = 64 << 10  # wait for this much more than the write needs


class EngineSynthesizer:
    """Calls an engine directly (the CLI)."""

    def __init__(self, engine):
        self.engine = engine

    def synthesize(self, request):
        return self.engine.synthesize(request)

    def prepare_prompt(self, audio, sample_rate, prompt_text):
        return self.engine.prepare_prompt(audio, sample_rate, prompt_text)

    def release_memory(self):
        self.engine.release_memory()


class Stopped(Exception):
    """The run was told to stop (shutdown or cancel) while waiting."""


class JobBusy(GlmttsError):
    """Another live process holds the job's lease."""

    code = "batch_busy"


class Runner:
    def __init__(self, job, synthesizer, settings, *, host=None, durable=True, stop=None, on_progress=None,
                 max_starts=3, backoff=(0.5, 10.0), clock=time.monotonic, wall=time.time, role="cli",
                 lease_s=None, node=None, voices=None):
        self.job = job
        self.synth = synthesizer
        self.settings = settings
        self.host = host or Host()  # outputs, free space, temp-file removal
        self.durable = durable
        self.stop = stop or threading.Event()
        self.on_progress = on_progress
        self.max_starts = max_starts
        self.backoff = backoff
        self.clock = clock
        self.wall = wall
        self.role = role
        self.lease_s = settings.batch.lease_s if lease_s is None else lease_s
        self.node = node
        self.lease = None
        self.lease_token = None
        # saved voices: the service's VoiceStore (shares its feature cache), else read from disk
        self.requests = TaskRequests(settings, synthesizer,
                                     voices if voices is not None else SavedVoices.of(settings))
        self.compute_s = 0.0
        self.audio_s = 0.0
        self.ran = 0

    # -- the loop -------------------------------------------------------------------

    def run(self):
        """Run until every task has an outcome, or stop/cancel. Returns the summary.
        Raises JobBusy when another live process holds the job's lease."""
        job = self.job
        if job.status in states.FINISHED:
            return job.summary()
        lease = Lease(job.dir, self.lease_s, role=self.role, clock=self.wall, node=self.node)
        for _ in range(3):  # a replica that is releasing it is done within milliseconds
            if lease.acquire():
                break
            time.sleep(0.05)
        else:
            holder = lease.holder() or {}
            raise JobBusy("batch job %s is being run by %s, whose lease runs until %s (renewed every %g s); it "
                          "finishes the job, or another replica takes it over once that lease expires" % (
                              job.id, describe(holder.get("owner")),
                              time.strftime("%H:%M:%S", time.localtime(holder.get("expires_at", 0))),
                              self.lease_s / 3))
        self.lease = job.lease = lease
        self.lease_token = lease.token  # names this run's temp files, also after a loss
        try:
            job.reload()  # another replica may have finished or cancelled it meanwhile
            if job.status in states.FINISHED:
                return job.summary()
            with Heartbeat(lease):
                return self._run_held()
        except LeaseLost as e:
            # Not an error of the job: whoever holds the lease now finishes it.
            log.warning("batch %s: lease lost (%s): stopped without committing more; the holder of the lease "
                        "finishes the job", job.id, e)
            self._remove_temp_files(only_mine=True)
            return job.summary()
        finally:
            released = lease.release()
            job.lease = None
            job.journal.close()
            if released and job.status in states.RESUMABLE:
                log.info("batch %s: lease released; another replica (or the next start) resumes the job", job.id)
            if self.ran:
                Speed.load(self.settings).record(job.state.get("engine") or self.settings.engine.name,
                                                 self.ran, self.compute_s, self.audio_s)

    def _run_held(self):
        job = self.job
        os.makedirs(job.out_dir, exist_ok=True)
        self._remove_temp_files()
        progress = job.progress(repair=True)
        tasks = job.tasks
        if job.cancel_requested():
            return self._finish(states.CANCELLED, progress, "cancelled on request")
        self._transition(states.RUNNING, None)  # queued/paused -> running, or running -> running (resumed)
        for task in tasks:
            if progress.finished(task.index):
                continue
            if self.stop.is_set():
                return self._stopped()
            if job.cancel_requested():
                return self._finish(states.CANCELLED, progress, "cancelled on request")
            try:
                rec = self._run_task(task, progress.starts.get(task.index, 0))
            except Stopped:
                if job.cancel_requested():
                    return self._finish(states.CANCELLED, progress, "cancelled on request")
                return self._stopped()
            progress.add(rec)
            if self.on_progress:
                self.on_progress(self.job, progress)
        return self._finish(states.DONE, progress, None)

    def _stopped(self):
        # running/paused -> queued: every finished task is journalled; the task in hand (if it
        # was abandoned) has no record, so whoever resumes the job redoes it.
        self._transition(states.QUEUED, "stopped; resumes on the next run")
        return self.job.summary()

    def _transition(self, status, reason):
        self.lease.fence()
        self.job.transition(status, now=self.wall(), reason=reason)

    def _finish(self, status, progress, reason):
        if status == states.DONE and progress.failed:
            reason = "%d of %d tasks failed" % (len(progress.failed), progress.total)
        self._transition(status, reason)
        self._remove_temp_files()  # what a holder that lost its lease may have left meanwhile
        log.info("batch %s: %s: %d done, %d failed of %d", self.job.id, status, len(progress.done),
                 len(progress.failed), progress.total)
        return self.job.summary()

    def _run_task(self, task, starts):
        """Produce one task's output; return the journal record written for it."""
        # "by": which process (role and instance id, see lease.py) did it, for whoever
        # reads the journal of a job that several replicas worked on
        base = {"task": task.index, "line": task.line, "output_name": task.output_name,
                "by": "%s/%s" % (self.role, INSTANCE)}
        if starts >= self.max_starts:
            reason = ("the process died %d times while synthesizing this task (crash or kill); skipped so the "
                      "job can finish" % starts)
            return self._record(dict(base, t=states.TASK_FAILED, reason=reason, code="crashed"))
        # Not fsync'd: it only has to survive the process dying (the page cache keeps
        # it), and an fsync per start would double the journal's cost.
        self._append(dict(base, t=states.TASK_START, ts=self.wall()), sync=False)
        t0 = self.clock()
        try:
            result, rate_note = self._synthesize(task)
        except Stopped:
            raise
        except Exception as e:
            if is_cuda_fatal(e):
                raise  # the CUDA context is gone: only a restart helps; the task is redone then
            reason = str(e) if isinstance(e, GlmttsError) else "%s: %s" % (type(e).__name__, e)
            code = getattr(e, "code", "internal_error")
            log.warning("batch %s: task %d (line %d, %s) failed: %s: %s", self.job.id, task.index, task.line,
                        task.output_name, type(e).__name__, e, exc_info=not isinstance(e, GlmttsError))
            return self._record(dict(base, t=states.TASK_FAILED, reason=reason, code=code))
        compute = self.clock() - t0
        audio = np.asarray(result.audio, dtype=np.float32)
        if audio.size == 0 or not np.isfinite(audio).all():
            return self._record(dict(base, t=states.TASK_FAILED, code="engine_error",
                                     reason="the engine returned no usable audio for this text"))
        data = audio_mod.encode(audio, result.sample_rate, task.response_format or "wav")
        path = os.path.join(self.job.out_dir, task.filename)
        # The temp name carries the lease: a holder that lost it never writes into the
        # new holder's temp file.
        tmp = os.path.join(self.job.out_dir, ".%s.%s.%s.part" % (task.filename, self.job.id, self.lease_token))

        def write():
            self.lease.fence()
            self.host.atomic_write(path, data, tmp=tmp, sync=self.durable)
        self._with_space(self.job.out_dir, len(data), write)
        duration = len(audio) / float(result.sample_rate)
        self.ran += 1
        self.compute_s += compute
        self.audio_s += duration
        rec = dict(base, t=states.TASK_DONE, file=task.filename, bytes=len(data), audio_s=round(duration, 3),
                   sample_rate=result.sample_rate, compute_s=round(compute, 3), ts=self.wall())
        if rate_note:
            rec["note"] = rate_note
        return self._record(rec)

    def _synthesize(self, task):
        request = self.requests.build(task)
        try:
            return self.synth.synthesize(request), None
        except Exception as e:
            if not is_oom(e):
                raise
            first = e
        log.warning("batch %s: task %d (line %d): CUDA out of memory at %d Hz; released memory, retrying once at "
                    "%d Hz", self.job.id, task.index, task.line, request.sample_rate, LOW_MEMORY_RATE)
        self._release_memory()
        request.sample_rate = LOW_MEMORY_RATE
        try:
            return self.synth.synthesize(request), "synthesized at %d Hz after a CUDA out-of-memory" % LOW_MEMORY_RATE
        except Exception as e:
            if not is_oom(e):
                raise
            self._release_memory()
            raise EngineOOMError("CUDA out of memory, also on the retry at %d Hz (%s); shorten the text or free GPU "
                                 "memory" % (LOW_MEMORY_RATE, first)) from None

    def _release_memory(self):
        try:
            self.synth.release_memory()
        except Exception as e:  # a failed cleanup must not fail the job
            log.warning("batch %s: release_memory failed: %s", self.job.id, e)

    # -- durability -----------------------------------------------------------------

    def _record(self, rec):
        self._append(rec, sync=self.durable)
        return rec

    def _append(self, rec, *, sync):
        def append():
            self.lease.fence()
            self.job.journal.append(rec, sync=sync)
        self._with_space(self.job.dir, 4096, append)

    def _with_space(self, where, needed, write):
        """Run ``write``; while it fails for lack of space, pause the job and wait."""
        paused_at = None
        while True:
            try:
                write()
                break
            except OSError as e:
                if not is_disk_full(e):
                    raise
                if paused_at is None:
                    paused_at = self.clock()
                    self._pause(where, needed, e)
                self._wait_for_space(where, needed)
        if paused_at is not None:
            log.warning("batch %s: space is back on %s; resumed after %.0f s paused", self.job.id, where,
                        self.clock() - paused_at)
            self._set_state(states.RUNNING, None)

    def _pause(self, where, needed, exc):
        # The exact words matter: the watchdog's log scanner knows this as `enospc`.
        log.error("batch %s: [Errno 28] No space left on device writing to %s (%s): job paused, no task failed; it "
                  "resumes by itself once %s is free (free space, e.g. `glmtts batch prune`)", self.job.id, where,
                  exc.filename or where, _human(needed + SPACE_MARGIN))
        self._set_state(states.PAUSED, "no space left on device in %s" % where)

    def _set_state(self, status, reason):
        try:
            self._transition(status, reason)
        except OSError as e:  # job.json itself may not fit now; the journal stays the truth
            log.warning("batch %s: could not record state %s: %s", self.job.id, status, e)
            if self.job.status != status:  # the fence's lease write failed, not job.json's
                self.job.transition(status, now=self.wall(), reason=reason, save=False)

    def _wait_for_space(self, where, needed):
        """Poll free space with a bounded backoff until the write can fit."""
        delay, cap = self.backoff
        last_note = self.clock()
        while True:
            if self.stop.wait(delay):
                raise Stopped()
            if self.job.cancel_requested():
                raise Stopped()
            try:
                free = self.host.free_bytes(where)
            except OSError:
                free = 0
            if free >= needed + SPACE_MARGIN:
                return
            if self.clock() - last_note > 600:
                last_note = self.clock()
                log.error("batch %s: still paused: No space left on device in %s (%s free)", self.job.id, where,
                          _human(free))
            delay = min(delay * 2, cap)

    def _remove_temp_files(self, only_mine=False):
        """Temp outputs of this job left by an earlier holder (killed mid-write), or with
        ``only_mine``, by this run. Also job.json temp files (a holder killed mid-save)."""
        token = self.lease_token
        if only_mine:
            pattern = re.compile(r"\..+\.%s\.%s\.part" % (re.escape(self.job.id), re.escape(self.lease_token or "-")))
        else:
            # ".NAME.ID.part" (before leases) and ".NAME.ID.TOKEN.part"
            pattern = re.compile(r"\..+\.%s(\.[0-9a-f]+)?\.part" % re.escape(self.job.id))
        try:
            names = os.listdir(self.job.out_dir)
        except FileNotFoundError:
            names = []
        for name in names:
            if pattern.fullmatch(name) and (only_mine or not token or not name.endswith(".%s.part" % token)):
                log.info("batch %s: removing the partial output %s left by an interrupted run", self.job.id, name)
                self.host.unlink_quietly(os.path.join(self.job.out_dir, name))
        if not only_mine:
            try:
                names = os.listdir(self.job.dir)
            except FileNotFoundError:
                names = []
            for name in names:
                if name.startswith("job.json.tmp-"):
                    unlink_quietly(os.path.join(self.job.dir, name))


def _human(n):
    return "%.1f MB" % (n / 1048576.0) if n >= 1048576 else "%d KB" % (n // 1024)
