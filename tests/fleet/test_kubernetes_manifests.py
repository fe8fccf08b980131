"""ops/kubernetes/: what `kubectl kustomize` renders for the base, the GPU overlay and every
region, checked the way a cluster would check it and for the promises the README makes.

- Every core object validates STRICTLY (unknown fields are errors) against the API
  schemas of Kubernetes 1.30 to 1.37 (kubernetes_validate's Python API; its CLI only warns
  on an API version a release removed). The ServiceMonitor is a CRD, so no Kubernetes
  release has its schema: it is checked against SERVICEMONITOR_SCHEMA below, a subset of
  the Prometheus Operator's monitoring.coreos.com/v1 schema written here (the fields we
  use, unknown fields rejected), and against the Service it must select.
- Negative controls: a broken field, a wrong type, a removed API version and a broken
  ServiceMonitor must each fail, so the validation above can fail.
- The pod's config is the mounted ConfigMap plus the container's env, loaded by glmtts's
  own config loader: the grace period, the probes' port and the budgets are checked
  against the settings the pod really gets.
- The integration test runs the real service as the rendered container (its env, its
  mounts, its securityContext: read-only root, non-root user, no privileges) and proves
  that the writable volumes are the only places it writes.
"""

import copy
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from glmtts import config
from tests.support import fleet
from tests.support.kubelet import PodLayout, sandbox_argv
from tests.support.service import REPO, ServiceProcess

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "ops" / "kubernetes"
REGIONS = ("hkg", "sin", "nrt", "iad", "ams")
OVERLAYS = ("base", "gpu") + tuple("regions/" + r for r in REGIONS)
GPU_OVERLAYS = ("gpu",) + tuple("regions/" + r for r in REGIONS)
KUBE_VERSIONS = tuple("1.%d" % minor for minor in range(30, 38))
ADAPTER_RULES = K8S / "prometheus-adapter" / "rules.yaml"
TEST_KEY = "k8s-test-key"
SECRETS = {("glmtts-api-keys", "api-keys"): TEST_KEY, ("glmtts-api-keys", "metrics-key"): TEST_KEY}

# The documented numbers (deployment.yaml comments, README): startup budget =
# failureThreshold x periodSeconds.
STARTUP_BUDGET_S = {"base": 60, "gpu": 600}

# A subset of the Prometheus Operator's ServiceMonitor schema (monitoring.coreos.com/v1):
# the fields these manifests use or could plausibly use, with their types; anything else
# is rejected, like the strict Kubernetes schemas.
_SECRET_KEY = {"type": "object", "additionalProperties": False, "required": ["key"],
               "properties": {"name": {"type": "string"}, "key": {"type": "string"},
                              "optional": {"type": "boolean"}}}
_DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?"
                                          r"(([0-9]+)s)?(([0-9]+)ms)?)$"}
_LABEL_SELECTOR = {"type": "object", "additionalProperties": False,
                   "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
                                  "matchExpressions": {"type": "array"}}}
