"""Job leases: which process runs a batch job, when several processes, containers or
hosts share one ``paths.state_dir``.

A lease is a numbered file in the job's directory, ``lease.<epoch>`` (JSON: owner,
token, acquired/renewed/expiry/release times); the highest epoch is the current one.
The epoch only grows, so it is also the fencing token. The arrows (``Lease.state``
names the left side, ``acquire``/``renew``/``release`` take them):

    free     -> held     acquire: no lease file yet; create lease.1
    held     -> held     renew: the owner rewrites its own lease.<epoch> with a new expiry,
                         every lease_s/3 (``Heartbeat``, a thread)
    held     -> released release: a clean stop (drain, Ctrl-C, job finished); anyone may
                         take the job at once
    held     -> expired  nobody renewed it for lease_s: its owner died on another host,
                         froze (SIGSTOP, a hung disk), or lost the network
    held     -> dead     the owner ran on this node and no process holds its liveness
                         lock ``alive.<token>`` (an flock: the kernel drops it the moment
                         the owner dies, kill -9 included), so nobody waits for expiry
    released/expired/dead -> held   acquire: take over with epoch + 1

Creation is exclusive: the record is written to a temp file and hard-linked to
``lease.<epoch+1>``, and link() fails when that name exists, so of any number of
replicas taking one job over exactly one wins. Renewal replaces only the owner's own
file (temp + rename), so a reader always sees a whole record.

Fencing: before committing anything (a task's output, its journal record, a state
change) the owner calls ``fence()``: its epoch must still be the highest, its record
its own, and at least lease_s/3 of the lease left (it renews on the spot when the
heartbeat is late). Otherwise LeaseLost, and it commits nothing. An owner renews only
while more than ``skew`` (lease_s/10) is left; a taker takes over only once the expiry
has passed. So an owner that wakes up after a freeze finds its lease expired and
stops, and a commit that starts within the lease has lease_s/3 to finish before anyone
else may start.

What the guarantee needs (README "Batch on shared storage"):
- atomic rename and exclusive hard links, and readers that see a renamed file at once:
  any local filesystem shared by processes and containers of one kernel (tested), NFSv4
  (link and rename are atomic on the server; mount with ``lookupcache=positive`` or
  ``actimeo`` well under lease_s/3 so a replica does not read a cached old record);
- wall clocks that agree to within ``skew`` (lease_s/10, 3 s by default): NTP;
- a commit (one output rename + one journal append) that takes less than lease_s/3.
Filesystems without hard links (some FUSE and SMB mounts) are refused with an error.
"""

import errno
import json
import logging
import os
import re
import secrets
import threading
import time

from ..errors import GlmttsError
from ..fsutil import fsync_dir, unlink_quietly, write_file
from .node import this_node

log = logging.getLogger(__name__)

LEASE_FILE = re.compile(r"lease\.(\d+)")
TEMP_PREFIX = ".lease-"
ALIVE_PREFIX = "alive."

# Lease states (Lease.state)
FREE = "free"
HELD = "held"
RELEASED = "released"
EXPIRED = "expired"
DEAD = "dead"
TAKEABLE = (FREE, RELEASED, EXPIRED, DEAD)

# This process's instance id: a pid can come back after a restart (or be 1 in every
# container), the instance id does not.
INSTANCE = secrets.token_hex(4)


class LeaseLost(GlmttsError):
    """The lease is no longer ours: commit nothing more."""

    code = "lease_lost"


def describe(owner):
    """One line naming a lease owner, for logs and `glmtts batch status`."""
    if not owner:
        return "an unknown process"
    return "%s (instance %s, pid %s on %s)" % (owner.get("role") or "?", owner.get("instance") or "?",
                                               owner.get("pid") or "?", owner.get("host") or "?")


