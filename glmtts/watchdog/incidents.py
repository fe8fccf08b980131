"""Incidents: what was seen, what was done, how it ended.

paths.state_dir/incidents.jsonl is a write-ahead journal: an incident is appended when it
opens (before any action or alert) and again, whole, at every change (each state, each
step started and finished). Each record is one JSON line written with a single write and
fsync'd, so a reader (or a crash) never sees half a record. Readers fold the journal:
the last record of an id is that incident's latest state (``IncidentLog.read``). An
incident whose latest record is not terminal was left open by a cycle that died; the
next cycle closes it as ``interrupted`` (cycle.py).

Times, all wall-clock epoch seconds: ``fault_at`` the earliest trustworthy evidence (the
manager's own exit time, a log line's own time, the start of the first failed probe);
``service_back_at`` when the service answered healthy again (the manager's ready time of
the new process, else the first healthy probe); ``verified_at`` the smoke test. Outage
is service_back_at - fault_at, verification verified_at - service_back_at."""

import json
import logging
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass, field, fields

from .. import fsutil
from . import signatures
from .states import INCIDENT, INCIDENT_TERMINAL, IncidentState

log = logging.getLogger(__name__)


_ERROR_LINE = re.compile(r"\b(ERROR|CRITICAL|FATAL)\b|\b[A-Z]\w*Error\b|\bfailed\b")


# Log levels and exception lines; not "uvicorn.error:", a logger name on every INFO line.
_ERROR_WORDS = re.compile(r"\b(ERROR|CRITICAL|FATAL)\b|\w(Error|Exception): ")


def iso(t):
    if t is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % int((t % 1) * 1000)


