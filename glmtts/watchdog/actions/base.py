"""What every action shares: its declared parameters, the StepResult it returns and the
Context it acts through. An action touches the OS only through ``ctx.host`` and
``ctx.manager``; in dry-run it does its read-only part and says what it would do."""

import logging
from dataclasses import dataclass, field

from ... import watchdog_token

log = logging.getLogger(__name__)

OK, FAILED, SKIPPED, ESCALATE, DRY_RUN = "ok", "failed", "skipped", "escalate", "dry_run"

# Parameters every step may carry; the executor interprets them.
COMMON_PARAMS = {
    "when": (str, "always"),     # always | unhealthy (run only if a quick probe fails)
    "if_xid": (list, None),      # run only if the incident carries one of these Xid codes
}


@dataclass
class StepResult:
    status: str
    detail: str = ""
    data: dict = field(default_factory=dict)

    @property
    def ok(self):
        return self.status in (OK, SKIPPED, DRY_RUN)


@dataclass
class Context:
    settings: object
    instance: object          # instances.Instance
    host: object              # glmtts.host.Host (ReadOnlyHost in a dry run)
    manager: object           # managers.*Manager
    incident: object = None   # incidents.Incident (steps may add to it)
    dry_run: bool = False
    alerter: object = None    # alerts.Alerter
    lifecycle: object = None  # incidents.Lifecycle: journals the incident as steps run

    def probe(self, retries=1, timeout_s=None):
        from ..probe import Probe
        wd = self.settings.watchdog
        timeout_s = wd.probe_timeout_s if timeout_s is None else min(timeout_s, wd.probe_timeout_s)
        return Probe(self.instance.url, timeout_s, retries, wd.probe_retry_interval_s,
                     loading_grace_s=wd.ready_timeout_s, api_key=wd.api_key,
                     sleep=self.host.clock.sleep, clock=self.host.clock.monotonic,
                     token=watchdog_token.for_settings(self.settings), http=self.host).check()


class Action:
    name = ""
    summary = ""
    params = {}               # name -> (type, default); None default = from settings
    mutating = True           # False: safe to run in dry-run as is

    def run(self, ctx, **params):
        raise NotImplementedError

    def manual(self, ctx, **params):
        """The command a human would type for this step."""
        return ""

    def __call__(self, ctx, **params):
        if ctx.dry_run and self.mutating:
            return StepResult(DRY_RUN, "would run: %s" % (self.manual(ctx, **params) or self.name))
        return self.run(ctx, **params)
