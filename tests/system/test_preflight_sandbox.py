"""The preflight under the real (private) systemd, the way the unit runs: `glmtts-system
install` and `glmtts engines check` load the engine through systemd-run with the
installed glmtts.service's own user, sandbox and environment, and say in one line
whether it spoke. An engine that writes into its own package directory (WeTextProcessing
does, into site-packages/tn/) passes outside the sandbox and fails inside it, naming the
read-only path -- before `systemctl start`, not as a crash loop."""

import pytest

from conftest import ROOT

pytestmark = [pytest.mark.system, pytest.mark.timeout(600)]

WRITER = "tests.plugins.preflight_engines:PackageWriterEngine"
PACKAGE_DIR = ROOT / "tests" / "plugins"
FST = PACKAGE_DIR / "zh_tn_tagger.fst"  # preflight_engines.FST_FILE
SANDBOX = "glmtts.service's sandbox: user glmtts, ProtectSystem=strict"


def glmtts(d, *args):
    # PYTHONPATH: the in-process check imports the plug-in from the deploy tree, as the
    # unit does through WorkingDirectory= (a console script does not put the cwd on sys.path)
    return d.sd.run(["env", "PYTHONPATH=%s" % ROOT, str(ROOT / ".venv/bin/glmtts")] + list(args), check=False, timeout=300)


def engine_config(d, name, engine):
    path = "/etc/glmtts/%s" % name
    d.write(path, '[server]\nui = false\n\n[engine]\nname = "%s"\n' % engine, 0o640)
    d.sd.run(["chgrp", "glmtts", path])
    return path


def one_line(proc):
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, (proc.returncode, proc.stdout, proc.stderr)
    return lines[0]


@pytest.fixture
def no_fst():
    """The file the plug-in writes when it can (outside the sandbox), removed before and after."""
    FST.unlink(missing_ok=True)
    yield FST
    FST.unlink(missing_ok=True)


def test_install_ran_the_preflight_in_the_units_sandbox(deployed):
    out = deployed.install_output
    steps = [line for line in out.splitlines() if "preflight" in line]
    assert steps[0].startswith("run     preflight: load the configured engine and synthesize once in %s" % SANDBOX), out
    assert steps[1].startswith("ok      preflight ok (%s): engine espeak loaded in " % SANDBOX), out
    # before the timer is enabled: a failed preflight leaves nothing started
    assert out.index(steps[1]) < out.index("systemctl enable glmtts-watchdog.timer")


def test_espeak_passes_the_sandboxed_check_and_leaves_no_unit_behind(deployed):
    cfg = engine_config(deployed, "preflight-espeak.toml", "espeak")
    proc = glmtts(deployed, "--config", cfg, "engines", "check")
    line = one_line(proc)
    assert proc.returncode == 0 and line.startswith("preflight ok (%s): engine espeak loaded in " % SANDBOX), line
    assert "s of audio at 24000 Hz" in line
    left = deployed.sd.systemctl("list-units", "--all", "--plain", "--no-legend", "glmtts-preflight-*").stdout
    assert left.strip() == ""  # --collect: even a failed one is garbage-collected


def test_engine_writing_into_its_package_fails_only_inside_the_sandbox(deployed, no_fst):
    cfg = engine_config(deployed, "preflight-writer.toml", WRITER)
    fst = no_fst

    sandboxed = glmtts(deployed, "--config", cfg, "engines", "check")
    line = one_line(sandboxed)
    assert sandboxed.returncode == 3, line  # an engine load error, as the service would exit
    assert line.startswith("preflight FAILED (%s): engine %s load() cannot write %s: read-only file system "
                           "(ProtectSystem=strict in glmtts.service leaves only /var/lib/glmtts /var/log/glmtts writable)"
                           % (SANDBOX, WRITER, fst)), line
    assert "`ReadWritePaths=%s` (systemctl edit glmtts.service)" % PACKAGE_DIR in line
    assert not fst.exists()

    outside = glmtts(deployed, "--config", cfg, "engines", "check", "--in-process")
    line = one_line(outside)
    assert outside.returncode == 0, line
    assert line.startswith("preflight ok (WITHOUT the unit's sandbox: in-process as root, --in-process): engine %s loaded"
                           % WRITER), line
    assert fst.exists()  # the same load, outside the sandbox, wrote into the package directory


def test_install_stops_before_enabling_anything_when_the_preflight_fails(deployed, no_fst):
    d = deployed
    live = d.file("/etc/glmtts/glmtts.toml")
    original = live.read_text()
    install = [str(ROOT / ".venv/bin/glmtts-system"), "install", "--no-start", "--deploy-dir", str(ROOT)]
    try:
        live.write_text('[server]\nui = false\n\n[engine]\nname = "%s"\n' % WRITER)
        failed = d.sd.run(install, check=False, timeout=300)
        errors = failed.stderr.strip().splitlines()
        assert failed.returncode == 3 and len(errors) == 1, (failed.stdout, failed.stderr)
        assert errors[0].startswith("glmtts-system install: error: preflight FAILED (%s): engine %s load() cannot write %s"
                                    % (SANDBOX, WRITER, no_fst)), errors[0]
        assert errors[0].endswith("; then run glmtts-system install again (or --no-preflight to install anyway)")
        assert "systemctl enable" not in failed.stdout

        skipped = d.sd.run(install + ["--no-preflight"], check=False, timeout=300)
        assert skipped.returncode == 0, skipped.stderr
        assert "skip    preflight (--no-preflight): glmtts.service was not test-loaded" in skipped.stdout
        assert "systemctl enable glmtts-watchdog.timer" in skipped.stdout
    finally:
        live.write_text(original)
    assert not no_fst.exists()