@dataclass
class Incident:
    id: str
    unit: str
    url: str
    detected_at: float
    signatures: list = field(default_factory=list)
    evidence: list = field(default_factory=list)      # [{"signature","path","line","at"}]
    probe: dict = field(default_factory=dict)
    unit_status: dict = field(default_factory=dict)
    state: str = IncidentState.OPENED
    history: list = field(default_factory=list)
    runbook: str = None
    runbook_path: str = None
    steps: list = field(default_factory=list)         # [{"action","params","status","detail","duration_s","section"}]
    diagnostics: dict = field(default_factory=dict)
    fault_at: float = None                             # earliest trustworthy evidence of the fault
    service_back_at: float = None                      # the service answered healthy again
    verified_at: float = None                          # smoke test passed
    ended_at: float = None
    times_from: dict = field(default_factory=dict)     # which evidence each time came from
    current_step: dict = None                          # the step running when this record was written
    cycle_pid: int = None                              # the watchdog process that owns it while open
    interruption: dict = None                          # what the next cycle found (outcome interrupted)
    follows: str = None                                # the interrupted incident this one continues
    reason: str = ""                                   # why this outcome
    escalate: str = ""                                 # runbook's words on whom to page
    manual: bool = False                               # started by `runbook exec`
    page: bool = True                                  # False: a burst already paged; alerts go as warnings
    notes: list = field(default_factory=list)

    @property
    def key(self):
        return self.id

    @property
    def severity(self):
        sev = "info"
        for name in self.signatures:
            s = signatures.BY_NAME.get(name)
            if s and signatures.severity_rank(s.severity) > signatures.severity_rank(sev):
                sev = s.severity
        return sev

    @property
    def start(self):
        return self.fault_at if self.fault_at is not None else self.detected_at

    @property
    def outage_s(self):
        """Fault to healthy again: what clients lived through."""
        if self.service_back_at is None:
            return None
        return round(max(0.0, self.service_back_at - self.start), 3)

    @property
    def verification_s(self):
        """Healthy again to the watchdog's smoke test: the watchdog's own delay, not the outage."""
        if self.verified_at is None or self.service_back_at is None:
            return None
        return round(max(0.0, self.verified_at - self.service_back_at), 3)

    @property
    def time_to_recover_s(self):
        """Fault to verified (outage + verification), kept for readers of older records."""
        if self.verified_at is None or self.state != IncidentState.RECOVERED:
            return None
        return round(max(0.0, self.verified_at - self.start), 3)

    def note_time(self, name, t, source):
        """Set fault_at (earliest wins) or service_back_at (earliest after the fault wins)."""
        if t is None:
            return
        cur = getattr(self, name)
        if name == "service_back_at" and t < self.start:
            return
        if cur is None or t < cur:
            setattr(self, name, t)
            self.times_from[name] = source

    def timing(self):
        """'outage 15.2 s, verified 3.1 s later' (the parts that are known)."""
        parts = []
        if self.outage_s is not None:
            parts.append("outage %.1f s" % self.outage_s)
        if self.verification_s is not None:
            parts.append("verified %.1f s later" % self.verification_s)
        elif self.time_to_recover_s is not None:
            parts.append("verified %.1f s after the fault" % self.time_to_recover_s)
        return ", ".join(parts)

    def last_error_line(self):
        """The line a human wants first: the last error in the service's own log tail
        (e.g. why the engine cannot load), else the last evidence line."""
        for line in reversed(self.diagnostics.get("error_log_tail", []) or []):
            if _ERROR_WORDS.search(line):
                return line
        for ev in reversed(self.evidence):
            return ev.get("line")
        return None

    def summary(self, long=False):
        sigs = "+".join(self.signatures) or "no signature"
        s = "%s: %s -> %s" % (self.unit, sigs, self.state)
        if self.runbook:
            s += " (runbook %s)" % self.runbook
        timing = self.timing()
        if timing:
            s += ", %s" % timing
        if self.reason and self.state != IncidentState.RECOVERED:
            s += ": %s" % self.reason
        if not long:
            return s
        lines = [s, "incident %s detected %s" % (self.id, iso(self.detected_at))]
        for name in ("fault_at", "service_back_at", "verified_at"):
            if getattr(self, name) is not None:
                src = self.times_from.get(name)
                lines.append("%s %s%s" % (name, iso(getattr(self, name)), " (%s)" % src[:200] if src else ""))
        if self.follows:
            lines.append("continues interrupted incident %s" % self.follows)
        for note in self.notes:
            if "page" in note:
                lines.append("not paged again: %s" % note["page"])
        err = self.last_error_line()
        if err:
            lines.append("last error: %s" % err[:500])
        for ev in self.evidence[:5]:
            lines.append("evidence [%s] %s" % (ev.get("signature"), (ev.get("line") or "")[:300]))
        if self.probe:
            lines.append("probe: %s %s %s" % (self.probe.get("verdict"), self.probe.get("http_status") or "", self.probe.get("reason") or ""))
        for st in self.steps:
            lines.append("step %s: %s %s" % (st["action"], st["status"], st["detail"][:200]))
        if self.runbook_path:
            lines.append("runbook: %s" % self.runbook_path)
        if self.state == IncidentState.ESCALATED:
            lines.append("automation stopped for %s until `glmtts-watchdog resume`. %s" % (self.unit, self.escalate))
        return "\n".join(lines)

    def to_dict(self):
        d = asdict(self)
        d["severity"] = self.severity
        d["outage_s"] = self.outage_s
        d["verification_s"] = self.verification_s
        d["time_to_recover_s"] = self.time_to_recover_s
        d["outcome"] = self.state if self.state in INCIDENT_TERMINAL else None
        for k in ("detected_at", "fault_at", "service_back_at", "verified_at", "ended_at"):
            d[k + "_iso"] = iso(d[k])
        return d

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def new_id(unit, now):
    return "%s-%s-%s" % (time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)), unit.replace("@", "-"), secrets.token_hex(2))


class IncidentLog:
    def __init__(self, path, read_only=False):
        self.path = path
        self.read_only = read_only  # a dry run reads the journal and writes nothing

    def append(self, incident):
        if self.read_only:
            return
        fsutil.append_jsonl(self.path, incident.to_dict() if hasattr(incident, "to_dict") else incident, mode=0o640)

    def records(self):
        """Every journal record, in order. Lines that do not parse (a disk that filled
        mid-write) are skipped."""
        out = []
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(rec, dict):
                        out.append(rec)
        except FileNotFoundError:
            return []
        return out

    def read(self, last=None):
        """One dict per incident (its latest record), oldest opened first; ``last`` keeps
        only the newest N."""
        out = fold(self.records())
        return out[-last:] if last else out

    def open_incidents(self, unit=None):
        """Incidents whose latest record is not terminal: left open by a cycle that died
        (or, while a cycle runs, its own)."""
        return [d for d in self.read() if d.get("state") not in INCIDENT_TERMINAL
                and (unit is None or d.get("unit") == unit)]


def fold(records):
    """The latest record of each incident id, in the order the incidents opened."""
    latest, order = {}, []
    for rec in records:
        key = rec.get("id")
        if key not in latest:
            order.append(key)
        latest[key] = rec
    return [latest[k] for k in order]


