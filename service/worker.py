"""The inference worker: the engine, resident for the life of the process, behind a
bounded priority queue served by ``limits.max_concurrency`` threads.

Anything that touches the engine goes through ``submit(fn, priority)``: the HTTP
routes, the UI and the batch runner share one concurrency limit, and interactive work
is always taken before batch work. ``fn(engine, job)`` runs on a worker thread; long
work calls ``job.beat()`` as it makes progress (each audio chunk), which is how
/healthz and the sd_notify heartbeat tell a long synthesis from a wedged one.

CUDA failures are classified here, once, for every caller: an OOM releases memory and
becomes EngineOOMError (503, the service stays up); a fatal CUDA error marks the
service failed, answers every queued job with CudaFatalError (503) without touching
the engine again, and calls ``on_cuda_lost`` once (the runtime then exits the process,
so its manager starts a fresh one: the context cannot be recovered in-process).

During a drain (service/drain.py) ``admission`` refuses new work with 503 draining, and at
the drain's deadline ``expire`` answers what is still waiting with the same 503.
The unit of work and its priorities are job.py.
"""

import asyncio
import heapq
import itertools
import logging
import threading
import time

import numpy as np

from glmtts import gpu
from glmtts.engines.base import SynthesisRequest, SynthesisResult
from glmtts.errors import CudaFatalError, EngineError, EngineOOMError, GlmttsError, MemoryPressureError
from glmtts.machine import Machine

from .errors import NotReadyError, QueueFullError, SynthesisTimeout
from .job import BATCH, INTERACTIVE, PRIORITY_NAMES, WATCHDOG, WATCHDOG_SLOTS, Cancelled, Job, settle

log = logging.getLogger(__name__)

# States (worker.state); changed only through Worker._transition, which runs WORKER.
LOADING, OK, FAILED = "loading", "ok", "failed"
DEGRADED = "degraded"  # derived: OK but a job stalled, never stored

WORKER = Machine("worker", {
    LOADING: (OK, FAILED),  # loading -> ok: loaded and warm; loading -> failed: load/warm-up raised, the process exits
    OK: (FAILED,),          # ok -> failed: a fatal CUDA error; only a new process recovers (failed: no way out)
}, entry={OK: ("report",), FAILED: ("report",)}, levels={FAILED: logging.CRITICAL}, log=log)


