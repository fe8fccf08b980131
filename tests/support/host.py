"""The one recording fake at the OS seam (glmtts/host): ``RecordingHost`` is the real
``Host`` with every call that changes the machine recorded in order in ``calls``, a clock
that moves only when slept on, scripted answers (commands by argv prefix, HTTP by method
and URL), injectable faults (ENOSPC on a write, the free bytes a disk reports) and, for
what this machine cannot have, a fake GPU list and euid.

What reaches the real machine is what the test says (``real``): by default files (tests
point them at a tmp dir) and HTTP (tests point it at loopback servers they started).
Commands, signals, accounts and the installer's systemctl are only recorded unless the
test adds their kind ("services", "processes", "accounts"). Reads (/proc, disk usage, the
account database) are the machine's unless the test scripts them (``pids``, ``free``,
``accounts``, ``gpus``, ``euid``). File ownership is recorded, never applied: a test that
needs real owners runs the real Host as root (tests/install/test_install.py's trees)."""

import functools
import os

from glmtts.host import Completed, Host, HttpError, Response
from glmtts.host.seam import declared


class FakeClock:
    """Time that moves only when slept on (or advanced). Wall and monotonic time are the
    same number unless ``mono`` says where the monotonic clock starts (a host up for
    ``mono`` seconds)."""

    def __init__(self, start=1_700_000_000.0, mono=None):
        self.t = start
        self.mono_offset = 0.0 if mono is None else mono - start

    def now(self):
        return self.t

    def monotonic(self):
        return self.t + self.mono_offset

    def sleep(self, s):
        self.t += max(0.0, s)

    advance = sleep


def _answer(argv, got):
    if callable(got):
        got = got(list(argv))
    if isinstance(got, Completed):
        return got
    rc, out, err = got
    return Completed(list(argv), rc, out, err)


