"""The GPUs as the host sees them, through glmtts.gpu.Nvml (the one NVML wrapper, shared
with the service's GPU figures). No driver or no GPU is normal on a CPU host: no GPUs."""

import logging
from dataclasses import dataclass, field

from .seam import reads

log = logging.getLogger(__name__)


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


class Gpus:
    _nvml = None   # a glmtts.gpu.Nvml-like seam; None = the real one, made lazily; False = none here

    @reads
    def nvml(self):
        """The NVML seam, or None without one."""
        if self._nvml is None:
            from ..gpu import Nvml, NvmlUnavailable
            nv = Nvml()
            try:
                nv.device_count()
                self._nvml = nv
            except NvmlUnavailable as e:
                log.debug("NVML unavailable: %s", e)
                self._nvml = False
        return self._nvml or None

    @reads
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
