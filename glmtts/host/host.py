"""``Host``: the one object through which glmtts touches the operating system. The
watchdog, the installer and the batch runner each build one; tests pass the recording
fake of tests/support/host.py instead, and ``--dry-run`` wraps it in ReadOnlyHost.
Production code never asks whether it runs under a test."""

from pathlib import Path

from .accounts import Accounts
from .clock import Clock
from .files import Files
from .gpu import Gpus
from .http import Http
from .procs import Procs
from .services import Services


class Host(Files, Accounts, Procs, Services, Gpus, Http):
    """``root``: where "/" is (a directory tree for `glmtts-system --root`); offline
    (not this machine's systemd and account database) when it is not "/". ``clock``,
    ``nvml`` (a glmtts.gpu.Nvml-like object) and ``http`` (a requests.Session-like
    transport) default to the real ones."""

    def __init__(self, root="/", *, clock=None, nvml=None, http=None, nvidia_smi="nvidia-smi",
                 cgroup_root="/sys/fs/cgroup"):
        self.root = Path(root)
        self.offline = str(root) != "/"
        self.clock = clock or Clock()
        self.nvidia_smi = nvidia_smi
        self.cgroup_root = cgroup_root
        self._nvml = nvml
        self._http = http
