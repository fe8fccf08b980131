"""glmtts.gpu: honest answers on this GPU-less machine, and the pressure policy and
process listing against a fake NVML (the only seam faked: this machine has no GPU)."""

import os
import weakref

import pytest

from glmtts import config, gpu

MB = 1024 * 1024


def settings(**overrides):
    return config.load(path="", env={}).replace(**overrides)


class FakeNvml:
    """Stands in for gpu.Nvml: the same five methods, fixed answers."""

    def __init__(self, devices):
        self.devices = devices  # [{"name", "total", "free", "procs": [(pid, bytes)]}]

    def driver_version(self):
        return "550.54.15"

    def device_count(self):
        return len(self.devices)

    def device_name(self, i):
        return self.devices[i]["name"]

    def memory_info(self, i):
        d = self.devices[i]
        return d["total"], d["free"], d["total"] - d["free"]

    def processes(self, i):
        return list(self.devices[i]["procs"])


class BrokenNvml(FakeNvml):
    def device_count(self):
        raise gpu.NvmlUnavailable("NVML: Driver Not Loaded")


def h100(free_mb, procs=()):
    return {"name": "NVIDIA H100 80GB HBM3", "total": 81559 * MB, "free": free_mb * MB, "procs": list(procs)}


def cuda_present():
    import torch
    return torch.cuda.is_available()


# -- this machine: no GPU ---------------------------------------------------------------

@pytest.mark.skipif(os.path.exists("/dev/nvidiactl"), reason="this machine has a GPU driver")
def test_status_without_gpu_says_there_is_none():
    s = gpu.status()
    assert s["available"] is False
    assert s["reason"].startswith("NVML: ")  # e.g. "NVML: NVML Shared Library Not Found"
    assert s["devices"] == []
    if not cuda_present():
        assert s["torch"]["cuda_available"] is False
        assert s["torch"]["reason"]
        assert s["torch"]["devices"] == []


@pytest.mark.skipif(os.path.exists("/dev/nvidiactl"), reason="this machine has a GPU driver")
def test_pressure_check_without_gpu_lets_requests_through_and_says_why():
    d = gpu.check_memory_pressure(settings(), 32000)
    assert (d.action, d.sample_rate, d.free_mb) == ("ok", 32000, None)
    assert d.reason.startswith("no GPU to check (NVML")


def test_clear_gpu_memory_without_cuda_drops_references_then_collects():
    if cuda_present():
        pytest.skip("CUDA present: covered by bench/gpu_validate.py")
    order = []

    class Blob:
        pass

    holder = {"cycle": Blob()}
    holder["cycle"].self = holder["cycle"]  # a reference cycle only gc can free
    ref = weakref.ref(holder["cycle"])

    def drop():
        order.append("drop")
        holder.clear()

    result = gpu.clear_gpu_memory([drop])
    assert order == ["drop"]
    assert ref() is None, "the cycle was collected after the reference was dropped"
    assert result["cuda"] is False
    assert result["steps"] == ["drop_references(1)", "gc.collect"]
    assert result["reason"] and result["before"]["torch"]["cuda_available"] is False
    assert "freed_mb" not in result


# -- fake NVML ----------------------------------------------------------------------------

def test_status_lists_devices_and_processes_with_fake_nvml():
    me = os.getpid()
    nv = FakeNvml([h100(40000, [(me, 30000 * MB), (999999, None)]), h100(81000)])
    s = gpu.nvml_status(nv)
    assert s["available"] is True and s["driver"] == "550.54.15"
    assert [d["index"] for d in s["devices"]] == [0, 1]
    d0 = s["devices"][0]
    assert (d0["total_mb"], d0["free_mb"], d0["used_mb"]) == (81559.0, 40000.0, 41559.0)
    procs = {p["pid"]: p for p in d0["processes"]}
    assert procs[me]["used_mb"] == 30000.0
    assert procs[me]["name"]  # our own process is visible to psutil
    assert procs[999999]["used_mb"] is None  # NVML could not tell: said so, not invented
    assert s["devices"][1]["processes"] == []


