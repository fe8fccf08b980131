"""The clock: wall time for records, monotonic for durations, sleep for waits. Tests pass
a clock that moves only when slept on (tests/support/host.py)."""

import time


class Clock:
    def now(self):
        return time.time()

    def monotonic(self):
        return time.monotonic()

    def sleep(self, seconds):
        time.sleep(max(0.0, seconds))
