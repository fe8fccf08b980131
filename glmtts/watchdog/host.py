"""The one thin object through which the watchdog touches the operating system:
subprocesses (systemctl, supervisorctl, journalctl, nvidia-smi), signals, /proc via
psutil, listening sockets, disk usage, NVML and the clock. Tests replace pieces of it
(a fake NVML, a fake nvidia-smi on PATH, an injected clock); production code never asks
whether it is under test."""

import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field

import psutil

log = logging.getLogger(__name__)


@dataclass
class Completed:
    argv: list
    rc: int
    out: str = ""
    err: str = ""


@dataclass
class GpuInfo:
    index: int
    name: str = ""
    uuid: str = ""
    pci_bus: str = ""
    memory_used_mb: float = 0.0
    memory_total_mb: float = 0.0
    processes: list = field(default_factory=list)   # [{"pid":, "used_mb":}]

    def to_dict(self):
        return dict(self.__dict__)


class Clock:
    """Wall clock for records, monotonic for durations, sleep for waits."""

    def now(self):
        return time.time()

    def monotonic(self):
        return time.monotonic()

    def sleep(self, seconds):
        time.sleep(max(0.0, seconds))


class Host:
    def __init__(self, clock=None, nvidia_smi="nvidia-smi", cgroup_root="/sys/fs/cgroup", nvml=None):
        self.clock = clock or Clock()
        self.nvidia_smi = nvidia_smi
        self.cgroup_root = cgroup_root
        self._nvml = nvml  # a glmtts.gpu.Nvml-like seam; None = the real one, made lazily

    # -- subprocesses and signals -----------------------------------------------------
    def run(self, argv, timeout=60.0):
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, errors="replace")
        except FileNotFoundError:
            return Completed(list(argv), 127, "", "%s: command not found" % argv[0])
        except subprocess.TimeoutExpired:
            return Completed(list(argv), 124, "", "%s timed out after %.0f s" % (argv[0], timeout))
        return Completed(list(argv), p.returncode, p.stdout, p.stderr)

    def which(self, name):
        return shutil.which(name)

    def kill(self, pid, sig):
        os.kill(pid, sig)

    def euid(self):
        return os.geteuid()

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

    # -- processes --------------------------------------------------------------------
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

    def alive(self, pid):
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def descendants(self, pid):
        try:
            return [c.pid for c in psutil.Process(pid).children(recursive=True)]
        except psutil.Error:
            return []

    def cgroup_pids(self, cgroup):
        """PIDs in a cgroup (v2 path as systemd reports it in ControlGroup=)."""
        if not cgroup:
            return []
        try:
            with open(os.path.join(self.cgroup_root, cgroup.lstrip("/"), "cgroup.procs")) as f:
                return [int(x) for x in f.read().split()]
        except (OSError, ValueError):
            return []

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

    # -- disk and GPU -----------------------------------------------------------------
    def disk_free(self, path):
        """(free_bytes, total_bytes) of the filesystem holding path (or its nearest existing parent)."""
        p = os.path.abspath(path)
        while not os.path.exists(p) and p != "/":
            p = os.path.dirname(p)
        u = shutil.disk_usage(p)
        return u.free, u.total

    def nvml(self):
        """The NVML seam (glmtts.gpu.Nvml, shared with the service), or None without one."""
        if self._nvml is None:
            from ..gpu import Nvml, NvmlUnavailable
            nv = Nvml()
            try:
                nv.device_count()
                self._nvml = nv
            except NvmlUnavailable as e:  # no driver, no GPU: both normal on CPU hosts
                log.debug("NVML unavailable: %s", e)
                self._nvml = False
        return self._nvml or None

    def gpus(self):
        """GpuInfo per device, [] when there is no NVML (no GPU, no driver). Per-process
        memory NVML cannot report (its "not available" sentinel) is 0 here, never 16 EiB."""
        from ..gpu import NvmlUnavailable
        nv = self.nvml()
        if not nv:
            return []
        out = []
        try:
            for i in range(nv.device_count()):
                total, free, used = nv.memory_info(i)
                procs = [{"pid": pid, "used_mb": (b or 0) / 2**20} for pid, b in nv.processes(i)]
                out.append(GpuInfo(i, nv.device_name(i), nv.uuid(i), nv.pci_bus(i), used / 2**20, total / 2**20, procs))
        except NvmlUnavailable as e:
            log.warning("NVML query failed: %s", e)
        return out


# Verbs that change a unit or program; everything else the watchdog runs (systemctl
# show/status/is-active, journalctl, supervisorctl status/pid/tail, nvidia-smi queries)
# only reads.
MUTATING_VERBS = {
    "systemctl": {"start", "stop", "restart", "reload", "try-restart", "reload-or-restart", "try-reload-or-restart",
                  "reset-failed", "kill", "clean", "freeze", "thaw", "enable", "disable", "reenable", "mask",
                  "unmask", "daemon-reload", "daemon-reexec", "set-property", "isolate", "link", "edit"},
    "supervisorctl": {"start", "stop", "restart", "signal", "reread", "update", "reload", "shutdown", "add",
                      "remove", "clear"},
    "nvidia-smi": {"-r", "--gpu-reset", "-pm", "--persistence-mode", "-e", "--ecc-config", "-c", "--compute-mode"},
}


def mutates(argv):
    """True when argv would change the system (a unit, a program, a GPU's state)."""
    if not argv:
        return False
    verbs = MUTATING_VERBS.get(os.path.basename(argv[0]))
    if verbs is None and os.path.basename(argv[0]).startswith("python") and "supervisor.supervisorctl" in argv:
        verbs = MUTATING_VERBS["supervisorctl"]
    return bool(verbs) and any(a in verbs for a in argv[1:])


class ReadOnlyHost:
    """What `--dry-run` runs on: the real host for every read, and a refusal, logged and
    kept in ``refused``, for every change (a signal, a mutating systemctl/supervisorctl
    verb, a GPU reset). The actions already only describe themselves in a dry run; this
    seam makes sure nothing they or a later change forget can act."""

    def __init__(self, host):
        self._host = host
        self.refused = []

    def __getattr__(self, name):
        return getattr(self._host, name)

    def run(self, argv, timeout=60.0):
        if mutates(argv):
            self.refused.append(list(argv))
            log.warning("dry run: not running %s", " ".join(argv))
            return Completed(list(argv), 1, "", "dry run: not run")
        return self._host.run(argv, timeout=timeout)

    def kill(self, pid, sig):
        self.refused.append(["kill", "-%d" % int(sig), str(pid)])
        log.warning("dry run: not sending signal %d to pid %d", int(sig), pid)
