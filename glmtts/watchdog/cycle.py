"""One watchdog cycle: lock, close what a dead cycle left open, observe every instance,
decide, remediate, verify, record, alert, save state. ``Watchdog.check()`` is what
`glmtts-watchdog check` and each turn of `run` call.

Incidents are journaled ahead (incidents.Lifecycle): opened before any action or alert,
rewritten before and after every step. Under the cycle lock no other cycle runs, so an
incident still open when a cycle starts belongs to one that died; it is closed as
``interrupted`` with what is known, and nothing it did is repeated blindly: the service
is judged afresh, waiting for a restart the dead cycle set off to finish."""

import logging
import os
from dataclasses import dataclass, field

from .. import watchdog_token
from . import checks, incidents, signatures
from .actions import Context
from .alerts import Alerter
from .executor import run_runbook
from ..host import Host, ReadOnlyHost
from .incidents import Lifecycle
from .instances import configured
from .lock import CycleLock, NoLock
from .managers import detect
from .policy import BACKOFF, ESCALATE, OK, PLANNED, REMEDIATE, STOPPED, SUPPRESSED, WARNING, Policy
from .probe import HEALTHY, LOADING, UNHEALTHY, Probe
from .runbook import default_dir, load_all
from .scanner import Evidence, LogScanner, classify_lines
from .state import WatchdogState, watchdog_dir
from .states import IncidentState

log = logging.getLogger(__name__)

EXIT_OK, EXIT_WARNING, EXIT_CRITICAL, EXIT_UNKNOWN = 0, 1, 2, 3
LABELS = {0: "OK", 1: "WARNING", 2: "CRITICAL", 3: "UNKNOWN"}
MAX_EVIDENCE_AGE_S = 86400  # a parsed timestamp older than this is not trusted as the fault time
# Steps after which the unit may be restarting by the manager's hand or ours: an
# interrupted incident that ran one waits for the service instead of acting again.
UNIT_CHANGING = ("kill_unit_processes", "restart", "stop_unit", "free_port", "gpu_reset")
INTERRUPTED_PROBE_S = 2.0   # one short probe per poll while judging an interrupted incident


