"""`glmtts-ops install|uninstall` against a directory tree (--root): real useradd/groupadd
(--prefix), real files, owners and modes, real `systemctl --root enable`."""

import io
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from glmtts import config, ops

ROOT = Path(__file__).resolve().parents[1]
needs_root_tools = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("useradd", "groupadd", "systemctl")),
    reason="needs root and useradd/groupadd/systemctl (shadow tools with --prefix)")


@pytest.fixture
def tree(tmp_path):
    """A minimal / with the account databases useradd --prefix edits."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text("root:x:0:\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (etc / "gshadow").write_text("root:*::\n")
    for f in ("shadow", "gshadow"):
        os.chmod(etc / f, 0o600)
    return tmp_path


def install(tree, *args):
    out = io.StringIO()
    rc = ops.main(["install", "--root", str(tree), "--deploy-dir", str(ROOT)] + list(args), out=out)
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
    for unit in ops.SERVICE_UNITS:
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
    assert ops.main(["uninstall", "--root", str(tree)], out=out) == 0
    assert not (tree / "etc/systemd/system/glmtts.service").exists()
    assert not (tree / "etc/logrotate.d/glmtts").exists()
    assert not (tree / "etc/systemd/system/timers.target.wants/glmtts-watchdog.timer").exists()
    assert (tree / "etc/glmtts/glmtts.toml").exists() and (tree / "var/lib/glmtts").is_dir()
    assert "kept    /etc/glmtts, /var/lib/glmtts, /var/log/glmtts and user glmtts" in out.getvalue()
    assert ops.main(["uninstall", "--root", str(tree), "--purge"], out=io.StringIO()) == 0
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
    assert ops.home_paths(deploy) == expected
    text = ops.drop_in_text(["/root/.pyenv/versions/3.11.7"])
    assert "ProtectHome=tmpfs" in text and "BindReadOnlyPaths=/root/.pyenv/versions/3.11.7" in text
    text = ops.drop_in_text(["/var/tmp/checkout"])
    assert "ProtectHome=tmpfs" not in text and "BindReadOnlyPaths=/var/tmp/checkout" in text


def test_bad_deploy_dir_is_a_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "glmtts.ops", "install", "--dry-run", "--root", str(tmp_path),
                           "--deploy-dir", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "lacks ops/glmtts.service" in lines[0] and "--deploy-dir" in lines[0]


def test_bad_instances_argument_names_the_option(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "glmtts.ops", "install", "--dry-run", "--instances", "a,b"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "--instances takes GPU indexes such as 0,1" in proc.stderr
