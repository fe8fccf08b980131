"""States of incidents and of the remediation guard, and their machines (glmtts/machine.py):
an incident changes state only through ``INCIDENT.advance`` (incidents.py Lifecycle), the
guard only through ``guard_transition``; an arrow not in the table raises InvalidTransition.

Dependency-free on purpose (supervisor's states.py habit): the policy, the executor and
the CLI all agree on these names, and every change is logged in one place.
"""

import logging

from ..machine import InvalidTransition, Machine

__all__ = ["IncidentState", "GuardState", "INCIDENT_TERMINAL", "INCIDENT", "GUARD", "INCIDENT_TRANSITIONS",
           "GUARD_TRANSITIONS", "InvalidTransition", "incident_transition", "guard_transition"]

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

# The incident's table: every arrow, and what entering each state does. The effect
# names are the lifecycle's (incidents.py Lifecycle supplies them, in this order):
# close (closing hooks, ended_at), journal (write-ahead record), guard_escalate /
# guard_verified (the remediation guard), alert.
INCIDENT = Machine("incident", {
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
}, entry={
    IncidentState.REMEDIATING: ("journal", "alert"),
    IncidentState.WARNING: ("close", "journal", "alert"),
    IncidentState.RECOVERED: ("close", "journal", "guard_verified", "alert"),
    IncidentState.FAILED: ("close", "journal", "alert"),
    IncidentState.ESCALATED: ("close", "journal", "guard_escalate", "alert"),
    IncidentState.DRY_RUN: ("close", "journal"),
    IncidentState.INTERRUPTED: ("close", "journal", "alert"),
}, levels={IncidentState.FAILED: logging.WARNING, IncidentState.ESCALATED: logging.WARNING}, log=log)

GUARD = Machine("guard", {
    GuardState.ARMED: (GuardState.ESCALATED,),     # armed -> escalated: limit spent or runbook escalated
    GuardState.ESCALATED: (GuardState.ARMED,),     # escalated -> armed: a human ran `resume`
}, levels={GuardState.ESCALATED: logging.WARNING}, log=log)

# The tables as plain dicts, for readers that only look (tests, docs).
INCIDENT_TRANSITIONS = INCIDENT.arrows
GUARD_TRANSITIONS = GUARD.arrows


def incident_transition(incident, new, reason):
    """The arrow alone (checked, recorded, logged), without the lifecycle's entry effects:
    only incidents.py Lifecycle changes an incident's state (INCIDENT.advance)."""
    return INCIDENT.change(incident, new, reason)


def guard_transition(guard, new, reason):
    return GUARD.change(guard, new, reason)
