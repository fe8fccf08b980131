"""Snapshot the facts a human wants first into the incident: unit state, /healthz
answer, port owner, GPU memory and processes, disk free, the error log's tail."""

import os

from .base import OK, Action, StepResult

# The cycle has just seen the service fail its probes; diagnostics only record how it
# answers now. A hung process would hold a full watchdog.probe_timeout_s probe (10 s by
# default) for nothing, so one short probe, never longer than this.
DIAGNOSTICS_PROBE_S = 1.0


def tail(path, lines=30, max_bytes=65536):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return []
    return [l.decode("utf-8", "replace") for l in data.splitlines()[-lines:]]


def snapshot(ctx, lines=30):
    inst, host, s = ctx.instance, ctx.host, ctx.settings
    unit = ctx.manager.status(inst.unit)
    probe = ctx.probe(timeout_s=DIAGNOSTICS_PROBE_S)
    owners = [host.process(p) for p in host.port_owners(inst.port)]
    disks = {}
    for d in sorted({s.paths.log_dir, s.paths.state_dir, s.paths.output_dir}):
        try:
            free, total = host.disk_free(d)
            disks[d] = {"free_mb": round(free / 2**20, 1), "total_mb": round(total / 2**20, 1)}
        except OSError as e:
            disks[d] = {"error": str(e)}
    return {
        "unit": unit.to_dict(),
        "healthz": dict(probe.to_dict(), body=probe.body),
        "port": inst.port,
        "port_owners": [o for o in owners if o],
        "gpus": [g.to_dict() for g in host.gpus()],
        "disk": disks,
        "error_log_tail": tail(inst.logs.get("error", ""), lines),
    }


class CaptureDiagnostics(Action):
    name = "capture_diagnostics"
    summary = "snapshot unit state, /healthz, port owner, GPU, disk and the error log's tail into the incident"
    params = {"lines": (int, 30)}
    mutating = False

    def run(self, ctx, lines=30):
        snap = snapshot(ctx, lines)
        if ctx.incident is not None:
            ctx.incident.diagnostics = snap
        u = snap["unit"]
        return StepResult(OK, "unit %s, healthz %s, %d GPU(s), %d log lines" % (
            u["state"], snap["healthz"]["verdict"], len(snap["gpus"]), len(snap["error_log_tail"])))

    def manual(self, ctx, **params):
        return "glmtts-watchdog diagnose"