class Lifecycle:
    """The one place an incident changes state: ``advance(incident, state, reason)`` runs
    the incident's machine (states.INCIDENT: glmtts/machine.py), which validates the arrow,
    logs it by meaning, records it in ``history`` and runs that state's entry effects from
    one table, ``states.INCIDENT.entry`` (``ENTRY`` here), in its order. This class
    supplies them:

    - ``close``: ``ended_at``, and the closing hooks (what a remediation itself caused, the
      final times), before a terminal state is journaled, so the record and the alert
      carry them;
    - ``journal``: the record, whole, appended before any other effect (write-ahead: a
      watchdog killed right after leaves a record the next cycle can close);
    - ``guard_escalate`` / ``guard_verified``: the remediation guard (``guard``, the
      policy) stops acting for the instance, or a verified runbook's counter resets;
    - ``alert``: opened / warning / recovered / failed / escalated / interrupted.

    A dry run journals, guards and alerts nothing. The executor only runs steps and says
    how they ended; the cycle (and `runbook exec`) ask the lifecycle to advance."""

    ENTRY = INCIDENT.entry
    ALERT_AS = {IncidentState.REMEDIATING: "opened", IncidentState.RECOVERED: IncidentState.RECOVERED,
                IncidentState.FAILED: IncidentState.FAILED, IncidentState.ESCALATED: IncidentState.ESCALATED,
                IncidentState.WARNING: IncidentState.WARNING, IncidentState.INTERRUPTED: IncidentState.INTERRUPTED}

    def __init__(self, journal=None, alerter=None, clock=time.time, dry_run=False, guard=None):
        self.journal = journal
        self.alerter = alerter
        self.clock = clock
        self.dry_run = dry_run
        self.guard = guard      # escalate(unit, reason, incident_id, now), verified(unit, runbook_id)
        self.closing = []       # hooks run once, as the incident reaches a terminal state
        self.effects = {"close": self._close, "journal": lambda inc, old, new, reason: self.save(inc),
                        "guard_escalate": self._guard_escalate, "guard_verified": self._guard_verified,
                        "alert": self._alert}

    def save(self, inc):
        if self.journal is not None and not self.dry_run:
            self.journal.append(inc)

    def open(self, inc):
        inc.cycle_pid = os.getpid()
        self.save(inc)

    def advance(self, inc, new, reason):
        INCIDENT.advance(inc, new, reason, self.effects)  # raises on an arrow the table does not have

    # -- entry effects (names in states.INCIDENT.entry) ----------------------------------

    def _close(self, inc, old, new, reason):
        inc.ended_at = inc.ended_at or self.clock()
        inc.current_step = None
        if old not in INCIDENT_TERMINAL:
            for hook in self.closing:
                hook(inc)
            self.closing = []

    def _guard_escalate(self, inc, old, new, reason):
        if self.guard is not None and not self.dry_run:
            self.guard.escalate(inc.unit, inc.reason or reason, inc.id, self.clock())

    def _guard_verified(self, inc, old, new, reason):
        if self.guard is not None and not self.dry_run and inc.runbook:
            self.guard.verified(inc.unit, inc.runbook)

    def _alert(self, inc, old, new, reason):
        if self.alerter is not None and not self.dry_run:
            self.alert(inc, self.ALERT_AS[new])
            self.save(inc)  # the alert's result, so the next cycle knows what was sent

    def remediate(self, inc, runbook, run_steps):
        """opened -> remediating -> the state the steps ended in. ``run_steps()`` (the
        executor) runs them and returns (state, reason)."""
        self.advance(inc, IncidentState.REMEDIATING, "runbook %s" % runbook.id)
        state, reason = run_steps()
        inc.reason = reason
        self.advance(inc, state, reason)
        return inc

    def alert(self, inc, what):
        severity = "critical" if what in (IncidentState.FAILED, IncidentState.ESCALATED) else inc.severity
        if severity == "info" or (severity == "critical" and not inc.page and what not in (IncidentState.FAILED, IncidentState.ESCALATED)):
            # a repeat of a burst that already paged: still told, but to chat (a failure
            # or an escalation of it still pages: that is news)
            severity = "warning"
        title = "[%s] glmtts %s %s: %s" % (severity.upper(), inc.unit, what, "+".join(inc.signatures))
        try:
            result = self.alerter.send("%s:%s" % (inc.id, what), severity, title, inc.summary(long=True))
        except Exception as e:  # alerting never stops remediation
            log.warning("alert failed: %s", e)
            result = "error"
        inc.notes.append({"alert": what, "result": result})
        return result


def incidents_path(settings):
    return os.path.join(settings.paths.state_dir, "incidents.jsonl")
