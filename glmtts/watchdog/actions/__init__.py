"""Runbook actions: one module per action, and the explicit name -> class table the
runbook parser validates against (no folder scanning)."""

from .alert import Alert
from .base import COMMON_PARAMS, DRY_RUN, ESCALATE, FAILED, OK, SKIPPED, Action, Context, StepResult
from .capture_diagnostics import CaptureDiagnostics
from .escalate import Escalate
from .free_port import FreePort
from .gpu_reset import GpuReset
from .kill_unit_processes import KillUnitProcesses
from .prune_outputs import PruneOutputs
from .restart import Restart
from .smoke_test import SmokeTest
from .stop_unit import StopUnit
from .wait_ready import WaitReady

ACTIONS = {cls.name: cls for cls in (
    CaptureDiagnostics, StopUnit, KillUnitProcesses, FreePort, GpuReset, Restart, WaitReady, SmokeTest,
    PruneOutputs, Alert, Escalate)}

__all__ = ["ACTIONS", "COMMON_PARAMS", "Action", "Context", "StepResult", "OK", "FAILED", "SKIPPED", "ESCALATE", "DRY_RUN"]
