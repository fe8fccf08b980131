"""Running the official GLM-TTS checkout in-process without moving anyone's cwd.

The repository opens ``ckpt/...`` and ``frontend/...`` relative to the working
directory (and ``./configs/custom_replace.jsonl`` on every text normalisation). A
process has one cwd shared by all threads, so ``os.chdir`` would pull the floor from
under the web server, the batch runner and the log reopener.

``RepoThread`` is one long-lived thread that owns the models. On Linux it first calls
``unshare(CLONE_FS)``: that thread — and only it — gets its own filesystem context
(cwd, umask), and then ``chdir``s to the checkout. Every other thread keeps the
process cwd. All model work (import, load, prompt features, synthesis) runs on that
thread, which also serialises GPU work the way one GPU needs it anyway.

Where ``unshare`` is refused (some container seccomp profiles), the fallback is the
only other safe shape: ``load()`` — which the service runs once at start-up, before
it listens and before any other thread does file work — changes the process cwd
under a module lock and restores it in ``finally``. Synthesis then never changes cwd;
the one relative read it would make (``configs/custom_replace.jsonl``, optional)
then resolves against the process cwd. ``describe()`` reports which mode is active.

Two more process-wide habits of the repository are contained here, on that thread:
it ``print()``s on stdout while it loads and synthesizes (stdout is the access log),
so ``ModelThreadStdout`` sends whatever the model thread prints to stderr (the error
log); and its mel extractor caches its basis and window in module globals keyed
without the sample rate, which ``ModuleCaches`` gives one private set per rate.
"""

import contextlib
import ctypes
import importlib
import logging
import os
import queue
import sys
import threading
from concurrent.futures import Future

from ..errors import EngineLoadError

log = logging.getLogger(__name__)

CLONE_FS = 0x00000200
ENTRY_MODULE = "glmtts_inference"

_PROCESS_CWD_LOCK = threading.Lock()
_IMPORT_LOCK = threading.Lock()
_MODEL_THREADS = set()  # idents of live RepoThreads: their print()s belong on stderr


class ModelThreadStdout:
    """``sys.stdout`` for the process: what a model thread writes goes to the current
    ``sys.stderr``, every other thread's output to the stdout this wraps."""

    def __init__(self, stdout):
        self._stdout = stdout

    def _target(self):
        return sys.stderr if threading.get_ident() in _MODEL_THREADS else self._stdout

    def write(self, text):
        return self._target().write(text)

    def flush(self):
        return self._target().flush()

    def __getattr__(self, name):
        return getattr(self._stdout, name)


def route_model_prints():
    """(Re)install ModelThreadStdout: something (a test harness, a log reopen) may have
    replaced sys.stdout since the last call."""
    if not isinstance(sys.stdout, ModelThreadStdout):
        sys.stdout = ModelThreadStdout(sys.stdout)


class ModuleCaches:
    """Private copies, per key, of a module's global cache dicts. Only ever used on the
    model thread, which serialises all model work, so swapping module attributes for
    the duration of one call is race-free."""

    def __init__(self, module, names):
        self._module = module
        self.names = [n for n in names if isinstance(getattr(module, n, None), dict)]
        self._store = {}

    @contextlib.contextmanager
    def scoped(self, key):
        mine = self._store.setdefault(key, {n: {} for n in self.names})
        saved = {n: getattr(self._module, n) for n in self.names}
        for n in self.names:
            setattr(self._module, n, mine[n])
        try:
            yield
        finally:
            for n, value in saved.items():
                setattr(self._module, n, value)


@contextlib.contextmanager
def substituted(module, name, value):
    """``module.name = value`` for the duration of a call made on the model thread."""
    saved = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, saved)


