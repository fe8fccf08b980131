"""`glmtts-system install|uninstall` against a directory tree (--root): real useradd/groupadd
(--prefix), real files, owners and modes, real `systemctl --root enable`."""

import io
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.host import RecordingHost
from tests.support.installtree import make_tree, needs_root_tools

from glmtts.cli import system as system_cli
from glmtts import config, install as installer, preflight

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def tree(tmp_path):
    return make_tree(tmp_path)


def install(tree, *args):
    out = io.StringIO()
    rc = system_cli.main(["install", "--root", str(tree), "--deploy-dir", str(ROOT)] + list(args), out=out)
    return rc, out.getvalue()


def owner(path):
    st = path.stat()
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


@needs_root_tools
def test_install_creates_user_dirs_config_units_and_enables_timer(tree):
    rc, out = install(tree)
    assert rc == 0, out
    passwd = (tree / "etc/passwd").read_text()
    line = next(entry for entry in passwd.splitlines() if entry.startswith("glmtts:"))
    name, _, uid, gid, _, home, shell = line.split(":")
    assert (home, shell) == ("/var/lib/glmtts", "/usr/sbin/nologin") and int(uid) < 1000
    uid, gid = int(uid), int(gid)

    assert owner(tree / "var/log/glmtts") == (uid, gid, 0o750)
    assert owner(tree / "var/lib/glmtts") == (uid, gid, 0o750)
    for sub in ("prompts", "outputs"):
        assert owner(tree / "var/lib/glmtts" / sub) == (uid, gid, 0o750)
    for log in ("access.log", "error.log"):
        assert owner(tree / "var/log/glmtts" / log) == (uid, gid, 0o640)
    assert owner(tree / "etc/glmtts") == (0, gid, 0o750)
    cfg = tree / "etc/glmtts/glmtts.toml"
    assert owner(cfg) == (0, gid, 0o640)
    assert cfg.read_text() == (ROOT / "ops/glmtts.toml.example").read_text()

    units = tree / "etc/systemd/system"
    for unit in installer.SERVICE_UNITS:
        text = (units / unit).read_text()
        assert "/opt/glmtts" not in text and "WorkingDirectory=%s\n" % ROOT in text
    assert "ExecStart=%s/.venv/bin/python -m service" % ROOT in (units / "glmtts.service").read_text()
    assert (units / "timers.target.wants/glmtts-watchdog.timer").is_symlink()
    assert (tree / "etc/logrotate.d/glmtts").read_text() == (ROOT / "ops/logrotate.conf").read_text()
    # each step printed
    for expected in ("create  user glmtts", "create  group glmtts", "install /etc/systemd/system/glmtts.service",
                     "install /etc/logrotate.d/glmtts", "systemctl enable --now glmtts-watchdog.timer"):
        assert expected in out


@needs_root_tools
def test_install_twice_changes_nothing_and_keeps_an_edited_config(tree):
    assert install(tree)[0] == 0
    cfg = tree / "etc/glmtts/glmtts.toml"
    cfg.write_text('[server]\nport = 7999\n')
    before = {p: p.read_bytes() for p in tree.rglob("*") if p.is_file()}
    rc, out = install(tree)
    assert rc == 0
    changes = [line for line in out.splitlines() if line.startswith(("create", "install", "update", "fix"))]
    assert changes == []
    assert "glmtts.toml exists (kept: never overwritten)" in out
    after = {p: p.read_bytes() for p in tree.rglob("*") if p.is_file()}
    assert after == before
    assert config.load(path=str(cfg), env={}).server.port == 7999


@needs_root_tools
def test_install_repairs_wrong_owner_and_updates_a_changed_unit(tree):
    assert install(tree)[0] == 0
    os.chown(tree / "var/log/glmtts", 0, 0)
    (tree / "etc/systemd/system/glmtts.service").write_text("[Service]\nExecStart=/bin/true\n")
    rc, out = install(tree)
    assert rc == 0
    assert "fix     /var/log/glmtts -> glmtts:glmtts 0750" in out
    assert "update  /etc/systemd/system/glmtts.service" in out
    assert owner(tree / "var/log/glmtts")[0] != 0
    assert "Type=notify" in (tree / "etc/systemd/system/glmtts.service").read_text()


