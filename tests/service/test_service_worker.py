"""The inference worker after a lost CUDA context, with a fake engine and no GPU: the
failing job and every queued job get CudaFatalError, the engine is never called again,
and the runtime's hook fires once."""

import threading

import numpy as np
import pytest

from glmtts import config
from glmtts.engines.base import Engine, SynthesisRequest, SynthesisResult
from glmtts.errors import CudaFatalError
from service.worker import FAILED, Worker

FATAL = "CUDA error: an illegal memory access was encountered"


class FakeGpu:
    """gpu module seam: no pressure, a fatal CUDA RuntimeError classified as fatal."""

    REFUSE, FALLBACK = "refuse", "fallback"

    class Decision:
        action = "ok"

    def check_memory_pressure(self, settings, sample_rate):
        return self.Decision()

    def classify_cuda_error(self, exc):
        return "fatal" if isinstance(exc, RuntimeError) and "CUDA error" in str(exc) else None

    def clear_gpu_memory(self, releasers):
        pass


class GateEngine(Engine):
    """The first synthesis waits for ``release`` and then raises a fatal CUDA error."""

    def __init__(self, settings):
        super().__init__(settings)
        self.started = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def load(self):
        self.loaded = True

    def synthesize_stream(self, request):
        self.calls += 1
        if self.calls == 1:  # the warm-up
            yield SynthesisResult(np.ones(100, dtype=np.float32) * 0.1, request.sample_rate)
            return
        self.started.set()
        self.release.wait(10)
        raise RuntimeError(FATAL)


@pytest.fixture
def worker():
    settings = config.load("", env={"GLMTTS_LIMITS_MAX_CONCURRENCY": "1", "GLMTTS_LIMITS_MAX_QUEUE": "8"})
    engine = GateEngine(settings)
    w = Worker(engine, settings, gpu_module=FakeGpu())
    w.start()
    w.load()
    yield w
    engine.release.set()
    w.stop()


def test_a_lost_cuda_context_fails_the_running_and_the_queued_jobs_and_fires_once(worker):
    lost = []
    worker.on_cuda_lost = lambda: lost.append(threading.current_thread().name)
    running = worker.synthesize(SynthesisRequest(text="one"))
    assert worker.engine.started.wait(5)
    queued = [worker.synthesize(SynthesisRequest(text="q%d" % i)) for i in range(3)]
    worker.engine.release.set()

    with pytest.raises(CudaFatalError, match="illegal memory access") as first:
        running.future.result(5)
    assert first.value.http_status == 503 and first.value.code == "cuda_fatal" and first.value.retry_after > 0
    for job in queued:
        with pytest.raises(CudaFatalError) as e:
            job.future.result(5)
        assert "illegal memory access" not in str(e.value)  # only the genuine error carries the CUDA text
    assert worker.engine.calls == 2, "the engine ran again on a lost context"
    assert len(lost) == 1 and worker.state == FAILED and worker.cuda_lost == FATAL
    assert worker.last_error.startswith("cuda_fatal: ")

    with pytest.raises(CudaFatalError):  # new work is refused with the same error, not queued
        worker.synthesize(SynthesisRequest(text="later"))
    assert worker.queue_depth() == 0 and len(lost) == 1
