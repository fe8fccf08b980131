"""File-system side effects of batch jobs, behind one thin object (``Disk``) that tests
may replace: atomic state writes, outputs written to a temp file then renamed, free
space. Errors are left as OSError so callers can tell ENOSPC from the rest."""

import os

from ..fsutil import NO_SPACE, append_line, atomic_write, fsync_dir, is_disk_full, unlink_quietly  # noqa: F401 (re-exported)


class Disk:
    """What the runner does to the file system."""

    def write_output(self, path, data, *, tmp, sync=True):
        atomic_write(path, data, sync=sync, tmp=tmp)

    def free_bytes(self, path):
        st = os.statvfs(path)
        # root may write into the blocks reserved for it, which f_bavail leaves out
        blocks = st.f_bfree if os.geteuid() == 0 else st.f_bavail
        return blocks * st.f_frsize

    def remove(self, path):
        unlink_quietly(path)

    def dir_bytes(self, path):
        """Bytes held by the files under ``path`` (for retention reports)."""
        total = 0
        for root, _dirs, files in os.walk(path):
            for name in files:
                try:
                    total += os.lstat(os.path.join(root, name)).st_blocks * 512
                except OSError:
                    pass
        return total
