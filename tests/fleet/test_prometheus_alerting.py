"""The whole alerting path, for real: two glmtts instances (the fault-injecting plug-in
engine, a FAKE NVML because this machine has no GPU), a real Prometheus scraping both
every second with the shipped rules, a real Alertmanager with the shipped routing and
inhibitions, and a webhook receiver started by the test in place of PagerDuty and Slack.

Faults go into instance A only: CUDA OOMs (glmtts_cuda_oom_total), a segfault incident in
its watchdog journal (written by the watchdog's own incident code), low GPU memory, and
finally a stop (up == 0). Each must arrive at the webhook as the right alert (name,
instance, severity, runbook_url) at the right receiver; instance B, healthy throughout,
must fire nothing. The only change to the shipped rules: every `for` is cut to 2 s so the
test waits seconds; the expressions are the shipped ones. Timings are printed, never
asserted (bench/prometheus_alert.py reports them)."""

import json
import os
import signal
import time

import pytest

from tests.support.fleet import tool
from tests.support.prom import (GIB, OPS, Alertmanager, FleetInstance, Prometheus, Webhook, alertmanager_config,
                                fast_rules)

pytestmark = pytest.mark.integration

ALERT_TIMEOUT_S = 90   # a loaded CI machine; a quiet one needs a few seconds
FOR_S = 2
DRAIN_DELAY_S = 3 * FOR_S


@pytest.fixture
def fleet(tmp_path):
    """Instances a and b, the webhook, Alertmanager and Prometheus; all stopped by PID."""
    tool("prometheus")
    tool("prometheus-alertmanager", "alertmanager")  # skip (fail in CI) before starting anything
    started = []
    try:
        # Longer than every shortened `for`: a drain must not page as GlmttsNotReady.
        a, b = (FleetInstance(tmp_path, name, drain_delay_s=DRAIN_DELAY_S) for name in "ab")
        for svc in (a, b):
            started.append(svc)
            svc.start(timeout=120)
        hook = Webhook().start()
        started.append(hook)
        am = Alertmanager(tmp_path, alertmanager_config(hook.url))
        started.append(am)
        am.start()
        prom = Prometheus(tmp_path, [a.url, b.url], fast_rules(tmp_path, for_s=FOR_S), am.address)
        started.append(prom)
        prom.start()
        prom.wait_up([a.address, b.address])
        yield a, b, hook, am, prom
    finally:
        for thing in reversed(started):
            thing.stop()


def _speak(svc, n=2):
    for _ in range(n):
        r = svc.post("/v1/audio/speech", json={"input": "Hello from the fleet.", "response_format": "wav"})
        assert r.status_code == 200, r.text


def _check(alert, receiver, name, instance, severity, runbook):
    t, got_receiver, a = alert
    assert a["labels"]["alertname"] == name
    assert a["labels"]["instance"] == instance
    assert a["labels"]["severity"] == severity
    assert got_receiver == {"critical": "pager", "warning": "chat"}[severity] == receiver
    assert a["annotations"]["runbook_url"].endswith("/runbooks/" + runbook)
    assert instance in a["annotations"]["summary"]
    return t


