"""GPU memory facts, the "clear GPU memory" action, and the memory-pressure policy.

Two sources, each answering honestly when it has nothing to say:
- NVML (``pynvml`` from nvidia-ml-py): what the *driver* sees per device — used/free/total
  and the processes holding memory. Reached only through ``Nvml``, one thin seam object
  that tests replace with a fake (this machine has no GPU).
- torch's caching allocator: what *this process* holds (allocated vs reserved). Memory
  that torch reserved but does not use is free for our next request, yet NVML counts it
  as used; the pressure check adds it back.

Without a GPU every function says so (``{"available": False, "reason": ...}``); nothing
is invented.
"""

import gc
import logging
import os
import sys
from dataclasses import asdict, dataclass

log = logging.getLogger(__name__)

MB = 1024 * 1024


class NvmlUnavailable(Exception):
    """NVML cannot answer (no driver, no library, no device)."""


class Nvml:
    """The one seam over pynvml (the service's GPU figures and the watchdog's GPU checks
    both use it): only the calls glmtts uses, in plain Python types. A fake for tests
    implements the same methods."""

    def __init__(self):
        self._pynvml = None

    def _lib(self):
        if self._pynvml is None:
            try:
                import pynvml
            except ImportError as e:
                raise NvmlUnavailable("NVML: pynvml not installed (%s)" % e) from None
            try:
                # nvmlInit is reference-counted by the driver; calling it once and never
                # shutting down is what long-running monitors do.
                pynvml.nvmlInit()
            except pynvml.NVMLError as e:
                raise NvmlUnavailable("NVML: %s" % e) from None
            self._pynvml = pynvml
        return self._pynvml

    def _call(self, fn, *args):
        lib = self._lib()
        try:
            return fn(lib, *args)
        except lib.NVMLError as e:
            raise NvmlUnavailable("NVML: %s" % e) from None

    def driver_version(self):
        return self._call(lambda lib: _text(lib.nvmlSystemGetDriverVersion()))

    def device_count(self):
        return self._call(lambda lib: lib.nvmlDeviceGetCount())

    def device_name(self, index):
        return self._call(lambda lib: _text(lib.nvmlDeviceGetName(lib.nvmlDeviceGetHandleByIndex(index))))

    def uuid(self, index):
        return self._call(lambda lib: _text(lib.nvmlDeviceGetUUID(lib.nvmlDeviceGetHandleByIndex(index))))

    def pci_bus(self, index):
        return self._call(lambda lib: _text(lib.nvmlDeviceGetPciInfo(lib.nvmlDeviceGetHandleByIndex(index)).busId))

    def memory_info(self, index):
        """(total_bytes, free_bytes, used_bytes)."""
        def get(lib):
            m = lib.nvmlDeviceGetMemoryInfo(lib.nvmlDeviceGetHandleByIndex(index))
            return int(m.total), int(m.free), int(m.used)
        return self._call(get)

    def processes(self, index):
        """[(pid, used_bytes or None)] for compute and graphics processes on the device."""
        def get(lib):
            handle = lib.nvmlDeviceGetHandleByIndex(index)
            seen = {}
            for fn in (lib.nvmlDeviceGetComputeRunningProcesses, lib.nvmlDeviceGetGraphicsRunningProcesses):
                for p in fn(handle):
                    used = getattr(p, "usedGpuMemory", None)
                    # NVML reports "not available" (e.g. inside containers) as a huge sentinel
                    seen[int(p.pid)] = int(used) if isinstance(used, int) and used < 2**63 else None
            return sorted(seen.items())
        return self._call(get)


def _text(value):
    return value.decode() if isinstance(value, bytes) else str(value)


def _mb(n):
    return None if n is None else round(n / MB, 1)


def _process_name(pid):
    try:
        import psutil
        return psutil.Process(pid).name()
    except Exception:  # another PID namespace, or already gone: the pid is still useful
        return None


