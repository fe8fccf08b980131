"""Incidents: what was seen, what was done, how it ended. One JSON object per line in
paths.state_dir/incidents.jsonl, appended with a single write and fsync'd, so a reader
(or a crash) never sees half a record."""

import json
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass, field

from . import signatures
from .states import IncidentState


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
    fault_at: float = None                             # earliest evidence of the fault
    verified_at: float = None                          # smoke test passed
    ended_at: float = None
    reason: str = ""                                   # why this outcome
    escalate: str = ""                                 # runbook's words on whom to page
    manual: bool = False                               # started by `runbook exec`
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
    def time_to_recover_s(self):
        if self.verified_at is None or self.state != IncidentState.RECOVERED:
            return None
        start = self.fault_at if self.fault_at is not None else self.detected_at
        return round(max(0.0, self.verified_at - start), 3)

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
        if self.time_to_recover_s is not None:
            s += ", recovered in %.1f s" % self.time_to_recover_s
        if self.reason and self.state != IncidentState.RECOVERED:
            s += ": %s" % self.reason
        if not long:
            return s
        lines = [s, "incident %s detected %s" % (self.id, iso(self.detected_at))]
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
        d["time_to_recover_s"] = self.time_to_recover_s
        d["outcome"] = self.state
        for k in ("detected_at", "fault_at", "verified_at", "ended_at"):
            d[k + "_iso"] = iso(d[k])
        return d


def new_id(unit, now):
    return "%s-%s-%s" % (time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)), unit.replace("@", "-"), secrets.token_hex(2))


class IncidentLog:
    def __init__(self, path):
        self.path = path

    def append(self, incident):
        data = (json.dumps(incident.to_dict() if hasattr(incident, "to_dict") else incident,
                           ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, data)  # one write: O_APPEND makes it land whole at the end
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self, last=None):
        """Incident dicts, oldest first; ``last`` keeps only the newest N. Lines that do
        not parse (a disk that filled mid-write) are skipped."""
        out = []
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        continue
        except FileNotFoundError:
            return []
        return out[-last:] if last else out


def incidents_path(settings):
    return os.path.join(settings.paths.state_dir, "incidents.jsonl")