class Lease:
    """The lease of one job directory, as seen (and maybe held) by this process.
    ``clock`` is wall time (time.time): expiry is compared across processes and hosts."""

    def __init__(self, directory, lease_s, *, role="cli", clock=time.time, node=None, skew=None):
        self.dir = directory
        self.lease_s = float(lease_s)
        self.clock = clock
        self.node = node or this_node()
        self.skew = self.lease_s / 10 if skew is None else float(skew)
        self.guard = self.lease_s / 3
        self.owner = {"role": role, "instance": INSTANCE, "host": self.node.host, "boot_id": self.node.boot_id,
                      "pid": os.getpid()}
        self.token = None
        self.epoch = None
        self.record = None
        self.lost = None  # why we lost it, once we did
        self._alive_fd = None
        self._mutex = threading.Lock()  # the heartbeat thread and the runner share the lease

    @property
    def held(self):
        return self.token is not None

    # -- reading ------------------------------------------------------------------------

    def _path(self, epoch):
        return os.path.join(self.dir, "lease.%d" % epoch)

    def _alive_path(self, token):
        return os.path.join(self.dir, ALIVE_PREFIX + token)

    def epochs(self):
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        return sorted(int(m.group(1)) for m in map(LEASE_FILE.fullmatch, names) if m)

    def read(self, epoch):
        """The record of ``epoch``; None if there is no such file. An unreadable one counts
        as held until lease_s after it was last written (it can only come from a disk
        error: records are linked or renamed into place whole)."""
        path = self._path(epoch)
        try:
            with open(path, "rb") as f:
                data = f.read()
            rec = json.loads(data)
            if isinstance(rec, dict) and isinstance(rec.get("expires_at"), (int, float)):
                return rec
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            pass
        try:
            mtime = os.stat(path).st_mtime
        except OSError:
            return None
        return {"epoch": epoch, "token": None, "owner": None, "expires_at": mtime + self.lease_s, "unreadable": True}

    def current(self):
        """(epoch, record) of the highest epoch; (0, None) when the job was never leased."""
        for epoch in reversed(self.epochs()):
            rec = self.read(epoch)
            if rec is not None:
                return epoch, rec
        return 0, None

    def state(self, rec, now=None):
        """What ``rec`` (a current record) means now: FREE, HELD, RELEASED, EXPIRED, DEAD."""
        if rec is None:
            return FREE
        if rec.get("released_at"):
            return RELEASED
        now = self.clock() if now is None else now
        if now >= rec["expires_at"]:
            return EXPIRED
        if rec.get("token") and rec.get("token") != self.token and rec.get("owner") \
                and self.node.same(rec["owner"]) and self.node.gone(self._alive_path(rec["token"])):
            return DEAD
        return HELD

    def holder(self, now=None):
        """The current record when someone (maybe us) holds the lease, else None."""
        _epoch, rec = self.current()
        return rec if self.state(rec, now) == HELD else None

    # -- the arrows ----------------------------------------------------------------------

    def acquire(self):
        """free/released/expired/dead -> held. True when the lease is ours now."""
        with self._mutex:
            if self.held:
                try:
                    self._renew(self.clock())
                    return True
                except LeaseLost:
                    pass  # expired or taken: try for a new epoch like anyone else
            now = self.clock()
            epoch, rec = self.current()
            was = self.state(rec, now)
            if was not in TAKEABLE:
                return False
            token = secrets.token_hex(8)
            alive = self._alive_path(token)
            fd = self.node.hold(alive)
            record = {"epoch": epoch + 1, "token": token, "owner": self.owner, "acquired_at": now,
                      "renewed_at": now, "expires_at": now + self.lease_s, "released_at": None}
            try:
                won = self._create(epoch + 1, record)
            except BaseException:
                self.node.drop(fd)
                unlink_quietly(alive)
                raise
            if not won:  # another replica took it between our read and our link
                self.node.drop(fd)
                unlink_quietly(alive)
                return False
            self.token, self.epoch, self.record, self.lost, self._alive_fd = token, epoch + 1, record, None, fd
        if rec is not None and was != RELEASED:
            log.warning("batch lease %s: took over epoch %d from %s, whose lease was %s", self.dir, epoch,
                        describe(rec.get("owner")), was)
        self._sweep()
        return True

    def renew(self):
        """held -> held for another lease_s. LeaseLost when it is not ours any more."""
        with self._mutex:
            self._renew(self.clock())

    def fence(self):
        """Call right before a commit: LeaseLost unless the lease is ours with at least
        lease_s/3 left (renewing now if the heartbeat is late)."""
        with self._mutex:
            now = self.clock()
            if not self.held:
                raise LeaseLost(self.lost or "the lease of %s is not held" % self.dir)
            if self.record["expires_at"] - now < self.guard:
                self._renew(now)
            else:
                self._check(now, 0.0)

    def release(self):
        """held -> released: write released_at so another replica may take the job at
        once. Returns True if a release was written (False: it was not ours any more)."""
        with self._mutex:
            if not self.held:
                return False
            now = self.clock()
            written = False
            try:
                if not self._newer() and self._ours_on_disk():
                    rec = dict(self.record, released_at=now, expires_at=min(self.record["expires_at"], now))
                    self._write(rec, sync=True)
                    written = True
            except OSError as e:
                log.warning("batch lease %s: could not write the release (%s); it expires by itself", self.dir, e)
            finally:
                self._forget()
            return written

    # -- internals (called with the mutex held) --------------------------------------------

    def _renew(self, now):
        self._check(now, self.skew)
        rec = dict(self.record, renewed_at=now, expires_at=now + self.lease_s)
        self._write(rec, sync=False)
        self.record = rec
        if self._newer():  # a taker raced our write (clocks further apart than skew)
            self._lose("taken over by a newer epoch while renewing")

    def _check(self, now, margin):
        if not self.held:
            raise LeaseLost(self.lost or "the lease of %s is not held" % self.dir)
        left = self.record["expires_at"] - now
        if left <= margin:
            self._lose("the lease expired (%.1f s left, not renewed in time); another replica may hold it" % left)
        newer = self._newer()
        if newer:
            self._lose("taken over by %s (epoch %d)" % (describe((self.read(newer) or {}).get("owner")), newer))
        if not self._ours_on_disk():
            self._lose("lease.%d is gone or no longer ours" % self.epoch)

    def _newer(self):
        epochs = self.epochs()
        return epochs[-1] if epochs and epochs[-1] > self.epoch else 0

    def _ours_on_disk(self):
        rec = self.read(self.epoch)
        return rec is not None and rec.get("token") == self.token

    def _lose(self, reason):
        self.lost = reason
        if self._newer():
            unlink_quietly(self._path(self.epoch))  # a renewal may have re-created our old epoch
        self._forget()
        raise LeaseLost(reason)

    def _forget(self):
        if self._alive_fd is not None:
            self.node.drop(self._alive_fd)
            self._alive_fd = None
        if self.token:
            unlink_quietly(self._alive_path(self.token))
        self.token = self.epoch = self.record = None

    def _create(self, epoch, record):
        """Exclusive create of lease.<epoch>: False if it exists."""
        tmp = os.path.join(self.dir, "%s%s.tmp" % (TEMP_PREFIX, record["token"]))
        _write_file(tmp, record, sync=True)
        try:
            os.link(tmp, self._path(epoch))
            won = True
        except FileExistsError:
            # NFS: a retransmitted LINK answers EEXIST although the first one worked
            try:
                won = os.stat(tmp).st_nlink > 1
            except OSError:
                won = False
        except FileNotFoundError:
            won = False  # the winner swept our temp file
        except OSError as e:
            if e.errno in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
                raise GlmttsError("the batch store needs a filesystem with hard links (exclusive create) for its "
                                  "job leases, and %s has none (%s); put paths.state_dir on a local filesystem or "
                                  "NFS" % (self.dir, e), code="unsupported_filesystem") from None
            raise
        finally:
            unlink_quietly(tmp)
        if won:
            fsync_dir(self.dir)
        return won

    def _write(self, rec, *, sync):
        tmp = os.path.join(self.dir, "%s%s.tmp" % (TEMP_PREFIX, self.token))
        _write_file(tmp, rec, sync=sync)
        try:
            os.replace(tmp, self._path(self.epoch))
        except BaseException:
            unlink_quietly(tmp)
            raise

    def _sweep(self):
        """After taking over: older epochs, the old owners' liveness files and temp files go."""
        try:
            names = os.listdir(self.dir)
        except OSError:
            return
        mine = (ALIVE_PREFIX + (self.token or ""), "%s%s.tmp" % (TEMP_PREFIX, self.token))
        for name in names:
            m = LEASE_FILE.fullmatch(name)
            old_epoch = m and self.epoch and int(m.group(1)) < self.epoch
            leftover = (name.startswith(ALIVE_PREFIX) or (name.startswith(TEMP_PREFIX) and name.endswith(".tmp")))
            if old_epoch or (leftover and name not in mine):
                unlink_quietly(os.path.join(self.dir, name))


def _write_file(path, rec, *, sync):
    write_file(path, json.dumps(rec, sort_keys=True).encode(), sync=sync)


class Heartbeat:
    """Renews a held lease every lease_s/3 on a thread, for as long as the ``with``
    block runs. A lost lease is logged and left to ``fence()`` to report."""

    def __init__(self, lease, interval=None):
        self.lease = lease
        self.interval = lease.lease_s / 3 if interval is None else interval
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, name="glmtts-batch-lease", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10.0)

    def _run(self):
        while not self._stop.wait(self.interval):
            try:
                self.lease.renew()
            except LeaseLost as e:
                log.warning("batch lease %s: lost: %s", self.lease.dir, e)
                return
            except OSError as e:  # a passing storage hiccup: fence() refuses commits if it lasts
                log.warning("batch lease %s: renewal failed: %s; retrying", self.lease.dir, e)
