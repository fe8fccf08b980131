"""Everything one service process holds, wired once: settings, engine, worker, metrics,
limits, saved voices, the sd_notify link and the log reopener, plus the background
duties of the event loop (heartbeat, SIGHUP reopen, GPU figures).

``on_ready`` hooks run in the loader thread after the warm-up, before READY=1 (the
batch router appends its resume step there); ``after_ready`` hooks run after READY=1
(the UI is built there, so no restart waits for gradio).

SIGTERM/SIGINT drain the process (service/drain.py): ``status()`` says "draining", the
batch runner is told to stop first, and what is left at the deadline gets 503."""

import asyncio
import logging
import os
import sys
import threading
import time

from glmtts import __version__, gpu
from prometheus_client import Gauge

from glmtts.errors import EXIT_CUDA_LOST, EXIT_ENGINE_LOAD, GlmttsError

from .drain import Drain
from .limits import Limits
from .metrics import Metrics
from .sdnotify import Notifier
from .voices import VoiceStore
from .worker import FAILED, LOADING, OK, Worker

log = logging.getLogger(__name__)

EXTEND_S = 30.0        # each EXTEND_TIMEOUT_USEC asks systemd for this much more time
EXTEND_EVERY_S = 10.0
GPU_EVERY_S = 5.0
TICK_S = 0.25


def _gpu_status():
    try:
        return gpu.status()
    except Exception as e:  # never let a GPU query take the loop down
        return {"available": False, "reason": "gpu status failed: %s" % e, "devices": []}


