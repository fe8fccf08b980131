"""A deliberately slow runbook step (a plug-in action, named in a runbook as
``tests.plugins.slow_step:SlowStep``), so a test can SIGKILL the watchdog while a step is
under way: it runs the wrapped action for real, then touches ``marker`` and sleeps. The
effect has happened but the journal still shows the step running, the hardest moment
for the next cycle to judge."""

import os

import yaml

from glmtts.watchdog.actions import ACTIONS
from glmtts.watchdog.actions.base import Action


class SlowStep(Action):
    name = "tests.plugins.slow_step:SlowStep"
    summary = "run another action, then sleep (tests only)"
    params = {"action": (str, ""), "args": (dict, None), "seconds": (float, 120.0), "marker": (str, "")}
    mutating = False  # the wrapped action decides for itself

    def run(self, ctx, action="", args=None, seconds=120.0, marker=""):
        result = ACTIONS[action]()(ctx, **(args or {}))
        if marker:
            with open(marker, "w") as f:
                f.write("%d %s %s\n" % (os.getpid(), action, result.status))
        ctx.host.clock.sleep(seconds)
        return result

    def manual(self, ctx, **params):
        return "(test step) %s" % params.get("action")


def with_slow_step(text, k, marker, seconds=300.0):
    """A runbook file's text with step k wrapped in SlowStep: the step runs as before
    (its ``when`` stays the step's, not the wrapped action's), then ``marker`` is written
    and the step sleeps ``seconds``."""
    _, front, body = text.split("---", 2)
    meta = yaml.safe_load(front)
    step = meta["steps"][k]
    action, params = (step, {}) if isinstance(step, str) else next(iter(step.items()))
    params = dict(params or {})
    wrapped = {"action": action, "args": {p: v for p, v in params.items() if p != "when"},
               "seconds": seconds, "marker": marker}
    if "when" in params:
        wrapped["when"] = params["when"]
    meta["steps"][k] = {SlowStep.name: wrapped}
    return "---\n" + yaml.safe_dump(meta, allow_unicode=True, sort_keys=False) + "---" + body
