"""One watchdog cycle: lock, observe every instance, decide, remediate, verify, record,
alert, save state. ``Watchdog.check()`` is what `glmtts-watchdog check` and each turn of
`run` call."""

import logging
import os
from dataclasses import dataclass, field

from . import checks, incidents, signatures
from .actions import Context
from .alerts import Alerter
from .executor import execute
from .host import Host
from .instances import configured
from .lock import CycleLock
from .managers import detect
from .policy import ESCALATE, OK, REMEDIATE, STOPPED, SUPPRESSED, WARNING, Policy
from .probe import LOADING, UNHEALTHY, Probe
from .runbook import default_dir, load_all
from .scanner import Evidence, LogScanner, classify_lines
from .state import WatchdogState, watchdog_dir
from .states import IncidentState, incident_transition

log = logging.getLogger(__name__)

EXIT_OK, EXIT_WARNING, EXIT_CRITICAL, EXIT_UNKNOWN = 0, 1, 2, 3
LABELS = {0: "OK", 1: "WARNING", 2: "CRITICAL", 3: "UNKNOWN"}
MAX_EVIDENCE_AGE_S = 86400  # a parsed timestamp older than this is not trusted as the fault time


@dataclass
class Findings:
    instance: object
    unit: object
    probe: object
    evidence: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    def signatures(self):
        names = {e.signature for e in self.evidence}
        if self.probe.verdict == UNHEALTHY:
            names.add("unhealthy")
        return sorted(names, key=lambda n: signatures.PRECEDENCE.get(n, 99))


@dataclass
class CycleReport:
    code: int = EXIT_OK
    lines: list = field(default_factory=list)
    incidents: list = field(default_factory=list)

    def add(self, code, line):
        self.code = max(self.code, code)
        self.lines.append(line)

    def summary(self):
        return "GLMTTS %s - %s" % (LABELS[self.code], "; ".join(self.lines) or "nothing to check")


