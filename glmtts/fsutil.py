"""The durable writes, once: every part of glmtts (the batch store and journal, the
watchdog's state and incident journal, the installer, the CLI, `make run`) writes a file
through ``atomic_write`` and appends a record through ``append_line``/``append_jsonl``.

Atomic means a reader (or a process restarted after kill -9) sees the old file or the
new one, never a mix: temp file in the same directory, fsync, rename, fsync the directory.
An append lands whole at the end or not at all: on failure (ENOSPC) the file is cut back
to where it was, so a retried append never leaves half a line behind.
"""

import errno
import json
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


def write_file(path, data, *, sync=True, mode=0o644, owner=None):
    """Write ``data`` (bytes, or str as UTF-8) as the whole of ``path`` (created or
    truncated), with exactly ``mode`` (and ``owner``), fsynced unless ``sync=False``. On
    failure (ENOSPC) the file is removed: no half file is left behind. Not atomic by itself:
    callers rename (atomic_write) or hard-link (the batch lease) it into place."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if owner is not None:
            os.fchown(fd, *owner)
        os.fchmod(fd, mode)  # whatever the umask took away
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        unlink_quietly(path)
        raise
    os.close(fd)


def atomic_write(path, data, *, sync=True, tmp=None, mode=0o644, owner=None):
    """Replace ``path`` with ``data`` (bytes, or str as UTF-8). ``sync=False`` skips the
    fsyncs (still atomic against a crash of this process, not against power loss).
    ``owner`` (uid, gid) and ``mode`` are set on the temp file, so the file never
    appears with other ones."""
    tmp = tmp or "%s.tmp-%d" % (path, os.getpid())
    write_file(tmp, data, sync=sync, mode=mode, owner=owner)
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


def append_line(fd, data, *, sync=True):
    """Append ``data`` (one whole line, bytes) to ``fd`` (opened O_APPEND). On failure
    the file is cut back to its size before, and the error raised."""
    start = os.fstat(fd).st_size  # taken now: another process may have appended since
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if sync:
            os.fsync(fd)
    except OSError:
        try:
            os.ftruncate(fd, start)
        except OSError:
            pass
        raise


def append_jsonl(path, record, *, mode=0o640, sync=True):
    """One JSON record as one line at the end of ``path`` (created with ``mode``)."""
    line = (json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, mode)
    try:
        append_line(fd, line, sync=sync)
    finally:
        os.close(fd)
