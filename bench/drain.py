#!/usr/bin/env python3
"""The drain's figures (issue 13): a real service process on the embedded engine slowed to
--slow s per synthesis (tests/plugins/faults.py), one synthesis at a time, --requests
queued, then SIGTERM while new clients keep arriving (one every 0.2 s).

    .venv/bin/python bench/drain.py [--requests 12] [--slow 0.5] [--delay 2] [--json PATH] [--figures PATH]

Two runs: one whose server.drain_timeout_s is ample (everything queued must finish) and
one whose timeout is shorter than the queue (the rest must get 503 draining, never 500).
For each it prints the requests in flight or queued at SIGTERM against those completed with
valid audio, the late clients refused (503 draining + Retry-After, or a refused connection
once the listener closed), the 5xx count (other than 503 draining: must be 0) and the time
from SIGTERM to exit, with the exit code.
"""

import argparse
import json
import os
import signal
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tests.plugins.drain_load import DrainLoad  # noqa: E402
from tests.support.service import FAULT_ENGINE, ServiceProcess  # noqa: E402

import figures  # noqa: E402  (bench/figures.py, beside this script)


def one_run(root, name, n, slow, delay, timeout):
    svc = ServiceProcess(root, {"GLMTTS_TEST_FAULT": "slow:%g" % slow, "GLMTTS_LIMITS_MAX_CONCURRENCY": "1",
                                "GLMTTS_LIMITS_MAX_QUEUE": str(max(16, 2 * n)),
                                "GLMTTS_SERVER_DRAIN_DELAY_S": str(delay),
                                "GLMTTS_SERVER_DRAIN_TIMEOUT_S": str(timeout)}, engine=FAULT_ENGINE, name=name)
    svc.start()
    try:
        load = DrainLoad(svc.url, n=n)
        held = load.queue()
        t0 = time.monotonic()
        svc.proc.send_signal(signal.SIGTERM)
        load.signal_sent()
        code = svc.wait_exit(delay + timeout + 60)
        exit_s = time.monotonic() - t0
        load.finish(60)
    finally:
        svc.stop()
    r = load.report()
    return {"run": name, "drain_delay_s": delay, "drain_timeout_s": timeout, "slow_s": slow,
            "in_flight_at_sigterm": held.get("in_flight"), "queued_at_sigterm": held.get("queue_depth"),
            "completed": r["queued_ok"], "answered_503_draining": r["queued_503_draining"], "lost": r["lost"],
            "late_clients": r["late"], "late_served": r["late_served"], "late_503_draining": r["late_503_draining"],
            "late_refused_connection": r["late_refused_connection"], "bad_5xx": r["bad_5xx"],
            "exit_code": code, "time_to_exit_s": round(exit_s, 2),
            "traceback_in_error_log": "Traceback" in svc.stderr()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=12, help="requests queued before SIGTERM (default 12)")
    p.add_argument("--slow", type=float, default=0.5, help="seconds each synthesis takes (default 0.5)")
    p.add_argument("--delay", type=float, default=2.0, help="server.drain_delay_s (default 2; shipped 5)")
    p.add_argument("--json", metavar="PATH", help="also write the figures here")
    figures.add_argument(p)
    args = p.parse_args(argv)
    work = args.requests * args.slow
    runs = [("ample timeout", work + 30), ("short timeout", max(1.0, work / 3))]
    rows = []
    with tempfile.TemporaryDirectory(prefix="glmtts-bench-drain-") as root:
        for i, (name, timeout) in enumerate(runs):
            rows.append(one_run(root, "run%d" % i, args.requests, args.slow, args.delay, round(timeout, 1)))
            rows[-1]["run"] = name
    print("%-14s %9s %7s %9s %8s %5s %8s %12s %4s %4s %6s" % (
        "run", "timeout s", "at TERM", "completed", "503 left", "lost", "late 503", "late refused", "5xx",
        "exit", "exit s"))
    for r in rows:
        print("%-14s %9g %7d %9d %8d %5d %8d %12d %4d %4s %6.1f" % (
            r["run"], r["drain_timeout_s"], (r["in_flight_at_sigterm"] or 0) + (r["queued_at_sigterm"] or 0),
            r["completed"], r["answered_503_draining"], r["lost"], r["late_503_draining"],
            r["late_refused_connection"], r["bad_5xx"], r["exit_code"], r["time_to_exit_s"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    ok = all(r["bad_5xx"] == 0 and r["lost"] == 0 and r["exit_code"] == 0 and not r["traceback_in_error_log"]
             for r in rows)
    if not ok:
        print("drain: a run lost work, answered 5xx, logged a traceback or exited non-zero: figures not written")
        return 1
    figures.publish(args, "drain", "SIGTERM to a real service process on the embedded engine slowed to %g s per "
                    "synthesis, one at a time, %d requests queued, new clients arriving every 0.2 s, "
                    "server.drain_delay_s %g. One run with an ample server.drain_timeout_s (all queued work must "
                    "finish), one with a timeout shorter than the queue (the rest must get 503 draining). 5xx "
                    "counts answers other than 503 draining (must be 0)." % (args.slow, args.requests, args.delay),
                    figures.table(("run", "drain timeout s", "in flight + queued at SIGTERM", "completed",
                                   "503 draining", "lost", "late 503", "late refused", "5xx", "exit code",
                                   "SIGTERM -> exit s"),
                                  [(r["run"], "%g" % r["drain_timeout_s"],
                                    (r["in_flight_at_sigterm"] or 0) + (r["queued_at_sigterm"] or 0), r["completed"],
                                    r["answered_503_draining"], r["lost"], r["late_503_draining"],
                                    r["late_refused_connection"], r["bad_5xx"], r["exit_code"],
                                    "%.1f" % r["time_to_exit_s"]) for r in rows], "lrrrrrrrrrr"), argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
