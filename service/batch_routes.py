"""/v1/batches: submit a JSONL batch, poll it, download its zip, cancel it.

Jobs run inside the service on one background thread, oldest first, through the shared
inference worker at BATCH priority (interactive requests are always taken first). Each
task is submitted only when the previous one finished, so a batch never holds more than
one place in the worker's queue. Unfinished jobs resume by themselves once the engine
is warm (a ``runtime.on_ready`` hook), after a crash, kill -9 or restart.

Replicas: any number of service processes may share one paths.state_dir. A job runs in
the one that holds its lease (glmtts/batch/lease.py); the others look again every
HELD_POLL_S and take it over when its holder releases it (a drain), dies on this node
(at once) or stops renewing it for batch.lease_s (another host, a frozen process). A job
submitted to one replica may be run by another.

Drain: ``shutdown()`` (returns at once) stops the runner at the next task boundary: a
task still waiting in the worker's queue is withdrawn, one the engine is running may
finish (until server.drain_timeout_s - RELEASE_S after the call, then it is abandoned
and redone by the next holder); the finished tasks are journalled, the job goes back to
queued and its lease is released, so another replica takes it over within HELD_POLL_S.
``join(timeout)`` waits for that; the runner thread is gone within server.drain_timeout_s
of ``shutdown()``. The same happens at interpreter exit if nobody called it.
"""

import asyncio
import atexit
import concurrent.futures
import logging
import threading
import weakref

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import Counter, Gauge

from glmtts.batch import states
from glmtts.batch.archive import iter_zip
from glmtts.batch.runner import JobBusy, Runner, Stopped
from glmtts.batch.store import JobStore, check_output_space
from glmtts.batch.validate import validate_bytes
from glmtts.errors import DiskFullError, GlmttsError, InputError

from .errors import NotReadyError, SynthesisTimeout, error_body
from .limits import RATE_LIMITED
from .worker import BATCH

log = logging.getLogger(__name__)

RATE_LIMITED.add(("POST", "/v1/batches"))
IDLE_POLL_S = 5.0  # the runner thread also wakes at once when a job is submitted here
HELD_POLL_S = 1.0  # how often a job another replica holds is looked at again (one small read)
RELEASE_S = 2.0  # of the drain budget, kept for journalling and releasing the lease


class WorkerSynthesizer:
    """The runner's seam onto the shared worker."""

    def __init__(self, worker, stop, finish_by=lambda: None):
        self.worker = worker
        self.stop = stop
        self.finish_by = finish_by  # worker-clock deadline for a running task once stopped

    def _call(self, submit):
        while True:
            try:
                job = submit()
                break
            except NotReadyError:
                # loading, or failed and waiting for the watchdog's restart: the task is
                # not at fault, so wait rather than fail it
                if self.stop.wait(1.0):
                    raise Stopped() from None
        # Time in the queue behind interactive requests does not count: only a task
        # that runs longer than limits.request_timeout_s is abandoned.
        limit = self.worker.settings.limits.request_timeout_s
        while True:
            try:
                return job.future.result(timeout=0.5)
            except concurrent.futures.TimeoutError:
                pass
            except Exception:
                if self.stop.is_set():
                    # The stop ended it (a withdrawn or expired job), not the task: no
                    # failure is journalled, and whoever runs the job next redoes it.
                    raise Stopped() from None
                raise
            if self.stop.is_set():
                # Still queued: withdraw it, the drain need not wait for it. Running: let
                # it finish (its output is then journalled) unless the drain is out of time.
                deadline = self.finish_by()
                if job.started_at is None or deadline is None or self.worker.clock() >= deadline:
                    job.cancelled = True
                    raise Stopped() from None
            if job.started_at is not None and self.worker.clock() - job.started_at > limit:
                job.cancelled = True
                raise SynthesisTimeout("synthesis took longer than limits.request_timeout_s = %g s" % limit) \
                    from None

    def synthesize(self, request):
        return self._call(lambda: self.worker.synthesize(request, BATCH))

    def prepare_prompt(self, audio, rate, text):
        return self._call(lambda: self.worker.submit(lambda engine, job: engine.prepare_prompt(audio, rate, text), BATCH))

    def release_memory(self):
        pass  # the worker already released memory when it classified the OOM


