"""Run a runbook's steps against one instance and record each in the incident.

Steps run in order; a failed step stops them and on_failure runs instead; a step that
asks for a human (escalate) ends everything. A runbook is verified when its last
smoke_test passed. Common step parameters: ``when: unhealthy`` runs the step only if a
quick probe still fails (the service may have come back by itself), ``if_xid: [...]``
only if the incident carries one of those Xid codes.

The incident is journaled before each step (``current_step``) and after it, so a
watchdog killed mid-step leaves a record of what was done and what was under way.
"""

import logging

from .actions import DRY_RUN, ESCALATE, FAILED, SKIPPED, StepResult, resolve
from .incidents import Lifecycle
from .probe import UNHEALTHY
from .signatures import xid_of
from .states import IncidentState

log = logging.getLogger(__name__)


def incident_xids(incident):
    out = []
    for ev in incident.evidence:
        x = xid_of(ev.get("line", ""))
        if x and x[1] not in out:
            out.append(x[1])
    return out


def _run_step(step, ctx, section, index):
    clock = ctx.host.clock
    params = dict(step.params)
    when = params.pop("when", "always")
    if_xid = params.pop("if_xid", None)
    ctx.incident.current_step = {"section": section, "index": index, "action": step.action, "started_at": clock.now()}
    ctx.lifecycle.save(ctx.incident)
    t0 = clock.monotonic()
    if if_xid is not None and not set(if_xid) & set(incident_xids(ctx.incident)):
        result = StepResult(SKIPPED, "no Xid %s in this incident" % if_xid)
    elif when == "unhealthy" and not ctx.dry_run and ctx.probe().verdict != UNHEALTHY:
        result = StepResult(SKIPPED, "service is not unhealthy (any more); step not needed")
    else:
        try:
            result = resolve(step.action)()(ctx, **params)
        except Exception as e:  # an action bug must not kill the cycle: record it as a failure
            log.exception("action %s crashed", step.action)
            result = StepResult(FAILED, "action crashed: %s: %s" % (type(e).__name__, e))
    duration = clock.monotonic() - t0
    rec = {"section": section, "action": step.action, "params": step.params, "status": result.status,
           "detail": result.detail, "duration_s": round(duration, 3), "started_at": clock.now() - duration}
    if result.data:
        rec["data"] = result.data
    ctx.incident.steps.append(rec)
    ctx.incident.current_step = None
    ctx.lifecycle.save(ctx.incident)
    lvl = logging.WARNING if result.status in (FAILED, ESCALATE) else logging.INFO
    log.log(lvl, "%s %s step %s: %s %s", ctx.instance.unit, section, step.action, result.status, result.detail)
    return result


def _run_steps(steps, ctx, section):
    """'ok' | 'failed' | 'escalate', and whether a smoke test passed last."""
    verified = None
    for i, step in enumerate(steps):
        result = _run_step(step, ctx, section, i)
        if result.status == ESCALATE:
            ctx.incident.reason = result.detail
            return "escalate", verified
        if result.status == FAILED:
            ctx.incident.reason = "%s: %s" % (step.action, result.detail)
            return "failed", verified
        if step.action == "smoke_test" and result.status != SKIPPED:
            verified = result.status != DRY_RUN and result.ok
    return "ok", verified


def execute(runbook, ctx):
    """Run runbook's steps for ctx.incident (the lifecycle has it REMEDIATING) and say how
    they ended: (state, reason), state one of RECOVERED, FAILED, ESCALATED, DRY_RUN. Each
    step is journaled ahead through ctx.lifecycle.save; the state change is the caller's
    (Lifecycle.remediate)."""
    inc = ctx.incident
    if ctx.lifecycle is None:
        ctx.lifecycle = Lifecycle(clock=ctx.host.clock.now)
    # A smoke test that fails is a failed step, so "ok" always means verified (or no
    # smoke test in the runbook, e.g. bad-batch run by hand).
    outcome, verified = _run_steps(runbook.steps, ctx, "steps")
    if outcome == "failed" and runbook.on_failure:
        inc.verified_at = None
        outcome, verified = _run_steps(runbook.on_failure, ctx, "on_failure")
    inc.ended_at = ctx.host.clock.now()
    if ctx.dry_run:
        return IncidentState.DRY_RUN, "dry run: nothing was changed"
    if outcome == "escalate":
        return IncidentState.ESCALATED, inc.reason
    if outcome == "failed":
        return IncidentState.FAILED, inc.reason
    return IncidentState.RECOVERED, "verified by the smoke test" if verified else "steps completed"


def run_runbook(runbook, ctx):
    """The whole remediation through the lifecycle: remediating, the steps, their end."""
    inc = ctx.incident
    if ctx.lifecycle is None:
        ctx.lifecycle = Lifecycle(clock=ctx.host.clock.now)
    inc.runbook, inc.runbook_path, inc.escalate = runbook.id, runbook.path, runbook.escalate
    return ctx.lifecycle.remediate(inc, runbook, lambda: execute(runbook, ctx))