def test_status_reports_nvml_failure_with_fake_nvml():
    s = gpu.nvml_status(BrokenNvml([]))
    assert s == {"available": False, "reason": "NVML: Driver Not Loaded", "devices": []}
    assert gpu.nvml_status(FakeNvml([]))["reason"] == "NVML: driver loaded but no GPU device found"


@pytest.mark.parametrize("policy,free_mb,rate,action,out_rate,pressure", [
    ("fallback", 5000, 32000, "ok", 32000, False),
    ("fallback", 500, 32000, "fallback", 24000, True),
    ("fallback", 500, 24000, "ok", 24000, True),
    ("refuse", 500, 24000, "refuse", 24000, True),
    ("refuse", 500, 32000, "refuse", 32000, True),
    ("refuse", 1024, 32000, "ok", 32000, False),
])
def test_memory_pressure_policy_with_fake_nvml(policy, free_mb, rate, action, out_rate, pressure):
    s = settings(gpu__free_memory_floor_mb=1024, gpu__pressure_policy=policy)
    d = gpu.check_memory_pressure(s, rate, nvml=FakeNvml([h100(free_mb)]))
    assert (d.action, d.sample_rate, d.under_pressure) == (action, out_rate, pressure)
    assert d.free_mb == free_mb and d.floor_mb == 1024
    if pressure:
        assert "below gpu.free_memory_floor_mb = 1024" in d.reason
    assert d.as_dict()["action"] == action


def test_memory_pressure_counts_torch_cached_memory_as_free_with_fake_nvml():
    class FakeTorch:
        __version__ = "fake"

        class version:
            cuda = "12.4"

        class cuda:
            @staticmethod
            def is_available():
                return True

            @staticmethod
            def device_count():
                return 1

            memory_allocated = staticmethod(lambda i: 1000 * MB)
            memory_reserved = staticmethod(lambda i: 1800 * MB)
            max_memory_allocated = staticmethod(lambda i: 2000 * MB)

    s = settings(gpu__free_memory_floor_mb=1024, gpu__pressure_policy="refuse")
    d = gpu.check_memory_pressure(s, 32000, nvml=FakeNvml([h100(500)]), torch=FakeTorch)
    assert d.action == "ok" and d.free_mb == 1300.0  # 500 free + 800 reserved-but-unused


def test_memory_pressure_for_a_missing_device_with_fake_nvml():
    d = gpu.check_memory_pressure(settings(), 24000, device_index=3, nvml=FakeNvml([h100(100)]))
    assert d.action == "ok" and "GPU 3 not present" in d.reason


@pytest.mark.parametrize("exc,kind", [
    ("oom", "oom"),
    (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), "oom"),
    (RuntimeError("CUDA error: an illegal memory access was encountered"), "fatal"),
    (RuntimeError("CUDA error: device-side assert triggered"), "fatal"),
    (RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm`"), "fatal"),
    (RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR"), "fatal"),
    (RuntimeError("shape mismatch"), None),
    (ValueError("CUDA error: looks fatal but is not a RuntimeError"), None),
])
def test_classify_cuda_error(exc, kind):
    import torch
    if exc == "oom":
        exc = torch.cuda.OutOfMemoryError("CUDA out of memory.")
    assert gpu.classify_cuda_error(exc) == kind


@pytest.mark.parametrize("device,visible,index", [
    ("auto", None, 0),
    ("cuda:1", None, 1),
    ("auto", "3", 3),          # glmtts@3 with CUDA_VISIBLE_DEVICES=3: torch cuda:0 is NVML device 3
    ("cuda:1", "2,5", 5),
    ("auto", "GPU-8f1c", 0),   # UUIDs: not mapped, first device
])
def test_pressure_check_reads_the_engines_physical_gpu_with_fake_nvml(device, visible, index):
    env = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
    s = settings(engine__device=device, gpu__free_memory_floor_mb=1024, gpu__pressure_policy="refuse")
    assert gpu.nvml_index(s, env) == index
    devices = [h100(80000) for _ in range(6)]
    devices[index] = h100(100)  # only the engine's GPU is short of memory
    assert gpu.check_memory_pressure(s, 24000, nvml=FakeNvml(devices), env=env).action == "refuse"
