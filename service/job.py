"""One unit of engine work (``Job``: its function, priority, future and heartbeat) and
the priorities the inference worker (worker.py) serves them in."""

from concurrent.futures import Future, InvalidStateError

from glmtts.errors import GlmttsError

# WATCHDOG: the watchdog's smoke test (a request carrying the watchdog token). It goes
# before everything waiting and is not counted against limits.max_queue, so a busy
# service with a full queue still proves itself healthy instead of being escalated as
# broken; it gets WATCHDOG_SLOTS places of its own so a leaked token cannot flood the queue.
WATCHDOG, INTERACTIVE, BATCH = -1, 0, 1
PRIORITY_NAMES = {WATCHDOG: "watchdog", INTERACTIVE: "interactive", BATCH: "batch"}
WATCHDOG_SLOTS = 2


class Cancelled(GlmttsError):
    code = "cancelled"
    http_status = 499


class Job:
    """One unit of engine work and its future."""

    def __init__(self, fn, priority, seq, now, clock):
        self.fn = fn
        self.priority = priority
        self.seq = seq
        self.future = Future()
        self.enqueued_at = now
        self.started_at = None
        self.progress_at = None
        self.cancelled = False  # the waiter gave up: skip if queued, stop at the next chunk
        self._clock = clock

    def beat(self):
        self.progress_at = self._clock()
        if self.cancelled:
            raise Cancelled("request abandoned by the client")

    def __lt__(self, other):
        return (self.priority, self.seq) < (other.priority, other.seq)


def settle(future, result=None, error=None):
    """Set a job's outcome unless the drain's deadline already answered its waiter."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
        return True
    except InvalidStateError:
        return False
