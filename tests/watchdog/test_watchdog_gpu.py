"""GPU actions against a FAKE nvidia-smi (a script on disk that records its arguments,
which the recording host really runs: its "services" are real here) and a FAKE GPU list
(the Host's gpus() seam, RecordingHost(gpus=...)): this machine has no GPU. On a GPU host the
same code runs the real nvidia-smi and pynvml."""

import os
import stat

import pytest

from glmtts.watchdog.actions import Context
from glmtts.watchdog.executor import run_runbook
from glmtts.host import GpuInfo
from glmtts.watchdog.incidents import Incident
from glmtts.watchdog.instances import Instance
from glmtts.watchdog.runbook import default_dir, load_all
from tests.support.service import REPO
from tests.support.watchdog_fakes import RecordingHost, FakeClock, FakeManager, HealthServer, settings_for

RUNBOOKS = load_all(default_dir())


def fake_nvidia_smi(tmp_path, reset_rc):
    calls = tmp_path / "nvidia-smi.calls"
    script = tmp_path / "nvidia-smi"
    script.write_text("#!/bin/sh\necho \"$@\" >> %s\ncase \"$1\" in -r) exit %d;; esac\necho 'GPU 00000000:3B:00.0'\nexit 0\n"
                      % (calls, reset_rc))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script), calls


def run_gpu_xid(tmp_path, xid, reset_rc=0, gpus=None, euid=0, gpu_reset=True):
    smi, calls = fake_nvidia_smi(tmp_path, reset_rc)
    gpus = gpus if gpus is not None else [GpuInfo(0, "NVIDIA A100", "GPU-1", "00000000:3B:00.0", 500, 40000, [])]
    with HealthServer(200) as srv:
        s = settings_for(tmp_path, url=srv.url, watchdog__gpu_reset=gpu_reset)
        host = RecordingHost(clock=FakeClock(), gpus=gpus, euid=euid, nvidia_smi=smi, real=("files", "http", "services"))
        mgr = FakeManager()
        line = "kernel: NVRM: Xid (PCI:0000:3b:00): %d, pid=4242, name=python" % xid
        inc = Incident("i1", "glmtts", srv.url, 0.0, ["gpu_xid"], [{"signature": "gpu_xid", "line": line, "path": "kern", "at": None}])
        ctx = Context(s, Instance("glmtts", srv.url, {}), host, mgr, inc, False, None)
        run_runbook(RUNBOOKS["gpu-xid"], ctx)
    made = calls.read_text().split("\n")[:-1] if calls.exists() else []
    return inc, mgr.calls, made


def steps(inc):
    return {(st["section"], st["action"]): st for st in inc.steps}


def test_gpu_reset_with_fake_nvidia_smi_exit_15_escalates_and_never_retries(tmp_path):
    inc, mgr_calls, smi_calls = run_gpu_xid(tmp_path, 64, reset_rc=15)
    assert inc.state == "escalated"
    assert "fallen off the bus" in inc.reason and "reboot" in inc.reason
    assert smi_calls == ["-r -i 0"]          # one reset attempt, no retry, no health check
    assert ("stop", "glmtts") in mgr_calls and ("restart", "glmtts") not in mgr_calls


def test_gpu_reset_with_fake_nvidia_smi_success_is_followed_by_a_health_check(tmp_path):
    inc, mgr_calls, smi_calls = run_gpu_xid(tmp_path, 119, reset_rc=0)
    assert inc.state == "recovered", inc.reason
    assert smi_calls == ["-r -i 0", "-q -i 0"]
    assert [c[0] for c in mgr_calls] == ["stop", "restart"]
    assert steps(inc)[("steps", "smoke_test")]["status"] == "ok"


def test_gpu_reset_with_fake_nvml_refuses_while_a_process_holds_the_gpu(tmp_path):
    busy = [GpuInfo(0, "NVIDIA A100", "GPU-1", "00000000:3B:00.0", 9000, 40000, [{"pid": 777, "used_mb": 8000}])]
    inc, _, smi_calls = run_gpu_xid(tmp_path, 95, gpus=busy)
    st = steps(inc)[("steps", "gpu_reset")]
    assert st["status"] == "skipped" and "[777]" in st["detail"]
    assert smi_calls == []


@pytest.mark.parametrize("euid, enabled, why", [(1000, True, "needs root"), (0, False, "disabled")])
def test_gpu_reset_with_fake_nvml_needs_root_and_config(tmp_path, euid, enabled, why):
    inc, _, smi_calls = run_gpu_xid(tmp_path, 64, euid=euid, gpu_reset=enabled)
    assert why in steps(inc)[("steps", "gpu_reset")]["detail"]
    assert smi_calls == []


def test_xid_79_with_fake_nvml_escalates_for_reboot_without_touching_anything(tmp_path):
    inc, mgr_calls, smi_calls = run_gpu_xid(tmp_path, 79)
    assert inc.state == "escalated" and "reboot the node" in inc.reason
    assert mgr_calls == [] and smi_calls == []


def test_xid_13_with_fake_nvml_restarts_the_app_only(tmp_path):
    inc, mgr_calls, smi_calls = run_gpu_xid(tmp_path, 13)
    assert inc.state == "recovered"
    assert [c[0] for c in mgr_calls] == ["restart"] and smi_calls == []


def test_the_watchdog_and_the_service_read_one_nvml_seam_and_agree(tmp_path, monkeypatch):
    """FAKE NVML (tests/support/fake_nvml; this machine has no GPU) in place of pynvml: the
    watchdog's GPU check and the service's GPU figures come from the same glmtts.gpu.Nvml,
    so NVML's "not available" sentinel for a process's memory is unknown in both, never
    16 EiB in one of them."""
    import importlib.util
    import json
    import sys

    from glmtts import gpu
    from glmtts.host import Host
    spec = importlib.util.spec_from_file_location("pynvml", os.path.join(REPO, "tests", "support", "fake_nvml", "pynvml.py"))
    fake = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fake)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    devices = tmp_path / "nvml.json"
    devices.write_text(json.dumps({"devices": [{"total": 80 * 2**30, "free": 60 * 2**30,
                                                "procs": [[4242, 2**30], [4243, "not available"]]}]}))
    monkeypatch.setenv(fake.FILE_ENV, str(devices))
    [g] = Host().gpus()
    assert (g.name, g.uuid, g.pci_bus) == (fake.NAME, "GPU-fake-0", "00000000:3B:00.0")
    assert g.memory_total_mb == 80 * 1024 and g.memory_used_mb == 20 * 1024
    assert {p["pid"]: p["used_mb"] for p in g.processes} == {4242: 1024.0, 4243: 0.0}
    service_view = gpu.nvml_status(gpu.Nvml())
    procs = {p["pid"]: p for d in service_view["devices"] for p in d["processes"]}
    assert procs[4242]["used_mb"] == 1024.0 and procs[4243]["used_mb"] is None
