"""The unit files as systemd itself reads them: `systemd-analyze verify` without a single
warning, and `systemd-analyze security` exposure within the target (offline, on the
installed rendering; the running-unit figure is checked in test_service.py)."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from glmtts import install

ROOT = Path(__file__).resolve().parents[2]
EXPOSURE_TARGET = 2.5

pytestmark = [pytest.mark.system,
              pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """The units exactly as `glmtts-system install` writes them for this deploy tree."""
    d = tmp_path_factory.mktemp("units")
    for unit in install.UNITS:
        (d / unit).write_text(install.render_unit((ROOT / "ops" / unit).read_text(), ROOT))
    return d


def analyze(*args, cwd):
    return subprocess.run(["systemd-analyze", "--no-pager"] + list(args), cwd=cwd,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("unit", ["glmtts.service", "glmtts@0.service", "glmtts@1.service",
                                  "glmtts-watchdog.service", "glmtts-watchdog.timer"])
def test_verify_has_no_warning(rendered, unit):
    if "@" in unit:  # verify instantiates a template from a file named like the instance
        shutil.copy(rendered / "glmtts@.service", rendered / unit)
    proc = analyze("verify", "--man=no", str(rendered / unit), cwd=rendered)
    # verify exits 0 on most warnings ("Unknown key ... ignoring"): any output is a defect
    assert proc.returncode == 0 and proc.stdout.strip() == "" and proc.stderr.strip() == "", proc.stderr


def exposure(output):
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d)", output)
    assert m, output[-2000:]
    return float(m.group(1))


@pytest.mark.parametrize("unit", ["glmtts.service", "glmtts@0.service"])
def test_service_exposure_is_within_target(rendered, unit):
    proc = analyze("security", "--offline=true", unit, cwd=rendered)
    assert exposure(proc.stdout) <= EXPOSURE_TARGET, proc.stdout


def test_watchdog_runs_as_root_but_hardened(rendered):
    proc = analyze("security", "--offline=true", "glmtts-watchdog.service", cwd=rendered)
    # root is needed for restarts and GPU reset; everything else is locked down
    assert exposure(proc.stdout) <= 4.0, proc.stdout


def test_service_never_runs_as_root_and_restarts_sanely():
    text = (ROOT / "ops/glmtts.service").read_text()
    keys = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    assert keys["User"] == "glmtts" and keys["Type"] == "notify" and keys["Restart"] == "always"
    assert keys["RestartPreventExitStatus"].split() == ["78", "4"]  # config error, port held by another
    assert int(keys["StartLimitBurst"]) >= 2 and "WatchdogSec" in keys and "TimeoutStartSec" in keys
    assert "copytruncate" not in re.sub(r"#.*", "", (ROOT / "ops/logrotate.conf").read_text())
