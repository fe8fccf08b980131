"""Remediation policy: which runbook (if any) a cycle's findings call for, and the guard
that stops the watchdog from making things worse.

Per instance a Guard is ARMED or ESCALATED. Armed, at most watchdog.max_remediations
runs of one runbook fit in watchdog.remediation_window_s; the next one escalates
instead (a critical alert with the incident summary) and the guard stays ESCALATED,
acting on nothing for that instance, until a human runs `glmtts-watchdog resume`.
A verified remediation resets that runbook's counter, so occasional faults spread over
weeks never add up to an escalation (monit's never-resetting counters cause exactly the
restart loops this avoids). Time is passed in (``now``), never read here.

Two findings are not incidents to act on: an operator's planned stop/restart still in
progress (PLANNED: the manager's own account says someone asked for it), and a unit an
operator stopped (STOPPED). A start limit reached by separate faults (fault_burst) is
healed with a growing delay (BACKOFF until it has passed) and is exempt from the
max_remediations limit, which stays for true crash loops. It pages once: the later
recoveries of the same burst (within the window) are alerted as warnings, not pages.
"""

import logging
import time
from dataclasses import dataclass, field

from . import signatures
from .probe import UNHEALTHY
from .runbook import for_signature
from .states import GuardState, IncidentState, guard_transition

log = logging.getLogger(__name__)


def _iso(t):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))

# What decide() returns. An incident's target state when the findings are an incident
# (the lifecycle's own names: there is one vocabulary), or a verdict that opens none.
WARNING, REMEDIATE, ESCALATE = IncidentState.WARNING, IncidentState.REMEDIATING, IncidentState.ESCALATED
INCIDENT_DECISIONS = (WARNING, REMEDIATE, ESCALATE)
OK, SUPPRESSED, STOPPED, PLANNED, BACKOFF = "ok", "suppressed", "stopped", "planned", "backoff"
# Findings an operator's planned stop/restart explains by itself (no process died unasked).
PLANNED_SYMPTOMS = frozenset(("unhealthy",))
BACKOFF_SIGNATURES = frozenset(("fault_burst",))


@dataclass
class Guard:
    key: str
    state: str = GuardState.ARMED
    attempts: dict = field(default_factory=dict)   # runbook id -> [start times]
    escalated_at: float = None
    reason: str = ""
    incident: str = None
    history: list = field(default_factory=list)

    @classmethod
    def from_dict(cls, key, d):
        return cls(key, d.get("state", GuardState.ARMED), {k: list(v) for k, v in d.get("attempts", {}).items()},
                   d.get("escalated_at"), d.get("reason", ""), d.get("incident"), list(d.get("history", []))[-20:])

    def to_dict(self):
        return {"state": self.state, "attempts": self.attempts, "escalated_at": self.escalated_at,
                "reason": self.reason, "incident": self.incident, "history": self.history[-20:]}


@dataclass
class Decision:
    kind: str
    runbook: object = None
    reason: str = ""
    # False: a later recovery of a fault burst already paged in this window. It is still
    # an incident, journaled and alerted, but as a warning (chat), not a second page.
    page: bool = True


