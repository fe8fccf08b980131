"""Batch job states and the job's machine (glmtts/machine.py), dependency-free. A job
changes state only through ``BatchJob.transition`` (store.py), which runs ``JOB``: an
arrow not in the table raises InvalidTransition and changes nothing (a finished job
stays finished); every change is logged, and entering a state runs its entry effects
from ``JOB.entry``, in order (store.py supplies them):

    stamp     updated_at = now, and the reason when one is given
    started   started_at = now, the first time the job runs
    finished  finished_at = now
    save      job.json, written atomically (temp + fsync + rename)

A job left ``running``/``paused`` by a killed process is simply resumed (``running ->
running``, ``paused -> running``): the journal, not the state file, says which tasks are
finished. Which process runs a job is not a state: its lease says (lease.py), and only
the lease's holder changes the state (or, for a job no live process holds, a cancel).
"""

import logging

from ..machine import InvalidTransition, Machine

QUEUED = "queued"
RUNNING = "running"
PAUSED = "paused"
DONE = "done"
CANCELLED = "cancelled"
FAILED = "failed"

# Unfinished jobs: a runner (the service at start-up, or `glmtts batch run`) resumes them.
RESUMABLE = (QUEUED, RUNNING, PAUSED)
# Finished jobs: nothing more will happen; retention may delete them.
FINISHED = (DONE, CANCELLED, FAILED)
ALL = RESUMABLE + FINISHED


def _status(job):
    return job.state["status"]


def _put_status(job, new):
    job.state["status"] = new


JOB = Machine("batch", {
    QUEUED: (
        RUNNING,     # queued -> running: a runner (holding the lease) took the job
        CANCELLED,   # queued -> cancelled: DELETE /v1/batches/{id}, `glmtts batch cancel`, or found cancelled
        FAILED,      # queued -> failed: the job itself cannot go on (its input copy is gone)
    ),
    RUNNING: (
        RUNNING,     # running -> running: resumed after the process running it died (or lost its lease)
        PAUSED,      # running -> paused: an output or journal write hit ENOSPC; waits for space
        DONE,        # running -> done: every task has an outcome (done or failed)
        QUEUED,      # running -> queued: the runner stopped cleanly before the end (Ctrl-C, shutdown)
        CANCELLED,   # running -> cancelled: cancel requested, seen between tasks
        FAILED,      # running -> failed: as from queued
    ),
    PAUSED: (
        RUNNING,     # paused -> running: space is back, or resumed after the process died while paused
        QUEUED,      # paused -> queued: the runner stopped while waiting for space
        CANCELLED,   # paused -> cancelled: cancel requested while waiting for space
        FAILED,      # paused -> failed: as from queued
    ),
    # done, cancelled, failed: finished, no arrow out
}, entry={
    RUNNING: ("stamp", "started", "save"),
    PAUSED: ("stamp", "save"),
    QUEUED: ("stamp", "save"),
    DONE: ("stamp", "finished", "save"),
    CANCELLED: ("stamp", "finished", "save"),
    FAILED: ("stamp", "finished", "save"),
}, levels={FAILED: logging.WARNING}, get=_status, put=_put_status, key=lambda job: job.id,
    log=logging.getLogger("glmtts.batch.store"))

__all__ = ["QUEUED", "RUNNING", "PAUSED", "DONE", "CANCELLED", "FAILED", "RESUMABLE", "FINISHED", "ALL", "JOB",
           "InvalidTransition", "TASK_START", "TASK_DONE", "TASK_FAILED"]

# Task outcomes recorded in the journal.
TASK_START = "start"
TASK_DONE = "done"
TASK_FAILED = "failed"
