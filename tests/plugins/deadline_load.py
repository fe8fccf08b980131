"""``DeadlineLoadEngine``: the fault engine (tests/plugins/faults.py) with a load() that
ends at a fixed wall-clock time, $GLMTTS_TEST_LOAD_UNTIL (seconds since the epoch),
however long the process took to get there.

A stand-in for a model load of a known length counted from the container's start, as
the kubelet counts it: SlowLoadEngine's sleep comes on top of the interpreter's imports,
and the espeak engine's own load (its calibration is CPU work), which take anything from
one to ten seconds on a loaded machine, so a load meant to end just inside a startup
budget could end outside it. Here the real load runs first and the rest of the time is
waited out, so only the warm-up synthesis after load() is left to chance."""

import os
import time

from tests.plugins.faults import FaultEngine

LOAD_UNTIL_ENV = "GLMTTS_TEST_LOAD_UNTIL"


class DeadlineLoadEngine(FaultEngine):
    def load(self):
        try:
            until = float(os.environ[LOAD_UNTIL_ENV])
        except (KeyError, ValueError):
            raise ValueError("DeadlineLoadEngine needs %s = the epoch time at which load() ends" % LOAD_UNTIL_ENV)
        super().load()
        left = until - time.time()
        if left > 0:
            time.sleep(left)
