"""Batch job states, dependency-free. A job changes state only through
``BatchJob.transition`` (store.py), which logs every change.

    queued  -> running          a runner took the job
    running -> paused           an output or journal write hit ENOSPC; waits for space
    paused  -> running          space is back
    running -> done             every task has an outcome (done or failed)
    running -> queued           the runner stopped cleanly before the end (Ctrl-C, shutdown)
    any unfinished -> cancelled DELETE /v1/batches/{id} or `glmtts batch cancel`
    any unfinished -> failed    the job itself cannot go on (its input copy is gone)

A job left ``running``/``paused`` by a killed process is simply resumed: the journal, not
the state file, says which tasks are finished. Which process runs a job is not a state:
its lease says (lease.py), and only the lease's holder changes the state.
"""

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

# Task outcomes recorded in the journal.
TASK_START = "start"
TASK_DONE = "done"
TASK_FAILED = "failed"
