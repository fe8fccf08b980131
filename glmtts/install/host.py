"""The installer's one seam onto the machine: files, users and groups, systemctl. ``root``
prefixes every path (``--root DIR``: a directory tree instead of /), ``--dry-run`` never
calls its mutating methods, and unit tests drive it against a tree."""

import grp
import os
import pwd
import shutil
import subprocess
from pathlib import Path

from .. import fsutil
from .layout import OpsError


class Host:
    """The machine as install/uninstall see it. ``root`` prefixes every path; with a root
    other than "/", user tools get --prefix and systemctl --root (offline: no reload,
    no start)."""

    def __init__(self, root="/"):
        self.root = Path(root)
        self.offline = str(root) != "/"

    def path(self, p):
        return self.root / str(p).lstrip("/")

    # -- queries (safe in --dry-run) ------------------------------------------------
    def exists(self, p):
        return self.path(p).exists() or self.path(p).is_symlink()

    def read(self, p):
        return self.path(p).read_text()

    def _db(self, name):
        if not self.offline:
            return None
        f = self.path("/etc/%s" % name)
        return [line.split(":") for line in f.read_text().splitlines() if line] if f.exists() else []

    def user_id(self, name):
        db = self._db("passwd")
        if db is None:
            try:
                return pwd.getpwnam(name).pw_uid
            except KeyError:
                return None
        return next((int(r[2]) for r in db if r[0] == name), None)

    def group_id(self, name):
        db = self._db("group")
        if db is None:
            try:
                return grp.getgrnam(name).gr_gid
            except KeyError:
                return None
        return next((int(r[2]) for r in db if r[0] == name), None)

    def owner(self, p):
        st = self.path(p).stat()
        return st.st_uid, st.st_gid, st.st_mode & 0o7777

    def listdir(self, p):
        target = self.path(p)
        return sorted(os.listdir(target)) if target.is_dir() else []

    def run_preflight(self, cmd, timeout):
        """Run the preflight command: (exit status or None on timeout, stdout, stderr). A
        failure is an answer here, not an exception: the caller turns it into one line."""
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", errors="replace",
                                  timeout=timeout, stdin=subprocess.DEVNULL)
        except FileNotFoundError as e:
            return 127, "", "%s: not found (needs systemd)" % e.filename
        except subprocess.TimeoutExpired as e:
            # killing systemd-run leaves its transient unit running: stop it by name
            unit = next((a.split("=", 1)[1] for a in cmd if a.startswith("--unit=")), None)
            if unit:
                subprocess.run(["systemctl", "stop", unit], capture_output=True, timeout=60)
            as_text = lambda b: b.decode("utf-8", "replace") if isinstance(b, bytes) else (b or "")  # noqa: E731
            return None, as_text(e.stdout), as_text(e.stderr)
        return proc.returncode, proc.stdout, proc.stderr

    # -- changes ----------------------------------------------------------------------
    def run(self, cmd):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise OpsError("%s failed (exit %d): %s" % (" ".join(cmd), proc.returncode,
                                                        (proc.stderr or proc.stdout).strip()))

    def _prefix(self):
        return ["--prefix", str(self.root)] if self.offline else []

    def add_group(self, name):
        self.run(["groupadd", "--system"] + self._prefix() + [name])

    def add_user(self, name, group, home):
        self.run(["useradd", "--system", "--gid", group, "--home-dir", home, "--no-create-home",
                  "--shell", "/usr/sbin/nologin", "--comment", "GLM-TTS service"] + self._prefix() + [name])

    def del_user(self, name):
        self.run(["userdel"] + self._prefix() + [name])

    def del_group(self, name):
        self.run(["groupdel"] + self._prefix() + [name])

    def makedir(self, p, mode, uid, gid):
        target = self.path(p)
        target.mkdir(parents=True, exist_ok=True)
        os.chown(target, uid, gid)
        os.chmod(target, mode)

    def write(self, p, text, mode, uid=0, gid=0):
        """Atomic: temp file in the same directory, fsync, rename."""
        target = self.path(p)
        target.parent.mkdir(parents=True, exist_ok=True)
        fsutil.atomic_write(str(target), text, mode=mode, owner=(uid, gid),
                            tmp=str(target.parent / (".%s.tmp-%d" % (target.name, os.getpid()))))

    def chown(self, p, mode, uid, gid):
        os.chown(self.path(p), uid, gid)
        os.chmod(self.path(p), mode)

    def remove(self, p):
        target = self.path(p)
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()

    def systemctl(self, *args):
        if self.offline:
            if args[0] in ("enable", "disable"):
                self.run(["systemctl", "--root", str(self.root)] + [a for a in args if a != "--now"])
            return  # daemon-reload / start / stop mean nothing for a directory tree
        self.run(["systemctl"] + list(args))

