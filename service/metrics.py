"""Prometheus metrics on a registry of our own (not the process-global default), and
the GET /metrics route. The batch runner registers its progress gauges on
``runtime.metrics.registry``."""

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

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
        self.set_state("loading")

    def bind_worker(self, worker):
        self.queue_depth.set_function(worker.queue_depth)
        self.in_flight.set_function(worker.in_flight)

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
    status, _ = runtime.worker.status()
    runtime.metrics.set_state(status)
    return Response(runtime.metrics.render(), media_type=CONTENT_TYPE_LATEST)
