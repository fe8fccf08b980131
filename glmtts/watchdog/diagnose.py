"""`glmtts-watchdog diagnose`: the first five minutes of an outage in one report for a
human, about what is wrong *now*.

It observes and decides exactly as the next cycle would (``Watchdog.observe`` and
``Watchdog.decide`` on a scratch copy of the watchdog's state): the evidence is what the
watchdog has not handled yet (log bytes and journal entries after its stored positions),
the runbook is the one the cycle would run, and while automation is escalated it is the
escalated incident's. Read-only: the scratch state is never saved, no lock is taken,
nothing is acted on."""

import copy
import json

from . import incidents
from .actions import Context
from .actions.capture_diagnostics import snapshot, tail
from .incidents import IncidentLog, incidents_path
from .policy import BACKOFF, ESCALATE, OK, PLANNED, REMEDIATE, STOPPED, SUPPRESSED, WARNING
from .state import WatchdogState

ACCOUNT_LINES = 12      # the manager's last words about the unit
ERROR_TAIL_LINES = 200  # where the engine's last error line is looked for

VERDICTS = {
    REMEDIATE: "the watchdog would run runbook %s",
    ESCALATE: "the watchdog would escalate (runbook %s): its rate limit is spent",
    WARNING: "the watchdog would only warn (runbook %s)",
    BACKOFF: "the watchdog is backing off before its next recovery (runbook %s)",
}


def manager_account(wd, unit):
    """The manager's own recent words about unit (journal / supervisord log), newest last."""
    filt = wd.manager.account_filter()
    if wd.manager.name == "systemd":
        lines, _ = wd.manager.journal(unit, None, since="-6h")
    else:
        lines = []
        for path in wd.manager.manager_logs():
            lines += tail(path, 2000, 1 << 20)
    if filt is not None:
        lines = [l for l in lines if filt.search(l)]
    return [e.line for e in wd.manager.account(lines, unit)][-ACCOUNT_LINES:]


def engine_error(inst):
    """The service's own last error line (why the engine cannot load, say): the same choice
    an incident's alert makes."""
    inc = incidents.Incident("", inst.unit, inst.url, 0, diagnostics={"error_log_tail": tail(inst.logs.get("error", ""), ERROR_TAIL_LINES)})
    return inc.last_error_line()


def escalated_incident(log, guard):
    if not guard.incident:
        return None
    return next((i for i in reversed(log.read()) if i.get("id") == guard.incident), None)


def report(wd):
    """A dict per instance plus host facts; wd is a cycle.Watchdog (not run)."""
    state = wd.load_state()
    scratch = WatchdogState(state.path + ".diagnose", copy.deepcopy(state.data))  # never saved
    log = IncidentLog(incidents_path(wd.settings))
    out = {"manager": wd.manager.name, "instances": [], "incidents": log.read(last=5)}
    shared = wd.gather_shared(scratch)
    for i, inst in enumerate(wd.instances):
        f = wd.observe(scratch, inst, shared, first=(i == 0))
        policy, sigs, d = wd.decide(scratch, f, wd.host.clock.now())
        guard = policy.guard(inst.unit)
        rb, now = d.runbook, "nothing is wrong now"
        if d.kind in VERDICTS:
            now = VERDICTS[d.kind] % (rb.id if rb else "none")
        elif d.kind == SUPPRESSED:
            esc = escalated_incident(log, guard)
            if esc and esc.get("runbook"):
                rb = wd.runbooks.get(esc["runbook"])
            now = "automation is ESCALATED (%s)" % d.reason
        elif d.kind in (PLANNED, STOPPED):
            now = d.reason
        if rb is None and d.kind not in (PLANNED, STOPPED, OK):
            now += "; no runbook matches"
        snap = snapshot(Context(wd.settings, inst, wd.host, wd.manager), lines=10)
        out["instances"].append({
            "instance": inst.to_dict(), "snapshot": snap, "decision": d.kind, "now": now, "reason": d.reason,
            "signatures": sigs, "evidence": [e.to_dict() for e in f.evidence], "planned": f.planned,
            "manager_account": manager_account(wd, inst.unit), "engine_error": engine_error(inst),
            "runbook_id": rb.id if rb else None, "runbook": rb.path if rb else None, "guard": guard.to_dict()})
    return out


def render(rep):
    lines = ["service manager: %s" % rep["manager"]]
    for item in rep["instances"]:
        inst, snap = item["instance"], item["snapshot"]
        u, h = snap["unit"], snap["healthz"]
        lines += ["", "== %s (%s)" % (inst["unit"], inst["url"]),
                  "now:       %s" % item["now"],
                  "unit:      %s (%s)%s%s" % (u["state"], u["raw"], " pid %s" % u["main_pid"] if u["main_pid"] else "",
                                             " restarts %s" % u["restarts"] if u["restarts"] is not None else ""),
                  "healthz:   %s HTTP %s %s %s" % (h["verdict"], h["http_status"], h.get("status") or "", h.get("reason") or ""),
                  "port %-5d %s" % (snap["port"], "; ".join("pid %s %s (%s): %s" % (o["pid"], o["name"], o["user"], o["cmdline"][:120])
                                                           for o in snap["port_owners"]) or "nobody listens")]
        g = item["guard"]
        if g["state"] != "armed":
            lines.append("automation: ESCALATED (%s) - run `glmtts-watchdog resume` once fixed" % g["reason"])
        if item["engine_error"]:
            lines.append("engine's last error: %s" % item["engine_error"][:500])
        for gpu in snap["gpus"]:
            lines.append("gpu %d:     %s %.0f/%.0f MB, processes %s" % (gpu["index"], gpu["name"], gpu["memory_used_mb"],
                                                                    gpu["memory_total_mb"], [p["pid"] for p in gpu["processes"]] or "none"))
        if not snap["gpus"]:
            lines.append("gpu:       none visible (no NVML)")
        for d, info in snap["disk"].items():
            lines.append("disk:      %s %s" % (d, "%.0f MB free of %.0f MB" % (info["free_mb"], info["total_mb"]) if "free_mb" in info else info))
        lines.append("logs:      %s" % ", ".join("%s=%s" % kv for kv in inst["logs"].items()))
        lines.append("%s says (newest last):" % rep["manager"])
        lines += ["  %s" % l[:300] for l in item["manager_account"]] or ["  nothing about %s" % inst["unit"]]
        for p in item["planned"]:
            lines.append("planned:   %s (%s)" % (p["what"], p["line"][:200]))
        if item["evidence"]:
            lines.append("evidence not yet handled by the watchdog:")
            for e in item["evidence"]:
                lines.append("  [%s] %s: %s" % (e["signature"], e["path"], (e["line"] or "")[:300]))
        else:
            lines.append("evidence not yet handled by the watchdog: none")
        lines.append("runbook to open: %s" % (item["runbook"] or "none matches; start at runbooks/README.md"))
    lines += ["", "recent incidents:"]
    for inc in rep["incidents"] or []:
        lines.append("  %s %s %s -> %s%s" % (inc.get("detected_at_iso"), inc.get("unit"),
                                           "+".join(inc.get("signatures", [])) or inc.get("kind") or "(manual)",
                                           inc.get("outcome") or "open:%s" % inc.get("state"),
                                           " (outage %.1f s)" % inc["outage_s"] if inc.get("outage_s") is not None else ""))
    if not rep["incidents"]:
        lines.append("  none")
    return "\n".join(lines)


def to_json(rep):
    return json.dumps(rep, indent=1, default=str, ensure_ascii=False)

