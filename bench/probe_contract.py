#!/usr/bin/env python3
"""Probe contract: the slowest model load the startup budget of the rendered manifests
tolerates, derived from the probe settings and measured against the real service.

    .venv/bin/python bench/probe_contract.py [--overlay gpu] [--scale 0.04] [--steps 5] [--json PATH] \
        [--figures docs/figures.md]

Derived (no processes): for the base and the gpu overlay, the startup budget
failureThreshold x periodSeconds, the load the kubelet always tolerates ((N - 1) x
periodSeconds: the first probe can come right at the container start), the wedge budget
(limits.worker_stall_s + failureThreshold x periodSeconds of the liveness probe) and the
readiness drop.

Measured: the real service with a stand-in engine whose load ends at a set time after
the container start (tests/plugins/deadline_load.py), under the fake kubelet of
tests/support/kubelet.py, time scaled by --scale (see there); the load is bisected
between one that is kept and one that is killed, and each kept run reports when /readyz
turned 200 (after the warm-up). The figures are in the manifest's seconds (real / scale).
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.support.kubelet import LIVENESS, READINESS, STARTUP, ScaledPod, container_probes, render  # noqa: E402

import figures  # noqa: E402  (bench/figures.py, beside this script)

DEADLINE_LOAD = "tests.plugins.deadline_load:DeadlineLoadEngine"


def kubectl():
    return shutil.which("kubectl")


def derived(docs, settings):
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    probes = container_probes(pod["containers"][0])
    s, live, ready = probes[STARTUP], probes[LIVENESS], probes[READINESS]
    pre_stop = pod["containers"][0].get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    return {
        "startup_budget_s": s.failure_threshold * s.period_s,
        "startup_always_tolerated_s": (s.failure_threshold - 1) * s.period_s,
        "startup_probe": "%d x %gs, timeout %gs" % (s.failure_threshold, s.period_s, s.timeout_s),
        "wedge_to_restart_s": [settings.limits.worker_stall_s + (live.failure_threshold - 1) * live.period_s,
                               settings.limits.worker_stall_s + live.failure_threshold * live.period_s],
        "liveness_probe": "%d x %gs, timeout %gs" % (live.failure_threshold, live.period_s, live.timeout_s),
        "unready_after_s": ready.failure_threshold * ready.period_s,
        "termination_grace_s": pod.get("terminationGracePeriodSeconds", 30),
        "pre_stop_s": pre_stop,
    }


def one_run(docs, scale, load_s, work):
    """Start the pod with a load that ends ``load_s`` manifest seconds after the container
    start (DeadlineLoadEngine), then the warm-up: ('kept', ready at) or ('killed', kill at)."""
    pod = ScaledPod(tempfile.mkdtemp(dir=work), docs, scale, engine=DEADLINE_LOAD,
                    env={"GLMTTS_TEST_LOAD_UNTIL": repr(time.time() + load_s * scale)})
    kubelet = pod.kubelet(restart=False).start()
    try:
        budget = kubelet.probes[STARTUP].failure_threshold * kubelet.probes[STARTUP].period_s
        deadline = time.monotonic() + budget * scale + 30
        while time.monotonic() < deadline:
            started, kill = kubelet.first("started"), kubelet.first("kill")
            if started:
                return "kept", started[1]
            if kill:
                return "killed", kill[1]
            time.sleep(0.02)
        return "undecided", None
    finally:
        kubelet.stop()
        pod.cleanup()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--overlay", default="gpu", help="overlay to measure (base, gpu, regions/hkg, ...)")
    p.add_argument("--scale", type=float, default=0.04, help="time scale of the fake kubelet (default 0.04)")
    p.add_argument("--steps", type=int, default=5, help="bisection steps (default 5)")
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    figures.add_argument(p)
    args = p.parse_args(argv)

    out = {"derived": {}, "measured": {}}
    k = kubectl()
    if not k:
        figures.skip(args, "probe_contract", "kubectl not found on PATH (ops/system-deps.sh installs it)")
        return 0
    work = tempfile.mkdtemp(prefix="glmtts-probe-bench-")
    try:
        for overlay in ("base", "gpu"):
            docs = render(overlay, k, ROOT)
            settings = ScaledPod(tempfile.mkdtemp(dir=work), docs, 1.0).settings
            out["derived"][overlay] = derived(docs, settings)
        print("Probe contract, derived from the rendered manifests (manifest seconds):")
        print("| overlay | startup probe | budget | load always tolerated | liveness probe | wedge -> restart | "
              "unready after | grace (preStop) |")
        print("|---|---|---|---|---|---|---|---|")
        derived_rows = []
        for overlay, d in out["derived"].items():
            derived_rows.append((overlay, d["startup_probe"], "%g s" % d["startup_budget_s"],
                                 "%g s" % d["startup_always_tolerated_s"], d["liveness_probe"],
                                 "%g-%g s" % tuple(d["wedge_to_restart_s"]), "%g s" % d["unready_after_s"],
                                 "%d s (%d s)" % (d["termination_grace_s"], d["pre_stop_s"])))
            print("| %s |" % " | ".join(derived_rows[-1]))

        docs = render(args.overlay, k, ROOT)
        d = derived(docs, ScaledPod(tempfile.mkdtemp(dir=work), docs, 1.0).settings)
        # Bisect the load (container start -> end of load(); the warm-up follows) between one
        # that is kept and one that is killed; each kept run reports when it was ready.
        lo, hi = 0.8 * d["startup_always_tolerated_s"], 1.05 * d["startup_budget_s"]
        runs = []
        print("\nMeasuring %s at time scale %g ..." % (args.overlay, args.scale), flush=True)

        def run(load):
            verdict, at = one_run(docs, args.scale, load, work)
            runs.append((load, verdict, at))
            print("  load ends at %.0f s: %s at %s s" % (load, verdict, "%.0f" % at if at is not None else "?"),
                  flush=True)
            return verdict

        if run(lo) != "kept" or run(hi) != "killed":
            sys.exit("probe_contract: "
                     "the bracket [%.0f, %.0f] s did not give a kept and a killed load (a very loaded machine, or "
                     "the probes changed); try a larger --scale" % (lo, hi))
        for _ in range(args.steps):
            mid = (lo + hi) / 2
            if run(mid) == "kept":
                lo = mid
            else:
                hi = mid
        kept = [at for _, v, at in runs if v == "kept"]
        killed = [at for _, v, at in runs if v == "killed"]
        out["measured"] = {"overlay": args.overlay, "scale": args.scale, "slowest_kept_ready_at_s": max(kept),
                               "killed_at_s": sorted(killed), "boundary_s": [lo, hi],
                               "runs": [{"load_s": load, "verdict": v, "at_s": at} for load, v, at in runs]}
        print("\n%s: the slowest load the startup budget tolerated was ready %.0f s after the container start "
              "(derived: always kept up to %g s, never past %g s); the boundary lies between loads ending at %.0f "
              "and %.0f s; longer loads were killed at %s s." % (
                  args.overlay, max(kept), d["startup_always_tolerated_s"], d["startup_budget_s"], lo, hi,
                  ", ".join("%.0f" % k for k in sorted(killed))))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    figures.publish(args, "probe_contract", "The probe contract of the rendered Kubernetes manifests: derived from "
                    "the probe settings (manifest seconds; config arithmetic, not a measurement), then measured: "
                    "the real service with a load that ends at a set time after the container start, under the "
                    "fake kubelet of tests/support/kubelet.py at time scale %g, the load bisected between one "
                    "that is kept and one that is killed." % args.scale,
                    figures.table(("overlay", "startup probe", "budget", "load always tolerated", "liveness probe",
                                   "wedge -> restart", "unready after", "grace (preStop)"), derived_rows)
                    + "\n\nMeasured on the %s overlay (manifest seconds = real / %g):\n\n" % (args.overlay, args.scale)
                    + figures.table(("load ends at s", "verdict", "at s (ready, or killed)"),
                                    [("%.0f" % load, v, "-" if at is None else "%.0f" % at) for load, v, at in runs],
                                    "rlr")
                    + "\n\nThe slowest load kept was ready **%.0f s** after the container start (derived: always "
                    "kept up to %g s, never past %g s); the boundary lies between loads ending at %.0f and %.0f s."
                    % (max(kept), d["startup_always_tolerated_s"], d["startup_budget_s"], lo, hi), argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
