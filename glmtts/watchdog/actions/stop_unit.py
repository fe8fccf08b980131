from .base import FAILED, OK, Action, StepResult


class StopUnit(Action):
    name = "stop_unit"
    summary = "stop the service through its manager (systemctl / supervisorctl stop)"

    def run(self, ctx):
        r = ctx.manager.stop(ctx.instance.unit)
        if r.rc != 0:
            return StepResult(FAILED, "%s exited %d: %s" % (self.manual(ctx), r.rc, (r.err or r.out).strip()[:300]))
        return StepResult(OK, "stopped %s" % ctx.instance.unit)

    def manual(self, ctx, **params):
        return ctx.manager.command("stop", ctx.instance.unit)
