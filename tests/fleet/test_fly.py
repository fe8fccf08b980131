"""ops/fly/fly.toml, checked statically: flyctl cannot run here (no Fly account, no network
to Fly), so this test parses the file with tomllib and holds every number to the value it
is derived from (glmtts.config defaults, stop_grace_s(), the image's Dockerfile) and every
table to the shape Fly's configuration reference gives it. What it cannot prove: that Fly
accepts the file; `fly config validate --config ops/fly/fly.toml` does, with an account."""

import re
import tomllib
from pathlib import Path

import pytest

from glmtts import config

# the checkout: the nearest directory above with setup.cfg (wherever tests/ puts this file)
ROOT = next(p for p in Path(__file__).resolve().parents if (p / "setup.cfg").exists())
FLY = ROOT / "ops" / "fly" / "fly.toml"
DOCKERFILE = ROOT / "ops" / "container" / "Dockerfile"
DEFAULTS = config.load(path="", env={})
SEED_REGIONS = {"hkg", "sin", "nrt", "iad", "ams"}

# Keys Fly's fly.toml reference documents, per table (a typo is otherwise silently ignored
# by nobody but Fly).
TOP_LEVEL = {"app", "primary_region", "kill_signal", "kill_timeout", "swap_size_mb", "console_command", "build",
             "deploy", "env", "http_service", "services", "mounts", "vm", "checks", "processes", "metrics", "statics",
             "files", "experimental", "restart"}
HTTP_SERVICE = {"internal_port", "force_https", "auto_stop_machines", "auto_start_machines", "min_machines_running",
                "processes", "concurrency", "checks", "http_options", "tls_options"}
CHECK = {"grace_period", "interval", "timeout", "method", "path", "protocol", "tls_server_name", "tls_skip_verify",
         "headers"}
MOUNT = {"source", "destination", "processes", "initial_size", "auto_extend_size_threshold",
         "auto_extend_size_increment", "auto_extend_size_limit"}
