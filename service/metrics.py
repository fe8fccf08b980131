"""Prometheus metrics on a registry of our own (not the process-global default), and
the GET /metrics route. The batch runner registers its progress gauges on
``runtime.metrics.registry``, the runtime its ``glmtts_draining``.

Besides the service's own counters: ``glmtts_ready`` (what /readyz answers, draining
included), the limits the queue and latency alerts compare against, ``glmtts_build_info``,
the process figures (``process_start_time_seconds`` tells a restart) and the watchdog's
account of this instance (service/incident_metrics.py). ops/prometheus/ holds the rules
and the dashboard built on exactly these names.

/metrics needs the API key like every /v1 route unless ``server.metrics_public = true``
(service/limits.py): then Prometheus scrapes it without a bearer secret."""

import asyncio
import platform

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector,
                               generate_latest)

from glmtts import __version__

from .incident_metrics import WatchdogAccount

STATES = ("loading", "ok", "degraded", "failed")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("glmtts_http_requests_total", "HTTP requests by route template, method and status.",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("glmtts_http_request_duration_seconds", "HTTP request latency to the last byte.",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.job_seconds = Histogram("glmtts_worker_job_seconds", "Engine work per job, by priority.",
                                     ["priority"], buckets=LATENCY_BUCKETS, registry=r)
        self.audio_seconds = Counter("glmtts_audio_seconds_total", "Seconds of audio synthesized.", registry=r)
        self.ooms = Counter("glmtts_cuda_oom_total", "CUDA out-of-memory errors (memory released, service up).",
                            registry=r)
        self.fatal = Counter("glmtts_cuda_fatal_total", "Fatal CUDA errors (service marked failed).", registry=r)
        self.pressure = Counter("glmtts_memory_pressure_total", "Requests under GPU memory pressure, by action.",
                                ["action"], registry=r)
        self.rejected = Counter("glmtts_rejected_total", "Requests refused before work, by reason.",
                                ["reason"], registry=r)
        self.engine_load = Gauge("glmtts_engine_load_seconds", "Engine load time at start-up.", registry=r)
        self.state = Gauge("glmtts_state", "1 for the service's current state.", ["state"], registry=r)
        self.queue_depth = Gauge("glmtts_queue_depth", "Jobs waiting for the worker.", registry=r)
        self.in_flight = Gauge("glmtts_in_flight", "Jobs running on the worker.", registry=r)
        self.gpu_used = Gauge("glmtts_gpu_memory_used_bytes", "GPU memory used (NVML).", ["device"], registry=r)
        self.gpu_free = Gauge("glmtts_gpu_memory_free_bytes", "GPU memory free (NVML).", ["device"], registry=r)
        self.ready = Gauge("glmtts_ready", "1 when /readyz answers 200: engine loaded, worker responsive, not draining.",
                           registry=r)
        self.queue_limit = Gauge("glmtts_queue_limit", "limits.max_queue: interactive requests waiting before 429.",
                                 registry=r)
        self.concurrency_limit = Gauge("glmtts_concurrency_limit", "limits.max_concurrency: syntheses at once.",
                                       registry=r)
        self.request_timeout = Gauge("glmtts_request_timeout_seconds", "limits.request_timeout_s: a synthesis that "
                                     "takes longer is abandoned with 504.", registry=r)
        self.build_info = Gauge("glmtts_build_info", "Always 1; the labels say what runs.",
                                ["version", "engine", "python"], registry=r)
        ProcessCollector(registry=r)  # process_start_time_seconds: restarts; resident memory, CPU, fds
        self.watchdog = None  # WatchdogAccount, once bind_worker knows the settings
        self.set_state("loading")

    def bind_worker(self, worker):
        self.queue_depth.set_function(worker.queue_depth)
        self.in_flight.set_function(worker.in_flight)
        settings = worker.settings
        self.queue_limit.set(settings.limits.max_queue)
        self.concurrency_limit.set(settings.limits.max_concurrency)
        self.request_timeout.set(settings.limits.request_timeout_s)
        self.build_info.labels(__version__, settings.engine.name, platform.python_version()).set(1)
        self.watchdog = WatchdogAccount(settings)
        self.registry.register(self.watchdog)

    def set_state(self, state):
        for s in STATES:
            self.state.labels(s).set(1 if s == state else 0)

    def observe_gpu(self, status):
        for dev in status.get("devices", []):
            if dev.get("used_mb") is not None:
                self.gpu_used.labels(str(dev["index"])).set(dev["used_mb"] * 1024 * 1024)
                self.gpu_free.labels(str(dev["index"])).set(dev["free_mb"] * 1024 * 1024)

    def render(self):
        return generate_latest(self.registry)


router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request):
    runtime = request.app.state.runtime
    m = runtime.metrics
    status, _ = runtime.worker.status()
    m.set_state(status)
    # runtime.status() is the worker's status, or "draining" after SIGTERM: what /readyz answers.
    m.ready.set(1 if runtime.status()[0] == "ok" else 0)
    if m.watchdog is not None:
        # File reads (the whole journal on the first scrape): off the event loop.
        await asyncio.to_thread(m.watchdog.refresh)
    return Response(m.render(), media_type=CONTENT_TYPE_LATEST)
