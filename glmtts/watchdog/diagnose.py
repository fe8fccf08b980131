"""`glmtts-watchdog diagnose`: the first five minutes of an outage in one report for a
human. Read-only: it neither moves the scanner's positions nor takes the cycle lock."""

import json

from . import checks, signatures
from .actions.capture_diagnostics import snapshot
from .actions import Context
from .incidents import IncidentLog, incidents_path
from .policy import Policy
from .probe import UNHEALTHY
from .runbook import for_signature
from .scanner import LogScanner

TAIL_BYTES = 4 << 20


def last_matches(paths, per_signature=3):
    """signature -> its last few matching lines in the tails of paths."""
    out = {}
    scanner = LogScanner(first_sight_tail=TAIL_BYTES)
    for p in paths:
        res = scanner.scan(p, None)
        for ev in res.evidence:
            out.setdefault(ev.signature, []).append("%s: %s" % (p, ev.line))
    return {k: v[-per_signature:] for k, v in out.items()}


def report(wd):
    """A dict per instance plus host facts; wd is a cycle.Watchdog (not run)."""
    state = wd.load_state()
    guards = Policy(wd.runbooks, guards=state.section("guards"))
    out = {"manager": wd.manager.name, "instances": [], "incidents": IncidentLog(incidents_path(wd.settings)).read(last=5)}
    for inst in wd.instances:
        ctx = Context(wd.settings, inst, wd.host, wd.manager)
        snap = snapshot(ctx, lines=10)
        paths = [p for p in (inst.logs.get("error"),) if p] + wd.manager.manager_logs()
        kern = checks.kernel_log_path(wd.settings)
        if kern:
            paths.append(kern)
        matches = last_matches(paths)
        sigs = sorted(set(matches) | ({"unhealthy"} if snap["healthz"]["verdict"] == UNHEALTHY else set()),
                      key=lambda n: signatures.PRECEDENCE.get(n, 99))
        rb = next((r for r in (for_signature(wd.runbooks, s) for s in sigs) if r), None)
        g = guards.guard(inst.unit)
        out["instances"].append({"instance": inst.to_dict(), "snapshot": snap, "matches": matches,
                                 "runbook": rb.path if rb else None, "guard": g.to_dict()})
    return out


def render(rep):
    lines = ["service manager: %s" % rep["manager"]]
    for item in rep["instances"]:
        inst, snap = item["instance"], item["snapshot"]
        u, h = snap["unit"], snap["healthz"]
        lines += ["", "== %s (%s)" % (inst["unit"], inst["url"]),
                  "unit:      %s (%s)%s%s" % (u["state"], u["raw"], " pid %s" % u["main_pid"] if u["main_pid"] else "",
                                             " restarts %s" % u["restarts"] if u["restarts"] is not None else ""),
                  "healthz:   %s HTTP %s %s %s" % (h["verdict"], h["http_status"], h.get("status") or "", h.get("reason") or ""),
                  "port %-5d %s" % (snap["port"], "; ".join("pid %s %s (%s): %s" % (o["pid"], o["name"], o["user"], o["cmdline"][:120])
                                                           for o in snap["port_owners"]) or "nobody listens")]
        g = item["guard"]
        if g["state"] != "armed":
            lines.append("automation: ESCALATED (%s) - run `glmtts-watchdog resume` once fixed" % g["reason"])
        for gpu in snap["gpus"]:
            lines.append("gpu %d:     %s %.0f/%.0f MB, processes %s" % (gpu["index"], gpu["name"], gpu["memory_used_mb"],
                                                                    gpu["memory_total_mb"], [p["pid"] for p in gpu["processes"]] or "none"))
        if not snap["gpus"]:
            lines.append("gpu:       none visible (no NVML)")
        for d, info in snap["disk"].items():
            lines.append("disk:      %s %s" % (d, "%.0f MB free of %.0f MB" % (info["free_mb"], info["total_mb"]) if "free_mb" in info else info))
        lines.append("logs:      %s" % ", ".join("%s=%s" % kv for kv in inst["logs"].items()))
        if item["matches"]:
            lines.append("last matching log lines:")
            for sig, ls in item["matches"].items():
                for l in ls:
                    lines.append("  [%s] %s" % (sig, l[:300]))
        else:
            lines.append("last matching log lines: none")
        lines.append("runbook to open: %s" % (item["runbook"] or "none matches; start at runbooks/README.md"))
    lines += ["", "recent incidents:"]
    for inc in rep["incidents"] or []:
        lines.append("  %s %s %s -> %s%s" % (inc.get("detected_at_iso"), inc.get("unit"), "+".join(inc.get("signatures", [])),
                                           inc.get("outcome"), " (%.1f s)" % inc["time_to_recover_s"] if inc.get("time_to_recover_s") else ""))
    if not rep["incidents"]:
        lines.append("  none")
    return "\n".join(lines)


def to_json(rep):
    return json.dumps(rep, indent=1, default=str, ensure_ascii=False)
