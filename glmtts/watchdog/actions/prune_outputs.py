"""Free disk by pruning finished batch outputs through the batch retention code
(glmtts.batch.retention.prune), then check free space against the floor."""

import importlib

from .base import FAILED, OK, SKIPPED, Action, StepResult


def _prune_function():
    try:
        mod = importlib.import_module("glmtts.batch.retention")
    except ImportError:
        return None
    return getattr(mod, "prune", None)


class PruneOutputs(Action):
    name = "prune_outputs"
    summary = "prune finished batch jobs older than older_than_days (batch.retention_days) and re-check free disk"
    params = {"older_than_days": (float, None)}
    mutating = False  # the batch retention has its own dry run


    def run(self, ctx, older_than_days=None):
        s = ctx.settings
        days = s.batch.retention_days if older_than_days is None else older_than_days
        prune = _prune_function()
        if prune is None:
            detail = "batch retention not available (glmtts.batch.retention.prune missing)"
            report = None
        else:
            try:
                report = prune(s, older_than_days=days, dry_run=ctx.dry_run)
            except Exception as e:
                return StepResult(FAILED, "batch prune failed: %s" % str(e)[:300])
            if isinstance(report, dict):
                detail = "%s %d finished job(s) older than %g days, %.1f MB" % (
                    "would prune" if ctx.dry_run else "pruned", len(report.get("pruned", [])), days,
                    report.get("bytes_freed", 0) / 2**20)
            else:
                detail = "pruned outputs older than %g days: %s" % (days, report)
            if ctx.dry_run:
                return StepResult("dry_run", detail, {"report": report})
        floor = s.watchdog.disk_free_floor_mb
        low = []
        for d in sorted({s.paths.log_dir, s.paths.state_dir, s.paths.output_dir}):
            try:
                free, _ = ctx.host.disk_free(d)
            except OSError:
                continue
            if free < floor * 2**20:
                low.append("%s %.0f MB free" % (d, free / 2**20))
        data = {"report": report if isinstance(report, (dict, list, str, int, float, type(None))) else str(report)}
        if low:
            return StepResult(FAILED, "%s; still below watchdog.disk_free_floor_mb %d: %s" % (detail, floor, ", ".join(low)), data)
        return StepResult(OK if prune else SKIPPED, detail, data)

    def manual(self, ctx, **params):
        return "glmtts batch prune --older-than %g" % ctx.settings.batch.retention_days
