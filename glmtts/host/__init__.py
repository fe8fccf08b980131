"""The OS seam: ``Host`` (clock, processes and signals, service manager, files, GPUs,
HTTP; one module per part) and ``ReadOnlyHost``, what a dry run runs on. Tests use the
recording fake in tests/support/host.py."""

from .clock import Clock  # noqa: F401
from .gpu import GpuInfo  # noqa: F401
from .host import Host  # noqa: F401
from .http import HttpError, Response  # noqa: F401
from .procs import CommandFailed, Completed  # noqa: F401
from .readonly import ReadOnlyHost  # noqa: F401
from .services import MUTATING_VERBS, mutates  # noqa: F401
