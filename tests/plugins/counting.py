"""A plug-in engine that counts syntheses across processes, for the replica tests
(tests/batch/test_batch_replicas.py): ``CountingEngine`` is ``FaultEngine`` (faults.py: the
real espeak engine, with $GLMTTS_TEST_FAULT_FILE's fault word, e.g. ``slow:0.1``) that
also appends one line per synthesis to the file named by $GLMTTS_TEST_SYNTH_LOG:

    start <pid> <text>     before the engine runs
    end <pid> <text>       after its last chunk

Several service processes may share the file: each line is one O_APPEND write, which
the kernel never interleaves with another. The start-up warm-up is not counted."""

import os

from .faults import FaultEngine

SYNTH_LOG_ENV = "GLMTTS_TEST_SYNTH_LOG"


def _log(event, text):
    path = os.environ.get(SYNTH_LOG_ENV)
    if not path:
        return
    line = ("%s %d %s\n" % (event, os.getpid(), text.replace("\n", " "))).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


class CountingEngine(FaultEngine):
    def synthesize_stream(self, request):
        warmup = getattr(self, "_warmup_pending", False) and request.text == self.settings.engine.warmup_text
        if not warmup:
            _log("start", request.text)
        yield from super().synthesize_stream(request)
        if not warmup:
            _log("end", request.text)


def read_log(path):
    """[(event, pid, text)] from a synth log."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        event, pid, text = line.split(" ", 2)
        out.append((event, int(pid), text))
    return out