@dataclass
class Findings:
    instance: object
    unit: object
    probe: object
    evidence: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    probe_started_at: float = None
    previous_cycle_at: float = None
    follows: object = None   # an incident closed as interrupted this cycle, still unresolved
    planned: list = field(default_factory=list)   # operator stop/restart/reload since the last cycle
    planned_in_progress: bool = False

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
        # A dry run is a read-only host plus unsaved state: it observes and decides like a
        # real cycle and changes nothing (no signal, no unit change, no byte on disk, no
        # alert), so the real cycle after it still sees the same fault.
        self.host = ReadOnlyHost(host or Host()) if dry_run else (host or Host())
        self.manager = manager or detect(settings, self.host)
        self.runbooks = runbooks if runbooks is not None else load_all(default_dir(settings))
        self.dry_run = dry_run
        self.scanner = scanner or LogScanner()
        self.dir = watchdog_dir(settings)
        self.state_path = os.path.join(self.dir, "state.json")
        self.lock_path = os.path.join(self.dir, "cycle.lock")
        self.incident_log = incidents.IncidentLog(incidents.incidents_path(settings), read_only=dry_run)
        self.instances = configured(settings, self.manager)
        self.manager_lines = []   # this cycle's lines of the manager's own log that tell its account

    # -- building blocks --------------------------------------------------------------
    def load_state(self):
        return WatchdogState.load(self.state_path, read_only=self.dry_run)

    def policy(self, state):
        wd = self.settings.watchdog
        return Policy(self.runbooks, wd.max_remediations, wd.remediation_window_s, state.section("guards"))

    def alerter(self, state):
        return Alerter.from_settings(self.settings, state.section("alerts_sent"), clock=self.host.clock.now)

    def lifecycle(self, alerter, guard=None):
        return Lifecycle(self.incident_log, alerter, self.host.clock.now, self.dry_run, guard)

    def probe(self, instance):
        wd = self.settings.watchdog
        return Probe(instance.url, wd.probe_timeout_s, wd.probe_retries, wd.probe_retry_interval_s,
                     loading_grace_s=wd.ready_timeout_s, api_key=wd.api_key,
                     sleep=self.host.clock.sleep, clock=self.host.clock.monotonic,
                     token=watchdog_token.for_settings(self.settings), http=self.host)

    def scan(self, state, path, keep=None):
        positions = state.section("scanner")
        res = self.scanner.scan(path, positions.get(path), keep=keep)
        if res.position:
            positions[path] = res.position
        for n in res.notes:
            log.info("scanner: %s", n)
        return res

    def shared_evidence(self, state):
        """Evidence not tied to one instance's own logs: the manager's log, the kernel
        log, the disk. Read once per cycle."""
        out = []
        self.manager_lines = []
        for path in self.manager.manager_logs():
            res = self.scan(state, path, keep=self.manager.account_filter())
            out += res.evidence
            self.manager_lines += res.kept
        kern = checks.kernel_log_path(self.settings)
        if kern:
            out += [e for e in self.scan(state, kern).evidence if e.signature == "gpu_xid"]
        return out

    def journal_evidence(self, state, instance, keep=None):
        if self.manager.name != "systemd":
            return []
        inst_state = state.instance(instance.unit)
        lines, cursor = self.manager.journal(instance.unit, inst_state.get("journal_cursor"))
        if cursor:
            inst_state["journal_cursor"] = cursor
        if keep is not None:
            keep += lines
        return classify_lines(lines, "journal:%s" % instance.unit)

    def observe(self, state, instance, shared, first):
        status = self.manager.status(instance.unit)
        probe_started_at = self.host.clock.now()
        probe = self.probe(instance).check()
        f = Findings(instance, status, probe, probe_started_at=probe_started_at)
        if instance.logs.get("error"):
            f.evidence += self.scan(state, instance.logs["error"]).evidence
        journal = []
        f.evidence += self.journal_evidence(state, instance, journal)
        f.evidence += [e for e in shared["manager"] if checks.mentions(instance.unit, e.line)]
        if first:  # host-wide facts are charged to the first instance
            f.evidence += shared["host"]
        inst_state = state.instance(instance.unit)
        now = self.host.clock.now()
        # The manager's own account tells an operator's stop/restart from a death it did not ask for.
        events = self.manager.account(journal + self.manager_lines, instance.unit)
        f.evidence = checks.drop_planned_exits(f.evidence, events) + checks.unit_evidence(status, inst_state, events)
        f.planned = checks.planned(status, inst_state, events)
        f.planned_in_progress = checks.planned_in_progress(status, events, f.planned)
        inst_state["runs"] = checks.update_runs(inst_state.get("runs"), events, f.evidence, now)
        f.evidence = checks.judge_start_limit(f.evidence, inst_state["runs"])
        if probe.verdict == UNHEALTHY and f.planned_in_progress:
            pass  # the restart an operator asked for is not a failed cycle
        elif probe.verdict == UNHEALTHY:
            inst_state["consecutive_failures"] = inst_state.get("consecutive_failures", 0) + 1
            # The first failed probe started failing when it was sent, not when it timed out.
            inst_state.setdefault("first_failure_at", probe_started_at)
            f.evidence.append(Evidence("unhealthy", "probe", "%s %s (%d consecutive failed cycle(s))" % (
                probe.url, probe.summary(), inst_state["consecutive_failures"]), inst_state["first_failure_at"]))
        elif probe.verdict != LOADING:
            inst_state["consecutive_failures"] = 0
            inst_state.pop("first_failure_at", None)
        self.remember_unit(inst_state, status)
        f.previous_cycle_at = inst_state.get("last_cycle_at")
        inst_state["last_cycle_at"] = now
        return f

    def remember_unit(self, inst_state, status):
        inst_state["last_pid"] = status.main_pid
        inst_state["last_restarts"] = status.restarts
        inst_state["last_state"] = status.state

    # -- the cycle --------------------------------------------------------------------
    def check(self):
        report = CycleReport()
        # A dry run takes no lock: it writes nothing, and reads state written atomically.
        lock = NoLock() if self.dry_run else CycleLock(self.lock_path)
        if not lock.acquire():
            report.add(EXIT_UNKNOWN, "another watchdog cycle is running (pid %s); did nothing" % lock.holder)
            return report
        try:
            state = self.load_state()
            alerter = self.alerter(state)
            if self.dry_run:
                left = len(alerter.spooled())
                if left:
                    report.lines.append("%d alert(s) spooled (a dry run sends none)" % left)
            else:
                delivered, left = alerter.flush_spool()
                if left:
                    report.lines.append("%d alert(s) still spooled" % left)
            shared = self.gather_shared(state)
            for i, inst in enumerate(self.instances):
                left_open = self.close_interrupted(state, inst, alerter, report, shared)
                findings = self.observe(state, inst, shared, first=(i == 0))
                self.inherit(findings, left_open)
                self.handle(state, findings, alerter, report, shared)
            alerter.prune_sent()
            state.save()
        finally:
            lock.release()
        return report

    def gather_shared(self, state):
        manager_and_host = self.shared_evidence(state)
        return {"manager": [e for e in manager_and_host if e.signature != "gpu_xid"],
                "host": [e for e in manager_and_host if e.signature == "gpu_xid"] + checks.disk_evidence(self.settings, self.host)}

    def decide(self, state, f, now):
        """(policy, signatures, Decision) for one instance's findings: what this cycle
        does about them, and what `diagnose` tells a human the cycle would do."""
        policy = self.policy(state)
        sigs = f.signatures()
        xids = [x for x in (signatures.xid_of(e.line) for e in f.evidence) if x]
        d = policy.decide(sigs, f.probe.verdict, f.unit.state, [c for _, c in xids], now=now, unit=f.instance.unit,
                          planned=f.planned_in_progress and f.planned[-1]["what"])
        return policy, sigs, d

    def handle(self, state, f, alerter, report, shared):
        inst, now = f.instance, self.host.clock.now()
        policy, sigs, d = self.decide(state, f, now)
        if f.planned and d.kind not in (WARNING, ESCALATE, REMEDIATE):
            self.record_planned(f, now, report)
        if d.kind == OK:
            report.add(EXIT_OK, "%s: %s" % (inst.unit, f.probe.summary()))
            return None
        if d.kind == PLANNED:
            report.add(EXIT_OK, "%s: %s" % (inst.unit, d.reason))
            return None
        if d.kind == BACKOFF:
            report.add(EXIT_CRITICAL, "%s: %s (%s)" % (inst.unit, d.reason, "+".join(sigs)))
            return None
        if d.kind == STOPPED:
            report.add(EXIT_WARNING, "%s: %s" % (inst.unit, d.reason))
            return None
        if d.kind == SUPPRESSED:
            extra = " (new: %s)" % "+".join(sigs) if sigs else ""
            report.add(EXIT_CRITICAL, "%s: %s%s" % (inst.unit, d.reason, extra))
            return None
        inc = self.open_incident(f, sigs, now)
        if f.planned:
            inc.notes.append({"planned": f.planned})
        if d.runbook:
            inc.runbook, inc.runbook_path, inc.escalate = d.runbook.id, d.runbook.path, d.runbook.escalate
        if not d.page:
            inc.page = False
            inc.notes.append({"page": d.reason})
        report.incidents.append(inc)
        # The guard is an effect of the lifecycle: entering escalated stops it acting for
        # this instance, entering recovered resets the runbook's counter.
        lc = self.lifecycle(alerter, guard=policy)
        lc.open(inc)
        if d.kind != REMEDIATE:  # warning, or escalated (the rate limit is spent)
            inc.reason = d.reason
            lc.advance(inc, d.kind, d.reason)
            report.add(EXIT_WARNING if d.kind == WARNING else EXIT_CRITICAL, inc.summary())
            return inc
        ctx = Context(self.settings, inst, self.host, self.manager, inc, self.dry_run, alerter, lc)
        if not self.dry_run:
            policy.begin(inst.unit, d.runbook.id, now)
            state.save()  # the attempt counts even if this process dies mid-runbook
            lc.closing.append(lambda i: self.after_remediation(state, i, shared))
        run_runbook(d.runbook, ctx)
        code = {IncidentState.RECOVERED: EXIT_WARNING, IncidentState.DRY_RUN: EXIT_CRITICAL}.get(inc.state, EXIT_CRITICAL)
        report.add(code, inc.summary())
        return inc

    def open_incident(self, f, sigs, now):
        evidence = [e.to_dict() for e in f.evidence]
        inc = incidents.Incident(incidents.new_id(f.instance.unit, now), f.instance.unit, f.instance.url, now,
                                 sigs, evidence, f.probe.to_dict(), f.unit.to_dict(), manual=False)
        for e in f.evidence:
            if e.at is not None and now - MAX_EVIDENCE_AGE_S <= e.at <= now + 5:
                inc.note_time("fault_at", e.at, "%s: %s" % (e.path, e.line[:160]))
        if "unexpected_exit" in sigs:
            # The manager's own exit time, if this exit happened since the previous cycle.
            exited = self.manager.times(f.instance.unit).get("main_exited_at")
            since = f.previous_cycle_at or now - MAX_EVIDENCE_AGE_S
            if exited is not None and since <= exited <= now + 5:
                inc.note_time("fault_at", exited, "%s: main process exit" % self.manager.name)
        if inc.fault_at is None:
            inc.note_time("fault_at", f.probe_started_at or now, "detected by this cycle")
        if f.probe.verdict == HEALTHY and "unexpected_exit" in sigs:
            self.note_back(inc, f.probe_started_at or now, f.probe.body)  # already back: the manager restarted it
        elif f.probe.verdict == HEALTHY:
            # An OOM answered 503, a full disk answered 507: /healthz never failed and no
            # process died, so there was no outage to time (0 s, not "until the probe").
            inc.note_time("service_back_at", inc.fault_at, "never down: healthy probe, no process exit")
        if f.follows is not None:
            inc.follows = f.follows.id
        log.warning("%s: incident %s opened: %s", f.instance.unit, inc.id, "+".join(sigs))
        return inc

    def record_planned(self, f, now, report):
        """An operator's stop/restart/reload: one journal record (kind and outcome
        ``planned``), a line in the report, no incident and no alert."""
        inst = f.instance
        what = "+".join(dict.fromkeys(p["what"] for p in f.planned))
        report.lines.append("%s: planned %s (%s), not an incident" % (inst.unit, what, f.planned[-1]["line"][-160:]))
        if self.dry_run:
            return
        rec = {"id": incidents.new_id(inst.unit, now), "kind": "planned", "state": IncidentState.PLANNED,
               "outcome": IncidentState.PLANNED, "unit": inst.unit, "url": inst.url, "detected_at": now,
               "detected_at_iso": incidents.iso(now), "signatures": [], "planned": f.planned,
               "evidence": [{"signature": "planned", "path": self.manager.name, "line": p["line"], "at": p["at"]} for p in f.planned],
               "unit_status": f.unit.to_dict(), "probe": f.probe.to_dict(),
               "reason": "planned %s through %s; the manager's account: %s" % (what, self.manager.name, f.planned[-1]["line"][-200:])}
        self.incident_log.append(rec)

    def note_back(self, inc, probed_at, body=None):
        """service_back_at from the manager's ready time of the current process, else the
        service's own (/healthz ready_at of the process that answered), else the probe."""
        ready = self.manager.times(inc.unit).get("active_since")
        if ready is not None and ready <= probed_at + 5:
            inc.note_time("service_back_at", ready, "%s: ready time of the current main process" % self.manager.name)
        own = (body or {}).get("ready_at")
        if ready is None and isinstance(own, (int, float)) and own <= probed_at + 5:
            # supervisord keeps no ready time: without this a restart it healed by itself
            # would be dated by the next timer cycle, up to watchdog.interval_s late.
            inc.note_time("service_back_at", float(own), "the service's own ready time (/healthz ready_at, pid %s)" % body.get("pid"))
        inc.note_time("service_back_at", probed_at, "healthy probe")

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
        status = self.manager.status(inst.unit)
        self.remember_unit(state.instance(inst.unit), status)
        if inc.verified_at is not None or inc.service_back_at is not None:
            # A healthy answer was seen: the manager's ready time of the process now
            # running may be earlier than the probe that saw it.
            self.note_back(inc, inc.service_back_at or inc.verified_at)
        st = state.instance(inst.unit)
        if inc.verified_at is not None:
            st["consecutive_failures"] = 0
            st.pop("first_failure_at", None)

    # -- what a dead cycle left open ---------------------------------------------------
    def close_interrupted(self, state, inst, alerter, report, shared):
        """Close each incident of inst left open by a dead cycle as interrupted: what it
        did, what the service is doing now. Returns the last one if the service is still
        not healthy (the cycle's own findings then carry its evidence on)."""
        unresolved = None
        for d in self.incident_log.open_incidents(inst.unit):
            inc = incidents.Incident.from_dict(d)
            if self.dry_run:
                report.add(EXIT_WARNING, "%s: incident %s was left open by a watchdog cycle that died (pid %s)" % (
                    inst.unit, inc.id, inc.cycle_pid))
                continue
            done = [st["action"] for st in inc.steps]
            under_way = (inc.current_step or {}).get("action")
            changed_unit = any(a in UNIT_CHANGING for a in done + [under_way])
            probe, status, waited, replaced = self.judge_now(inst, (inc.unit_status or {}).get("main_pid"))
            if probe.ok:
                self.note_back(inc, self.host.clock.now(), probe.body)
            else:
                unresolved = inc
            inc.interruption = {"found_at": self.host.clock.now(), "by_pid": os.getpid(), "dead_pid": inc.cycle_pid,
                                "step_under_way": inc.current_step, "steps_done": done, "waited_s": round(waited, 1),
                                "unit_status": status.to_dict(), "probe": probe.to_dict()}
            inc.reason = "the watchdog cycle (pid %s) died %s%s; the service is now %s, %s" % (
                inc.cycle_pid, "during step %s" % under_way if under_way else "between steps",
                " after %s" % ", ".join(done) if done else " before any step", probe.summary(), status.summary())
            lc = self.lifecycle(alerter)
            if changed_unit or replaced:
                # What its kill/restart caused (a new pid, supervisord's exit lines, read
                # at the start of this cycle or now) is this incident's, not a new fault.
                ours = [e for e in shared["manager"] if checks.mentions(inst.unit, e.line)]
                shared["manager"] = [e for e in shared["manager"] if e not in ours]
                if ours:
                    inc.notes.append({"after_interruption": [e.to_dict() for e in ours[:20]]})
                lc.closing.append(lambda i: self.after_remediation(state, i, shared))
            lc.advance(inc, IncidentState.INTERRUPTED, inc.reason)
            report.incidents.append(inc)
            report.add(EXIT_WARNING if probe.ok else EXIT_CRITICAL, inc.summary())
        return unresolved

    def judge_now(self, inst, old_pid):
        """(probe, unit status, seconds waited, replaced). A process other than the one the
        incident saw (the dead cycle's kill or restart, or the manager's respawn, journaled
        or not) may still be loading: wait for it, up to watchdog.ready_timeout_s, rather
        than act on it."""
        clock = self.host.clock
        ctx = Context(self.settings, inst, self.host, self.manager)
        t0 = clock.monotonic()
        deadline = t0 + self.settings.watchdog.ready_timeout_s
        while True:
            status = self.manager.status(inst.unit)
            probe = ctx.probe(timeout_s=INTERRUPTED_PROBE_S)
            replaced = status.state == "starting" or (status.state == "running" and status.main_pid != old_pid)
            if probe.ok or not replaced or clock.monotonic() >= deadline:
                return probe, status, clock.monotonic() - t0, replaced
            clock.sleep(1.0)

    def inherit(self, f, left_open):
        """A fault the dead cycle did not get to the end of is still this cycle's to handle:
        its evidence (and so its runbook and fault time) carries on in the new incident."""
        if left_open is None or f.probe.verdict != UNHEALTHY:
            return
        for e in left_open.evidence:
            f.evidence.append(Evidence(e.get("signature"), e.get("path"), e.get("line"), e.get("at")))
        f.follows = left_open

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
