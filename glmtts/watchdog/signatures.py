"""Failure signatures: the table the watchdog classifies evidence with.

Each Signature names one kind of failure, how bad it is on its own, where it is seen
(a log line, the probe, the unit state, the disk check, the kernel log) and, for log
signatures, the regexes that recognise it. Add a row to SIGNATURES to teach the watchdog
a new failure; the runbook lint test then insists some runbook triggers on it.

The order of SIGNATURES is the precedence used to pick one runbook when several
signatures are seen together: the cause before the symptom (a port held by someone else
explains the crash loop, a crash loop explains the failed probe, a CUDA fatal error
explains the segfault that may follow it), except that a start limit reached by
separate faults (fault_burst) comes before the faults it is made of.
"""

import re
from dataclasses import dataclass, field

SEVERITIES = ("info", "warning", "critical")


def severity_rank(name):
    return SEVERITIES.index(name)


@dataclass(frozen=True)
class Signature:
    name: str
    severity: str
    source: str                      # log | probe | unit | disk | kernel
    patterns: tuple = ()
    context: str = ""                # regex that must appear in the line or its traceback
    description: str = ""
    _compiled: tuple = field(default=(), repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_compiled", tuple(re.compile(p) for p in self.patterns))
        object.__setattr__(self, "_context", re.compile(self.context) if self.context else None)

    def matches(self, line, context_lines=()):
        if not any(rx.search(line) for rx in self._compiled):
            return False
        if self._context is None:
            return True
        return bool(self._context.search(line)) or any(self._context.search(c) for c in context_lines)


S = Signature
SIGNATURES = (
    S("gpu_xid", "critical", "kernel", (
        r"NVRM: Xid \(",
    ), description="the NVIDIA driver reported an Xid error in the kernel log"),
    # Before the faults it is made of: the failed unit is what needs healing now, and each
    # fault's own signature stays in the incident as its history.
    S("fault_burst", "critical", "unit",
      description="the start limit was reached by separate faults (different causes, each start became ready), "
                  "not by a loop: reset the limit and start again, with a growing delay"),
    S("cuda_fatal", "critical", "log", (
        r"illegal memory access",
        r"device-side assert",
        r"CUBLAS_STATUS_(?!SUCCESS)\w+",
        r"CUDNN_STATUS_(?!SUCCESS)\w+",
        r"cuDNN error",
        r"unspecified launch failure",
        r"CUDA error: (?!out of memory)",
    ), description="the CUDA context is gone; only a new process recovers"),
    S("port_in_use", "critical", "log", (
        r"Address already in use",
        r"\[Errno 98\]",
        r"EADDRINUSE",
    ), description="another process holds the service's port"),
    S("enospc", "critical", "log", (
        r"No space left on device",
        r"\[Errno 28\]",
        r"ENOSPC",
    ), description="a disk the service writes to is full (or below watchdog.disk_free_floor_mb)"),
    S("crash_loop", "critical", "unit", (
        r"Start request repeated too quickly",
        r"Failed with result 'start-limit-hit'",
        r"entered FATAL state, too many start retries",
    ), description="the service manager gave up restarting the service (start limit reached)"),
    S("segfault", "critical", "log", (
        r"Segmentation fault",
        r"SIGSEGV",
        r"status=11/SEGV",
    ), description="the service process died of a segmentation fault"),
    S("cuda_oom", "warning", "log", (
        r"CUDA out of memory",
        r"OutOfMemoryError",
        # c10's form for cudaErrorMemoryAllocation outside the caching allocator (cuBLAS
        # workspaces, cudaMalloc in an extension): cuda_fatal's look-ahead leaves it here.
        r"CUDA error: out of memory",
    ), description="CUDA ran out of memory; harmless if the service stays healthy"),
    S("unexpected_exit", "critical", "log", (
        r"exited: \S+ \(.*not expected\)",
        r"Main process exited, code=(killed|dumped)",
        r"Watchdog timeout \(limit",
    ), description="the service process died (killed, crashed or hung and killed by its manager)"),
    S("unhealthy", "critical", "probe",
      description="/healthz failed every probe of a cycle (refused, timed out, degraded or failed)"),
    S("batch_input", "warning", "log", (
        r"FileNotFoundError",
        r"JSONDecodeError",
    ), context=r"batch", description="a batch task had a missing file or bad JSON (the job skips it)"),
)
del S

BY_NAME = {s.name: s for s in SIGNATURES}
NAMES = tuple(BY_NAME)
LOG_SIGNATURES = tuple(s for s in SIGNATURES if s.patterns)
PRECEDENCE = {s.name: i for i, s in enumerate(SIGNATURES)}

XID_RE = re.compile(r"NVRM: Xid \(PCI:([0-9A-Fa-f:.]+)\): (\d+)")
# NVIDIA's Xid table (https://docs.nvidia.com/deploy/xid-errors/): what to do per code.
XID_ACTIONS = {
    13: "restart_app", 31: "restart_app", 94: "restart_app",
    64: "reset_gpu", 95: "reset_gpu", 119: "reset_gpu", 120: "reset_gpu",
    79: "reboot",
    43: "ignore", 63: "ignore",
}


def xid_of(line):
    """(pci_bus, code) of an NVRM Xid line, or None."""
    m = XID_RE.search(line)
    return (m.group(1), int(m.group(2))) if m else None


# One alternation of every pattern: most lines match none, and one search per line is
# what keeps a megabyte of new log cheap to scan.
PREFILTER = re.compile("|".join("(?:%s)" % p for s in LOG_SIGNATURES for p in s.patterns))


def classify(line, context_lines=()):
    """Names of the signatures a log line carries (in precedence order)."""
    if not PREFILTER.search(line):
        return []
    return [s.name for s in LOG_SIGNATURES if s.matches(line, context_lines)]