class ThreadCwd:
    """OS seam: give the calling thread a private working directory."""

    def isolate(self):
        """None on success, else why not."""
        if not sys.platform.startswith("linux"):
            return "unshare(CLONE_FS) is Linux-only (platform %s)" % sys.platform
        try:
            unshare = ctypes.CDLL(None, use_errno=True).unshare
        except (OSError, AttributeError) as e:
            return "libc has no unshare(): %s" % e
        if unshare(CLONE_FS) != 0:
            return "unshare(CLONE_FS) refused: %s" % os.strerror(ctypes.get_errno())
        return None


class RepoThread:
    """The one thread that touches the GLM-TTS checkout. A daemon thread: a model
    wedged inside CUDA must not keep the process from exiting when systemd stops it."""

    def __init__(self, home, cwd=None):
        self.home = home
        self._cwd = cwd or ThreadCwd()
        self.isolation = None  # "thread" (private cwd) | "load-lock" (fallback)
        self.isolation_error = None
        self._queue = queue.Queue()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="glmtts-model", daemon=True)
        self._thread.start()
        self._ready.wait()

    def _serve(self):
        _MODEL_THREADS.add(threading.get_ident())
        why_not = self._cwd.isolate()
        if why_not is None:
            os.chdir(self.home)  # this thread only: its fs context is private now
            self.isolation = "thread"
        else:
            self.isolation = "load-lock"
            self.isolation_error = why_not
        self._ready.set()
        while True:
            item = self._queue.get()
            if item is None:
                _MODEL_THREADS.discard(threading.get_ident())
                return
            future, fn, args, kwargs = item
            del item
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:  # noqa: B902 - handed to the caller as is
                    future.set_exception(exc)
                else:
                    future.set_result(result)
                    del result
            # nothing of the finished call may stay referenced from this frame: its
            # tensors (or a traceback holding them) would pin GPU memory until the next call
            del future, fn, args, kwargs

    def call(self, fn, *args, **kwargs):
        """Run ``fn`` on the model thread and wait; its exception re-raises here."""
        route_model_prints()
        future = Future()
        self._queue.put((future, fn, args, kwargs))
        try:
            return future.result()
        finally:
            del future

    def call_in_home(self, fn, *args, **kwargs):
        """Like ``call``, for work that must see the checkout as cwd (load)."""
        return self.call(self._in_home, fn, args, kwargs)

    def _in_home(self, fn, args, kwargs):
        if self.isolation == "thread":
            return fn(*args, **kwargs)
        log.warning("GLM-TTS: %s; changing the process cwd to %s for the duration of load only",
                    self.isolation_error, self.home)
        with _PROCESS_CWD_LOCK:
            previous = os.getcwd()
            os.chdir(self.home)
            try:
                return fn(*args, **kwargs)
            finally:
                os.chdir(previous)

    def shutdown(self):
        self._queue.put(None)


def import_repo(home):
    """Import the checkout's ``glmtts_inference`` once per process (its packages are
    generic top-level names — utils, llm, flow, cosyvoice — so two checkouts cannot
    coexist in one interpreter)."""
    with _IMPORT_LOCK:
        module = sys.modules.get(ENTRY_MODULE)
        if module is not None:
            where = os.path.dirname(os.path.abspath(getattr(module, "__file__", "") or ""))
            if where != home:
                raise EngineLoadError("this process already imported %s from %s; engine.glmtts_home is %s "
                                      "(restart the service to switch checkouts)" % (ENTRY_MODULE, where, home))
            return module
        if home not in sys.path:
            # the checkout's own scripts run with their root first on sys.path
            sys.path.insert(0, home)
        try:
            return importlib.import_module(ENTRY_MODULE)
        except ImportError as e:
            raise EngineLoadError("cannot import %s/%s.py: %s (install the GLM-TTS dependencies: "
                                  "pip install '.[glmtts]')" % (home, ENTRY_MODULE, e)) from e
        except Exception as e:
            raise EngineLoadError("importing %s/%s.py failed: %s: %s" % (home, ENTRY_MODULE, type(e).__name__, e)) from e
