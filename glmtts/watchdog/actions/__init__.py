"""Runbook actions: one module per action, and the explicit name -> class table the
runbook parser validates against (no folder scanning). A step may also name a plug-in
action as ``package.module:Class`` (an Action subclass), as engines do; tests use this
for a deliberately slow step, and production runbooks name only the table's actions."""

import importlib

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



def resolve(name):
    """The Action class for a step's action name, or None."""
    if name in ACTIONS:
        return ACTIONS[name]
    if ":" not in name:
        return None
    module, _, attr = name.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError):
        return None
    return cls if isinstance(cls, type) and issubclass(cls, Action) else None


__all__ = ["ACTIONS", "resolve", "COMMON_PARAMS", "Action", "Context", "StepResult", "OK", "FAILED", "SKIPPED", "ESCALATE", "DRY_RUN"]