def nvml_status(nvml=None):
    """Per-device memory and processes as the driver sees them."""
    nvml = nvml or _default_nvml()
    try:
        count = nvml.device_count()
        devices = []
        for i in range(count):
            total, free, used = nvml.memory_info(i)
            devices.append({
                "index": i,
                "name": nvml.device_name(i),
                "total_mb": _mb(total), "free_mb": _mb(free), "used_mb": _mb(used),
                "processes": [{"pid": pid, "name": _process_name(pid), "used_mb": _mb(b)}
                              for pid, b in nvml.processes(i)],
            })
        driver = nvml.driver_version()
    except NvmlUnavailable as e:
        return {"available": False, "reason": str(e), "devices": []}
    if not devices:
        return {"available": False, "reason": "NVML: driver loaded but no GPU device found", "devices": []}
    return {"available": True, "reason": None, "driver": driver, "devices": devices}


def _torch_if_present():
    """torch only if this process already imported it, else None. Never imports it: an
    engine that puts tensors on the GPU has imported torch itself (in its load()), and
    one that has not (espeak) holds no CUDA memory, so importing torch here would only
    add seconds to every start-up and hundreds of MB to the process."""
    return sys.modules.get("torch")


def torch_memory(torch=None):
    """This process's CUDA caching-allocator figures per device."""
    torch = torch or _torch_if_present()
    if torch is None:
        return {"cuda_available": False, "reason": "torch is not loaded in this process (the engine does not use it)",
                "devices": []}
    try:
        available = torch.cuda.is_available()
    except Exception as e:  # a broken driver can make even the query raise
        return {"cuda_available": False, "reason": "torch: %s" % e, "devices": []}
    if not available:
        reason = ("torch %s is a CPU-only build" % torch.__version__ if not torch.version.cuda
                  else "torch: no CUDA device visible (driver not loaded, or CUDA_VISIBLE_DEVICES empty)")
        return {"cuda_available": False, "reason": reason, "devices": []}
    devices = []
    for i in range(torch.cuda.device_count()):
        devices.append({
            "index": i,
            "allocated_mb": _mb(torch.cuda.memory_allocated(i)),
            "reserved_mb": _mb(torch.cuda.memory_reserved(i)),
            "max_allocated_mb": _mb(torch.cuda.max_memory_allocated(i)),
        })
    return {"cuda_available": True, "reason": None, "devices": devices}


def status(nvml=None, torch=None):
    """Everything /healthz and the UI show about the GPU."""
    s = nvml_status(nvml)
    s["torch"] = torch_memory(torch)
    return s


_NVML = None


def _default_nvml():
    global _NVML
    if _NVML is None:
        _NVML = Nvml()
    return _NVML


def clear_gpu_memory(drop_references=(), *, nvml=None, torch=None):
    """The "clear GPU memory" button. Order matters: references first (an engine's
    caches), then gc.collect() (reference cycles such as exception tracebacks that hold
    tensors), then torch.cuda.empty_cache() — which can only return blocks nothing
    points to any more. Returns the figures before and after."""
    torch = torch or _torch_if_present()
    before = _figures(nvml, torch)
    steps = []
    for drop in drop_references:
        drop()
    steps.append("drop_references(%d)" % len(drop_references))
    collected = gc.collect()
    steps.append("gc.collect")
    cuda = bool(torch is not None and before["torch"]["cuda_available"])
    if cuda:
        torch.cuda.empty_cache()
        steps.append("torch.cuda.empty_cache")
    after = _figures(nvml, torch)
    result = {"cuda": cuda, "steps": steps, "gc_collected": collected, "before": before, "after": after}
    if cuda:
        freed = sum((b["reserved_mb"] or 0) - (a["reserved_mb"] or 0)
                    for b, a in zip(before["torch"]["devices"], after["torch"]["devices"]))
        result["freed_mb"] = round(freed, 1)
        log.info("cleared GPU memory: %.1f MB returned to the driver", freed)
    else:
        result["reason"] = before["torch"]["reason"]
        log.info("clear GPU memory: no CUDA (%s); ran gc only, %d objects collected",
                 before["torch"]["reason"], collected)
    return result


def _figures(nvml, torch):
    return {"nvml": nvml_status(nvml), "torch": torch_memory(torch)}


# -- memory-pressure policy -----------------------------------------------------------

OK, FALLBACK, REFUSE = "ok", "fallback", "refuse"


