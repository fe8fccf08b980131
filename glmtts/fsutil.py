"""Durable file writes shared by the batch store, the watchdog's state and the CLI.

Atomic means a reader (or a process restarted after kill -9) sees the old file or the
new one, never a mix: temp file in the same directory, fsync, rename, fsync the directory.
"""

import errno
import os

# Errors that mean "the disk is full": callers wait for space instead of failing work.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(exc):
    return isinstance(exc, OSError) and exc.errno in NO_SPACE


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path, data, *, sync=True, tmp=None, mode=0o644):
    """Replace ``path`` with ``data`` (bytes). ``sync=False`` skips the fsyncs (still
    atomic against a crash of this process, not against power loss)."""
    tmp = tmp or "%s.tmp-%d" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        unlink_quietly(tmp)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        unlink_quietly(tmp)
        raise
    if sync:
        fsync_dir(os.path.dirname(path) or ".")


def unlink_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass
