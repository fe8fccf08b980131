"""FAKE NVML for tests on a machine without a GPU (this one has none): a stand-in for
nvidia-ml-py's ``pynvml`` with exactly the calls glmtts/gpu.py makes. A test puts this
directory first on a service subprocess's PYTHONPATH; the device it reports is read from
the JSON file named by $GLMTTS_TEST_FAKE_NVML_FILE at every call, so a running service
can be given low GPU memory later:

    {"devices": [{"total": 85899345920, "free": 42949672960,
                  "procs": [[4242, 1073741824], [4243, "not available"]]}]}   (bytes)

A process whose memory NVML cannot report (inside containers) carries NVML's sentinel,
NVML_VALUE_NOT_AVAILABLE (2**64 - 1), as the real library answers.

Nothing in glmtts imports this; tests put it on a path (a service's PYTHONPATH) or in
sys.modules (tests/watchdog/test_watchdog_gpu.py)."""

import json
import os
from types import SimpleNamespace

FILE_ENV = "GLMTTS_TEST_FAKE_NVML_FILE"
NAME = "FAKE GPU (tests/support/fake_nvml)"


class NVMLError(Exception):
    pass


def _devices():
    try:
        with open(os.environ[FILE_ENV], encoding="utf-8") as f:
            return json.load(f)["devices"]
    except (KeyError, OSError, ValueError) as e:
        raise NVMLError("fake NVML: no device file (%s): %s" % (FILE_ENV, e)) from None


def nvmlInit():
    _devices()


def nvmlSystemGetDriverVersion():
    return "fake-0.0"


def nvmlDeviceGetCount():
    return len(_devices())


def nvmlDeviceGetHandleByIndex(index):
    if not 0 <= index < len(_devices()):
        raise NVMLError("fake NVML: no device %d" % index)
    return index


def nvmlDeviceGetName(handle):
    return NAME


def nvmlDeviceGetMemoryInfo(handle):
    dev = _devices()[handle]
    return SimpleNamespace(total=dev["total"], free=dev["free"], used=dev["total"] - dev["free"])


NOT_AVAILABLE = 2**64 - 1


def nvmlDeviceGetComputeRunningProcesses(handle):
    return [SimpleNamespace(pid=pid, usedGpuMemory=NOT_AVAILABLE if used == "not available" else used)
            for pid, used in _devices()[handle].get("procs", [])]


def nvmlDeviceGetUUID(handle):
    return "GPU-fake-%d" % handle


def nvmlDeviceGetPciInfo(handle):
    return SimpleNamespace(busId="00000000:%02X:00.0" % (0x3B + handle))


def nvmlDeviceGetGraphicsRunningProcesses(handle):
    return []
