"""Split logs: one access line per request on stdout; warnings, errors and tracebacks
on stderr; both line-buffered. Request text and audio never reach either by default.

systemd (``StandardOutput=append:``) and supervisord open our log files once; logrotate
renames them. On SIGHUP we reopen the paths that fd 1 and fd 2 pointed to at start-up
and dup2 the new files onto fd 1/2, so lines written before the reopen stay in the
rotated file and none is lost. The signal handler only records the signal; the event
loop calls ``reopen_if_requested`` (gunicorn's arbiter habit).
"""

import logging
import os
import signal
import stat
import sys
import threading
import time

log = logging.getLogger(__name__)

ACCESS_LOGGER = "glmtts.access"
STDERR_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class UTCFormatter(logging.Formatter):
    converter = time.gmtime

    def formatTime(self, record, datefmt=None):
        return time.strftime("%Y-%m-%dT%H:%M:%S", self.converter(record.created)) + ".%03dZ" % record.msecs


def setup(level=logging.INFO):
    """Line-buffered stdout/stderr; root logger -> stderr; access logger -> stdout."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(line_buffering=True)
        except (AttributeError, ValueError):
            pass
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    err = logging.StreamHandler(sys.stderr)
    err.setFormatter(UTCFormatter(STDERR_FORMAT))
    root.addHandler(err)
    root.setLevel(level)

    access = logging.getLogger(ACCESS_LOGGER)
    for h in list(access.handlers):
        access.removeHandler(h)
    out = logging.StreamHandler(sys.stdout)
    out.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(out)
    access.setLevel(logging.INFO)
    access.propagate = False

    # uvicorn's own access log would duplicate ours (and on stderr); its errors stay on stderr.
    logging.getLogger("uvicorn.access").disabled = True
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True
    for noisy in ("httpx", "httpcore", "urllib3", "multipart", "python_multipart"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def utc_stamp(now=None):
    now = time.time() if now is None else now
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + ".%03dZ" % (int(now * 1000) % 1000)


def access_line(*, client, method, path, status, nbytes, duration_ms, request_id, now=None):
    """``TIME CLIENT METHOD PATH STATUS BYTES DURATION_MS rid=ID`` (no query string: it may carry text)."""
    return "%s %s %s %s %d %d %.1fms rid=%s" % (utc_stamp(now), client or "-", method, path, status,
                                              nbytes, duration_ms, request_id)


_access = logging.getLogger(ACCESS_LOGGER)


def write_access(**fields):
    _access.info(access_line(**fields))


class LogReopener:
    """Reopens the regular files behind fd 1 and fd 2 on SIGHUP."""

    def __init__(self, fds=(1, 2), proc_fd="/proc/self/fd"):
        self.targets = {}
        for fd in fds:
            path = _regular_file_target(fd, proc_fd)
            if path:
                self.targets[fd] = path
        self._pending = threading.Event()

    def install(self):
        signal.signal(signal.SIGHUP, self._record)

    def _record(self, signum, frame):
        self._pending.set()  # async-signal-safe enough: no I/O in the handler

    def reopen_if_requested(self):
        if self._pending.is_set():
            self._pending.clear()
            self.reopen()
            return True
        return False

    def reopen(self):
        for fd, path in self.targets.items():
            stream = sys.stdout if fd == 1 else sys.stderr if fd == 2 else None
            try:
                if stream is not None:
                    stream.flush()
                new = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
                try:
                    os.dup2(new, fd)
                finally:
                    os.close(new)
            except OSError as e:
                log.error("cannot reopen log file %s for fd %d: %s", path, fd, e)
        if self.targets:
            log.info("reopened log files on SIGHUP: %s", ", ".join(self.targets.values()))


def _regular_file_target(fd, proc_fd):
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        path = os.readlink(os.path.join(proc_fd, str(fd)))
    except OSError:
        return None
    if not os.path.isabs(path) or path.endswith(" (deleted)"):
        return None
    return path