class Watchdog:
    def __init__(self, settings, host=None, manager=None, runbooks=None, dry_run=False, scanner=None):
        self.settings = settings
        self.host = host or Host()
        self.manager = manager or detect(settings, self.host)
        self.runbooks = runbooks if runbooks is not None else load_all(default_dir(settings))
        self.dry_run = dry_run
        self.scanner = scanner or LogScanner()
        self.dir = watchdog_dir(settings)
        self.state_path = os.path.join(self.dir, "state.json")
        self.lock_path = os.path.join(self.dir, "cycle.lock")
        self.incident_log = incidents.IncidentLog(incidents.incidents_path(settings))
        self.instances = configured(settings, self.manager)

    # -- building blocks --------------------------------------------------------------
    def load_state(self):
        return WatchdogState.load(self.state_path)

    def policy(self, state):
        wd = self.settings.watchdog
        return Policy(self.runbooks, wd.max_remediations, wd.remediation_window_s, state.section("guards"))

    def alerter(self, state):
        return Alerter.from_settings(self.settings, state.section("alerts_sent"), clock=self.host.clock.now)

    def probe(self, instance):
        wd = self.settings.watchdog
        return Probe(instance.url, wd.probe_timeout_s, wd.probe_retries, wd.probe_retry_interval_s,
                     loading_grace_s=wd.ready_timeout_s, api_key=wd.api_key,
                     sleep=self.host.clock.sleep, clock=self.host.clock.monotonic)

    def scan(self, state, path):
        positions = state.section("scanner")
        res = self.scanner.scan(path, positions.get(path))
        if res.position:
            positions[path] = res.position
        for n in res.notes:
            log.info("scanner: %s", n)
        return res

    def shared_evidence(self, state):
        """Evidence not tied to one instance's own logs: the manager's log, the kernel
        log, the disk. Read once per cycle."""
        out = []
        for path in self.manager.manager_logs():
            out += self.scan(state, path).evidence
        kern = checks.kernel_log_path(self.settings)
        if kern:
            out += [e for e in self.scan(state, kern).evidence if e.signature == "gpu_xid"]
        return out

    def journal_evidence(self, state, instance):
        if self.manager.name != "systemd":
            return []
        inst_state = state.instance(instance.unit)
        lines, cursor = self.manager.journal(instance.unit, inst_state.get("journal_cursor"))
        if cursor:
            inst_state["journal_cursor"] = cursor
        return classify_lines(lines, "journal:%s" % instance.unit)

    def observe(self, state, instance, shared, first):
        status = self.manager.status(instance.unit)
        probe = self.probe(instance).check()
        f = Findings(instance, status, probe)
        if instance.logs.get("error"):
            f.evidence += self.scan(state, instance.logs["error"]).evidence
        f.evidence += self.journal_evidence(state, instance)
        f.evidence += [e for e in shared["manager"] if checks.mentions(instance.unit, e.line)]
        if first:  # host-wide facts are charged to the first instance
            f.evidence += shared["host"]
        inst_state = state.instance(instance.unit)
        f.evidence += checks.unit_evidence(status, inst_state)
        now = self.host.clock.now()
        if probe.verdict == UNHEALTHY:
            inst_state["consecutive_failures"] = inst_state.get("consecutive_failures", 0) + 1
            inst_state.setdefault("first_failure_at", now - (probe.attempts - 1) * self.settings.watchdog.probe_retry_interval_s)
            f.evidence.append(Evidence("unhealthy", "probe", "%s %s (%d consecutive failed cycle(s))" % (
                probe.url, probe.summary(), inst_state["consecutive_failures"]), inst_state["first_failure_at"]))
        elif probe.verdict != LOADING:
            inst_state["consecutive_failures"] = 0
            inst_state.pop("first_failure_at", None)
        self.remember_unit(inst_state, status)
        return f

    def remember_unit(self, inst_state, status):
        inst_state["last_pid"] = status.main_pid
        inst_state["last_restarts"] = status.restarts
        inst_state["last_state"] = status.state

    # -- the cycle --------------------------------------------------------------------
    def check(self):
        report = CycleReport()
        lock = CycleLock(self.lock_path)
        if not lock.acquire():
            report.add(EXIT_UNKNOWN, "another watchdog cycle is running (pid %s); did nothing" % lock.holder)
            return report
        try:
            state = self.load_state()
            alerter = self.alerter(state)
            delivered, left = alerter.flush_spool()
            if left:
                report.lines.append("%d alert(s) still spooled" % left)
            shared = {"manager": [], "host": []}
            manager_and_host = self.shared_evidence(state)
            shared["manager"] = [e for e in manager_and_host if e.signature != "gpu_xid"]
            shared["host"] = [e for e in manager_and_host if e.signature == "gpu_xid"] + checks.disk_evidence(self.settings, self.host)
            for i, inst in enumerate(self.instances):
                findings = self.observe(state, inst, shared, first=(i == 0))
                self.handle(state, findings, alerter, report, shared)
            alerter.prune_sent()
            state.save()
        finally:
            lock.release()
        return report

    def handle(self, state, f, alerter, report, shared):
        inst, now = f.instance, self.host.clock.now()
        policy = self.policy(state)
        sigs = f.signatures()
        xids = [x for x in (signatures.xid_of(e.line) for e in f.evidence) if x]
        d = policy.decide(sigs, f.probe.verdict, f.unit.state, [c for _, c in xids], now=now, unit=inst.unit)
        if d.kind == OK:
            report.add(EXIT_OK, "%s: %s" % (inst.unit, f.probe.summary()))
            return None
        if d.kind == STOPPED:
            report.add(EXIT_WARNING, "%s: %s" % (inst.unit, d.reason))
            return None
        if d.kind == SUPPRESSED:
            extra = " (new: %s)" % "+".join(sigs) if sigs else ""
            report.add(EXIT_CRITICAL, "%s: %s%s" % (inst.unit, d.reason, extra))
            return None
        inc = self.open_incident(f, sigs, now)
        if d.runbook:
            inc.runbook, inc.runbook_path, inc.escalate = d.runbook.id, d.runbook.path, d.runbook.escalate
        report.incidents.append(inc)
        if d.kind == WARNING:
            inc.reason = d.reason
            incident_transition(inc, IncidentState.WARNING, d.reason)
            self.finish(inc, alerter, state)
            report.add(EXIT_WARNING, inc.summary())
            return inc
        if d.kind == ESCALATE:
            inc.reason = d.reason
            incident_transition(inc, IncidentState.ESCALATED, d.reason)
            self.finish(inc, alerter, state, policy)
            report.add(EXIT_CRITICAL, inc.summary())
            return inc
        assert d.kind == REMEDIATE
        ctx = Context(self.settings, inst, self.host, self.manager, inc, self.dry_run, alerter)
        if not self.dry_run:
            policy.begin(inst.unit, d.runbook.id, now)
            state.save()  # the attempt counts even if this process dies mid-runbook
            self.alert(alerter, inc, "opened")
        execute(d.runbook, ctx)
        if not self.dry_run:
            self.after_remediation(state, inc, shared)
        if inc.state == IncidentState.RECOVERED:
            policy.verified(inst.unit, d.runbook.id)
        self.finish(inc, alerter, state, policy)
        code = {IncidentState.RECOVERED: EXIT_WARNING, IncidentState.DRY_RUN: EXIT_CRITICAL}.get(inc.state, EXIT_CRITICAL)
        report.add(code, inc.summary())
        return inc

    def open_incident(self, f, sigs, now):
        evidence = [e.to_dict() for e in f.evidence]
        times = [e.at for e in f.evidence if e.at is not None and now - MAX_EVIDENCE_AGE_S <= e.at <= now + 5]
        inc = incidents.Incident(incidents.new_id(f.instance.unit, now), f.instance.unit, f.instance.url, now,
                                 sigs, evidence, f.probe.to_dict(), f.unit.to_dict(),
                                 fault_at=min(times) if times else now, manual=False)
        log.warning("%s: incident %s opened: %s", f.instance.unit, inc.id, "+".join(sigs))
        return inc

    def after_remediation(self, state, inc, shared):
        """Lines our own actions caused (supervisord saying it stopped the process we
        restarted) are read now and kept in the incident, not raised next cycle."""
        inst = next(i for i in self.instances if i.unit == inc.unit)
        seen = []
        if inst.logs.get("error"):
            seen += self.scan(state, inst.logs["error"]).evidence
        seen += self.journal_evidence(state, inst)
        for path in self.manager.manager_logs():
            for e in self.scan(state, path).evidence:
                if checks.mentions(inst.unit, e.line):
                    seen.append(e)
                else:
                    shared["manager"].append(e)  # another instance's business: still to be judged
        if seen:
            inc.notes.append({"during_remediation": [e.to_dict() for e in seen[:20]]})
        self.remember_unit(state.instance(inst.unit), self.manager.status(inst.unit))
        st = state.instance(inst.unit)
        if inc.state == IncidentState.RECOVERED:
            st["consecutive_failures"] = 0
            st.pop("first_failure_at", None)

    def finish(self, inc, alerter, state, policy=None):
        if inc.state == IncidentState.ESCALATED and policy is not None:
            policy.escalate(inc.unit, inc.reason, inc.id, self.host.clock.now())
        inc.ended_at = inc.ended_at or self.host.clock.now()
        if not self.dry_run:
            self.alert(alerter, inc, inc.state)
            self.incident_log.append(inc)

    def alert(self, alerter, inc, what):
        severity = "critical" if what in (IncidentState.FAILED, IncidentState.ESCALATED) else inc.severity
        if severity == "info":
            severity = "warning"
        title = "[%s] glmtts %s %s: %s" % (severity.upper(), inc.unit, what, "+".join(inc.signatures))
        try:
            result = alerter.send("%s:%s" % (inc.id, what), severity, title, inc.summary(long=True))
        except Exception as e:  # alerting never stops remediation
            log.warning("alert failed: %s", e)
            result = "error"
        inc.notes.append({"alert": what, "result": result})

    def resume(self, unit=None):
        lock = CycleLock(self.lock_path)
        if not lock.acquire():
            return None
        try:
            state = self.load_state()
            done = self.policy(state).resume(unit)
            state.save()
            return done
        finally:
            lock.release()
