"""Fault-injecting plug-in engines (the contract in .team/COMMON.md; other tests rely on it).

``FaultEngine`` wraps the real embedded ``espeak`` engine. Before each synthesis it reads
the *fault word*: the first line of the file named by $GLMTTS_TEST_FAULT_FILE (read every
time, so a running service can be told to fault later), else $GLMTTS_TEST_FAULT as it
was at start-up. Words:

  oom           raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate ...")
  oom_wedge     print a genuine CUDA OOM traceback on stderr, then block forever
  cuda_fatal    raise RuntimeError("CUDA error: an illegal memory access was encountered")
  segfault      the process really receives SIGSEGV
  wedge         block forever
  slow:SECONDS  sleep that long, then synthesize normally
  slow_chunk:SECONDS  sleep that long before each sentence chunk (streaming tests)
  (empty / no file)  plain espeak

The service's start-up warm-up (the first synthesis after load(), when its text is
engine.warmup_text) never faults, so a service started with a fault becomes ready first
and faults on its first real request (whatever its text).

``SlowLoadEngine``: load() sleeps $GLMTTS_TEST_LOAD_DELAY_S (default 5) first.
``BrokenEngine``: load() raises EngineLoadError (weights file missing).
"""

import os
import signal
import sys
import threading
import time
import traceback

from glmtts.engines import resolve
from glmtts.engines.base import Engine
from glmtts.errors import EngineLoadError

FAULT_FILE_ENV = "GLMTTS_TEST_FAULT_FILE"
FAULT_ENV = "GLMTTS_TEST_FAULT"
LOAD_DELAY_ENV = "GLMTTS_TEST_LOAD_DELAY_S"

OOM_MESSAGE = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
               "79.15 GiB of which 1.06 GiB is free. Of the allocated memory 75.30 GiB is allocated "
               "by PyTorch, and 1.25 GiB is reserved by PyTorch but unallocated.")
FATAL_MESSAGE = ("CUDA error: an illegal memory access was encountered\n"
                 "CUDA kernel errors might be asynchronously reported at some other API call, "
                 "so the stacktrace below might be incorrect.")


def _inner_engine_class():
    return resolve("espeak")


def read_fault(start_word=""):
    """The current fault word ('' = behave normally)."""
    path = os.environ.get(FAULT_FILE_ENV)
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                word = f.readline().strip()
            if word:
                return word
        except FileNotFoundError:
            pass
    return start_word


def _block_forever():
    while True:  # an Event nobody sets: the thread is wedged, as a hung CUDA kernel would be
        threading.Event().wait(3600)


def _raise_oom():
    import torch  # only the fault engines import torch; the real error class, not a look-alike

    raise torch.cuda.OutOfMemoryError(OOM_MESSAGE)


def inject(word):
    """Act out one fault word (returns for words that only delay)."""
    if not word:
        return
    if word == "oom":
        _raise_oom()
    if word == "oom_wedge":
        try:
            _raise_oom()
        except Exception:
            sys.stderr.write("Traceback during synthesis (fault oom_wedge):\n")
            traceback.print_exc(file=sys.stderr)
            sys.stderr.flush()
        _block_forever()
    if word == "cuda_fatal":
        raise RuntimeError(FATAL_MESSAGE)
    if word == "segfault":
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGSEGV)
        time.sleep(5)  # the signal is delivered asynchronously; never continue normally
    if word == "wedge":
        _block_forever()
    if word.startswith("slow:"):
        time.sleep(float(word.split(":", 1)[1]))
        return
    raise ValueError("unknown fault word %r in %s" % (word, FAULT_FILE_ENV))


class FaultEngine(Engine):
    """The espeak engine with faults injected before each synthesis."""

    name = "faults"

    def __init__(self, settings):
        super().__init__(settings)
        self.inner = _inner_engine_class()(settings)
        self.sample_rates = getattr(self.inner, "sample_rates", self.sample_rates)
        self.start_word = os.environ.get(FAULT_ENV, "").strip()

    def load(self):
        self.inner.load()
        self.loaded = True
        self._warmup_pending = True

    def _is_warmup(self, request):
        pending, self._warmup_pending = getattr(self, "_warmup_pending", False), False
        return pending and request.text == self.settings.engine.warmup_text

    def prepare_prompt(self, audio, sample_rate, prompt_text):
        return self.inner.prepare_prompt(audio, sample_rate, prompt_text)

    def synthesize_stream(self, request):
        word = "" if self._is_warmup(request) else read_fault(self.start_word)
        if word.startswith("slow_chunk:"):
            delay = float(word.split(":", 1)[1])
            for part in self.inner.synthesize_stream(request):
                time.sleep(delay)
                yield part
            return
        inject(word)
        yield from self.inner.synthesize_stream(request)

    def describe(self):
        info = dict(self.inner.describe())
        info["name"] = "%s(%s)" % (type(self).__name__, info.get("name", "espeak"))
        info["loaded"] = self.loaded
        return info

    def release_memory(self):
        self.inner.release_memory()


class SlowLoadEngine(FaultEngine):
    def load(self):
        time.sleep(float(os.environ.get(LOAD_DELAY_ENV, "5")))
        super().load()


class BrokenEngine(FaultEngine):
    def load(self):
        raise EngineLoadError("test engine cannot load: weights file ckpt/missing.safetensors not found")