class BatchService:
    def __init__(self, runtime):
        self.runtime = runtime
        self.settings = runtime.settings
        self.store = JobStore(runtime.settings)
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.current = None
        self._thread = None
        self._finish_by = None
        self._counted = (0, 0)
        r = runtime.metrics.registry
        self.tasks_total = Counter("glmtts_batch_tasks_total", "Batch tasks finished by this process, by outcome.",
                                   ["outcome"], registry=r)
        pending = Gauge("glmtts_batch_pending_tasks", "Unfinished tasks of the batch job running now.", registry=r)
        pending.set_function(lambda: self._pending)
        paused = Gauge("glmtts_batch_paused", "1 while the running batch job waits for disk space.", registry=r)
        paused.set_function(lambda: 1 if self.current is not None and self.current.status == states.PAUSED else 0)
        self._pending = 0

    def _progress(self, job, progress):
        done, failed = len(progress.done), len(progress.failed)
        self.tasks_total.labels("done").inc(max(0, done - self._counted[0]))
        self.tasks_total.labels("failed").inc(max(0, failed - self._counted[1]))
        self._counted = (done, failed)
        self._pending = progress.pending

    def start(self, _runtime=None):
        """Start the runner thread (after the warm-up): resumes unfinished jobs."""
        if self._thread is None:
            pending = self.store.resumable("service")
            if pending:
                log.info("batch: %d unfinished job(s) to resume: %s", len(pending), ", ".join(j.id for j in pending))
            self._thread = threading.Thread(target=self._loop, name="glmtts-batch", daemon=True)
            self._thread.start()
            # A process that ends without a drain still checkpoints and releases its lease.
            ref = weakref.ref(self)
            atexit.register(lambda: ref() is not None and ref()._at_exit())

    def shutdown(self):
        """Stop at the next task boundary and release the lease (see the module doc).
        Returns at once: safe on the event loop; ``join`` waits."""
        if self._finish_by is None:
            budget = max(0.0, self.settings.server.drain_timeout_s - RELEASE_S)
            self._finish_by = self.runtime.worker.clock() + budget
        self.stop.set()
        self.wake.set()

    def join(self, timeout=None):
        """Wait up to ``timeout`` s (default server.drain_timeout_s) for the runner thread
        to stop. True once it has (its lease is released)."""
        thread = self._thread
        if thread is None:
            return True
        thread.join(self.settings.server.drain_timeout_s if timeout is None else timeout)
        return not thread.is_alive()

    def _at_exit(self):
        if self._thread is not None and self._thread.is_alive():
            self.shutdown()
            if not self.join():
                log.warning("batch: the runner did not stop within server.drain_timeout_s; its lease expires "
                            "by itself in batch.lease_s")

    def _pick(self, jobs):
        """The first job nobody runs; and the ones other replicas hold."""
        held = []
        for job in jobs:
            if job.status not in states.RESUMABLE:
                continue
            if job.locked_by_other():
                held.append(job.id)
                continue
            return job, held
        return None, held

    def _loop(self):
        held = []
        next_scan = 0.0
        clock = self.runtime.worker.clock
        while not self.stop.is_set():
            try:
                if clock() >= next_scan:
                    next_scan = clock() + IDLE_POLL_S
                    jobs = self.store.resumable("service")
                else:  # between scans, only the jobs other replicas hold: one small read each
                    jobs = [self.store.get(job_id) for job_id in held]
                job, held = self._pick(jobs)
            except Exception as e:  # e.g. a job deleted under us: look again later
                log.warning("batch: scanning the job store failed: %s: %s", type(e).__name__, e)
                job, held = None, []
            if job is None:
                if self.wake.wait(HELD_POLL_S if held else max(0.0, next_scan - clock())):
                    next_scan = 0.0
                self.wake.clear()
                continue
            self.current = job
            progress = job.progress()
            self._counted = (len(progress.done), len(progress.failed))
            self._pending = progress.pending
            try:
                Runner(job, WorkerSynthesizer(self.runtime.worker, self.stop, lambda: self._finish_by), self.settings,
                       stop=self.stop, on_progress=self._progress, role="service:%d" % self.settings.server.port,
                       voices=getattr(self.runtime, "voices", None)).run()
            except JobBusy as e:  # another replica took it a moment before us
                log.debug("batch %s: %s", job.id, e)
            except Exception as e:  # keep serving other jobs; this one stays resumable
                log.error("batch %s: runner stopped: %s: %s", job.id, type(e).__name__, e)
                self.stop.wait(10.0)
            finally:
                self.current = None
                self._pending = 0
                next_scan = 0.0  # more jobs may be waiting
        log.info("batch: runner stopped")

    def submit(self, data, name, skip_invalid):
        report = validate_bytes(data, self.settings, name=name)
        if not report.ok and (not skip_invalid or not report.tasks):
            return None, report
        check_output_space(self.settings, report)  # 507 now beats a job paused on a full disk
        job = self.store.create(data, report, source=name, skip_invalid=skip_invalid, origin="service")
        self.wake.set()
        return job, report

    def cancel(self, job_id):
        job = self.store.get(job_id)
        if job.status in states.FINISHED:
            return job
        job.request_cancel()
        if not job.locked_by_other() and (self.current is None or self.current.id != job.id):
            job.cancel()  # False (nothing changed) when a runner finished it meanwhile
        return job


