from .base import OK, Action, StepResult


class Alert(Action):
    name = "alert"
    summary = "send an alert now (spooled and retried if undeliverable)"
    params = {"severity": (str, "warning"), "message": (str, "")}
    mutating = False

    def run(self, ctx, severity="warning", message=""):
        if ctx.alerter is None:
            return StepResult(OK, "no alert channel configured")
        inc = ctx.incident
        title = "glmtts %s: %s" % (ctx.instance.unit, message or (inc.summary() if inc else "alert"))
        body = inc.summary(long=True) if inc else message
        key = "%s:step:%s" % (inc.id if inc else "manual", message)
        if ctx.dry_run:
            return StepResult("dry_run", "would alert (%s): %s" % (severity, title))
        sent = ctx.alerter.send(key, severity, title, body)
        return StepResult(OK, "alert %s" % sent)
