"""`glmtts-watchdog runbook exec ID`: a human runs a runbook's steps now. It takes the
cycle lock (never alongside an automatic cycle), records an incident marked manual, and
does not count against the remediation rate limit."""

from ..errors import GlmttsError
from . import incidents
from .actions import Context
from .executor import run_runbook
from .instances import find
from .lock import CycleLock, NoLock


def exec_runbook(wd, runbook, unit=None):
    inst = find(wd.instances, unit or wd.settings.watchdog.unit)
    lock = NoLock() if wd.dry_run else CycleLock(wd.lock_path)  # a dry run writes nothing
    if not lock.acquire():
        raise GlmttsError("another watchdog cycle is running (pid %s); try again in a moment" % lock.holder)
    try:
        now = wd.host.clock.now()
        inc = incidents.Incident(incidents.new_id(inst.unit, now), inst.unit, inst.url, now, manual=True, fault_at=now)
        # Journaled ahead like the cycle's, without the lifecycle's alerts: a human is at the keyboard.
        lc = incidents.Lifecycle(wd.incident_log, None, wd.host.clock.now, wd.dry_run)
        ctx = Context(wd.settings, inst, wd.host, wd.manager, inc, wd.dry_run,
                      wd.alerter(wd.load_state()), lc)
        lc.open(inc)
        run_runbook(runbook, ctx)
        return inc
    finally:
        lock.release()