@dataclass
class PressureDecision:
    """What to do with one request given the free GPU memory. ``action``: ok (go ahead at
    ``sample_rate``), fallback (go ahead at 24 kHz instead of 32 kHz), refuse (503)."""

    action: str
    sample_rate: int
    reason: str
    free_mb: object = None  # None: no GPU, nothing measured
    floor_mb: int = 0
    under_pressure: bool = False

    def as_dict(self):
        return asdict(self)


def _logical_index(settings):
    device = settings.engine.device
    return int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0


def nvml_index(settings, env=None):
    """The physical (NVML) index of the GPU the engine uses. NVML ignores
    CUDA_VISIBLE_DEVICES, torch honours it: glmtts@1 with CUDA_VISIBLE_DEVICES=1 and
    engine.device = "auto" runs on cuda:0 in torch terms but on NVML device 1."""
    env = os.environ if env is None else env
    logical = _logical_index(settings)
    visible = [v.strip() for v in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if visible and logical < len(visible) and visible[logical].isdigit():
        return int(visible[logical])
    return logical


def check_memory_pressure(settings, sample_rate, *, device_index=None, nvml=None, torch=None, env=None):
    """Decide per ``settings.gpu.free_memory_floor_mb`` and ``settings.gpu.pressure_policy``.

    Free memory = what NVML says is free on the device + what torch holds reserved but
    unallocated (our allocator reuses it before asking the driver). Policy ``fallback``
    turns a 32 kHz request into 24 kHz (the lighter vocoder) and lets 24 kHz through;
    ``refuse`` answers 503 for any request below the floor."""
    if device_index is None:
        device_index = nvml_index(settings, env)
    floor = settings.gpu.free_memory_floor_mb
    policy = settings.gpu.pressure_policy
    nv = nvml_status(nvml)
    if not nv["available"]:
        return PressureDecision(OK, sample_rate, "no GPU to check (%s)" % nv["reason"], None, floor)
    dev = next((d for d in nv["devices"] if d["index"] == device_index), None)
    if dev is None:
        return PressureDecision(OK, sample_rate, "GPU %d not present (NVML sees %d)" % (device_index, len(nv["devices"])),
                                None, floor)
    free = dev["free_mb"] or 0.0
    tm = torch_memory(torch)
    for t in tm["devices"]:
        if t["index"] == _logical_index(settings):  # torch numbers devices after CUDA_VISIBLE_DEVICES
            free += max(0.0, (t["reserved_mb"] or 0) - (t["allocated_mb"] or 0))
    free = round(free, 1)
    if free >= floor:
        return PressureDecision(OK, sample_rate, "%.0f MB free >= floor %d MB" % (free, floor), free, floor)
    low = "GPU %d has %.0f MB free, below gpu.free_memory_floor_mb = %d" % (device_index, free, floor)
    if policy == "refuse":
        return PressureDecision(REFUSE, sample_rate, low + " (pressure_policy = refuse)", free, floor, True)
    if sample_rate != 24000:
        return PressureDecision(FALLBACK, 24000, low + ": synthesizing at 24000 Hz instead of %d" % sample_rate,
                                free, floor, True)
    return PressureDecision(OK, sample_rate, low + ": already at 24000 Hz, going ahead", free, floor, True)


# -- classification of CUDA failures ----------------------------------------------------

_FATAL_MARKERS = ("illegal memory access", "device-side assert", "cublas_status", "cudnn_status",
                  "cudnn error", "cublas error", "unspecified launch failure", "misaligned address",
                  "an illegal instruction", "cuda error")


def classify_cuda_error(exc):
    """'oom' for an out-of-memory (recoverable after releasing memory), 'fatal' for an
    error that leaves the CUDA context unusable (only a restart helps), None otherwise."""
    torch = sys.modules.get("torch")
    oom_type = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None) if torch else None
    if oom_type is not None and isinstance(exc, oom_type):
        return "oom"
    if not isinstance(exc, RuntimeError):
        return None
    text = str(exc).lower()
    if "out of memory" in text:
        return "oom"
    if any(m in text for m in _FATAL_MARKERS):
        return "fatal"
    return None