VM = {"size", "memory", "cpus", "cpu_kind", "gpu_kind", "host_dedication_id", "processes"}
KILL_SIGNALS = {"SIGINT", "SIGTERM", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGKILL", "SIGSTOP"}
FLY_MAX_KILL_TIMEOUT_S = 300  # "The maximum kill_timeout is 300 seconds"


@pytest.fixture(scope="module")
def fly():
    with open(FLY, "rb") as f:
        return tomllib.load(f)


def seconds(duration):
    """Fly's durations: "10s", "500ms", "5m" (a bare number would be milliseconds)."""
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", duration)
    assert m, "duration %r: write it with a unit (ms, s, m, h)" % duration
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def gigabytes(size):
    m = re.fullmatch(r"(\d+)\s*(gb|GB)", size)
    assert m, "size %r: write it as NNgb" % size
    return int(m.group(1))


def embedded_start_period_s():
    """The HEALTHCHECK start period of the image's embedded variant: the load budget."""
    text = DOCKERFILE.read_text()
    stage = text.split("AS variant-embedded", 1)[1].split("FROM ", 1)[0]
    return seconds(re.search(r"--start-period=(\S+)", stage).group(1))


def test_only_documented_keys(fly):
    assert set(fly) <= TOP_LEVEL, set(fly) - TOP_LEVEL
    assert set(fly["http_service"]) <= HTTP_SERVICE, set(fly["http_service"]) - HTTP_SERVICE
    assert set(fly["http_service"]["concurrency"]) == {"type", "soft_limit", "hard_limit"}
    for check in fly["http_service"]["checks"]:
        assert set(check) <= CHECK, set(check) - CHECK
    for mount in fly["mounts"]:
        assert set(mount) <= MOUNT and {"source", "destination"} <= set(mount), mount
    for vm in fly["vm"]:
        assert set(vm) <= VM, set(vm) - VM
    # tables Fly repeats are arrays of tables ([[...]]), the others plain tables
    assert isinstance(fly["http_service"]["checks"], list) and isinstance(fly["mounts"], list)
    assert isinstance(fly["vm"], list) and isinstance(fly["http_service"]["concurrency"], dict)
    assert all(isinstance(v, str) for v in fly["env"].values()), "Fly's env values are strings"


def test_region_is_one_of_the_seed_plan(fly):
    assert fly["primary_region"] in SEED_REGIONS
    # the comment names the other four, with how to add them
    text = FLY.read_text()
    for region in SEED_REGIONS - {fly["primary_region"]}:
        assert region in text, region
    assert "fly volumes create" in text and "fly scale count" in text


def test_stop_budget_is_the_drain(fly):
    assert fly["kill_signal"] == "SIGTERM" and fly["kill_signal"] in KILL_SIGNALS
    assert fly["kill_timeout"] == config.stop_grace_s() == 75
    assert 1 <= fly["kill_timeout"] <= FLY_MAX_KILL_TIMEOUT_S


def test_proxy_concurrency_is_the_service_limits(fly):
    conc = fly["http_service"]["concurrency"]
    assert conc["type"] == "requests"
    assert conc["soft_limit"] == DEFAULTS.limits.max_concurrency
    assert conc["hard_limit"] == DEFAULTS.limits.max_concurrency + DEFAULTS.limits.max_queue
    assert 0 < conc["soft_limit"] <= conc["hard_limit"]
    # the service is told the same numbers, so neither side drifts alone
    env = config.load(path="", env=dict(fly["env"], GLMTTS_SERVER_API_KEYS="k", GLMTTS_SERVER_HOST="0.0.0.0"))
    assert env.limits.max_concurrency == conc["soft_limit"]
    assert env.limits.max_concurrency + env.limits.max_queue == conc["hard_limit"]


def test_env_is_valid_config_and_carries_no_secret(fly):
    env = fly["env"]
    assert all(k.startswith("GLMTTS_") for k in env), env
    for secret in ("GLMTTS_SERVER_API_KEYS", "GLMTTS_WATCHDOG_API_KEY", "GLMTTS_ALERTS_URLS"):
        assert secret not in env, "%s belongs in `fly secrets set`, not fly.toml" % secret
    assert "GLMTTS_SERVER_ALLOW_PUBLIC_WITHOUT_KEYS" not in env, "Fly serves the internet: keep the keys"
    settings = config.load(path="", env=dict(env, GLMTTS_SERVER_API_KEYS="k", GLMTTS_SERVER_HOST="0.0.0.0"))
    assert settings.engine.name == "espeak", "GPUs are gone from Fly: only the embedded engine runs there"


def test_readiness_check_with_the_load_budget(fly):
    svc = fly["http_service"]
    dockerfile = DOCKERFILE.read_text()
    assert svc["internal_port"] == DEFAULTS.server.port == 7860
    assert "GLMTTS_SERVER_PORT=%d" % svc["internal_port"] in dockerfile and "EXPOSE %d" % svc["internal_port"] in dockerfile
    assert svc["force_https"] is True
    assert svc["auto_stop_machines"] is False and svc["min_machines_running"] >= 1, "never scale to zero"
    (check,) = svc["checks"]
    assert (check["method"], check["path"], check["protocol"]) == ("GET", "/readyz", "http")
    assert seconds(check["grace_period"]) == embedded_start_period_s() == 60
    assert seconds(check["timeout"]) < seconds(check["interval"])


def test_volume_is_the_state_dir(fly):
    (mount,) = fly["mounts"]
    assert mount["destination"] == DEFAULTS.paths.state_dir == "/var/lib/glmtts"
    assert gigabytes(mount["initial_size"]) == 10
    assert re.fullmatch(r"[a-z0-9_]+", mount["source"]), "Fly volume names: lowercase letters, digits, _"
    assert 'VOLUME ["%s"]' % mount["destination"] in DOCKERFILE.read_text()


def test_builds_the_embedded_image_on_cpus(fly):
    dockerfile = (FLY.parent / fly["build"]["dockerfile"]).resolve()
    assert dockerfile == DOCKERFILE.resolve()
    assert fly["build"]["args"] == {"VARIANT": "embedded"}
    assert fly["deploy"]["strategy"] == "rolling", "bluegreen does not work with volumes"
    (vm,) = fly["vm"]
    assert "gpu_kind" not in vm and vm["cpu_kind"] in ("shared", "performance")
    assert vm["cpus"] in (1, 2, 4, 8, 16)
    assert re.fullmatch(r"\d+(mb|gb)", vm["memory"]), vm["memory"]