class Policy:
    def __init__(self, runbooks, max_remediations=3, window_s=3600, guards=None, backoff_s=None):
        self.runbooks = runbooks
        self.max = max_remediations
        self.window_s = window_s
        # first delay of a fault burst's second recovery; doubles each time, capped at the window
        self.backoff_s = backoff_s if backoff_s is not None else window_s / 12.0
        self.guards = guards if guards is not None else {}   # persisted dicts, updated in place

    def guard(self, unit):
        return Guard.from_dict(unit, self.guards.get(unit, {}))

    def _save(self, guard):
        self.guards[guard.key] = guard.to_dict()

    def recent(self, unit, runbook_id, now):
        return [t for t in self.guard(unit).attempts.get(runbook_id, []) if now - t < self.window_s]

    def backoff_delay(self, n):
        """Wait before the (n+1)-th fault-burst recovery within the window."""
        return 0.0 if n <= 0 else min(self.window_s, self.backoff_s * 2 ** (n - 1))

    def decide(self, sigs, probe_verdict, unit_state=None, xids=(), now=0.0, unit="", planned=None):
        """sigs: signature names seen this cycle (any order). planned: the operator's
        stop/restart still in progress, as checks.planned_in_progress() found it."""
        guard = self.guard(unit)
        sigs = sorted(set(sigs), key=lambda n: signatures.PRECEDENCE.get(n, 99))
        if guard.state == GuardState.ESCALATED:
            return Decision(SUPPRESSED, reason="escalated %s: %s; waiting for `glmtts-watchdog resume`" % (
                guard.incident or "", guard.reason))
        if unit_state == "stopped" and set(sigs) <= PLANNED_SYMPTOMS:
            # an unanswered probe is what a stopped unit looks like; starting it would undo the operator
            return Decision(STOPPED, reason="the unit is stopped (by an operator); not starting it")
        if planned and set(sigs) <= PLANNED_SYMPTOMS:
            return Decision(PLANNED, reason="a planned %s is in progress; not acting" % planned)
        if not sigs:
            return Decision(OK)
        serving = probe_verdict != UNHEALTHY
        if "gpu_xid" in sigs and xids and all(signatures.XID_ACTIONS.get(c) == "ignore" for c in xids):
            # Xid 43/63: NVIDIA's table says record and ignore; judge the rest without it.
            acting = [s for s in sigs if s != "gpu_xid"]
        else:
            acting = sigs
        top_runbook = next((rb for rb in (for_signature(self.runbooks, s) for s in acting or sigs) if rb), None)
        critical = [s for s in acting if signatures.BY_NAME[s].severity == "critical"]
        if not critical and serving:
            # e.g. a CUDA OOM line while /healthz answers 200: the service handled it.
            return Decision(WARNING, top_runbook, "%s seen while the service is %s" % ("+".join(sigs), probe_verdict))
        if top_runbook is None:
            return Decision(WARNING, None, "no runbook triggers on %s" % "+".join(sigs))
        if BACKOFF_SIGNATURES & set(top_runbook.triggers):
            recent = self.recent(unit, top_runbook.id, now)
            wait = self.backoff_delay(len(recent))
            if recent and now < recent[-1] + wait:
                return Decision(BACKOFF, top_runbook, "backing off: recovery %d of this burst not before %.0f s after the last (%.0f s to go)" % (
                    len(recent) + 1, wait, recent[-1] + wait - now))
            if recent:
                return Decision(REMEDIATE, top_runbook, "recovery %d of a fault burst paged at %s; healing without a new page" % (
                    len(recent) + 1, _iso(recent[0])), page=False)
            return Decision(REMEDIATE, top_runbook)
        if len(self.recent(unit, top_runbook.id, now)) >= self.max:
            return Decision(ESCALATE, top_runbook, "%d remediations with runbook %s within %d s; not trying again" % (
                self.max, top_runbook.id, self.window_s))
        return Decision(REMEDIATE, top_runbook)

    def begin(self, unit, runbook_id, now):
        """Count a remediation before it starts (written ahead: a crash mid-run still counts)."""
        g = self.guard(unit)
        g.attempts[runbook_id] = [t for t in g.attempts.get(runbook_id, []) if now - t < self.window_s] + [now]
        self._save(g)

    def verified(self, unit, runbook_id):
        g = self.guard(unit)
        rb = self.runbooks.get(runbook_id) if isinstance(self.runbooks, dict) else None
        if rb is not None and BACKOFF_SIGNATURES & set(rb.triggers):
            return  # a burst's delays keep growing through its recoveries; the window forgets them
        if g.attempts.pop(runbook_id, None):
            log.info("%s: remediation with %s verified; its counter is reset", unit, runbook_id)
        self._save(g)

    def escalate(self, unit, reason, incident_id, now):
        g = self.guard(unit)
        guard_transition(g, GuardState.ESCALATED, reason)
        g.escalated_at, g.reason, g.incident = now, reason, incident_id
        self._save(g)

    def resume(self, unit=None):
        """Re-arm one instance (or all). Returns the units re-armed."""
        done = []
        for key in list(self.guards) if unit is None else [unit]:
            g = self.guard(key)
            if g.state == GuardState.ESCALATED:
                guard_transition(g, GuardState.ARMED, "resumed by a human")
                done.append(key)
            g.attempts, g.reason, g.incident, g.escalated_at = {}, "", None, None
            self._save(g)
        return done
