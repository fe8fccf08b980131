from ..managers import CRASH_LOOP, FAILED as UNIT_FAILED, RUNNING, STARTING, STOPPED
from .base import FAILED, OK, SKIPPED, Action, StepResult


def killed_pids(incident):
    """PIDs this remediation's kill steps terminated (with the main pid they saw)."""
    out = set()
    for st in getattr(incident, "steps", None) or []:
        if st.get("action") == "kill_unit_processes" and st.get("status") == OK:
            data = st.get("data") or {}
            out.update(data.get("pids") or [])
            if data.get("main_pid"):
                out.add(data["main_pid"])
    return out


class Restart(Action):
    name = "restart"
    summary = ("restart the service through its manager (systemctl / supervisorctl restart); skipped when the "
               "manager has already replaced the process a kill step terminated")

    params = {"respawn_wait_s": (float, 8.0)}   # > systemd RestartSec=5 of the shipped unit

    def run(self, ctx, respawn_wait_s=8.0):
        unit = ctx.instance.unit
        clock = ctx.host.clock
        st = ctx.manager.status(unit)
        killed = killed_pids(ctx.incident)
        # The manager respawns a killed process by itself (supervisord within a second,
        # systemd after RestartSec); restarting in that gap would stop the process it is
        # starting. A unit stopped on purpose (stop_unit) or given up on is not waited for.
        deadline = clock.monotonic() + respawn_wait_s
        while (killed and st.state not in (STOPPED, CRASH_LOOP) and not (st.main_pid and st.main_pid not in killed)
               and clock.monotonic() < deadline):
            clock.sleep(0.2)
            st = ctx.manager.status(unit)
        if killed and st.main_pid and st.main_pid not in killed and st.state in (RUNNING, STARTING):
            # Restarting now would kill the fresh process the manager just started
            # (Restart=always, autorestart): the second restart of one remediation.
            return StepResult(SKIPPED, "%s already replaced the killed process (pid %s -> %d, %s); not restarting it" % (
                ctx.manager.name, "/".join(str(p) for p in sorted(killed)), st.main_pid, st.state),
                {"main_pid": st.main_pid, "killed": sorted(killed)})
        # A stopped or failed unit is started (systemd: after reset-failed), not restarted.
        r = ctx.manager.start(unit) if st.state in (STOPPED, UNIT_FAILED, CRASH_LOOP) else ctx.manager.restart(unit)
        if r.rc != 0:
            return StepResult(FAILED, "%s exited %d: %s" % (self.manual(ctx), r.rc, (r.err or r.out).strip()[:300]))
        return StepResult(OK, "%s (was %s)" % (self.manual(ctx), st.state))

    def manual(self, ctx, **params):
        return ctx.manager.command("restart", ctx.instance.unit)
