"""Observations other than the probe: unit state and restarts, free disk, the service
manager's own log, the kernel log's Xid lines. Each returns Evidence the cycle
classifies exactly like a log line.

The manager's own account (managers.ManagerEvent: its journal / log lines about the
unit) decides two things here. Whether a process ended because someone asked (a stop or
restart job, `supervisorctl stop`: planned, recorded, nobody paged) or not (a kill, a
crash, systemd's WatchdogSec: an incident). And, from the starts it remembers
(update_runs), whether a start limit was reached by a crash loop or by separate
faults (judge_start_limit)."""

import logging
import os
import re
import time

from . import managers as M
from .scanner import Evidence

log = logging.getLogger(__name__)

MAX_RUNS = 12          # starts remembered per instance (the start limit counts fewer)
RUN_SIGNATURES_SKEW_S = 2.0   # a log line may be stamped a little after the manager saw the exit

DEFAULT_KERNEL_LOGS = ("/var/log/kern.log", "/var/log/messages")


def exits(events):
    """[(event, asked_for)] for each end of a process in the manager's account: an exit
    that follows a stop request (a stop or restart job) was asked for; any other was not."""
    out, stopping = [], False
    for e in events:
        if e.kind == M.STOP_REQUESTED:
            stopping = True
        elif e.kind == M.STOPPED_ON_REQUEST:
            out.append((e, True))
            stopping = False
        elif e.kind == M.EXITED:
            out.append((e, stopping))
            stopping = False
        elif e.kind in (M.STARTING, M.AUTO_RESTART, M.READY):
            stopping = False
    return out


def unit_evidence(status, previous, events=None):
    """Evidence from the unit's state and its restarts since the last cycle.
    ``previous`` is the instance's persisted dict (last_pid, last_restarts); ``events``
    the manager's account since the last cycle (None: not known)."""
    out = []
    desc = "unit %s: %s" % (status.unit, status.summary())
    if status.state == "crash_loop":
        out.append(Evidence("crash_loop", "unit", desc))
    elif status.state == "failed":
        out.append(Evidence("unhealthy", "unit", desc))
    last_restarts, last_pid = previous.get("last_restarts"), previous.get("last_pid")
    ends = exits(events or [])
    if status.restarts is not None and last_restarts is not None and status.restarts > last_restarts:
        # NRestarts counts only the manager's own restarts: a stop/restart job never adds one
        out.append(Evidence("unexpected_exit", "unit", "%s restarted %s by its manager since the last cycle (%d -> %d)" % (
            status.unit, status.manager, last_restarts, status.restarts)))
    elif status.restarts is None and status.main_pid and last_pid and status.main_pid != last_pid:
        if ends and all(asked for _, asked in ends):
            pass  # supervisord says it stopped the old process on request: see planned()
        else:
            out.append(Evidence("unexpected_exit", "unit", "%s has a new process since the last cycle (pid %d -> %d)" % (
                status.unit, last_pid, status.main_pid)))
    return out


def planned(status, previous, events):
    """The operator's own doings since the last cycle (stop, restart, reload through the
    manager: systemctl, supervisorctl, glmtts-system, a deploy), as the manager tells them:
    [{"what", "line", "at"}]. Not incidents: nobody is paged for them."""
    out = []
    for e, asked in exits(events):
        if asked:
            out.append({"what": "stop" if status.state == M.STOPPED else "restart", "line": e.line, "at": e.at})
    stops = [e for e in events if e.kind == M.STOP_REQUESTED]
    if stops and not out:  # systemd logs no exit line for a clean stop
        out.append({"what": "stop" if status.state == M.STOPPED else "restart", "line": stops[-1].line, "at": stops[-1].at})
    if not out and status.state == M.STOPPING:
        # The manager itself says a stop is under way (its log may not have told us yet): the
        # service is draining (service/drain.py), up to config.stop_grace_s(), and after
        # drain_delay_s its listener is closed, so an unanswered probe is the drain, not a fault.
        out.append({"what": "stop", "line": "%s: %s reports it stopping (draining before exit)" % (
            status.unit, status.manager), "at": None})
    out += [{"what": "reload", "line": e.line, "at": e.at} for e in events if e.kind == M.RELOAD]
    last_restarts, last_pid = previous.get("last_restarts"), previous.get("last_pid")
    if (not out and status.restarts is not None and status.restarts == last_restarts and status.main_pid
            and last_pid and status.main_pid != last_pid):
        # systemd started a new process without counting a restart of its own: a start job
        # someone asked for (the journal may have been unavailable to say more)
        out.append({"what": "restart", "line": "%s: new pid %d -> %d with NRestarts unchanged (%d)" % (
            status.unit, last_pid, status.main_pid, status.restarts), "at": None})
    return out


def planned_in_progress(status, events, planned_now):
    """A planned stop/restart whose new process has not reported ready yet."""
    if not planned_now or status.state == M.STOPPED:
        return False
    if status.state in (M.STARTING, M.STOPPING):
        return True
    last_stop = max((i for i, e in enumerate(events) if e.kind in (M.STOP_REQUESTED, M.STOPPED_ON_REQUEST)), default=None)
    return last_stop is not None and not any(e.kind == M.READY for e in events[last_stop:])


def drop_planned_exits(evidence, events):
    """The exit lines of processes stopped on request are not evidence of a fault
    (systemd: `Main process exited, code=killed, status=15/TERM` inside a stop job)."""
    asked = {e.line for e, a in exits(events) if a}
    return [ev for ev in evidence if not (ev.signature == "unexpected_exit" and ev.line in asked)]


# -- starts, and telling a crash loop from separate faults ------------------------------

