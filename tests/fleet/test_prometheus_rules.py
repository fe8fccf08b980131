"""ops/prometheus/ checked by the real tools: promtool (rule syntax, the shipped unit tests
pass, a wrong expectation fails), amtool (the Alertmanager example is valid and routes
critical to the pager, warning to chat), and the properties an on-call engineer relies on:
every alert has a severity, a summary, a description and a runbook_url that opens an
existing runbook (the one that handles its signature), and every watchdog signature is
covered by an alert or by a documented exception."""

import glob
import os
import re
import shutil
import subprocess

import pytest
import yaml

from glmtts.watchdog import runbook, signatures
from tests.support.fleet import tool
from tests.support.prom import OPS, RULE_FILES
from tests.support.service import REPO

RUNBOOKS = os.path.join(REPO, "runbooks")
# The shipped base (https://github.com/YOUR-ORG/glmtts/blob/main/) is a placeholder users
# replace (ops/prometheus/README.md); any base works as long as every alert uses the same one.
RUNBOOK_URL = re.compile(r"^(https://\S+/)runbooks/([a-z0-9-]+\.md|README\.md)(?:#([a-z0-9-]+))?$")
SEVERITIES = {"critical": "pager", "warning": "chat"}


def _run(argv, cwd=OPS):
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120)


def _alert_rules():
    with open(os.path.join(OPS, "alert-rules.yml"), encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def _slug(heading):
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path):
    with open(path, encoding="utf-8") as f:
        return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+)$", f.read(), re.M)}


# -- promtool ---------------------------------------------------------------------------

