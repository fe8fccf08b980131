"""Processes and signals: run a command, send a signal, read /proc (via psutil), the
cgroup a unit runs in, who listens on a port."""

import os
import shutil
import subprocess
from dataclasses import dataclass

import psutil

from ..errors import GlmttsError
from .seam import changes, reads


@dataclass
class Completed:
    argv: list
    rc: int
    out: str = ""
    err: str = ""


class CommandFailed(GlmttsError):
    code = "command_failed"


class Procs:
    cgroup_root = "/sys/fs/cgroup"

    @changes("services")
    def run(self, argv, timeout=60.0):
        """Run argv; the answer (exit status, stdout, stderr) is a Completed, never an
        exception: 127 when the program is missing, 124 when it ran past ``timeout``."""
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, errors="replace")
        except FileNotFoundError:
            return Completed(list(argv), 127, "", "%s: command not found" % argv[0])
        except subprocess.TimeoutExpired:
            return Completed(list(argv), 124, "", "%s timed out after %.0f s" % (argv[0], timeout))
        return Completed(list(argv), p.returncode, p.stdout, p.stderr)

    @changes("services")
    def run_checked(self, argv, timeout=None):
        """Run argv where a failure ends the caller's plan (the installer's useradd,
        systemctl enable): CommandFailed names the command, its status and its stderr."""
        r = self.run(argv, timeout=timeout)
        if r.rc != 0:
            raise CommandFailed("%s failed (exit %d): %s" % (" ".join(argv), r.rc, (r.err or r.out).strip()))
        return r

    @changes("services")
    def run_preflight(self, argv, timeout):
        """Run a `systemd-run --wait --pipe` command: (exit status or None on timeout,
        stdout, stderr). A failure is an answer here, not an exception: the caller turns
        it into one line. On a timeout the transient unit is stopped by name (killing
        systemd-run leaves it running)."""
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, encoding="utf-8", errors="replace",
                                  timeout=timeout, stdin=subprocess.DEVNULL)
        except FileNotFoundError as e:
            return 127, "", "%s: not found (needs systemd)" % e.filename
        except subprocess.TimeoutExpired as e:
            unit = next((a.split("=", 1)[1] for a in argv if a.startswith("--unit=")), None)
            if unit:
                subprocess.run(["systemctl", "stop", unit], capture_output=True, timeout=60)
            as_text = lambda b: b.decode("utf-8", "replace") if isinstance(b, bytes) else (b or "")  # noqa: E731
            return None, as_text(e.stdout), as_text(e.stderr)
        return proc.returncode, proc.stdout, proc.stderr

    @changes("processes")
    def kill(self, pid, sig):
        os.kill(pid, sig)

    @reads
    def which(self, name):
        return shutil.which(name)

    @reads
    def euid(self):
        return os.geteuid()

    @reads
    def own_pids(self):
        """This process and its ancestors: never signalled, whatever a cgroup says."""
        pids = set()
        try:
            p = psutil.Process()
            pids.add(p.pid)
            pids.update(a.pid for a in p.parents())
        except psutil.Error:
            pids.add(os.getpid())
        return pids

    @reads
    def process(self, pid):
        """A dict describing pid, or None if it does not exist."""
        try:
            p = psutil.Process(pid)
            with p.oneshot():
                return {"pid": pid, "ppid": p.ppid(), "name": p.name(), "cmdline": " ".join(p.cmdline())[:500],
                        "user": p.username(), "status": p.status(), "create_time": p.create_time()}
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return None
        except psutil.AccessDenied:
            return {"pid": pid, "ppid": None, "name": "?", "cmdline": "?", "user": "?", "status": "?", "create_time": None}

    @reads
    def alive(self, pid):
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    @reads
    def descendants(self, pid):
        try:
            return [c.pid for c in psutil.Process(pid).children(recursive=True)]
        except psutil.Error:
            return []

    @reads
    def cgroup_pids(self, cgroup):
        """PIDs in a cgroup (v2 path as systemd reports it in ControlGroup=)."""
        if not cgroup:
            return []
        try:
            with open(os.path.join(self.cgroup_root, cgroup.lstrip("/"), "cgroup.procs")) as f:
                return [int(x) for x in f.read().split()]
        except (OSError, ValueError):
            return []

    @reads
    def port_owners(self, port):
        """PIDs listening on TCP port (any address)."""
        pids = set()
        try:
            conns = psutil.net_connections(kind="tcp")
        except psutil.Error:
            conns = []
        for c in conns:
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
                pids.add(c.pid)
        return sorted(pids)