@needs_root_tools
def test_instances_get_a_port_each_and_the_watchdog_watches_them(tree):
    rc, out = install(tree, "--instances", "0,1")
    assert rc == 0, out
    assert (tree / "etc/glmtts/instance-0.env").read_text().splitlines()[-1] == "GLMTTS_SERVER_PORT=7860"
    assert (tree / "etc/glmtts/instance-1.env").read_text().splitlines()[-1] == "GLMTTS_SERVER_PORT=7861"
    for name in ("access@0.log", "error@0.log", "access@1.log", "error@1.log"):
        assert (tree / "var/log/glmtts" / name).exists()
    settings = config.load(path=str(tree / "etc/glmtts/glmtts.toml"), env={})
    assert settings.watchdog.instances == ["glmtts@0=http://127.0.0.1:7860", "glmtts@1=http://127.0.0.1:7861"]
    template = (tree / "etc/systemd/system/glmtts@.service").read_text()
    assert "Environment=CUDA_VISIBLE_DEVICES=%i" in template
    assert "EnvironmentFile=/etc/glmtts/instance-%i.env" in template
    assert "StandardOutput=append:/var/log/glmtts/access@%i.log" in template


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    rc, out = install(tmp_path, "--dry-run")
    assert rc == 0
    assert list(tmp_path.iterdir()) == []
    assert "would create  user glmtts" in out and "would install /etc/systemd/system/glmtts.service" in out


@needs_root_tools
def test_uninstall_keeps_data_and_purge_removes_everything(tree):
    assert install(tree)[0] == 0
    out = io.StringIO()
    assert system_cli.main(["uninstall", "--root", str(tree)], out=out) == 0
    assert not (tree / "etc/systemd/system/glmtts.service").exists()
    assert not (tree / "etc/logrotate.d/glmtts").exists()
    assert not (tree / "etc/systemd/system/timers.target.wants/glmtts-watchdog.timer").exists()
    assert (tree / "etc/glmtts/glmtts.toml").exists() and (tree / "var/lib/glmtts").is_dir()
    assert "kept    /etc/glmtts, /var/lib/glmtts, /var/log/glmtts and user glmtts" in out.getvalue()
    assert system_cli.main(["uninstall", "--root", str(tree), "--purge"], out=io.StringIO()) == 0
    assert not (tree / "etc/glmtts").exists() and not (tree / "var/lib/glmtts").exists()
    assert "glmtts:" not in (tree / "etc/passwd").read_text()


def test_home_and_tmp_paths_are_bound_back_by_a_drop_in(tmp_path):
    # a checkout under /tmp (PrivateTmp would hide it) whose venv interpreter lives under
    # /root (pyenv: ProtectHome would hide it)
    deploy = tmp_path / "deploy"
    (deploy / ".venv/bin").mkdir(parents=True)
    os.symlink(sys.executable, deploy / ".venv/bin/python")
    base = str(Path(os.path.realpath(sys.executable)).parent.parent)
    expected = [str(deploy)] if str(deploy).startswith(("/tmp/", "/var/tmp/")) else []
    expected += [base] if base.startswith(("/root/", "/home/", "/tmp/", "/var/tmp/")) else []
    assert installer.home_paths(deploy) == expected
    text = installer.drop_in_text(["/root/.pyenv/versions/3.11.7"])
    assert "ProtectHome=tmpfs" in text and "BindReadOnlyPaths=/root/.pyenv/versions/3.11.7" in text
    text = installer.drop_in_text(["/var/tmp/checkout"])
    assert "ProtectHome=tmpfs" not in text and "BindReadOnlyPaths=/var/tmp/checkout" in text


def test_bad_deploy_dir_is_a_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "glmtts.cli.system", "install", "--dry-run", "--root", str(tmp_path),
                           "--deploy-dir", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "lacks ops/glmtts.service" in lines[0] and "--deploy-dir" in lines[0]