def test_promtool_checks_rules_and_the_example_config():
    promtool = tool("promtool")
    r = _run([promtool, "check", "rules"] + list(RULE_FILES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("SUCCESS") == len(RULE_FILES)
    r = _run([promtool, "check", "config", "prometheus.yml"])
    assert r.returncode == 0, r.stdout + r.stderr


def test_shipped_unit_tests_pass_and_cover_every_alert():
    files = sorted(os.path.basename(p) for p in glob.glob(os.path.join(OPS, "tests", "*.yml")))
    assert files, "no promtool test files in ops/prometheus/tests/"
    r = _run([tool("promtool"), "test", "rules"] + files, cwd=os.path.join(OPS, "tests"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("SUCCESS") == len(files), r.stdout
    fired = set()
    for name in files:
        with open(os.path.join(OPS, "tests", name), encoding="utf-8") as f:
            for t in yaml.safe_load(f)["tests"]:
                fired |= {a["alertname"] for a in t.get("alert_rule_test", []) if a.get("exp_alerts")}
    assert {r["alert"] for r in _alert_rules()} <= fired, "alerts without a test that makes them fire: %s" % (
        sorted({r["alert"] for r in _alert_rules()} - fired))


def _mutations():
    """(what, test file, edit of its YAML): each must make promtool fail."""

    def wrong_severity(doc):
        alert = doc["tests"][0]["alert_rule_test"][-1]["exp_alerts"][0]
        alert["exp_labels"]["severity"] = "warning"    # InstanceDown pages: critical

    def healthy_instance_fires(doc):
        exp = doc["tests"][0]["alert_rule_test"][-1]["exp_alerts"]
        other = dict(exp[0], exp_labels=dict(exp[0]["exp_labels"], instance="gpu-b:7860"))
        exp.append(other)                               # gpu-b stays up: no alert for it

    def wrong_runbook(doc):
        alert = doc["tests"][0]["alert_rule_test"][0]["exp_alerts"][0]
        alert["exp_annotations"]["runbook_url"] = alert["exp_annotations"]["runbook_url"].replace("cuda-oom", "cuda-fatal")

    def fires_too_early(doc):
        doc["tests"][0]["alert_rule_test"][0]["exp_alerts"] = doc["tests"][0]["alert_rule_test"][1]["exp_alerts"]

    return [("wrong severity", "availability.yml", wrong_severity),
            ("healthy instance fires", "availability.yml", healthy_instance_fires),
            ("wrong runbook", "gpu.yml", wrong_runbook),
            ("fires before its for: has passed", "availability.yml", fires_too_early)]


@pytest.mark.parametrize("what,name,edit", _mutations(), ids=[m[0] for m in _mutations()])
def test_a_wrong_expectation_makes_promtool_fail(tmp_path, what, name, edit):
    for f in RULE_FILES:
        shutil.copy(os.path.join(OPS, f), tmp_path / f)
    with open(os.path.join(OPS, "tests", name), encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    doc["rule_files"] = list(RULE_FILES)
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "good.yml").write_text(yaml.safe_dump(dict(doc, rule_files=["../" + f for f in RULE_FILES])))
    edit(doc)
    (tests / "wrong.yml").write_text(yaml.safe_dump(dict(doc, rule_files=["../" + f for f in RULE_FILES])))
    promtool = tool("promtool")
    good = _run([promtool, "test", "rules", "good.yml"], cwd=str(tests))
    assert good.returncode == 0, "the unmodified copy must pass: " + good.stdout + good.stderr
    wrong = _run([promtool, "test", "rules", "wrong.yml"], cwd=str(tests))
    assert wrong.returncode != 0, "promtool accepted a wrong expectation (%s):\n%s" % (what, wrong.stdout)
    assert "FAILED" in wrong.stdout + wrong.stderr


# -- amtool -----------------------------------------------------------------------------

def test_amtool_checks_the_alertmanager_example():
    r = _run([tool("amtool"), "check-config", "alertmanager.yml"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout and "2 receivers" in r.stdout and "2 inhibit rules" in r.stdout


@pytest.mark.parametrize("severity,receiver", sorted(SEVERITIES.items()))
def test_severity_routes_to_its_receiver(severity, receiver):
    amtool = tool("amtool")
    for other in set(SEVERITIES.values()) - {receiver}:
        r = _run([amtool, "config", "routes", "test", "--config.file=alertmanager.yml", "--verify.receivers=" + other,
                  "severity=" + severity, "alertname=GlmttsInstanceDown"])
        assert r.returncode != 0, "%s also routed to %s" % (severity, other)
    r = _run([amtool, "config", "routes", "test", "--config.file=alertmanager.yml", "--verify.receivers=" + receiver,
              "severity=" + severity, "alertname=GlmttsInstanceDown"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == receiver


def test_every_shipped_alert_reaches_the_receiver_of_its_severity():
    amtool = tool("amtool")
    for rule in _alert_rules():
        labels = ["%s=%s" % kv for kv in sorted(rule["labels"].items())] + ["alertname=" + rule["alert"]]
        r = _run([amtool, "config", "routes", "test", "--config.file=alertmanager.yml"] + labels)
        assert r.stdout.strip() == SEVERITIES[rule["labels"]["severity"]], (rule["alert"], r.stdout)


def test_not_ready_is_inhibited_by_down_on_the_same_instance():
    with open(os.path.join(OPS, "alertmanager.yml"), encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    rules = [(r["source_matchers"], r["target_matchers"], r["equal"]) for r in doc["inhibit_rules"]]
    assert (['alertname="GlmttsInstanceDown"'], ['alertname="GlmttsNotReady"'], ["job", "instance"]) in rules


# -- what a human needs from every alert -------------------------------------------------

def test_every_alert_has_severity_summary_description_and_an_existing_runbook():
    rules = _alert_rules()
    assert len(rules) >= 15
    bases = set()
    for rule in rules:
        name = rule["alert"]
        assert re.match(r"^Glmtts[A-Z][A-Za-z0-9]+$", name), name
        assert rule["labels"].get("severity") in SEVERITIES, name
        ann = rule.get("annotations", {})
        assert set(ann) == {"summary", "description", "runbook_url"}, name
        assert ann["summary"].strip() and len(ann["description"]) > 80, name
        m = RUNBOOK_URL.match(ann["runbook_url"])
        assert m, "%s: runbook_url %r is not BASE/runbooks/<file>.md" % (name, ann["runbook_url"])
        bases.add(m.group(1))
        path = os.path.join(RUNBOOKS, m.group(2))
        assert os.path.isfile(path), "%s: %s does not exist" % (name, path)
        if m.group(3):
            assert m.group(3) in _anchors(path), "%s: no heading #%s in %s" % (name, m.group(3), path)
    assert len(bases) == 1, "one runbook base for every alert, found %s" % sorted(bases)


def test_an_alert_for_a_signature_opens_the_runbook_that_handles_it():
    books = runbook.load_all(RUNBOOKS)
    for rule in _alert_rules():
        sig = rule["labels"].get("signature")
        if sig is None:
            continue
        assert sig in signatures.BY_NAME, "%s: unknown signature %r" % (rule["alert"], sig)
        handler = runbook.for_signature(books, sig)
        assert rule["annotations"]["runbook_url"].endswith("/runbooks/%s.md" % handler.id), rule["alert"]


def test_every_watchdog_signature_is_covered_or_a_documented_exception():
    with open(os.path.join(OPS, "signature-coverage.yml"), encoding="utf-8") as f:
        exceptions = yaml.safe_load(f)["exceptions"]
    alerts = {r["alert"] for r in _alert_rules()}
    covered = {r["labels"]["signature"] for r in _alert_rules() if "signature" in r["labels"]}
    missing = set(signatures.NAMES) - covered - set(exceptions)
    assert not missing, "signatures with neither an alert nor an exception in signature-coverage.yml: %s" % sorted(missing)
    assert not covered & set(exceptions), "listed as exceptions but covered by an alert: %s" % sorted(covered & set(exceptions))
    for sig, why in exceptions.items():
        assert sig in signatures.BY_NAME, "signature-coverage.yml: unknown signature %r" % sig
        assert why["covered_by"] in alerts, "%s: covered_by %r is not an alert" % (sig, why["covered_by"])
        assert len(why["why"]) > 40, sig


# -- names: only what glmtts exports -------------------------------------------------------

NAME = re.compile(r"\b((?:glmtts|process)_[a-z0-9_]+)\b")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def _exported_names(text):
    """Metric names a scrape can carry: each family's TYPE line, histogram series included."""
    names = set()
    for m in re.finditer(r"^# TYPE (\S+) (\S+)$", text, re.M):
        name, kind = m.groups()
        names.add(name)
        if kind == "counter":
            names.add(name + "_total")
        if kind == "histogram":
            names.update(name + s for s in HISTOGRAM_SUFFIXES)
    return names


@pytest.mark.integration
def test_rules_and_dashboard_name_only_metrics_glmtts_exports(service):
    svc = service()
    exported = _exported_names(svc.get("/metrics").text)
    texts = {}
    for f in RULE_FILES:
        with open(os.path.join(OPS, f), encoding="utf-8") as fh:
            doc = yaml.safe_load(fh)
        for r in (r for g in doc["groups"] for r in g["rules"]):
            texts["%s %s" % (f, r.get("alert") or r.get("record"))] = r["expr"]
    with open(os.path.join(OPS, "grafana-dashboard.json"), encoding="utf-8") as fh:
        texts["grafana-dashboard.json"] = fh.read()
    for where, text in texts.items():
        for name in NAME.findall(text):
            assert name in exported, "%s uses %s, which glmtts does not export" % (where, name)