def test_a_fault_in_one_instance_fires_its_alert_into_the_webhook(fleet):
    a, b, hook, am, prom = fleet
    _speak(a)
    _speak(b)
    times = {}

    # 1. CUDA OOMs on A: four requests answered 503 cuda_oom, the service stays up.
    a.fault("oom")
    for _ in range(4):
        r = a.post("/v1/audio/speech", json={"input": "Out of memory, please."})
        assert r.status_code == 503 and r.json()["error"]["code"] == "cuda_oom", r.text
    t0 = time.monotonic()
    a.fault("")
    got = hook.wait_for(ALERT_TIMEOUT_S, alertname="GlmttsCudaOomRate")
    times["GlmttsCudaOomRate"] = _check(got, "chat", "GlmttsCudaOomRate", a.address, "warning", "cuda-oom.md") - t0

    # 2. The watchdog healed a segfault on A (its journal, as the watchdog writes it).
    t0 = time.monotonic()
    a.record_incident("segfault", "segfault")
    got = hook.wait_for(ALERT_TIMEOUT_S, alertname="GlmttsSegfault")
    times["GlmttsSegfault"] = _check(got, "pager", "GlmttsSegfault", a.address, "critical", "segfault.md") - t0
    assert got[2]["labels"]["runbook"] == "segfault"

    # 3. A's GPU runs out of memory (1% free; NVML is read every 5 s by the service).
    t0 = time.monotonic()
    a.set_gpu(free=int(0.01 * 80 * GIB))
    got = hook.wait_for(ALERT_TIMEOUT_S, alertname="GlmttsGpuMemoryLow")
    times["GlmttsGpuMemoryLow"] = _check(got, "chat", "GlmttsGpuMemoryLow", a.address, "warning", "cuda-oom.md") - t0
    assert got[2]["labels"]["device"] == "0"

    # 4. A stops. It drains first (not ready on purpose, seen by Prometheus as such, which
    #    must not page as GlmttsNotReady), then exits and is down.
    a.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + DRAIN_DELAY_S
    seen = []
    while not seen and time.monotonic() < deadline:
        seen = prom.query('glmtts_draining{instance="%s"} == 1 and on (instance) glmtts_ready == 0' % a.address)
        time.sleep(0.2)
    assert seen, "Prometheus never scraped A as draining and not ready"
    assert a.wait_exit(timeout=60) == 0
    t0 = time.monotonic()
    got = hook.wait_for(ALERT_TIMEOUT_S, alertname="GlmttsInstanceDown")
    times["GlmttsInstanceDown"] = _check(got, "pager", "GlmttsInstanceDown", a.address, "critical", "service-down.md") - t0

    # B fired nothing, at the webhook or in Prometheus; A never paged as merely not ready.
    _speak(b)
    time.sleep(3 * FOR_S + 2)
    delivered = [(recv, x["labels"]) for _, recv, x in hook.alerts()]
    assert not [d for d in delivered if d[1].get("instance") == b.address], delivered
    assert not [x for x in prom.alerts() if x["labels"].get("instance") == b.address], prom.alerts()
    assert not [d for d in delivered if d[1]["alertname"] == "GlmttsNotReady"], delivered
    print("fault -> webhook: " + ", ".join("%s %.1f s" % kv for kv in times.items()))


def test_down_inhibits_not_ready_in_the_shipped_alertmanager_config(tmp_path):
    hook = Webhook().start()
    am = Alertmanager(tmp_path, alertmanager_config(hook.url))
    try:
        am.start()
        labels = {"job": "glmtts", "instance": "gpu-a:7860"}
        am.post_alerts([
            {"labels": dict(labels, alertname="GlmttsInstanceDown", severity="critical"),
             "annotations": {"summary": "down"}},
            {"labels": dict(labels, alertname="GlmttsNotReady", severity="critical"),
             "annotations": {"summary": "not ready"}},
            {"labels": dict(labels, instance="gpu-b:7860", alertname="GlmttsNotReady", severity="critical"),
             "annotations": {"summary": "not ready, other instance"}}])
        hook.wait_for(30, alertname="GlmttsInstanceDown")
        hook.wait_for(30, alertname="GlmttsNotReady", instance="gpu-b:7860")
        time.sleep(3)  # group_wait 1 s: anything not inhibited has been delivered by now
        not_ready = [x["labels"]["instance"] for _, _, x in hook.alerts() if x["labels"]["alertname"] == "GlmttsNotReady"]
        assert not_ready == ["gpu-b:7860"], not_ready
    finally:
        am.stop()
        hook.stop()


def _dashboard_queries():
    with open(os.path.join(OPS, "grafana-dashboard.json"), encoding="utf-8") as f:
        dash = json.load(f)
    panels = list(dash["panels"])
    for p in list(panels):
        panels.extend(p.get("panels", []))
    out = [(p["title"], t["expr"]) for p in panels for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            # label_values(SELECTOR, label): Grafana asks Prometheus for SELECTOR's series
            selector = var["query"]["query"].split("(", 1)[1].rsplit(",", 1)[0]
            out.append(("variable " + var["name"], selector))
    return out


def _grafana_to_promql(expr):
    return expr.replace("$__rate_interval", "30s").replace('=~"$instance"', '=~".*"')


def test_every_dashboard_query_parses_and_returns_series(fleet):
    a, b, hook, am, prom = fleet
    _speak(a, 3)
    _speak(b, 3)
    time.sleep(3)  # a few scrapes after the traffic, so rate() has two samples of it
    queries = _dashboard_queries()
    assert len(queries) >= 20
    empty = []
    for title, expr in queries:
        assert "$" not in _grafana_to_promql(expr), (title, expr)
        result = prom.query(_grafana_to_promql(expr))  # raises on a parse error
        if not result:
            empty.append((title, expr))
        else:
            assert {r["metric"].get("instance") for r in result} <= {a.address, b.address, None}, (title, result)
    assert not empty, "dashboard queries without a series from the real scrape: %s" % empty
