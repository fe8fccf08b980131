#!/usr/bin/env python3
"""Watchdog benchmarks (prints figures; nothing here asserts on speed).

1. Log scanning: a generated log of --log-mb (default 1024 MB) in a temp dir, then
   --cycles cycles that each append --append-mb (default 1 MB) of realistic lines and
   scan. The incremental scanner (what the watchdog does) is compared with re-reading
   the whole file every cycle: wall time and CPU per cycle, and their ratio.
2. Time to recover per fault kind under a real supervisord (kill -9, SIGSTOP,
   CUDA OOM + wedge, segfault), reusing the integration test's rig. --skip-recovery
   skips it.

    .venv/bin/python bench/watchdog.py [--log-mb 1024] [--append-mb 1] [--cycles 5] [--figures PATH]
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from glmtts.watchdog.scanner import LogScanner  # noqa: E402

import figures  # noqa: E402  (bench/figures.py, beside this script)

LINES = (
    "2025-01-01T03:12:44.101Z 127.0.0.1 POST /v1/audio/speech 200 111182 412.3ms rid=01c47a75f3540010\n"
    "2025-01-01T03:12:44.301Z INFO service.worker: synthesis done in 0.41 s (24000 Hz, 2.3 s audio)\n"
    "2025-01-01T03:12:44.501Z WARNING service.limits: client 10.0.0.7 over its rate limit (429)\n"
)


def block(mb):
    unit = LINES * 64
    n = (mb << 20) // len(unit)
    return (unit * max(1, n)).encode()


def measure(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def bench_scan(log_mb, append_mb, cycles):
    d = tempfile.mkdtemp(prefix="glmtts-bench-")
    path = os.path.join(d, "error.log")
    try:
        chunk = block(1)
        with open(path, "wb") as f:
            for _ in range(log_mb):
                f.write(chunk)
        add = block(append_mb) + b"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"
        sc = LogScanner()
        pos = sc.scan(path, None).position   # first sight: only the tail
        inc, full = [], []
        for _ in range(cycles):
            with open(path, "ab") as f:
                f.write(add)
            box = {}

            def incremental():
                box["r"] = sc.scan(path, box.get("pos", pos))
            inc.append(measure(incremental))
            pos = box["r"].position
            assert box["r"].counts.get("cuda_oom") == 1
        for _ in range(min(2, cycles)):
            whole = LogScanner(first_sight_tail=1 << 62)
            full.append(measure(lambda: whole.scan(path, None)))
        iw = sum(w for w, _ in inc) / len(inc)
        ic = sum(c for _, c in inc) / len(inc)
        fw = sum(w for w, _ in full) / len(full)
        fc = sum(c for _, c in full) / len(full)
        size = os.path.getsize(path) / 2**20
        print("log scanning: %.0f MB log, %d MB appended per cycle, %d cycles" % (size, append_mb, cycles))
        print("  %-28s %10s %10s" % ("", "wall/cycle", "cpu/cycle"))
        print("  %-28s %9.3fs %9.3fs" % ("incremental (watchdog)", iw, ic))
        print("  %-28s %9.3fs %9.3fs" % ("re-read whole file", fw, fc))
        print("  ratio (re-read / incremental): wall %.0fx, cpu %.0fx" % (fw / max(iw, 1e-9), fc / max(ic, 1e-9)))
        return ("Log scanning: a %.0f MB log, %d MB appended per cycle, %d cycles.\n\n" % (size, append_mb, cycles)
                + figures.table(("scan", "wall s / cycle", "CPU s / cycle"),
                                [("incremental (the watchdog)", "%.3f" % iw, "%.3f" % ic),
                                 ("re-read the whole file", "%.3f" % fw, "%.3f" % fc),
                                 ("ratio, re-read / incremental", "%.0fx" % (fw / max(iw, 1e-9)),
                                  "%.0fx" % (fc / max(ic, 1e-9)))], "lrr"))
    finally:
        shutil.rmtree(d, ignore_errors=True)


def bench_recovery():
    import signal

    import requests

    from tests.support.watchdog_fakes import AlertReceiver
    from tests.watchdog.test_watchdog_supervisord import Rig, last_incident, main_pid

    root = tempfile.mkdtemp(prefix="glmtts-bench-sv-")
    rig = Rig(root)
    rows = []
    try:
        with AlertReceiver() as rx:
            rig.wait_healthy()
            rig.wd = rig.watchdog(rx.port)
            rig.wd.check()

            def kill9():
                os.kill(main_pid(rig), signal.SIGKILL)
                rig.wait_for("log/supervisord.log", "terminated by SIGKILL")

            def sigstop():
                os.kill(main_pid(rig), signal.SIGSTOP)

            def oom_wedge():
                rig.set_fault("oom_wedge")
                rig.request_in_background()
                rig.wait_for("log/error.log", "torch.OutOfMemoryError")
                deadline = time.monotonic() + 30
                while requests.get(rig.url + "/healthz", timeout=5).status_code == 200 and time.monotonic() < deadline:
                    time.sleep(0.3)
                rig.set_fault("")

            def segfault():
                rig.set_fault("segfault")
                rig.request_in_background()
                rig.wait_for("log/supervisord.log", "terminated by SIGSEGV")
                rig.set_fault("")

            for name, fault in (("kill -9", kill9), ("SIGSTOP (hang)", sigstop), ("CUDA OOM + wedge", oom_wedge), ("segfault", segfault)):
                fault()
                t0 = time.monotonic()
                rep = rig.wd.check()
                inc = last_incident(rig)
                rows.append((name, "+".join(inc["signatures"]), inc["runbook"], inc["outcome"], inc.get("outage_s"),
                             inc.get("verification_s"), time.monotonic() - t0))
                print("  ran %s: %s" % (name, rep.summary()), file=sys.stderr)
    finally:
        rig.stop()
        shutil.rmtree(root, ignore_errors=True)
    print("recovery under supervisord: outage (fault -> healthy again), verify (healthy again -> smoke test):")
    print("  %-18s %-32s %-13s %-10s %8s %8s %8s" % ("fault", "signatures", "runbook", "outcome", "outage", "verify", "cycle"))
    nan = float("nan")
    for r in rows:
        print("  %-18s %-32s %-13s %-10s %7.1fs %7.1fs %7.1fs" % (
            r[0], r[1], r[2], r[3], nan if r[4] is None else r[4], nan if r[5] is None else r[5], r[6]))
    sec = lambda v: "-" if v is None else "%.1f" % v  # noqa: E731
    return ("Time to recover under a real supervisord (the integration test's rig), one watchdog cycle per "
            "fault: outage = fault to healthy again, verify = healthy again to the smoke test, cycle = the "
            "watchdog's check.\n\n"
            + figures.table(("fault", "signatures", "runbook", "outcome", "outage s", "verify s", "cycle s"),
                            [r[:4] + (sec(r[4]), sec(r[5]), sec(r[6])) for r in rows], "llllrrr"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--log-mb", type=int, default=1024)
    p.add_argument("--append-mb", type=int, default=1)
    p.add_argument("--cycles", type=int, default=5)
    p.add_argument("--skip-recovery", action="store_true")
    p.add_argument("--skip-scan", action="store_true")
    figures.add_argument(p)
    a = p.parse_args(argv)
    blocks = []
    if not a.skip_scan:
        blocks.append(bench_scan(a.log_mb, a.append_mb, a.cycles))
    if not a.skip_recovery:
        blocks.append(bench_recovery())
    figures.publish(a, "watchdog", "The watchdog: what its incremental log scan costs against re-reading the "
                    "file every cycle (ratio), and the time to recover per fault under supervisord (espeak "
                    "engine; a real GLM-TTS model adds its load time to every restart).", "\n\n".join(blocks), argv)


if __name__ == "__main__":
    main()