class Runtime:
    def __init__(self, settings, engine, *, notifier=None, reopener=None, clock=time.monotonic):
        self.settings = settings
        self.engine = engine
        self.clock = clock
        self.version = __version__
        self.metrics = Metrics()
        self.worker = Worker(engine, settings, metrics=self.metrics, clock=clock)
        self.worker.on_cuda_lost = self._cuda_lost
        self.metrics.bind_worker(self.worker)
        self.drain = Drain(settings.server.drain_delay_s, settings.server.drain_timeout_s)
        self.worker.admission = self.drain.refusal
        Gauge("glmtts_draining", "1 from SIGTERM until exit: not ready on purpose (a planned stop), finishing "
              "its work.", registry=self.metrics.registry).set_function(lambda: 1 if self.drain.active else 0)
        self._batch_stopper = None
        self.limits = Limits(settings)
        self.voices = VoiceStore(os.path.join(settings.paths.state_dir, "voices"))
        self.notifier = notifier or Notifier()
        self.reopener = reopener
        self.started_mono = clock()
        self.ready_at = None
        self.on_ready = []
        self.after_ready = []
        self.ui = None  # uigate.UiGate when server.ui is on
        self.ready = threading.Event()
        self.exit_code = None
        self.request_exit = None  # set by __main__: callable(code), called on the loop
        self.gpu_status = {"available": False, "reason": "not measured yet", "devices": []}
        self.heartbeats = 0
        self._loop = None
        self._tasks = []
        self._withheld = False

    @property
    def loop(self):
        """The event loop serving HTTP (None before start())."""
        return self._loop

    # -- life cycle (FastAPI lifespan) -------------------------------------------------

    async def start(self):
        self._loop = asyncio.get_running_loop()
        self.worker.start()
        threading.Thread(target=self._load, name="glmtts-loader", daemon=True).start()
        self._tasks.append(self._loop.create_task(self._duties()))

    async def stop(self):
        self.notifier.stopping()
        self.worker.stop()
        for t in self._tasks:
            t.cancel()
        if self.ui is not None:
            await self.ui.close()
        log.info("service stopping")

    def _load(self):
        self.notifier.status("loading engine %s" % self.settings.engine.name)
        try:
            # First GPU query here, before the engine and before the GPU refresher starts: NVML
            # only (gpu.py never imports torch; an engine that needs torch imports it in load(),
            # and a torch import racing another thread's scipy call breaks that call).
            self._set_gpu(_gpu_status())
            self.worker.load()
            for hook in self.on_ready:
                hook(self)
        except Exception as e:
            if isinstance(e, GlmttsError):
                log.error("engine load failed: %s", e)
            else:
                log.error("engine load failed: %s: %s", type(e).__name__, e, exc_info=e)
            # Without this `systemctl status` keeps showing "loading engine ..." for a
            # process that has given up; the reason is what the operator needs there.
            self.notifier.status("engine load failed: %s" % (e if isinstance(e, GlmttsError) else "%s: %s" % (type(e).__name__, e)))
            self.exit(EXIT_ENGINE_LOAD)
            return
        # Wall-clock epoch of READY: a watchdog that looks later (a timer cycle, under a
        # manager that keeps no ready time, e.g. supervisord) dates the recovery by it.
        self.ready_at = time.time()
        self.ready.set()
        self.notifier.ready("ready: engine %s" % self.settings.engine.name)
        for hook in self.after_ready:
            try:
                hook(self)
            except Exception as e:  # after READY nothing here may take the service down
                log.error("after-ready step %r failed: %s", hook, e, exc_info=e)

    def exit(self, code):
        """Ask the server to shut down and the process to exit with ``code``."""
        self.exit_code = code
        if self.request_exit and self._loop:
            self._loop.call_soon_threadsafe(self.request_exit, code)

    # -- the drain (service/drain.py's DrainingServer calls these on the loop) -------------

    def ready_for_drain(self):
        """Was this instance taking traffic (/readyz 200)? Only then is the listener kept
        open for load balancers to notice; a loading, failed or wedged one was already out."""
        return self.worker.status()[0] == OK

    def pending(self):
        """Work the drain waits for: engine jobs (queued or running, batch included), HTTP
        synthesis admitted before the signal but not answered yet (reading its body,
        encoding its audio), and the batch runner until it has stopped."""
        stopping = self._batch_stopper is not None and self._batch_stopper.is_alive()
        return max(self.worker.pending(), self.drain.admitted_in_flight) + (1 if stopping else 0)

    def begin_drain(self, drain):
        self.notifier.stopping()
        self.notifier.status("draining after %s: finishing in-flight and queued work" % drain.why)
        batches = getattr(self, "batches", None)
        if batches is not None:
            # Told first, so its current task checkpoints while the interactive work finishes;
            # on a thread, because a stop may wait for the runner, and the loop must not.
            self._batch_stopper = threading.Thread(target=self._stop_batches, args=(batches, drain),
                                                   name="glmtts-batch-stop", daemon=True)
            self._batch_stopper.start()

    def _stop_batches(self, batches, drain):
        try:
            batches.shutdown()  # returns at once; join() waits for the runner's checkpoint
            if not batches.join(max(0.0, drain.deadline - self.clock())):
                log.warning("drain: the batch runner has not stopped by the deadline; its job stays resumable")
        except Exception as e:  # the drain goes on without it: the job resumes at the next start
            log.error("drain: stopping the batch runner failed: %s: %s", type(e).__name__, e, exc_info=e)

    def expire(self, drain):
        drain.expired += self.worker.expire(lambda: drain.error(expired=True))

    def _cuda_lost(self):
        # No CUDA call can succeed in this process again; waiting for systemd's WatchdogSec
        # (or, in a container, for nothing) would only prolong the outage.
        log.critical("CUDA context lost: exiting with code %d so that the service manager starts a fresh process",
                     EXIT_CUDA_LOST)
        self.notifier.status("CUDA context lost: exiting with code %d for a fresh process" % EXIT_CUDA_LOST)
        self.exit(EXIT_CUDA_LOST)

    # -- the event loop's duties -------------------------------------------------------

    async def _duties(self):
        """Runs on the event loop, so a blocked loop also stops the heartbeat."""
        interval = self.notifier.heartbeat_interval_s
        next_beat = next_extend = next_gpu = 0.0
        gpu_task = None
        while True:
            now = self.clock()
            if self.reopener is not None:
                self.reopener.reopen_if_requested()
            if self.worker.state == LOADING and now >= next_extend:
                self.notifier.extend_timeout(EXTEND_S)
                next_extend = now + EXTEND_EVERY_S
            if interval and now >= next_beat:
                next_beat = now + interval
                self._heartbeat()
            if self.worker.state != LOADING and now >= next_gpu and (gpu_task is None or gpu_task.done()):
                next_gpu = now + GPU_EVERY_S
                gpu_task = self._loop.create_task(self._refresh_gpu())
            await asyncio.sleep(TICK_S)

    def _heartbeat(self):
        if self.worker.responsive():
            if self._withheld:
                log.warning("worker responsive again; resuming watchdog heartbeats")
                self._withheld = False
            self.notifier.watchdog()
            self.heartbeats += 1
        elif not self._withheld:
            self._withheld = True
            log.error("withholding the systemd watchdog heartbeat: %s", self.worker.status()[1])

    async def _refresh_gpu(self):
        self._set_gpu(await asyncio.to_thread(_gpu_status))

    def _set_gpu(self, status):
        self.gpu_status = status
        self.metrics.observe_gpu(status)

    # -- facts -------------------------------------------------------------------------

    def status(self):
        """(status, reason): the worker's, or "draining" from the stop signal on (a failed
        worker stays "failed": that needs a human more than the stop does)."""
        status, reason = self.worker.status()
        if self.drain.active and status != FAILED:
            return "draining", self.drain.reason(self.clock(), self.pending())
        return status, reason

    def health(self):
        status, reason = self.status()
        body = {
            "status": status,
            "reason": reason,
            "engine": self.engine.describe(),
            "uptime_s": round(self.clock() - self.started_mono, 3),
            "ready_at": self.ready_at,
            "queue_depth": self.worker.queue_depth(),
            "in_flight": self.worker.in_flight(),
            "gpu": self.gpu_status,
            "last_error": self.worker.last_error,
            "version": self.version,
            "ui": self.ui.state if self.ui is not None else "off",
            "torch_loaded": "torch" in sys.modules,
        }
        if self.drain.active:
            body["drain"] = self.drain.describe(self.clock())
        return body
