"""Files as the host touches them, every path under ``root`` (``--root DIR``: a directory
tree instead of /). Durable writes are glmtts/fsutil.py's, the one spelling: ``atomic_write``
(temp file, fsync, rename) and ``append_jsonl`` (a whole line or nothing). Errors stay
OSError, so callers can tell ENOSPC from the rest."""

import os
import shutil
from pathlib import Path

from .. import fsutil
from .seam import changes, reads


class Files:
    root = Path("/")

    @reads
    def path(self, p):
        """Where ``p`` is on this machine: under ``root``. With root "/" a path is itself
        (a relative one stays relative to the working directory)."""
        if str(self.root) == "/":
            return Path(p)
        return self.root / str(p).lstrip("/")

    # -- reads ------------------------------------------------------------------------
    @reads
    def exists(self, p):
        return self.path(p).exists() or self.path(p).is_symlink()

    @reads
    def read(self, p):
        return self.path(p).read_text()

    @reads
    def listdir(self, p):
        target = self.path(p)
        return sorted(os.listdir(target)) if target.is_dir() else []

    @reads
    def owner(self, p):
        """(uid, gid, permission bits) of p."""
        st = self.path(p).stat()
        return st.st_uid, st.st_gid, st.st_mode & 0o7777

    @reads
    def disk_free(self, p):
        """(free_bytes, total_bytes) of the filesystem holding p (or its nearest existing
        parent), free as an unprivileged user sees it (the watchdog's disk check)."""
        target = os.path.abspath(self.path(p))
        while not os.path.exists(target) and target != "/":
            target = os.path.dirname(target)
        u = shutil.disk_usage(target)
        return u.free, u.total

    @reads
    def free_bytes(self, p):
        """Bytes this process may still write on the filesystem holding p: root may write
        into the blocks reserved for it, which f_bavail leaves out."""
        st = os.statvfs(self.path(p))
        blocks = st.f_bfree if self.euid() == 0 else st.f_bavail
        return blocks * st.f_frsize

    @reads
    def dir_bytes(self, p):
        """Bytes held by the files under p (for retention reports)."""
        total = 0
        for d, _dirs, files in os.walk(self.path(p)):
            for name in files:
                try:
                    total += os.lstat(os.path.join(d, name)).st_blocks * 512
                except OSError:
                    pass
        return total

    # -- changes ----------------------------------------------------------------------
    @changes("files")
    def atomic_write(self, p, data, *, mode=0o644, owner=None, sync=True, tmp=None):
        """Replace p with data (bytes, or str as UTF-8) through fsutil.atomic_write. The
        temp file is hidden in the same directory unless ``tmp`` names one."""
        target = self.path(p)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = tmp or str(target.parent / (".%s.tmp-%d" % (target.name, os.getpid())))
        fsutil.atomic_write(str(target), data, sync=sync, tmp=tmp, mode=mode, owner=owner)

    @changes("files")
    def append_jsonl(self, p, record, *, mode=0o640, sync=True):
        fsutil.append_jsonl(str(self.path(p)), record, mode=mode, sync=sync)

    @changes("files")
    def makedir(self, p, mode, uid, gid):
        target = self.path(p)
        target.mkdir(parents=True, exist_ok=True)
        os.chown(target, uid, gid)
        os.chmod(target, mode)

    @changes("files")
    def chown(self, p, mode, uid, gid):
        os.chown(self.path(p), uid, gid)
        os.chmod(self.path(p), mode)

    @changes("files")
    def remove(self, p):
        """Remove a file, a link or a whole directory tree; an error is raised."""
        target = self.path(p)
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()

    @changes("files")
    def unlink_quietly(self, p):
        """Remove a file if it is there (a leftover temp file): errors are not the caller's."""
        fsutil.unlink_quietly(str(self.path(p)))
