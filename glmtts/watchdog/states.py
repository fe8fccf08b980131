"""States of incidents and of the remediation guard, changed only through transition().

Dependency-free on purpose (supervisor's states.py habit): the policy, the executor and
the CLI all agree on these names, and every change is logged in one place.
"""

import logging

log = logging.getLogger(__name__)


class IncidentState:
    OPENED = "opened"            # evidence classified, nothing done yet
    REMEDIATING = "remediating"  # runbook steps running
    RECOVERED = "recovered"      # steps done and the smoke test passed
    FAILED = "failed"            # steps and on_failure done, still not verified
    ESCALATED = "escalated"      # a human must act; automation stopped for this instance
    WARNING = "warning"          # recorded and alerted, deliberately not acted on
    DRY_RUN = "dry_run"          # steps only described
    INTERRUPTED = "interrupted"  # the cycle that owned it died; closed by the next cycle
    PLANNED = "planned"          # not an incident: an operator's stop/restart/reload, recorded only


class GuardState:
    ARMED = "armed"              # remediations allowed (within the rate limit)
    ESCALATED = "escalated"      # no action until `glmtts-watchdog resume`


INCIDENT_TERMINAL = (IncidentState.RECOVERED, IncidentState.FAILED, IncidentState.ESCALATED,
                     IncidentState.WARNING, IncidentState.DRY_RUN, IncidentState.INTERRUPTED,
                     IncidentState.PLANNED)

INCIDENT_TRANSITIONS = {
    IncidentState.OPENED: (
        IncidentState.REMEDIATING,   # opened -> remediating: a runbook was chosen and allowed
        IncidentState.WARNING,       # opened -> warning: e.g. an OOM line while /healthz is fine
        IncidentState.ESCALATED,     # opened -> escalated: the rate limit is spent
        IncidentState.INTERRUPTED,   # opened -> interrupted: the cycle died before deciding
    ),
    IncidentState.REMEDIATING: (
        IncidentState.RECOVERED,     # remediating -> recovered: smoke test passed
        IncidentState.FAILED,        # remediating -> failed: on_failure ran and did not verify
        IncidentState.ESCALATED,     # remediating -> escalated: a step asked for a human (GPU off the bus)
        IncidentState.DRY_RUN,       # remediating -> dry_run: `runbook exec --dry-run`
        IncidentState.INTERRUPTED,   # remediating -> interrupted: the cycle died mid-runbook
    ),
}

GUARD_TRANSITIONS = {
    GuardState.ARMED: (GuardState.ESCALATED,),     # armed -> escalated: limit spent or runbook escalated
    GuardState.ESCALATED: (GuardState.ARMED,),     # escalated -> armed: a human ran `resume`
}


class InvalidTransition(Exception):
    pass


def transition(thing, new, reason, table, kind):
    """Move ``thing.state`` to ``new`` if ``table`` allows it; log it; return the old state.
    A transition to the current state is a no-op."""
    old = thing.state
    if old == new:
        return old
    if new not in table.get(old, ()):
        raise InvalidTransition("%s %s: %s -> %s is not allowed" % (kind, getattr(thing, "key", "?"), old, new))
    level = logging.WARNING if new in (IncidentState.FAILED, IncidentState.ESCALATED) else logging.INFO
    log.log(level, "%s %s: %s -> %s (%s)", kind, getattr(thing, "key", "?"), old, new, reason)
    thing.state = new
    history = getattr(thing, "history", None)
    if history is not None:
        history.append({"from": old, "to": new, "reason": reason})
    return old


def incident_transition(incident, new, reason):
    return transition(incident, new, reason, INCIDENT_TRANSITIONS, "incident")


def guard_transition(guard, new, reason):
    return transition(guard, new, reason, GUARD_TRANSITIONS, "guard")