class Worker:
    def __init__(self, engine, settings, *, metrics=None, clock=time.monotonic, gpu_module=gpu):
        self.engine = engine
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.gpu = gpu_module
        self.concurrency = settings.limits.max_concurrency
        self.max_queue = settings.limits.max_queue
        self.stall_s = settings.limits.worker_stall_s
        self._heap = []
        self._running = set()
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._threads = []
        self._stopping = False
        self._mean_job_s = 1.0
        self.state = LOADING
        self.reason = "loading engine %s" % settings.engine.name
        self.last_error = None
        self.load_seconds = None
        self.warmup_seconds = None
        self.on_cuda_lost = None  # callable(), called once, on the worker thread
        # callable() -> an error to refuse new work with, or None (the drain: runtime.drain.refusal)
        self.admission = None
        self.cuda_lost = None     # the first fatal CUDA error's line, once the context is gone

    # -- state ------------------------------------------------------------------------

    def _transition(self, state, reason):
        WORKER.advance(self, state, reason, {"report": self._report})

    def _report(self, worker, old, new, reason):
        self.reason = reason  # what /healthz says beside the state
        if self.metrics:
            self.metrics.set_state(new)

    def fail(self, reason):
        self._transition(FAILED, reason)  # ok/loading -> failed: only a restart recovers

    def stalled_job(self, now=None):
        now = self.clock() if now is None else now
        with self._cond:
            for job in self._running:
                if now - job.progress_at > self.stall_s:
                    return job
        return None

    def responsive(self):
        """Alive and answering: threads running and no job stuck without progress."""
        if self.state == LOADING:
            return True  # the loader thread reports its own progress (EXTEND_TIMEOUT_USEC)
        if self.state == FAILED or not all(t.is_alive() for t in self._threads):
            return False
        return self.stalled_job() is None

    def status(self):
        """(status, reason) as /healthz reports it."""
        if self.state != OK:
            return self.state, self.reason
        if not all(t.is_alive() for t in self._threads):
            return DEGRADED, "an inference worker thread has died; restart the service"
        job = self.stalled_job()
        if job is not None:
            return DEGRADED, ("worker wedged: a synthesis has made no progress for %.0f s "
                              "(limits.worker_stall_s = %g)" % (self.clock() - job.progress_at, self.stall_s))
        return OK, None

    def queue_depth(self):
        with self._cond:
            return sum(1 for j in self._heap if not j.cancelled)

    def in_flight(self):
        with self._cond:
            return len(self._running)

    def pending(self):
        """Jobs queued (not abandoned) or running, batch work included."""
        with self._cond:
            return len(self._running) + sum(1 for j in self._heap if not j.cancelled)

    # -- life cycle -------------------------------------------------------------------

    def start(self):
        for i in range(self.concurrency):
            t = threading.Thread(target=self._loop, name="glmtts-worker-%d" % i, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self):
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def load(self):
        """Load the engine and warm it with one short synthesis (loader thread).
        Raises what the engine raised; the caller exits with EXIT_ENGINE_LOAD."""
        t0 = self.clock()
        try:
            self.engine.load()
            self.load_seconds = self.clock() - t0
            t1 = self.clock()
            req = SynthesisRequest(text=self.settings.engine.warmup_text, sample_rate=self.settings.engine.sample_rate,
                                   seed=self.settings.engine.seed)
            result = self.engine.synthesize(req)
            if len(result.audio) == 0:
                raise EngineError("warm-up synthesis of %r produced no audio" % req.text)
            self.warmup_seconds = self.clock() - t1
        except Exception as e:
            self.fail("engine %s failed to load: %s" % (self.settings.engine.name, e))
            raise
        if self.metrics:
            self.metrics.engine_load.set(self.load_seconds)
        self._transition(OK, None)  # loading -> ok
        log.info("engine %s loaded in %.2f s, warm-up %.2f s", self.settings.engine.name,
                 self.load_seconds, self.warmup_seconds)

    # -- submitting -------------------------------------------------------------------

    def submit(self, fn, priority=INTERACTIVE):
        """Queue ``fn(engine, job)``; returns the Job (``job.future`` has the result).
        Raises NotReadyError (503) while loading/failed, QueueFullError (429) when
        ``limits.max_queue`` interactive requests already wait (WATCHDOG work has its
        own WATCHDOG_SLOTS instead). Batch work is not bounded here: the batch runner
        submits one task at a time."""
        if self.cuda_lost:
            raise self._lost_error()
        if self.state != OK:
            raise NotReadyError("service not ready (%s): %s" % (self.state, self.reason))
        refused = self.admission() if self.admission is not None else None
        if refused is not None:
            raise refused
        with self._cond:
            if priority == WATCHDOG:
                waiting = sum(1 for j in self._heap if j.priority == WATCHDOG and not j.cancelled)
                if waiting >= WATCHDOG_SLOTS:
                    if self.metrics:
                        self.metrics.rejected.labels("watchdog_lane_full").inc()
                    raise QueueFullError("watchdog lane full: %d smoke tests already waiting" % waiting,
                                         retry_after=int(self._mean_job_s) + 1)
            elif priority == INTERACTIVE:
                waiting = sum(1 for j in self._heap if j.priority == INTERACTIVE and not j.cancelled)
                if waiting >= self.max_queue and len(self._running) + waiting >= self.concurrency:
                    retry = int(self._mean_job_s * (waiting + 1) / self.concurrency) + 1
                    if self.metrics:
                        self.metrics.rejected.labels("queue_full").inc()
                    raise QueueFullError("queue full: %d requests waiting (limits.max_queue = %d); retry in %d s"
                                         % (waiting, self.max_queue, retry), retry_after=retry)
            job = Job(fn, priority, next(self._seq), self.clock(), self.clock)
            heapq.heappush(self._heap, job)
            self._cond.notify()
        return job

    async def wait(self, job, timeout=None):
        """Await a job's result from the event loop, bounded by limits.request_timeout_s."""
        timeout = self.settings.limits.request_timeout_s if timeout is None else timeout
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(job.future)), timeout)
        except asyncio.TimeoutError:
            job.cancelled = True
            raise SynthesisTimeout("synthesis took longer than limits.request_timeout_s = %g s" % timeout) from None
        except asyncio.CancelledError:
            job.cancelled = True
            raise

    def wait_sync(self, job, timeout=None):
        """The same for threads (the UI's handlers)."""
        timeout = self.settings.limits.request_timeout_s if timeout is None else timeout
        try:
            return job.future.result(timeout)
        except TimeoutError:
            job.cancelled = True
            raise SynthesisTimeout("synthesis took longer than limits.request_timeout_s = %g s" % timeout) from None

    def synthesize(self, request, priority=INTERACTIVE, on_chunk=None):
        """Submit a synthesis. ``on_chunk(SynthesisResult)`` (called on the worker thread)
        receives each chunk as it is ready; the job's result is the whole SynthesisResult."""
        return self.submit(lambda engine, job: self._synthesize(engine, job, request, on_chunk), priority)

    # -- running ----------------------------------------------------------------------

    def _synthesize(self, engine, job, request, on_chunk):
        decision = self.gpu.check_memory_pressure(self.settings, request.sample_rate)
        meta = {}
        if decision.action == self.gpu.REFUSE:
            if self.metrics:
                self.metrics.pressure.labels("refuse").inc()
            raise MemoryPressureError("refused under GPU memory pressure: %s" % decision.reason)
        if decision.action == self.gpu.FALLBACK:
            if self.metrics:
                self.metrics.pressure.labels("fallback").inc()
            log.warning("memory pressure: %s", decision.reason)
            request.sample_rate = decision.sample_rate
            meta["fallback"] = decision.reason
        parts = []
        t0 = self.clock()
        for part in engine.synthesize_stream(request):
            job.beat()
            if on_chunk is not None:
                on_chunk(part)
            parts.append(part)
        audio = np.concatenate([p.audio for p in parts]).astype(np.float32, copy=False) if parts \
            else np.zeros(0, dtype=np.float32)
        if parts:
            meta.update(parts[-1].meta)
        meta["chunks"] = len(parts)
        meta["synthesis_s"] = self.clock() - t0
        rate = parts[0].sample_rate if parts else request.sample_rate
        if self.metrics:
            self.metrics.audio_seconds.inc(len(audio) / float(rate))
        return SynthesisResult(audio, rate, meta)

    def _loop(self):
        while True:
            with self._cond:
                while not self._heap and not self._stopping:
                    self._cond.wait(1.0)
                if self._stopping:
                    return
                job = heapq.heappop(self._heap)
                if self.cuda_lost:  # queued before the loss: the engine must not run again
                    job.future.set_exception(self._lost_error())
                    continue
                if job.cancelled:
                    job.future.set_exception(Cancelled("request abandoned before it started"))
                    continue
                job.started_at = job.progress_at = self.clock()
                self._running.add(job)
            try:
                settle(job.future, result=job.fn(self.engine, job))
            except BaseException as e:  # noqa: B902 - every failure must reach the waiter
                settle(job.future, error=self._translate(e))
            finally:
                elapsed = self.clock() - job.started_at
                with self._cond:
                    self._running.discard(job)
                    self._mean_job_s = 0.8 * self._mean_job_s + 0.2 * elapsed
                if self.metrics:
                    self.metrics.job_seconds.labels(PRIORITY_NAMES.get(job.priority, "other")).observe(elapsed)
                if self.settings.gpu.clear_after_request and self.state == OK:
                    self._clear_quietly()

    def expire(self, error):
        """The drain's deadline: every interactive and watchdog job still queued or running
        is answered with ``error()`` now (a running one also stops at its next chunk).
        Batch work is left to the batch runner, which was told to stop when the drain began
        and checkpoints its own task. Returns how many waiters were answered."""
        with self._cond:
            queued = [j for j in self._heap if j.priority != BATCH]
            self._heap = [j for j in self._heap if j.priority == BATCH]
            heapq.heapify(self._heap)
            running = [j for j in self._running if j.priority != BATCH]
        answered = 0
        for job in queued + running:
            job.cancelled = True
            if settle(job.future, error=error()):
                answered += 1
        return answered

    def _lose_cuda(self, exc):
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        with self._cond:
            first = self.cuda_lost is None
            if first:
                self.cuda_lost = first_line[:300]
                queued, self._heap = self._heap, []
        if not first:
            # Other in-flight jobs fail on the same dead context: the cause is logged once.
            log.warning("another in-flight job failed on the lost CUDA context")
            return self._lost_error()
        log.critical("fatal CUDA error: the CUDA context is unusable, only a new process recovers", exc_info=exc)
        self.last_error = "cuda_fatal: %s" % self.cuda_lost
        if self.metrics:
            self.metrics.fatal.inc()
        self.fail(self.last_error + " (the process exits for its manager to restart it)")
        for job in queued:
            job.future.set_exception(self._lost_error())
        if self.on_cuda_lost is not None:
            self.on_cuda_lost()
        return CudaFatalError("fatal CUDA error: %s; the service is restarting, retry shortly" % first_line)

    def _lost_error(self):
        # Deliberately not the CUDA text: only the genuine traceback should match the
        # watchdog's cuda_fatal signature, once, not one line per waiting request.
        return CudaFatalError("the GPU context was lost by an earlier request; the service is restarting, "
                              "retry shortly")

    def _clear_quietly(self):
        try:
            self.gpu.clear_gpu_memory((self.engine.release_memory,))
        except Exception:
            log.warning("clear_gpu_memory after request failed", exc_info=True)

    def _translate(self, exc):
        """Classify a failure from the engine into the error the caller sees."""
        if isinstance(exc, Cancelled):
            return exc
        kind = "oom" if isinstance(exc, EngineOOMError) else self.gpu.classify_cuda_error(exc)
        if kind == "oom":
            log.error("CUDA out of memory during synthesis; releasing memory, service stays up", exc_info=exc)
            self._clear_quietly()
            if self.metrics:
                self.metrics.ooms.inc()
            self.last_error = "cuda_oom: %s" % str(exc).splitlines()[0][:300]
            return EngineOOMError("CUDA out of memory: %s; memory was released, retry later, with shorter text "
                                  "or at 24000 Hz" % str(exc).splitlines()[0][:200])
        if kind == "fatal":
            return self._lose_cuda(exc)
        if isinstance(exc, GlmttsError):
            if exc.http_status >= 500:
                self.last_error = "%s: %s" % (exc.code, exc)
            return exc
        log.error("synthesis failed", exc_info=exc)
        self.last_error = "%s: %s" % (type(exc).__name__, str(exc)[:300])
        return EngineError("synthesis failed: %s: %s" % (type(exc).__name__, exc))
