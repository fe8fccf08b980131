#!/usr/bin/env python3
"""Print the time from a fault to its alert at the webhook, through a real Prometheus and
Alertmanager running the shipped ops/prometheus/ rules and routing.

    .venv/bin/python bench/prometheus_alert.py            # shipped `for` and group_wait, 5 s intervals
    .venv/bin/python bench/prometheus_alert.py --fast     # the integration test's timings (seconds)
    .venv/bin/python bench/prometheus_alert.py --scrape-s 15 --json artifacts/prometheus_alert.json
    .venv/bin/python bench/prometheus_alert.py --figures docs/figures.md   # also its section there

Two glmtts instances (the fault-injecting plug-in engine, a FAKE NVML: no GPU is needed)
are scraped; faults go into instance A only:
  oom     four CUDA OOMs answered 503           -> GlmttsCudaOomRate  (warning -> chat)
  journal a segfault incident in its journal    -> GlmttsSegfault     (critical -> pager)
  down    SIGTERM, drained, exited              -> GlmttsInstanceDown (critical -> pager)
The clock starts when the fault is complete (the 4th 503, the journal write, the exit) and
stops when the webhook receives the alert. Expected: at most about one scrape, two
evaluations (an alert on a recording rule waits for it), the rule's `for` and
Alertmanager's group_wait; the "bound" column prints that sum. A stopped instance's
listener closes before its process exits, so "down" can beat its bound.
Needs prometheus, prometheus-alertmanager (ops/system-deps.sh installs them); without them
it says so and, with --figures, keeps its previous section marked as not re-measured.
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

import yaml  # noqa: E402

from tests.support.prom import (OPS, Alertmanager, FleetInstance, Prometheus, Webhook, alertmanager_config,  # noqa: E402
                                fast_rules)

import figures  # noqa: E402  (bench/figures.py, beside this script)

FAULTS = (("oom", "GlmttsCudaOomRate"), ("journal", "GlmttsSegfault"), ("down", "GlmttsInstanceDown"))


def _seconds(text):
    return float(text[:-1]) * {"s": 1, "m": 60, "h": 3600}[text[-1]]


def shipped_for(alert):
    with open(os.path.join(OPS, "alert-rules.yml"), encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    fors = [r.get("for", "0s") for g in doc["groups"] for r in g["rules"] if r.get("alert") == alert]
    return max(_seconds(x) for x in fors)


def shipped_group_wait():
    with open(os.path.join(OPS, "alertmanager.yml"), encoding="utf-8") as f:
        return _seconds(yaml.safe_load(f)["route"]["group_wait"])


def run(tmp, scrape_s, fast, timeout):
    for_s = 2 if fast else None
    group_wait = "1s" if fast else "%ds" % shipped_group_wait()
    a, b = FleetInstance(tmp, "a", drain_delay_s=1.0), FleetInstance(tmp, "b", drain_delay_s=1.0)
    hook = Webhook().start()
    am = Alertmanager(tmp, alertmanager_config(hook.url, group_wait=group_wait))
    prom = None
    out = {}
    try:
        for svc in (a, b):
            svc.start(timeout=120)
        am.start()
        prom = Prometheus(tmp, [a.url, b.url], fast_rules(tmp, for_s=for_s), am.address,
                          scrape_s=scrape_s, evaluation_s=scrape_s)
        prom.start()
        prom.wait_up([a.address, b.address], timeout=max(60, 10 * scrape_s))
        time.sleep(2 * scrape_s)  # a few samples of the healthy state first
        for fault, alert in FAULTS:
            if fault == "oom":
                a.fault("oom")
                for _ in range(4):
                    r = a.post("/v1/audio/speech", json={"input": "Out of memory, please."})
                    assert r.status_code == 503, r.text
                a.fault("")
            elif fault == "journal":
                a.record_incident("segfault", "segfault")
            else:
                a.stop(timeout=60)
            t0 = time.monotonic()
            t, receiver, _ = hook.wait_for(timeout, alertname=alert, instance=a.address)
            rule_for = for_s if fast and shipped_for(alert) > for_s else shipped_for(alert)
            out[alert] = {"fault": fault, "seconds": round(t - t0, 2), "receiver": receiver,
                          "bound_s": scrape_s * 3 + rule_for + _seconds(group_wait), "for_s": rule_for}
        out["_healthy_instance_alerts"] = len([x for _, _, x in hook.alerts() if x["labels"].get("instance") == b.address])
    finally:
        for thing in (prom, am, a, b):
            if thing is not None:
                thing.stop()
        hook.stop()
    return out


def missing_programs(path=None):
    """The programs this bench needs and cannot find (as tests/support/fleet.py tool() looks)."""
    path = (path if path is not None else os.environ.get("PATH", "")) + ":/usr/sbin:/sbin"
    need = (("prometheus",), ("prometheus-alertmanager", "alertmanager"))
    return [names[0] for names in need if not any(shutil.which(n, path=path) for n in names)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scrape-s", type=int, default=None, help="scrape and evaluation interval (default 5, --fast 1)")
    ap.add_argument("--fast", action="store_true", help="`for` cut to 2 s and group_wait 1 s, as the test does")
    ap.add_argument("--json", help="also write the figures to this file")
    figures.add_argument(ap)
    args = ap.parse_args(argv)
    missing = missing_programs()
    if missing:
        figures.skip(args, "prometheus_alert", "%s not installed (ops/system-deps.sh installs them)"
                     % " and ".join(missing))
        return 0
    scrape_s = args.scrape_s or (1 if args.fast else 5)
    with tempfile.TemporaryDirectory(prefix="glmtts-prom-bench-") as tmp:
        result = run(tmp, scrape_s, args.fast, timeout=600)
    print("fault -> alert at the webhook (scrape/evaluation %d s, %s)" % (
        scrape_s, "fast: for <= 2 s, group_wait 1 s" if args.fast else "shipped for and group_wait"))
    print("%-20s %-8s %-8s %8s %8s %8s" % ("alert", "fault", "receiver", "for s", "seconds", "bound s"))
    for alert, r in result.items():
        if not alert.startswith("_"):
            print("%-20s %-8s %-8s %8.0f %8.1f %8.0f" % (alert, r["fault"], r["receiver"], r["for_s"], r["seconds"],
                                                         r["bound_s"]))
    print("alerts for the healthy instance: %d" % result["_healthy_instance_alerts"])
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"scrape_s": scrape_s, "fast": args.fast, "alerts": result}, f, indent=1)
    rows = [(alert, r["fault"], r["receiver"], "%.0f" % r["for_s"], "%.1f" % r["seconds"], "%.0f" % r["bound_s"],
             "%.2f" % (r["seconds"] / r["bound_s"])) for alert, r in result.items() if not alert.startswith("_")]
    figures.publish(args, "prometheus_alert", "Fault to alert at the webhook through a real Prometheus and "
                    "Alertmanager running the shipped ops/prometheus/ rules and routing, scrape and evaluation "
                    "every %d s, %s. Two instances (fault-injecting engine, fake NVML), faults in instance A only. "
                    "bound = about one scrape, two evaluations, the rule's `for` and group_wait; a stopped "
                    "instance's listener closes before its process exits, so \"down\" can beat it."
                    % (scrape_s, "`for` cut to 2 s and group_wait 1 s (--fast)" if args.fast
                       else "the shipped `for` and group_wait"),
                    figures.table(("alert", "fault", "receiver", "for s", "seconds", "bound s", "seconds / bound"),
                                  rows, "lllrrrr")
                    + "\n\nalerts for the healthy instance: %d" % result["_healthy_instance_alerts"], argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
