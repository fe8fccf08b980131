from .base import ESCALATE, Action, StepResult


class Escalate(Action):
    name = "escalate"
    summary = "stop automation for this instance and page a human (critical alert) with the reason"
    params = {"reason": (str, "")}
    mutating = False

    def run(self, ctx, reason=""):
        return StepResult(ESCALATE, reason or "runbook asks for a human")
