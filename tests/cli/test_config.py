"""Configuration: defaults < TOML < env, errors naming the key, generated example."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from glmtts import config
from glmtts.errors import EXIT_CONFIG, ConfigError

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path, text):
    p = tmp_path / "glmtts.toml"
    p.write_text(text)
    return str(p)


def test_defaults_match_design_keys():
    s = config.load(path="", env={})
    assert (s.server.host, s.server.port, s.server.api_keys) == ("127.0.0.1", 7860, [])
    assert (s.engine.name, s.engine.sample_rate, s.engine.seed, s.engine.glmtts_home) == ("espeak", 24000, 42, "")
    assert (s.limits.rate_limit_per_minute, s.limits.max_concurrency, s.limits.max_queue) == (10, 1, 16)
    assert (s.paths.state_dir, s.paths.log_dir, s.paths.prompt_root) == (
        "/var/lib/glmtts", "/var/log/glmtts", "/var/lib/glmtts/prompts")
    assert (s.watchdog.url, s.watchdog.unit, s.watchdog.manager, s.watchdog.interval_s) == (
        "http://127.0.0.1:7860", "glmtts", "auto", 300)
    assert s.alerts.urls == []
    assert all(src == "default" for src in s.sources.values())


def test_file_then_env_precedence_and_sources(tmp_path):
    path = write(tmp_path, '[server]\nport = 7861\n[engine]\nsample_rate = 32000\n')
    s = config.load(path=path, env={"GLMTTS_SERVER_PORT": "7862", "GLMTTS_ALERTS_URLS": "json://a, json://b"})
    assert s.server.port == 7862 and s.sources["server.port"] == "env GLMTTS_SERVER_PORT"
    assert s.engine.sample_rate == 32000 and s.sources["engine.sample_rate"] == path
    assert s.alerts.urls == ["json://a", "json://b"]


def test_glmtts_config_env_selects_file(tmp_path):
    path = write(tmp_path, '[limits]\nmax_queue = 3\n')
    assert config.load(env={"GLMTTS_CONFIG": path}).limits.max_queue == 3


@pytest.mark.parametrize("toml, needle", [
    ('[server]\nprot = 1\n', "unknown key server.prot"),
    ('[srever]\nport = 1\n', "unknown section [srever]"),
    ('[server]\nport = "x"\n', "server.port; allowed: an integer"),
    ('[server]\nport = 70000\n', "server.port; allowed: 1..65535"),
    ('[engine]\nsample_rate = 22050\n', "engine.sample_rate; allowed: 24000 | 32000"),
    ('[engine]\nname = "nope"\n', "engine.name; allowed: 'espeak' | 'glmtts'"),
    ('[watchdog]\nmanager = "runit"\n', "watchdog.manager; allowed: 'systemd' | 'supervisor' | 'auto'"),
    ('[paths]\nstate_dir = "relative"\n', "paths.state_dir; allowed: an absolute path"),
    ('[alerts]\nurls = "json://x"\n', "alerts.urls; allowed: a list of strings"),
    ('[server\n', "not valid TOML"),
    ('[server]\nhost = "0.0.0.0"\n', "server.api_keys is empty"),
    ('[engine]\nname = "glmtts"\n', "engine.glmtts_home"),
])
def test_bad_file_values_name_the_key(tmp_path, toml, needle):
    with pytest.raises(ConfigError) as e:
        config.load(path=write(tmp_path, toml), env={})
    assert needle in str(e.value)


@pytest.mark.parametrize("env, needle", [
    ({"GLMTTS_SERVER_PORT": "abc"}, "GLMTTS_SERVER_PORT: invalid value 'abc' for server.port; allowed: an integer"),
    ({"GLMTTS_SERVER_UI": "maybe"}, "server.ui; allowed: true | false"),
    ({"GLMTTS_SERVER_PROT": "1"}, "unknown setting GLMTTS_SERVER_PROT"),
])
def test_bad_env_values_name_the_variable(env, needle):
    with pytest.raises(ConfigError) as e:
        config.load(path="", env=env)
    assert needle in str(e.value)


def test_missing_explicit_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(env={"GLMTTS_CONFIG": str(tmp_path / "absent.toml")})


def test_public_bind_allowed_with_keys_or_explicit_opt_in(tmp_path):
    s = config.load(path=write(tmp_path, '[server]\nhost = "0.0.0.0"\napi_keys = ["k"]\n'), env={})
    assert s.server.api_keys == ["k"]
    s = config.load(path=write(tmp_path, '[server]\nhost = "::"\nallow_public_without_keys = true\n'), env={})
    assert s.server.host == "::"


def test_example_config_is_generated_from_declarations_and_current():
    """ops/glmtts.toml.example must be exactly what `glmtts config example` prints."""
    assert (ROOT / "ops" / "glmtts.toml.example").read_text() == config.example_toml()


def test_example_config_loads_to_the_defaults(tmp_path):
    s = config.load(path=str(ROOT / "ops" / "glmtts.toml.example"), env={})
    assert s.values == config.load(path="", env={}).values


def run_cli(*args, env=None):
    e = {k: v for k, v in os.environ.items() if not k.startswith("GLMTTS_")}
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "glmtts.cli", *args], capture_output=True, text=True, env=e, timeout=60)


def test_cli_config_show_prints_values_and_origins(tmp_path):
    path = write(tmp_path, '[limits]\nmax_queue = 5\n[server]\napi_keys = ["secret-key"]\n')
    r = run_cli("config", "show", env={"GLMTTS_CONFIG": path, "GLMTTS_SERVER_PORT": "7999"})
    assert r.returncode == 0, r.stderr
    assert "max_queue = 5  # from %s" % path in r.stdout
    assert "port = 7999  # from env GLMTTS_SERVER_PORT" in r.stdout
    assert "secret-key" not in r.stdout and '["****"]' in r.stdout


def test_cli_config_error_is_one_line_exit_78(tmp_path):
    r = run_cli("config", "show", env={"GLMTTS_CONFIG": write(tmp_path, '[server]\nport = 0\n')})
    assert r.returncode == EXIT_CONFIG
    assert r.stderr.count("\n") == 1 and "server.port" in r.stderr and "Traceback" not in r.stderr


def test_cli_engines_lists_registry():
    r = run_cli("engines", env={"GLMTTS_CONFIG": ""})
    assert r.returncode == 0, r.stderr
    assert "* espeak" in r.stdout and "glmtts" in r.stdout


def test_readme_documents_every_setting():
    """docs/configuration.md's table is generated from the declarations: it must be the
    current one (regenerate with `glmtts config table`)."""
    doc = (ROOT / "docs" / "configuration.md").read_text()
    missing = [s.name for s in config.SETTINGS if "| `%s` |" % s.name not in doc]
    assert not missing, "docs/configuration.md lacks settings %s" % missing
    assert config.markdown_table() in doc, "docs/configuration.md's table is not the generated one"
