"""Who is alive on this node, for the batch lease's dead-owner test (lease.py): the host
name and kernel boot id this process runs on, and the flock on ``alive.<token>`` that the
kernel drops the moment its owner dies (kill -9 included). Kept apart from the lease so
tests can stand in for it (a node on a kernel) without touching the lease's arrows."""

import fcntl
import os
import socket


class Node:
    """The machine and kernel this process runs on, for the dead-owner test. Two owners
    are on one node when host name and kernel boot id agree; only then is an flock a
    reliable sign of life (containers of one kernel share locks, hosts may not)."""

    def __init__(self, proc_root="/proc", hostname=socket.gethostname):
        self.host = hostname()
        try:
            with open(os.path.join(proc_root, "sys/kernel/random/boot_id")) as f:
                self.boot_id = f.read().strip() or None
        except OSError:
            self.boot_id = None  # unknown: every other owner counts as remote (expiry only)

    def same(self, owner):
        return bool(self.boot_id) and owner.get("host") == self.host and owner.get("boot_id") == self.boot_id

    def hold(self, path):
        """Create and flock the liveness file; the fd stays open while we own the lease."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def drop(self, fd):
        os.close(fd)

    def gone(self, path):
        """True when no live process holds the liveness lock at ``path``."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return True  # its owner released or was taken over (it is created before the lease)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return True  # closing the fd drops our probe lock
        except OSError:
            return False
        finally:
            os.close(fd)


_NODE = []


def this_node():
    if not _NODE:
        _NODE.append(Node())
    return _NODE[0]