class RecordingHost(Host):
    def __init__(self, root="/", clock=None, *, real=("files", "http"), answers=None, responses=None, gpus=None,
                 euid=None, pids=None, free=None, accounts=None, offline=None, nvidia_smi="nvidia-smi"):
        """``answers``: {argv prefix ("systemctl show glmtts" or a tuple): (rc, out, err),
        a Completed, or a callable(argv)}, the longest matching prefix wins (run and
        run_preflight). ``responses``: {(METHOD, url or its path): Response, (status, body),
        an exception to raise, or a callable(method, url, kw)}. ``pids``: the process
        table (a set: alive() is membership, kill() empties it of the pid, no
        descendants). ``free``: what free_bytes answers (bytes or a callable(path))."""
        super().__init__(root, clock=clock or FakeClock(), nvidia_smi=nvidia_smi)
        if offline is not None:
            self.offline = offline
        self.calls = []
        self.real = set(real)
        self.answers = dict(answers or {})
        self.responses = dict(responses or {})
        self.faults = {}
        self.owners = {}
        self.gpu_list = gpus
        self.fake_euid = euid
        self.pids = pids
        self.free = free
        self.accounts = None if "accounts" in self.real else dict(accounts or {})
        self._depth = 0

    # -- what a test sets up ------------------------------------------------------------
    def fail(self, method, exc, times=1):
        """The next ``times`` calls of ``method`` raise ``exc`` (e.g. ENOSPC on atomic_write)."""
        self.faults.setdefault(method, []).extend([exc] * times)

    def names(self):
        """The recorded calls' method names, in order."""
        return [c[0] for c in self.calls]

    # -- the recording --------------------------------------------------------------------
    def _enter(self, name, record):
        """Record the outermost call (the code under test's, not the host's own inner
        run() of an add_user) and raise an injected fault."""
        if self._depth == 0:
            self.calls.append((name,) + tuple(record))
        queued = self.faults.get(name)
        if queued:
            raise queued.pop(0)

    def _inner(self, fn, *args, **kw):
        """The host's own calls inside a recorded one: scripted and faulted, not recorded again."""
        self._depth += 1
        try:
            return fn(*args, **kw)
        finally:
            self._depth -= 1

    def _scripted(self, argv):
        text = " ".join(str(a) for a in argv)
        best = None
        for key, got in self.answers.items():
            k = " ".join(key) if isinstance(key, (tuple, list)) else key
            if (text == k or text.startswith(k + " ")) and (best is None or len(k) > len(best[0])):
                best = (k, got)
        return best

    # -- processes and services -----------------------------------------------------------
    def run(self, argv, timeout=60.0):
        self._enter("run", [list(argv)])
        found = self._scripted(argv)
        if found:
            return _answer(argv, found[1])
        if "services" in self.real:
            return super().run(argv, timeout=timeout)
        return Completed(list(argv), 127, "", "%s: not scripted in this test" % argv[0])

    def run_preflight(self, argv, timeout):
        self._enter("run_preflight", [list(argv), timeout])
        found = self._scripted(argv)
        if found:
            r = _answer(argv, found[1])
            return r.rc, r.out, r.err
        if "services" in self.real:
            return super().run_preflight(argv, timeout)
        return 127, "", "%s: not scripted in this test" % argv[0]

    def kill(self, pid, sig):
        self._enter("kill", [pid, sig])
        if self.pids is not None:
            self.pids.discard(pid)
        elif "processes" in self.real:
            super().kill(pid, sig)

    def alive(self, pid):
        return pid in self.pids if self.pids is not None else super().alive(pid)

    def descendants(self, pid):
        return [] if self.pids is not None else super().descendants(pid)

    def euid(self):
        return self.fake_euid if self.fake_euid is not None else super().euid()

    def gpus(self):
        """The GPU seam: this machine has no GPU; a test lists the ones it pretends to have."""
        return list(self.gpu_list) if self.gpu_list is not None else []

    # -- files --------------------------------------------------------------------------
    def atomic_write(self, p, data, *, mode=0o644, owner=None, sync=True, tmp=None):
        self._enter("atomic_write", [str(p)])
        if owner is not None:
            self.owners[str(p)] = tuple(owner)
        if "files" in self.real:
            super().atomic_write(p, data, mode=mode, sync=sync, tmp=tmp)

    def makedir(self, p, mode, uid, gid):
        self._enter("makedir", [str(p), mode, uid, gid])
        self.owners[str(p)] = (uid, gid)
        if "files" in self.real:
            self.path(p).mkdir(parents=True, exist_ok=True)
            os.chmod(self.path(p), mode)

    def chown(self, p, mode, uid, gid):
        self._enter("chown", [str(p), mode, uid, gid])
        self.owners[str(p)] = (uid, gid)
        if "files" in self.real:
            os.chmod(self.path(p), mode)

    def owner(self, p):
        uid_gid = self.owners.get(str(p))
        real = super().owner(p)
        return uid_gid + (real[2],) if uid_gid else real

    def free_bytes(self, p):
        if self.free is None:
            return super().free_bytes(p)
        return self.free(p) if callable(self.free) else self.free

    # -- accounts -----------------------------------------------------------------------
    def user_id(self, name):
        return super().user_id(name) if self.accounts is None else self.accounts.get(("user", name))

    def group_id(self, name):
        return super().group_id(name) if self.accounts is None else self.accounts.get(("group", name))

    def add_group(self, name):
        self._enter("add_group", [name])
        if self.accounts is None:
            return self._inner(super().add_group, name)
        self.accounts[("group", name)] = 990

    def add_user(self, name, group, home):
        self._enter("add_user", [name, group, home])
        if self.accounts is None:
            return self._inner(super().add_user, name, group, home)
        self.accounts[("user", name)] = 990

    # -- HTTP -----------------------------------------------------------------------------
    def request(self, method, url, **kw):
        self._enter("request", [method.upper(), url])
        for key in ((method.upper(), url), (method.upper(), "/" + url.split("://", 1)[-1].split("/", 1)[-1])):
            if key in self.responses:
                got = self.responses[key]
                if callable(got) and not isinstance(got, type):
                    got = got(method.upper(), url, kw)
                if isinstance(got, BaseException):
                    raise got
                if isinstance(got, Response):
                    return got
                status, body = got
                return Response(status, {}, body.encode() if isinstance(body, str) else body)
        if "http" in self.real:
            return super().request(method, url, **kw)
        raise HttpError("connection refused (no HTTP answer scripted in this test for %s %s)" % (method, url))


def _recorded(name, kind):
    """Every other change the Host declares: recorded, and done only when its kind is real."""
    real_method = getattr(Host, name)

    @functools.wraps(real_method)
    def method(self, *args, **kw):
        self._enter(name, [str(a) if isinstance(a, os.PathLike) else a for a in args])
        return self._inner(real_method, self, *args, **kw) if kind in self.real else None
    return method


for _name, _kind in declared(Host).items():
    if _kind not in (None, "undeclared") and _name not in RecordingHost.__dict__:
        setattr(RecordingHost, _name, _recorded(_name, _kind))
