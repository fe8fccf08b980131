"""Retention: delete finished batch jobs (and their outputs) older than
``batch.retention_days``. The disk-full runbook calls ``prune`` to free space.

Unfinished jobs are never pruned. Outputs are deleted only from directories the store
manages (``<paths.output_dir>/<id>/``); for a job run with `glmtts batch run --out DIR`
only the job record goes and the user's directory is left alone (reported as kept).

The service's scratch files (the UI's uploads and results under <state_dir>/cache,
glmtts/cachedir.py) are pruned by the same call with the same age, as "cache".
"""

import logging
import os
import time

from .. import cachedir
from . import states
from ..host import Host
from .store import JobStore

log = logging.getLogger(__name__)

DAY = 86400.0


def prune(settings, older_than_days=None, now=None, *, dry_run=False, host=None):
    """Delete finished jobs older than ``older_than_days`` (default batch.retention_days).
    Returns {"pruned": [ids], "bytes_freed": n, "kept_outputs": [dirs], "unfinished": n,
    "errors": [...]}."""
    days = settings.batch.retention_days if older_than_days is None else float(older_than_days)
    now = time.time() if now is None else now
    host = host or Host()
    store = JobStore(settings)
    report = {"older_than_days": days, "pruned": [], "bytes_freed": 0, "kept_outputs": [], "unfinished": 0,
              "errors": [], "dry_run": dry_run}
    output_root = os.path.realpath(settings.paths.output_dir)
    for job in store.list():
        if job.status not in states.FINISHED:
            report["unfinished"] += 1
            continue
        finished = job.state.get("finished_at") or job.state.get("updated_at") or 0
        if now - finished < days * DAY:
            continue
        targets = [job.dir]
        out = os.path.realpath(job.out_dir)
        if job.state.get("managed_out") and os.path.dirname(out) == output_root and os.path.basename(out) == job.id:
            targets.append(out)
        elif os.path.isdir(out):
            report["kept_outputs"].append(out)
        freed = sum(host.dir_bytes(t) for t in targets if os.path.isdir(t))
        if not dry_run:
            try:
                # outputs first: a job record without outputs is still listed and prunable
                for target in reversed(targets):
                    host.remove(target) if os.path.isdir(target) else None
            except OSError as e:
                report["errors"].append("%s: %s" % (job.id, e))
                log.warning("batch prune: could not delete job %s: %s", job.id, e)
                continue
            log.info("batch prune: deleted job %s (%s, finished %.1f days ago), freed %d bytes", job.id,
                     job.status, (now - finished) / DAY, freed)
        report["pruned"].append(job.id)
        report["bytes_freed"] += freed
    report["cache"] = cachedir.prune(settings, older_than_days=days, now=now, dry_run=dry_run)
    report["errors"].extend("cache: %s" % e for e in report["cache"]["errors"])
    return report
