"""One cycle at a time: an flock on a file in the state dir. The kernel drops the lock
when the holder dies, so a watchdog killed mid-cycle never leaves a stale lock."""

import errno
import fcntl
import logging
import os

log = logging.getLogger(__name__)


class CycleLock:
    def __init__(self, path):
        self.path = path
        self.fd = None
        self.holder = None  # pid written by the current holder, when busy

    def acquire(self):
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            try:
                self.holder = int(os.pread(fd, 32, 0).decode().strip() or 0) or None
            except ValueError:
                self.holder = None
            os.close(fd)
            log.info("another watchdog cycle holds %s (pid %s); doing nothing", self.path, self.holder)
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd
        return True

    def release(self):
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


class NoLock:
    """The lock a read-only (dry-run) cycle takes: none, and no lock file created."""

    holder = None

    def acquire(self):
        return True

    def release(self):
        pass
