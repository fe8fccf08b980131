"""Observations other than the probe: unit state and restarts, free disk, the service
manager's own log, the kernel log's Xid lines. Each returns Evidence the cycle
classifies exactly like a log line."""

import logging
import os
import re

from .scanner import Evidence

log = logging.getLogger(__name__)

DEFAULT_KERNEL_LOGS = ("/var/log/kern.log", "/var/log/messages")


def unit_evidence(status, previous):
    """Evidence from the unit's state and its restarts since the last cycle.
    ``previous`` is the instance's persisted dict (last_pid, last_restarts)."""
    out = []
    desc = "unit %s: %s" % (status.unit, status.summary())
    if status.state == "crash_loop":
        out.append(Evidence("crash_loop", "unit", desc))
    elif status.state == "failed":
        out.append(Evidence("unhealthy", "unit", desc))
    last_restarts, last_pid = previous.get("last_restarts"), previous.get("last_pid")
    if status.restarts is not None and last_restarts is not None and status.restarts > last_restarts:
        out.append(Evidence("unexpected_exit", "unit", "%s restarted %s by its manager since the last cycle (%d -> %d)" % (
            status.unit, status.manager, last_restarts, status.restarts)))
    elif status.restarts is None and status.main_pid and last_pid and status.main_pid != last_pid:
        out.append(Evidence("unexpected_exit", "unit", "%s has a new process since the last cycle (pid %d -> %d)" % (
            status.unit, last_pid, status.main_pid)))
    return out


def disk_evidence(settings, host):
    """enospc evidence for each of the log/state/output filesystems below the floor."""
    floor = settings.watchdog.disk_free_floor_mb
    out, seen = [], set()
    for d in (settings.paths.log_dir, settings.paths.state_dir, settings.paths.output_dir):
        try:
            free, total = host.disk_free(d)
        except OSError as e:
            log.warning("cannot check free disk of %s: %s", d, e)
            continue
        if free < floor * 2**20:
            key = (free, total)
            if key in seen:
                continue
            seen.add(key)
            out.append(Evidence("enospc", "disk", "disk: %s has %.0f MB free of %.0f MB (< watchdog.disk_free_floor_mb %d)"
                                % (d, free / 2**20, total / 2**20, floor)))
    return out


def mentions(unit, line):
    """Does a shared manager log line speak of this unit (not of glmtts-watchdog)?"""
    return re.search(r"(^|[\s:])%s(\.service)?([\s:;(,.]|$)" % re.escape(unit), line) is not None


def kernel_log_path(settings):
    if settings.watchdog.kernel_log:
        return settings.watchdog.kernel_log
    for p in DEFAULT_KERNEL_LOGS:
        if os.access(p, os.R_OK):
            return p
    return None