def update_runs(runs, events, evidence, now):
    """The instance's recent starts (persisted dicts), extended with this cycle's account:
    started_at, ready_at, ended_at, end (the manager's words), asked (stopped on request),
    signatures (log evidence stamped inside the run)."""
    runs = [dict(r) for r in runs or []][-MAX_RUNS:]
    stopping = False

    def current():
        if runs and runs[-1].get("ended_at") is None and not runs[-1].get("end"):
            return runs[-1]
        runs.append({"started_at": None, "ready_at": None, "ended_at": None, "end": "", "asked": False, "signatures": []})
        return runs[-1]
    for e in events:
        at = e.at if e.at is not None else now
        if e.kind == M.STARTING:
            if runs and runs[-1].get("ended_at") is None and not runs[-1].get("end") and runs[-1].get("started_at"):
                # systemd logs no exit line for a clean stop: the stop job is its end
                runs[-1].update(ended_at=at, end="stopped on request" if stopping else "unknown", asked=stopping)
            runs.append({"started_at": at, "ready_at": None, "ended_at": None, "end": "", "asked": False, "signatures": []})
            stopping = False
        elif e.kind == M.READY:
            r = current()
            r["ready_at"] = r.get("ready_at") or at
        elif e.kind == M.STOP_REQUESTED:
            stopping = True
        elif e.kind == M.WATCHDOG:
            current()["watchdog"] = True
        elif e.kind in (M.EXITED, M.STOPPED_ON_REQUEST):
            r = current()
            r["ended_at"], r["end"] = at, e.detail or e.kind
            r["asked"] = stopping or e.kind == M.STOPPED_ON_REQUEST
            stopping = False
    for ev in evidence:
        if ev.at is None or ev.signature in ("unexpected_exit", "unhealthy", "crash_loop", "fault_burst"):
            continue
        for r in runs:
            start = r.get("started_at") or 0
            end = (r.get("ended_at") or now) + RUN_SIGNATURES_SKEW_S
            if start <= ev.at <= end and ev.signature not in r["signatures"]:
                r["signatures"].append(ev.signature)
    return runs[-MAX_RUNS:]


def _cause(run):
    return (run.get("end", ""), bool(run.get("watchdog")), tuple(sorted(run.get("signatures", []))))


def describe_run(run):
    t = run.get("ended_at") or run.get("started_at")
    when = time.strftime("%H:%M:%S", time.gmtime(t)) + "Z" if t else "?"
    how = ("watchdog timeout, " if run.get("watchdog") else "") + (run.get("end") or "still running")
    sigs = "+".join(run.get("signatures", []))
    return "%s %s%s%s" % (when, how, " [%s]" % sigs if sigs else "", "" if run.get("ready_at") or not run.get("started_at") else " (never ready)")


def loop_or_burst(runs):
    """('loop' | 'burst' | None, why, the runs judged): the start limit was reached by a
    crash loop (the same cause on consecutive starts, or a start that never reached
    ready) or by separate faults."""
    tail = []
    for r in reversed(runs or []):
        if r.get("asked") or not (r.get("end") or r.get("ended_at")):
            if tail:
                break
            continue
        tail.insert(0, r)
    if len(tail) < 2:
        return None, "too few starts on record to tell a loop from separate faults", tail
    last, before = tail[-1], tail[-2]
    if last.get("started_at") and not last.get("ready_at"):
        return "loop", "the last start never reached ready (%s)" % describe_run(last), tail
    if _cause(last) == _cause(before):
        return "loop", "the same cause on consecutive starts (%s)" % describe_run(last), tail
    return "burst", "%d separate faults: %s" % (len(tail), "; ".join(describe_run(r) for r in tail)), tail


def judge_start_limit(evidence, runs):
    """crash_loop evidence becomes fault_burst when the runs say the faults were separate."""
    if not any(ev.signature == "crash_loop" for ev in evidence):
        return evidence
    kind, why, _ = loop_or_burst(runs)
    if kind != "burst":
        return evidence + ([Evidence("crash_loop", "history", "crash loop: %s" % why)] if kind == "loop" else [])
    out = [Evidence("fault_burst" if ev.signature == "crash_loop" else ev.signature, ev.path, ev.line, ev.at) for ev in evidence]
    # first, so the page (which quotes the first evidence lines) carries the history
    return [Evidence("fault_burst", "history", "start limit reached by %s" % why)] + out


def disk_evidence(settings, host):
    """enospc evidence for each of the log/state/output filesystems below the floor."""
    floor = settings.watchdog.disk_free_floor_mb
    out, seen = [], set()
    for d in (settings.paths.log_dir, settings.paths.state_dir, settings.paths.output_dir):
        try:
            free, total = host.disk_free(d)
        except OSError as e:
            log.warning("cannot check free disk of %s: %s", d, e)
            continue
        if free < floor * 2**20:
            key = (free, total)
            if key in seen:
                continue
            seen.add(key)
            out.append(Evidence("enospc", "disk", "disk: %s has %.0f MB free of %.0f MB (< watchdog.disk_free_floor_mb %d)"
                                % (d, free / 2**20, total / 2**20, floor)))
    return out


def mentions(unit, line):
    """Does a shared manager log line speak of this unit (not of glmtts-watchdog)?"""
    return re.search(r"(^|[\s:])%s(\.service)?([\s:;(,.]|$)" % re.escape(unit), line) is not None


def kernel_log_path(settings):
    if settings.watchdog.kernel_log:
        return settings.watchdog.kernel_log
    for p in DEFAULT_KERNEL_LOGS:
        if os.access(p, os.R_OK):
            return p
    return None
