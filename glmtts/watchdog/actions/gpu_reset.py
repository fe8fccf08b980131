"""`nvidia-smi -r`: only when watchdog.gpu_reset allows it, we run as root, and NVML shows
no process on that GPU (the reset fails or kills others' work otherwise). Its own manual
calls it "not recommended for production", so a health check follows; exit code 15
means the GPU fell off the bus, which no retry fixes: escalate for a node reboot."""

from ..signatures import xid_of
from .base import ESCALATE, FAILED, OK, SKIPPED, Action, StepResult

OFF_THE_BUS = 15


def _pick_gpu(ctx, gpus, index):
    if index is not None and index >= 0:
        return next((g for g in gpus if g.index == index), None)
    buses = set()
    for ev in getattr(ctx.incident, "evidence", []) or []:
        x = xid_of(ev.get("line", "") if isinstance(ev, dict) else ev.line)
        if x:
            buses.add(x[0].lower())
    for g in gpus:
        if any(g.pci_bus.lower().endswith(b[-7:]) for b in buses):
            return g
    return gpus[0] if len(gpus) == 1 else None


class GpuReset(Action):
    name = "gpu_reset"
    summary = "nvidia-smi -r -i N, only if allowed, root, and no process on that GPU; health check after"
    params = {"index": (int, -1)}
    mutating = False  # the checks are read-only; the reset itself honours dry-run below

    def run(self, ctx, index=-1):
        host = ctx.host
        if not ctx.settings.watchdog.gpu_reset:
            return StepResult(SKIPPED, "GPU reset disabled (watchdog.gpu_reset = false)")
        if host.euid() != 0:
            return StepResult(SKIPPED, "GPU reset needs root; the watchdog runs as uid %d" % host.euid())
        gpus = host.gpus()
        if not gpus:
            return StepResult(SKIPPED, "no GPU visible through NVML")
        gpu = _pick_gpu(ctx, gpus, index)
        if gpu is None:
            return StepResult(SKIPPED, "cannot tell which GPU to reset (set the step's index)")
        if gpu.processes:
            return StepResult(SKIPPED, "GPU %d still has processes %s: not resetting" % (
                gpu.index, [p["pid"] for p in gpu.processes]), {"gpu": gpu.to_dict()})
        argv = [host.nvidia_smi, "-r", "-i", str(gpu.index)]
        if ctx.dry_run:
            return StepResult("dry_run", "would run: %s" % " ".join(argv))
        r = host.run(argv, timeout=120)
        if r.rc == OFF_THE_BUS:
            return StepResult(ESCALATE, "nvidia-smi -r exited 15: GPU %d has fallen off the bus; reboot the node "
                              "(not retrying)" % gpu.index, {"rc": r.rc, "output": (r.out + r.err)[-500:]})
        if r.rc != 0:
            return StepResult(FAILED, "nvidia-smi -r -i %d exited %d: %s" % (gpu.index, r.rc, (r.out + r.err).strip()[-300:]))
        health = host.run([host.nvidia_smi, "-q", "-i", str(gpu.index)], timeout=60)
        if health.rc != 0:
            return StepResult(ESCALATE, "GPU %d reset but its health check failed (nvidia-smi -q exited %d): reboot the node"
                              % (gpu.index, health.rc))
        return StepResult(OK, "GPU %d reset; nvidia-smi -q answers" % gpu.index)

    def manual(self, ctx, **params):
        return "nvidia-smi --query-compute-apps=pid --format=csv  # must be empty; then: sudo nvidia-smi -r -i N && nvidia-smi -q -i N"