def test_bad_instances_argument_names_the_option(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "glmtts.cli.system", "install", "--dry-run", "--instances", "a,b"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "--instances takes GPU indexes such as 0,1" in proc.stderr


# -- the preflight step, with the recording host at the OS seam ------------------------------

PREFLIGHT_OK = (0, "glmtts-preflight: ok engine espeak loaded in 0.40 s; 'x' -> 0.51 s\n", "")


def live_host(root, answer=PREFLIGHT_OK):
    """A live host (not --root offline) whose files live under a tmp dir; accounts, owners,
    systemctl and the preflight (systemd-run) are recorded instead of done."""
    return RecordingHost(root, offline=False, answers={"systemd-run": answer})


def acts(host):
    """The systemctl and preflight calls, in order: what the plan did to the machine's units."""
    return [c for c in host.calls if c[0] in ("systemctl", "run_preflight")]


def fake_install(host, *args):
    out, err = io.StringIO(), io.StringIO()
    saved, sys.stderr = sys.stderr, err
    try:
        rc = system_cli.main(["install", "--deploy-dir", str(ROOT)] + list(args), host=host, out=out)
    finally:
        sys.stderr = saved
    return rc, out.getvalue(), err.getvalue()


def test_install_preflights_the_unit_it_wrote_before_enabling_anything(tmp_path):
    host = live_host(tmp_path)
    rc, out, err = fake_install(host)
    assert rc == 0, err
    names = [c[0] if c[0] == "run_preflight" else " ".join(c[1:]) for c in acts(host)]
    assert names == ["daemon-reload", "run_preflight", "enable --now glmtts-watchdog.timer"]
    _, cmd, timeout = acts(host)[1]
    written = (tmp_path / "etc/systemd/system/glmtts.service").read_text()
    drop_ins = sorted((tmp_path / "etc/systemd/system/glmtts.service.d").glob("*.conf"))
    derived, _ = preflight.command(preflight.assignments([written] + [p.read_text() for p in drop_ins],
                                                         "glmtts.service"), "glmtts.service")
    # the unit pid in --unit= differs per process; everything else is the installed unit's
    assert [a for a in cmd if not a.startswith("--unit=")] == [a for a in derived if not a.startswith("--unit=")]
    assert "--property=User=glmtts" in cmd and "--property=ProtectSystem=strict" in cmd
    assert timeout == 15 * 60 + 30
    assert "ok      preflight ok (glmtts.service's sandbox: user glmtts, ProtectSystem=strict): engine espeak" in out


def test_a_failed_preflight_is_one_line_and_nothing_is_enabled(tmp_path):
    line = ("glmtts-preflight: FAILED: engine glmtts load() cannot write /venv/tn/x.fst: read-only file system "
            "(ProtectSystem=strict in glmtts.service leaves only /var/lib/glmtts /var/log/glmtts writable); fix: ...\n")
    host = live_host(tmp_path, answer=(3, "chatter\n" + line, "Traceback ...\nOSError: [Errno 30]\n"))
    rc, out, err = fake_install(host)
    assert rc == 3
    assert err.splitlines() == [
        "glmtts-system install: error: preflight FAILED (glmtts.service's sandbox: user glmtts, ProtectSystem=strict): "
        "engine glmtts load() cannot write /venv/tn/x.fst: read-only file system (ProtectSystem=strict in glmtts.service "
        "leaves only /var/lib/glmtts /var/log/glmtts writable); fix: ...; then run glmtts-system install again "
        "(or --no-preflight to install anyway)"]
    assert not any(c[:2] == ("systemctl", "enable") for c in host.calls)
    assert "add_user" in host.names()  # the steps before the preflight did run


def test_no_preflight_skips_it_and_says_how_to_check_later(tmp_path):
    host = live_host(tmp_path)
    rc, out, _ = fake_install(host, "--no-preflight")
    assert rc == 0 and "run_preflight" not in host.names()
    assert ("skip    preflight (--no-preflight): glmtts.service was not test-loaded; before starting it run "
            "`glmtts engines check --unit glmtts.service`") in out


def test_instances_preflight_the_first_instance(tmp_path):
    host = live_host(tmp_path)
    assert fake_install(host, "--instances", "2,3")[0] == 0
    cmd = next(c[1] for c in host.calls if c[0] == "run_preflight")
    assert "--property=Environment=CUDA_VISIBLE_DEVICES=2" in cmd and "glmtts@2.service" in cmd


def test_dry_run_and_root_say_what_the_preflight_would_do(tmp_path):
    host = live_host(tmp_path)
    rc, out, _ = fake_install(host, "--dry-run")
    assert rc == 0 and host.calls == [] and list(tmp_path.iterdir()) == []  # a dry run changes nothing
    step = next(line for line in out.splitlines() if "preflight" in line)
    assert step.startswith("would run     preflight: load the configured engine and synthesize once in glmtts.service's "
                           "sandbox: user glmtts, ProtectSystem=strict")
    command = out.splitlines()[out.splitlines().index(step) + 1]
    assert command.strip().startswith("systemd-run --wait --pipe --collect --quiet")
    rc, out = install(tmp_path, "--dry-run")  # --root: a directory tree, no systemd to run it in
    assert rc == 0 and ("skip    preflight: --root %s is a directory tree, not this host's systemd" % tmp_path) in out


def test_help_describes_the_preflight():
    text = system_cli.build_parser()._subparsers._group_actions[0].choices["install"].format_help()
    assert "--no-preflight" in text and "weights not downloaded yet" in text
    assert "preflight the engine in the unit's sandbox" in system_cli.build_parser().format_help()


@needs_root_tools
def test_install_writes_the_watchdog_token_once_readable_by_root_and_the_service(tree):
    from glmtts import watchdog_token
    assert install(tree)[0] == 0
    gid = int(next(e for e in (tree / "etc/group").read_text().splitlines() if e.startswith("glmtts:")).split(":")[2])
    token_file = tree / "etc/glmtts/watchdog.token"
    assert owner(token_file) == (0, gid, 0o640)
    token = watchdog_token.read(str(token_file))
    assert len(token) >= watchdog_token.MIN_LENGTH
    # beside the config, where both the service and the watchdog look
    s = config.load(path=str(tree / "etc/glmtts/glmtts.toml"), env={})
    assert watchdog_token.path_for(s) == str(token_file)
    os.chmod(token_file, 0o644)
    rc, out = install(tree)
    assert rc == 0 and "fix     /etc/glmtts/watchdog.token -> root:glmtts 0640" in out, out
    assert owner(token_file) == (0, gid, 0o640) and watchdog_token.read(str(token_file)) == token  # kept
