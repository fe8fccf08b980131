"""Batch jobs: JSONL schema and validation, durable job store, resumable runner,
job leases for replicas sharing a state_dir, retention. See store.py for the on-disk
layout and the durability guarantees, lease.py for what shared storage must offer."""

from .schema import Problem, Task
from .store import BatchJob, JobStore
from .validate import Report, validate_file

__all__ = ["Problem", "Task", "BatchJob", "JobStore", "Report", "validate_file"]
