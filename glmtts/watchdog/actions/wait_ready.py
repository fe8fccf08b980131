from .base import FAILED, OK, Action, StepResult


class WaitReady(Action):
    name = "wait_ready"
    summary = "poll /healthz until it answers 200 (watchdog.ready_timeout_s)"
    params = {"timeout_s": (float, None)}

    def run(self, ctx, timeout_s=None):
        clock = ctx.host.clock
        timeout_s = timeout_s or ctx.settings.watchdog.ready_timeout_s
        deadline = clock.monotonic() + timeout_s
        t0 = clock.monotonic()
        last = None
        while True:
            last = ctx.probe()
            if last.ok:
                if ctx.incident is not None:
                    ctx.incident.note_time("service_back_at", clock.now(), "first healthy probe (wait_ready)")
                return StepResult(OK, "healthy after %.1f s" % (clock.monotonic() - t0))
            if clock.monotonic() >= deadline:
                return StepResult(FAILED, "not ready after %.0f s: %s" % (timeout_s, last.summary()))
            clock.sleep(min(1.0, max(0.0, deadline - clock.monotonic())))

    def manual(self, ctx, **params):
        return "curl -fsS %s/healthz" % ctx.instance.url
