"""File-system side effects of batch jobs, behind one thin object (``Disk``) that tests
may replace: atomic state writes, outputs written to a temp file then renamed, free
space. Errors are left as OSError so callers can tell ENOSPC from the rest."""

import errno
import os

# Errors that mean "the disk is full": wait for space instead of failing the task.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(exc):
    return isinstance(exc, OSError) and exc.errno in NO_SPACE


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path, data, *, sync=True, tmp=None):
    """Write ``data`` (bytes) to ``path`` so that readers see the old or the new file,
    never a mix: temp file in the same directory, fsync, rename, fsync the directory."""
    tmp = tmp or "%s.tmp-%d" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(tmp)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    if sync:
        fsync_dir(os.path.dirname(path) or ".")


def _unlink_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass


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
        _unlink_quietly(path)

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
