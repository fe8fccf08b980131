from ..managers import CRASH_LOOP, FAILED as UNIT_FAILED, STOPPED
from .base import FAILED, OK, Action, StepResult


class Restart(Action):
    name = "restart"
    summary = "restart the service through its manager (systemctl / supervisorctl restart)"

    def run(self, ctx):
        unit = ctx.instance.unit
        st = ctx.manager.status(unit)
        # A stopped or failed unit is started (systemd: after reset-failed), not restarted.
        r = ctx.manager.start(unit) if st.state in (STOPPED, UNIT_FAILED, CRASH_LOOP) else ctx.manager.restart(unit)
        if r.rc != 0:
            return StepResult(FAILED, "%s exited %d: %s" % (self.manual(ctx), r.rc, (r.err or r.out).strip()[:300]))
        return StepResult(OK, "%s (was %s)" % (self.manual(ctx), st.state))

    def manual(self, ctx, **params):
        return ctx.manager.command("restart", ctx.instance.unit)
