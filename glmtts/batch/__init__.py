"""Batch jobs: JSONL schema and validation, durable job store, resumable runner,
retention. See store.py for the on-disk layout and the durability guarantees."""

from .schema import Problem, Task
from .store import BatchJob, JobStore
from .validate import Report, validate_file

__all__ = ["Problem", "Task", "BatchJob", "JobStore", "Report", "validate_file"]
