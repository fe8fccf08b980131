"""One stop budget, glmtts.config.stop_grace_s(): every manager shipped here waits that long
after SIGTERM before it kills, so the drain (service/drain.py) is never cut short. The static
files carry the number of the defaults; what is rendered for a host follows its config."""

import io
import os
import re
from pathlib import Path

import pytest

from tests.support.installtree import make_tree, needs_root_tools

from glmtts.cli import system as system_cli
from glmtts import config, install as installer, localrun

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = config.stop_grace_s()


def section(text, name):
    """The body of ``[name]`` in an INI-like file (systemd unit, supervisord conf)."""
    m = re.search(r"(?ms)^\[%s\]\s*$(.*?)(?=^\[|\Z)" % re.escape(name), text)
    assert m, "no [%s] section" % name
    return m.group(1)


def values(body, key):
    return re.findall(r"(?m)^%s\s*=\s*(\S+)\s*$" % re.escape(key), body)


def test_the_default_budget_is_delay_plus_timeout_plus_margin():
    assert DEFAULT == 75 == int(5.0 + 60.0 + config.STOP_MARGIN_S)


@pytest.mark.parametrize("unit", ["glmtts.service", "glmtts@.service"])
def test_units_wait_out_the_drain(unit):
    body = section((ROOT / "ops" / unit).read_text(), "Service")
    assert values(body, "TimeoutStopSec") == [str(DEFAULT)], "TimeoutStopSec must be config.stop_grace_s() = %d" % DEFAULT
    assert values(body, "KillSignal") == ["SIGTERM"]
    # SIGTERM to the main process only (it drains); SIGKILL to the group only at the end
    assert values(body, "KillMode") == ["mixed"]


def test_supervisord_waits_out_the_drain():
    body = section((ROOT / "ops" / "supervisord.conf").read_text(), "program:glmtts")
    assert values(body, "stopwaitsecs") == [str(DEFAULT)]
    assert values(body, "stopsignal") == ["TERM"]
    assert "0" in values(body, "exitcodes")[0].split(","), "a drained stop exits 0: expected, not a crash"


def test_make_run_renders_the_budget_of_its_own_config(tmp_path, monkeypatch):
    for key in [k for k in os.environ if k.startswith("GLMTTS_")]:
        monkeypatch.delenv(key)
    run = tmp_path / "run"
    run.mkdir()
    (run / "glmtts.toml").write_text("[server]\nport = 7951\ndrain_delay_s = 2.5\ndrain_timeout_s = 120\n")
    rundir = localrun.RunDir(str(run), str(ROOT))
    localrun.prepare(rundir, out=io.StringIO())
    conf = (run / "supervisord.conf").read_text()
    assert values(section(conf, "program:glmtts"), "stopwaitsecs") == ["133"]  # ceil(2.5 + 120 + 10)
    assert values(section(conf, "program:glmtts-watchdog"), "stopwaitsecs") == ["60"], "the watchdog keeps its own"


def test_a_fresh_make_run_config_stops_without_the_delay(tmp_path, monkeypatch):
    for key in [k for k in os.environ if k.startswith("GLMTTS_")]:
        monkeypatch.delenv(key)
    rundir = localrun.RunDir(str(tmp_path / "run"), str(ROOT))
    localrun.prepare(rundir, out=io.StringIO())
    settings = rundir.settings(env={})
    assert settings.server.drain_delay_s == 0.0, "no load balancer in front of make run"
    assert values(section((tmp_path / "run" / "supervisord.conf").read_text(), "program:glmtts"),
                  "stopwaitsecs") == [str(config.stop_grace_s(settings))]


def test_set_stop_budget_names_a_template_without_one():
    with pytest.raises(config.ConfigError, match=r"no stopwaitsecs in \[program:glmtts\]"):
        localrun.set_stop_budget("[program:glmtts]\ncommand=x\n[program:other]\nstopwaitsecs=5\n", 75)


def test_render_unit_changes_only_the_stop_budget():
    text = (ROOT / "ops" / "glmtts.service").read_text()
    out = installer.render_unit(text, "/srv/glmtts", 135)
    assert values(section(out, "Service"), "TimeoutStopSec") == ["135"]
    assert out.replace("TimeoutStopSec=135", "TimeoutStopSec=%d" % DEFAULT) == text.replace("/opt/glmtts", "/srv/glmtts")
    assert installer.render_unit(text, "/opt/glmtts") == text




@pytest.fixture
def tree(tmp_path):
    return make_tree(tmp_path)


def install(tree):
    out = io.StringIO()
    rc = system_cli.main(["install", "--root", str(tree), "--deploy-dir", str(ROOT)], out=out)
    assert rc == 0, out.getvalue()
    return out.getvalue()


def unit_budget(tree, unit):
    return values(section((tree / "etc/systemd/system" / unit).read_text(), "Service"), "TimeoutStopSec")


@needs_root_tools
def test_install_writes_the_budget_of_the_hosts_config(tree):
    out = install(tree)  # no config yet: it is created from the example, with the defaults
    assert "stop budget TimeoutStopSec=%d (config.stop_grace_s: server.drain_delay_s 5 + drain_timeout_s 60 + 10)" \
        % DEFAULT in out, out
    assert unit_budget(tree, "glmtts.service") == unit_budget(tree, "glmtts@.service") == [str(DEFAULT)]

    cfg = tree / "etc/glmtts/glmtts.toml"
    text = cfg.read_text()
    assert "\ndrain_timeout_s = 60.0\n" in text  # the example shows every key with its default
    cfg.write_text(text.replace("\ndrain_timeout_s = 60.0\n", "\ndrain_timeout_s = 120\n", 1))
    out = install(tree)
    assert unit_budget(tree, "glmtts.service") == unit_budget(tree, "glmtts@.service") == ["135"], out
    assert "update  %s/etc/systemd/system/glmtts.service" % tree in out or "update  /etc/systemd/system/glmtts.service" in out, out

    # glmtts.env (read by the unit too) wins over the file, as it does for the service
    (tree / "etc/glmtts/glmtts.env").write_text("GLMTTS_SERVER_DRAIN_DELAY_S=20\n")
    install(tree)
    assert unit_budget(tree, "glmtts.service") == ["150"]  # 20 + 120 + 10
    watchdog_unit = (tree / "etc/systemd/system/glmtts-watchdog.service").read_text()
    assert watchdog_unit == installer.render_unit((ROOT / "ops" / "glmtts-watchdog.service").read_text(), ROOT)


@needs_root_tools
def test_install_with_a_broken_config_keeps_the_default_and_says_why(tree):
    install(tree)
    (tree / "etc/glmtts/glmtts.toml").write_text("[server]\ndrain_timeout_s = -1\n")
    out = install(tree)
    assert "stop budget TimeoutStopSec=%d (config.stop_grace_s: defaults (/etc/glmtts/glmtts.toml does not load" % DEFAULT \
        in out, out
    assert unit_budget(tree, "glmtts.service") == [str(DEFAULT)]