def attach(runtime):
    """Wire batch jobs into a Runtime (called by create_app)."""
    runtime.batches = BatchService(runtime)
    runtime.on_ready.append(runtime.batches.start)
    return runtime.batches


router = APIRouter()


def _batches(request):
    service = getattr(request.app.state.runtime, "batches", None)
    if service is None:
        raise NotReadyError("batch jobs are not enabled in this service")
    return service


async def _upload(request):
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=10)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise InputError("send the JSONL batch file as the multipart file field 'file'")
        skip = str(form.get("skip_invalid", request.query_params.get("skip_invalid", ""))).lower()
        return await upload.read(), upload.filename or "upload.jsonl", skip in ("1", "true", "yes")
    skip = request.query_params.get("skip_invalid", "").lower()
    return await request.body(), "upload.jsonl", skip in ("1", "true", "yes")


def _disk_full(exc):
    return DiskFullError("no space left on device: %s; free space (e.g. `glmtts batch prune`) and retry" % (
        exc.strerror or exc))


@router.post("/v1/batches", status_code=201)
async def submit_batch(request: Request):
    """Upload a JSONL batch file (raw body, or multipart field ``file``). Validated before
    any work: 422 with the per-line report when invalid (``?skip_invalid=true`` runs the
    valid lines instead); 507 disk_full when the estimated outputs do not fit in
    paths.output_dir."""
    service = _batches(request)
    data, name, skip = await _upload(request)
    try:
        job, report = await asyncio.to_thread(service.submit, data, name, skip)
    except DiskFullError:
        raise
    except OSError as e:
        if e.errno == 28:
            raise _disk_full(e) from None
        raise
    if job is None:
        body = error_body(422, "the batch file has %d error(s) on line(s) %s; nothing was run. Fix them (see "
                               "report.errors) or resubmit with ?skip_invalid=true" % (
                                   len(report.errors), ", ".join(map(str, report.invalid_lines[:20])) or "-"),
                          "invalid_batch")
        body["report"] = report.to_dict()
        return JSONResponse(body, status_code=422)
    return JSONResponse({"id": job.id, "object": "batch", "status": job.status, "tasks": job.state["tasks"],
                         "skipped_lines": job.state["skipped_lines"], "estimate": report.estimate,
                         "warnings": [p.to_dict() for p in report.problems if p.severity == "warning"],
                         "url": "/v1/batches/%s" % job.id}, status_code=201)


@router.get("/v1/batches")
async def list_batches(request: Request):
    service = _batches(request)
    jobs = await asyncio.to_thread(lambda: [j.summary() for j in service.store.list()])
    return {"object": "list", "data": jobs}


@router.get("/v1/batches/{job_id}")
async def get_batch(request: Request, job_id: str):
    service = _batches(request)
    return await asyncio.to_thread(lambda: service.store.get(job_id).summary())


@router.get("/v1/batches/{job_id}/archive")
async def batch_archive(request: Request, job_id: str):
    """Zip of the outputs finished so far plus manifest.json (status of every task)."""
    job = _batches(request).store.get(job_id)
    return StreamingResponse(iter_zip(job), media_type="application/zip",
                             headers={"Content-Disposition": 'attachment; filename="batch-%s.zip"' % job.id})


@router.delete("/v1/batches/{job_id}")
async def cancel_batch(request: Request, job_id: str):
    service = _batches(request)
    job = await asyncio.to_thread(service.cancel, job_id)
    return await asyncio.to_thread(job.summary)


__all__ = ["router", "attach", "BatchService", "GlmttsError"]