SERVICEMONITOR_SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"],
                     "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
                                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                                    "annotations": {"type": "object"}}},
        "spec": {
            "type": "object", "additionalProperties": False, "required": ["selector", "endpoints"],
            "properties": {
                "selector": _LABEL_SELECTOR,
                "namespaceSelector": {"type": "object"},
                "jobLabel": {"type": "string"},
                "targetLabels": {"type": "array", "items": {"type": "string"}},
                "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                "sampleLimit": {"type": "integer"},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False,
                    "properties": {
                        "port": {"type": "string"}, "targetPort": {},
                        "path": {"type": "string", "pattern": "^/"},
                        "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                        "interval": _DURATION, "scrapeTimeout": _DURATION,
                        "honorLabels": {"type": "boolean"},
                        "authorization": {"type": "object", "additionalProperties": False,
                                          "properties": {"type": {"type": "string"}, "credentials": _SECRET_KEY}},
                        "bearerTokenSecret": _SECRET_KEY,
                        "tlsConfig": {"type": "object"},
                        "relabelings": {"type": "array"}, "metricRelabelings": {"type": "array"},
                    }}},
            }},
    },
}
CRD_SCHEMAS = {("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICEMONITOR_SCHEMA}


@functools.lru_cache(maxsize=None)
def _render(overlay, kubectl):
    out = subprocess.run([kubectl, "kustomize", str(K8S / overlay)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, "kubectl kustomize %s failed:\n%s" % (overlay, out.stderr)
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def render(overlay):
    return copy.deepcopy(list(_render(overlay, fleet.tool("kubectl"))))


def one(docs, kind, name=None):
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, "expected one %s%s, found %d" % (kind, " " + name if name else "", len(found))
    return found[0]


def pod_of(docs):
    return one(docs, "Deployment")["spec"]["template"]["spec"]


def container_of(docs):
    containers = pod_of(docs)["containers"]
    assert [c["name"] for c in containers] == ["glmtts"], "one container, named glmtts"
    return containers[0]


def effective_settings(docs, tmp_path):
    """The settings the pod's service gets: the mounted ConfigMap's glmtts.toml plus the
    container env, through glmtts's own loader (unknown keys and bad values fail here)."""
    layout = PodLayout(tmp_path / "pod", one(docs, "Deployment"), [d for d in docs if d["kind"] == "ConfigMap"])
    _, settings = layout.service_env(SECRETS, lambda path, env: config.load(path, env=env))
    return layout, settings


def validate_core(doc, version):
    """kubernetes_validate, strictly; returns None or the error text."""
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        return "%s/%s against %s: %s: %s" % (doc["kind"], doc["metadata"].get("name"), version,
                                              ".".join(str(p) for p in e.path), e.message)
    return None


def validate_crd(doc):
    schema = CRD_SCHEMAS[(doc["apiVersion"], doc["kind"])]
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(doc), key=str)
    return ["%s/%s: %s: %s" % (doc["kind"], doc["metadata"]["name"], ".".join(map(str, e.path)), e.message)
            for e in errors]


# -- rendering and schemas ----------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_renders_and_every_object_validates_strictly_for_kubernetes_1_30_to_1_37(overlay):
    docs = render(overlay)
    kinds = sorted(d["kind"] for d in docs)
    for kind in ("ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Ingress", "Namespace", "NetworkPolicy",
                 "PersistentVolumeClaim", "PodDisruptionBudget", "Service", "ServiceMonitor"):
        assert kind in kinds, "%s renders no %s" % (overlay, kind)
    errors, crds = [], []
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRD_SCHEMAS:
            crds.append(doc)
            errors += validate_crd(doc)
            continue
        for version in KUBE_VERSIONS:
            try:
                error = validate_core(doc, version)
            except kubernetes_validate.SchemaNotFoundError as e:
                error = "%s (removed, misspelt or a CRD without a schema here)" % e.message
            if error:
                errors.append(error)
    assert not errors, "\n".join(errors)
    assert [d["kind"] for d in crds] == ["ServiceMonitor"]


BROKEN = {
    "a misspelt field": (lambda d: d["spec"]["template"]["spec"]["containers"][0]["securityContext"]
                         .update(readOnlyRootFilesytem=True), "Deployment"),
    "a wrong type": (lambda d: d["spec"]["template"]["spec"].update(terminationGracePeriodSeconds="80"), "Deployment"),
    "a field at the wrong level": (lambda d: d["spec"].update(minReadySecond=0), "Deployment"),
    "a probe with an unknown handler field": (lambda d: d["spec"]["template"]["spec"]["containers"][0]
                                              ["startupProbe"]["httpGet"].update(url="/readyz"), "Deployment"),
    "an API version removed in 1.26": (lambda d: d.update(apiVersion="autoscaling/v2beta2"),
                                       "HorizontalPodAutoscaler"),
}


@pytest.mark.parametrize("what", sorted(BROKEN))
def test_negative_control_a_broken_manifest_fails_validation_on_every_version(what):
    mutate, kind = BROKEN[what]
    doc = one(render("gpu"), kind)
    for version in KUBE_VERSIONS:
        assert validate_core(doc, version) is None, "the unbroken %s must pass" % kind
    mutate(doc)
    for version in KUBE_VERSIONS:
        try:
            error = validate_core(doc, version)
        except kubernetes_validate.SchemaNotFoundError:
            error = "no schema for %s %s in %s" % (doc["apiVersion"], kind, version)
        assert error, "%s in the %s passed validation for %s" % (what, kind, version)


def test_negative_control_a_broken_servicemonitor_fails_our_schema():
    sm = one(render("base"), "ServiceMonitor")
    assert validate_crd(sm) == []
    bad = copy.deepcopy(sm)
    bad["spec"]["endpoints"][0]["intervall"] = "15s"
    assert any("intervall" in e for e in validate_crd(bad))
    bad = copy.deepcopy(sm)
    bad["spec"]["endpoints"][0]["interval"] = "15 seconds"
    assert validate_crd(bad)
    bad = copy.deepcopy(sm)
    del bad["spec"]["selector"]
    assert validate_crd(bad)


# -- the pod's configuration --------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_pod_loads_the_mounted_configmap_with_the_expected_engine(overlay, tmp_path):
    docs = render(overlay)
    container = container_of(docs)
    env = {e["name"]: e for e in container["env"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert env["GLMTTS_CONFIG"]["value"] == "/etc/glmtts/glmtts.toml"
    assert mounts["/etc/glmtts"]["name"] == "config"
    assert env["GLMTTS_SERVER_API_KEYS"]["valueFrom"]["secretKeyRef"] == {"name": "glmtts-api-keys",
                                                                           "key": "api-keys"}
    layout, settings = effective_settings(docs, tmp_path)
    assert settings.server.host == "0.0.0.0" and settings.server.api_keys == [TEST_KEY]
    assert settings.server.ui is False
    if overlay == "base":
        assert settings.engine.name == "espeak"
    else:
        assert settings.engine.name == "glmtts"
        home_mount = [m for m in layout.mounts if layout.host_path(settings.engine.glmtts_home)
                      and settings.engine.glmtts_home.startswith(m[0] + "/")]
        assert home_mount and home_mount[0][2], "engine.glmtts_home must be on a read-only volume"
    # Service links are off: otherwise a Service called glmtts-server, say, would inject
    # GLMTTS_SERVER_SERVICE_HOST, which the config loader rejects (exit 78).
    assert pod_of(docs)["enableServiceLinks"] is False
    with pytest.raises(config.ConfigError, match="GLMTTS_SERVER_SERVICE_HOST"):
        config.load("", env={"GLMTTS_SERVER_SERVICE_HOST": "10.0.0.1"})


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_period_is_the_pre_stop_sleep_plus_the_drain_budget(overlay, tmp_path):
    docs = render(overlay)
    pod, container = pod_of(docs), container_of(docs)
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    _, settings = effective_settings(docs, tmp_path)
    assert pod["terminationGracePeriodSeconds"] == pre_stop + config.stop_grace_s() == 80
    assert pod["terminationGracePeriodSeconds"] == pre_stop + config.stop_grace_s(settings)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_hit_readyz_and_livez_on_the_port_the_service_listens_on(overlay, tmp_path):
    docs = render(overlay)
    container = container_of(docs)
    _, settings = effective_settings(docs, tmp_path)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for key, path in (("startupProbe", "/readyz"), ("readinessProbe", "/readyz"), ("livenessProbe", "/livez")):
        probe = container[key]
        assert probe["httpGet"]["path"] == path, key
        port = probe["httpGet"]["port"]
        assert ports.get(port, port) == settings.server.port, "%s must probe server.port" % key
        assert probe.get("initialDelaySeconds", 0) == 0, "%s: the startup probe gates, no blind delay" % key
        assert probe.get("successThreshold", 1) == 1
    service = one(docs, "Service")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_startup_budget_liveness_budget_and_rollout_deadline_are_the_documented_numbers(overlay, tmp_path):
    docs = render(overlay)
    container = container_of(docs)
    deployment = one(docs, "Deployment")
    _, settings = effective_settings(docs, tmp_path)
    startup, live = container["startupProbe"], container["livenessProbe"]
    budget = startup["failureThreshold"] * startup["periodSeconds"]
    assert budget == STARTUP_BUDGET_S["base" if overlay == "base" else "gpu"]
    # A real kubelet probes within one period of the start: a load up to (N - 1) x period
    # is always tolerated (the probe-contract test drives this).
    assert (startup["failureThreshold"] - 1) * startup["periodSeconds"] >= 0.9 * budget
    assert settings.limits.worker_stall_s + live["failureThreshold"] * live["periodSeconds"] == 90
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert deployment["spec"]["progressDeadlineSeconds"] > budget + grace
    # A probe timeout above the period would let probes pile into one another.
    for key in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[key]["timeoutSeconds"] <= container[key]["periodSeconds"], key


# -- GPU, strategy, security ----------------------------------------------------------------

@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_gpu_pod_asks_for_exactly_one_gpu_and_its_rollout_never_needs_a_second(overlay):
    docs = render(overlay)
    deployment = one(docs, "Deployment")
    containers = deployment["spec"]["template"]["spec"]["containers"]
    gpus = [c["resources"].get("limits", {}).get("nvidia.com/gpu") for c in containers]
    assert gpus == [1]
    assert containers[0]["resources"].get("requests", {}).get("nvidia.com/gpu", 1) == 1
    strategy = deployment["spec"]["strategy"]
    assert strategy["type"] in ("Recreate", "RollingUpdate")
    if strategy["type"] == "RollingUpdate":
        assert strategy["rollingUpdate"]["maxSurge"] in (0, "0%"), "a surge pod would need a second GPU"
        assert strategy["rollingUpdate"]["maxUnavailable"] == 1
    assert "nvidia.com/gpu.present" in deployment["spec"]["template"]["spec"]["nodeSelector"]
    weights = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "weights"]
    assert weights and weights[0]["persistentVolumeClaim"]["readOnly"] is True
    assert one(docs, "PersistentVolumeClaim", "glmtts-weights")["spec"]["accessModes"] == ["ReadOnlyMany"]


def test_base_runs_the_embedded_engine_without_a_gpu():
    docs = render("base")
    text = yaml.safe_dump_all(docs)
    assert "nvidia.com/gpu" not in text
    strategy = one(docs, "Deployment")["spec"]["strategy"]
    assert strategy["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_security_context_and_every_written_path_is_a_mounted_writable_volume(overlay, tmp_path):
    docs = render(overlay)
    pod, container = pod_of(docs), container_of(docs)
    psc, sc = pod["securityContext"], container["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0 and psc["runAsGroup"] != 0
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert pod["automountServiceAccountToken"] is False
    layout, settings = effective_settings(docs, tmp_path)
    env = {e["name"]: e.get("value") for e in container["env"]}
    written = {"paths.state_dir": settings.paths.state_dir, "paths.output_dir": settings.paths.output_dir,
               "HOME": env["HOME"], "XDG_CACHE_HOME": env["XDG_CACHE_HOME"]}
    writable = [m for m in layout.mounts if not m[2]]
    for what, path in written.items():
        under = [m for m in writable if path == m[0] or path.startswith(m[0] + "/")]
        assert under, "%s = %s is not on a writable volume (readOnlyRootFilesystem)" % (what, path)
    # ... and nothing else is writable: no /tmp, no stray emptyDir.
    assert [m[0] for m in writable] == ["/var/lib/glmtts"]
    assert not any(m[0] in ("/tmp", "/var/tmp") for m in layout.mounts)
    ns = one(docs, "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# -- regions ------------------------------------------------------------------------------

# What a region may change, as paths into the rendered objects ("*" = any list item).
ALLOWED = (
    ("*", "metadata.namespace"),
    ("*", "metadata.labels.glmtts.io/region"),
    ("*", "spec.template.metadata.labels.glmtts.io/region"),
    ("Namespace", "metadata.name"),
    ("PersistentVolumeClaim", "spec.storageClassName"),
    ("Deployment", "spec.template.spec.nodeSelector.nvidia.com/gpu.product"),
    ("HorizontalPodAutoscaler", "spec.minReplicas"),
    ("HorizontalPodAutoscaler", "spec.maxReplicas"),
    ("Ingress", "spec.rules.1.host"),
    ("Ingress", "spec.tls.0.hosts.1"),
)


def flatten(value, prefix=""):
    """{dotted path: leaf}; label keys stay whole (they contain dots and slashes)."""
    out = {}
    if isinstance(value, dict):
        for k, v in value.items():
            out.update(flatten(v, "%s%s." % (prefix, k)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.update(flatten(v, "%s%d." % (prefix, i)))
    else:
        out[prefix[:-1]] = value
    return out


def region_view(region):
    docs = render("regions/" + region)
    return {(d["kind"], d["metadata"]["name"] if d["kind"] != "Namespace" else "-"): flatten(d) for d in docs}


def allowed(kind, path):
    return any(k in ("*", kind) and path == p for k, p in ALLOWED)


def test_regions_differ_only_in_what_a_region_must_change():
    views = {r: region_view(r) for r in REGIONS}
    reference = views[REGIONS[0]]
    changed = set()
    for region, view in views.items():
        assert sorted(view) == sorted(reference), "%s renders other objects than %s" % (region, REGIONS[0])
        for obj, fields in view.items():
            ref = reference[obj]
            for path in set(fields) | set(ref):
                if fields.get(path) != ref.get(path):
                    assert allowed(obj[0], path), "%s differs from %s in %s %s: %r vs %r" % (
                        region, REGIONS[0], obj[0], path, fields.get(path), ref.get(path))
                    changed.add((obj[0], path))
    # Each region sets its own values (a region that forgot one would inherit the base).
    for region, view in views.items():
        assert view[("Namespace", "-")]["metadata.name"] == "glmtts-" + region
        assert view[("Ingress", "glmtts")]["spec.rules.1.host"] == region + ".tts.example.com"
        assert view[("Ingress", "glmtts")]["spec.rules.0.host"] == "tts.example.com"
        assert "spec.template.spec.nodeSelector.nvidia.com/gpu.product" in view[("Deployment", "glmtts")]
        for pvc in ("glmtts-state", "glmtts-weights"):
            assert view[("PersistentVolumeClaim", pvc)].get("spec.storageClassName"), (region, pvc)
    assert ("Deployment", "spec.template.spec.nodeSelector.nvidia.com/gpu.product") in changed
    assert ("PersistentVolumeClaim", "spec.storageClassName") in changed


def test_negative_control_a_region_with_another_probe_is_caught(tmp_path):
    # The same comparison on a copy of a region that also changed a probe must fail.
    work = tmp_path / "k8s"
    shutil.copytree(K8S, work)
    kz = work / "regions" / "sin" / "kustomization.yaml"
    kz.write_text(kz.read_text() + probe_patch())
    kubectl = fleet.tool("kubectl")
    out = subprocess.run([kubectl, "kustomize", str(work / "regions" / "sin")], capture_output=True, text=True,
                         timeout=120, check=True)
    sin = {(d["kind"], d["metadata"]["name"] if d["kind"] != "Namespace" else "-"): flatten(d)
           for d in yaml.safe_load_all(out.stdout) if d}
    hkg = region_view("hkg")
    diffs = [(obj[0], p) for obj, fields in sin.items() for p in set(fields) | set(hkg[obj])
             if fields.get(p) != hkg[obj].get(p) and not allowed(obj[0], p)]
    assert ("Deployment", "spec.template.spec.containers.0.livenessProbe.failureThreshold") in diffs


def probe_patch():
    return ("  - target:\n      kind: Deployment\n    patch: |-\n"
            "      - op: replace\n        path: /spec/template/spec/containers/0/livenessProbe/failureThreshold\n"
            "        value: 9\n")


# -- autoscaling, monitoring, network ---------------------------------------------------------

def exported_metric_names():
    from service.metrics import Metrics
    return {m.name for m in Metrics().registry.collect()}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_hpa_scales_on_the_exported_queue_depth_through_the_adapter_rule_and_never_to_zero(overlay):
    docs = render(overlay)
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "glmtts"}
    assert hpa["spec"]["minReplicas"] >= 1, "no scale to zero: a model load takes minutes"
    assert hpa["spec"]["maxReplicas"] >= hpa["spec"]["minReplicas"]
    assert "replicas" not in one(docs, "Deployment")["spec"], "the HPA owns the replica count"
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]
    rules = yaml.safe_load(ADAPTER_RULES.read_text())["rules"]
    served = {r["name"]["as"]: r for r in rules}
    assert name in served, "the HPA's metric %s is not served by %s" % (name, ADAPTER_RULES)
    series = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)", served[name]["seriesQuery"]).group(1)
    assert series in exported_metric_names(), "%s is not a metric glmtts exports (service/metrics.py)" % series
    assert served[name]["resources"]["overrides"]["pod"] == {"resource": "pod"}
    # Scale down slowly: a pod that took minutes to load is not dropped for a lull.
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 600


def test_adapter_metrics_query_is_valid_promql(tmp_path):
    promtool = fleet.tool("promtool")
    rules = yaml.safe_load(ADAPTER_RULES.read_text())["rules"]

    def check(expr):
        f = tmp_path / "q.yaml"
        f.write_text(yaml.safe_dump({"groups": [{"name": "adapter", "rules": [{"record": "adapter:check",
                                                                                 "expr": expr}]}]}))
        return subprocess.run([promtool, "check", "rules", str(f)], capture_output=True, text=True, timeout=60)

    for rule in rules:
        # The adapter's template with what it puts in for a Pods metric of one namespace.
        expr = (rule["metricsQuery"].replace("<<.Series>>", "glmtts_queue_depth")
                .replace("<<.LabelMatchers>>", 'namespace="glmtts-hkg",pod=~"glmtts-.*"')
                .replace("<<.GroupBy>>", "pod"))
        out = check(expr)
        assert out.returncode == 0, out.stdout + out.stderr
        series = check(rule["seriesQuery"])
        assert series.returncode == 0, series.stdout + series.stderr
    broken = check("sum(avg_over_time(glmtts_queue_depth{pod!=\"\"}[2m]) by (pod)")  # negative control
    assert broken.returncode != 0


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_servicemonitor_pdb_and_networkpolicy_select_the_pods_and_their_port(overlay):
    docs = render(overlay)
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    service = one(docs, "Service")

    def selects(selector, labels):
        return all(labels.get(k) == v for k, v in selector.items())

    assert selects(service["spec"]["selector"], pod_labels)
    assert selects(one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], pod_labels)
    assert one(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    sm = one(docs, "ServiceMonitor")
    assert selects(sm["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert {e["port"] for e in sm["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
    assert [e["path"] for e in sm["spec"]["endpoints"]] == ["/metrics"]
    netpol = one(docs, "NetworkPolicy")
    assert selects(netpol["spec"]["podSelector"]["matchLabels"], pod_labels)
    assert netpol["spec"]["policyTypes"] == ["Ingress", "Egress"] and netpol["spec"]["egress"] == []
    [rule] = netpol["spec"]["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    sources = {s["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for s in rule["from"]}
    assert sources == {"ingress-nginx", "monitoring"}
    ingress = one(docs, "Ingress")
    for r in ingress["spec"]["rules"]:
        assert r["http"]["paths"][0]["backend"]["service"] == {"name": "glmtts", "port": {"name": "http"}}
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod_of(docs)["volumes"]
              if "persistentVolumeClaim" in v}
    assert claims == {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    assert one(docs, "PersistentVolumeClaim", "glmtts-state")["spec"]["accessModes"] == ["ReadWriteMany"]


# -- the real service as the rendered container ----------------------------------------------

class ContainerService(ServiceProcess):
    """A ServiceProcess started through sandbox_argv: the rendered container's mounts
    and securityContext applied to the real `python -m service`."""

    def __init__(self, tmp_path, env, layout, **kw):
        super().__init__(tmp_path, env, **kw)
        self.layout = layout

    def start(self, wait=True, timeout=90):
        argv = sandbox_argv([sys.executable, "-m", "service"], self.layout)
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(argv, cwd=REPO, env=self.env, stdout=out, stderr=err,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        if wait:
            self.wait_healthy(timeout=timeout)
        return self


@pytest.fixture
def pod_root():
    # Not under pytest's tmp dir: that one is 0700 and the pod's user (runAsUser) must
    # reach its volumes, as it reaches a volume's mount point in a real pod.
    root = tempfile.mkdtemp(prefix="glmtts-pod-")
    os.chmod(root, 0o755)
    yield Path(root)
    shutil.rmtree(root, ignore_errors=True)


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


FIXTURE_CHECKOUT = ROOT / "tests" / "fixtures" / "glmtts_checkout"
WETEXT_SITE = ROOT / "tests" / "fixtures" / "wetext_site"


def start_as_rendered(overlay, pod_root, tmp_path):
    """The real service started as the overlay's container: env, mounts (the gpu overlay's
    weights volume holds the stand-in GLM-TTS checkout of tests/fixtures, mounted
    read-only), read-only root, the pod's user, no privileges. Returns (svc, settings, layout)."""
    fleet.require_root("a read-only root file system (a private mount namespace)")
    for program in ("unshare", "setpriv"):
        fleet.tool(program)
    docs = render(overlay)
    sources = None
    extra_env = {}
    if overlay != "base":
        weights = pod_root / "weights-source"
        shutil.copytree(FIXTURE_CHECKOUT, weights / "GLM-TTS", ignore=shutil.ignore_patterns("__pycache__"))
        sources = {"weights": str(weights)}
        # The stand-in for WeTextProcessing's installed package: part of "the image", so
        # read-only like the rest of the root (the adapter keeps its FSTs in state_dir).
        site = pod_root / "image-site"
        shutil.copytree(WETEXT_SITE, site, ignore=shutil.ignore_patterns("__pycache__"))
        extra_env["PYTHONPATH"] = os.pathsep.join([REPO, str(site)])
        for d, dirs, files in os.walk(pod_root):
            for name in dirs + files:
                os.chmod(os.path.join(d, name), os.stat(os.path.join(d, name)).st_mode | 0o055)
    layout = PodLayout(pod_root, one(docs, "Deployment"), [d for d in docs if d["kind"] == "ConfigMap"],
                       sources=sources)
    env, settings = layout.service_env(SECRETS, lambda path, e: config.load(path, env=e))
    env.update(extra_env)
    prompts = layout.host_path(settings.paths.prompt_root)
    os.makedirs(prompts, exist_ok=True)
    from tests.support.batch import reference_wav
    with open(os.path.join(prompts, "voice.wav"), "wb") as f:
        f.write(reference_wav())
    svc = ContainerService(tmp_path, env, layout, engine=settings.engine.name)
    return svc, settings, layout, docs


@pytest.mark.integration
def test_negative_control_the_sandbox_is_read_only_outside_the_volumes(pod_root, tmp_path):
    svc, settings, layout, docs = start_as_rendered("base", pod_root, tmp_path)
    state = layout.host_path(settings.paths.state_dir)
    probe = subprocess.run(sandbox_argv(["sh", "-c", "touch %s/x; echo $?; touch /etc/glmtts-x; echo $?; id -u; "
                                         "touch %s/ok && echo wrote" % (pod_root, state)], layout),
                           capture_output=True, text=True, timeout=30)
    assert probe.returncode == 0, probe.stderr
    outside, etc, uid, wrote = probe.stdout.split()
    assert outside != "0" and etc != "0" and "Read-only file system" in probe.stderr
    assert uid == str(pod_of(docs)["securityContext"]["runAsUser"]) and wrote == "wrote"
    config_dir = layout.host_path("/etc/glmtts")
    probe = subprocess.run(sandbox_argv(["sh", "-c", "touch %s/x" % config_dir], layout), capture_output=True,
                           text=True, timeout=30)
    assert probe.returncode != 0, "the ConfigMap volume must be read-only"


@pytest.mark.integration
@pytest.mark.parametrize("overlay", ["base", "gpu"])
def test_the_service_as_rendered_writes_only_to_its_writable_volume(overlay, pod_root, tmp_path):
    from tests.support.batch import PROMPT_TEXT, reference_wav

    svc, settings, layout, docs = start_as_rendered(overlay, pod_root, tmp_path)
    before = _files(pod_root / "volumes")
    auth = {"Authorization": "Bearer " + TEST_KEY}
    try:
        svc.start(timeout=180)
        assert svc.get("/healthz").json()["engine"]["name"].startswith(
            "espeak" if overlay == "base" else "glmtts"), svc.get("/healthz").text
        r = svc.post("/v1/audio/speech", json={"input": "你好，世界。", "response_format": "wav"}, headers=auth)
        assert r.status_code == 200 and r.content[:4] == b"RIFF", r.text[:300]
        r = svc.post("/v1/voices", files={"prompt_audio": ("v.wav", reference_wav(), "audio/wav")},
                     data={"prompt_text": PROMPT_TEXT, "name": "calm"}, headers=auth)
        assert r.status_code == 201, r.text
        voice = r.json()["id"]
        r = svc.post("/v1/audio/speech", json={"input": "Saved voice.", "voice": voice}, headers=auth)
        assert r.status_code == 200, r.text[:300]
        task = '{"prompt_audio": "voice.wav", "prompt_text": "%s", "input_text": "Clip.", "output_name": "c1"}'
        r = svc.post("/v1/batches", data=(task % PROMPT_TEXT).encode(), headers=auth)
        assert r.status_code == 201, r.text
        job = r.json()["id"]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status = svc.get("/v1/batches/" + job, headers=auth).json()["status"]
            if status in ("done", "cancelled", "failed"):
                break
            time.sleep(0.2)
        assert status == "done", status
        assert svc.get("/metrics", headers=auth).status_code == 200
        assert svc.stop(timeout=90) == 0
    finally:
        svc.stop()
    errors = svc.stderr()
    assert "Read-only file system" not in errors and "Permission denied" not in errors, errors[-3000:]
    written = sorted(set(_files(pod_root / "volumes")) - set(before))
    assert written and all(p.startswith("state/") for p in written), written
    assert any(p.startswith("state/voices/") for p in written) and any(p.startswith("state/outputs/")
                                                                       for p in written), written
    # HOME and XDG_CACHE_HOME point at the volume as a safety net; nothing used them.
    assert not [p for p in written if p.startswith("state/.cache/")], written
    print("\n[k8s] %s: files the service wrote, all on its state volume: %s" % (overlay, ", ".join(written)))
