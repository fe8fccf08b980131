"""``<paths.state_dir>/cache``: where the service's scratch files live, and their pruning.

Gradio keeps every upload (voice recordings: personal data) and every result it serves
in GRADIO_TEMP_DIR, by default /tmp/gradio, outside the state directory and never
deleted. The service points it at ``<state_dir>/cache/gradio`` and Python's temporary
directory at ``<state_dir>/cache/tmp`` (``use_for_process``, before gradio is imported:
gradio reads GRADIO_TEMP_DIR at import), so nothing it writes lands in /tmp, and both are
pruned with the batch outputs' retention (``batch.retention_days``): at UI start-up,
every PRUNE_EVERY_S while the service runs, and by `glmtts batch prune` (which the
disk-full runbook and the watchdog's prune_outputs step call).

A file's age is the later of its mtime and ctime: gradio touches a cached copy when it
hands it out again, and a copy made with copy2 keeps its source's old mtime but gets a
new ctime. Files younger than MIN_AGE_S are never pruned, even with retention_days = 0:
an open page may still submit an upload it made minutes ago.
"""

import logging
import os
import tempfile
import threading
import time

log = logging.getLogger(__name__)

DAY = 86400.0
MIN_AGE_S = 3600.0
PRUNE_EVERY_S = 3600.0


def root(settings):
    return os.path.join(settings.paths.state_dir, "cache")


def gradio_dir(settings):
    return os.path.join(root(settings), "gradio")


def tmp_dir(settings):
    return os.path.join(root(settings), "tmp")


def use_for_process(settings, environ=None):
    """Point GRADIO_TEMP_DIR, TMPDIR and Python's tempfile at the state directory (0700:
    uploads are personal data). Call before gradio is imported."""
    environ = os.environ if environ is None else environ
    paths = {"GRADIO_TEMP_DIR": gradio_dir(settings), "TMPDIR": tmp_dir(settings)}
    for path in [root(settings)] + list(paths.values()):
        os.makedirs(path, exist_ok=True)
        os.chmod(path, 0o700)  # makedirs' mode covers the leaf only (and not one that exists)
    for var, path in paths.items():
        if environ.get(var) not in (None, "", path):
            log.warning("%s=%s is replaced by %s: the service keeps its scratch files under paths.state_dir, "
                        "where they are pruned", var, environ[var], path)
        environ[var] = path
    tempfile.tempdir = paths["TMPDIR"]  # gettempdir() caches its first answer: replace it
    return paths


def _age_ts(st):
    return max(st.st_mtime, st.st_ctime)


def prune(settings, older_than_days=None, now=None, *, dry_run=False):
    """Delete files under the cache directories older than ``older_than_days`` (default
    batch.retention_days, at least MIN_AGE_S), then the directories left empty that were
    already that old. Returns {"dirs", "older_than_days", "files", "bytes_freed",
    "errors", "dry_run"}."""
    days = settings.batch.retention_days if older_than_days is None else float(older_than_days)
    now = time.time() if now is None else now
    cutoff = now - max(days * DAY, MIN_AGE_S)
    report = {"dirs": [gradio_dir(settings), tmp_dir(settings)], "older_than_days": days, "files": 0,
              "bytes_freed": 0, "errors": [], "dry_run": dry_run}
    for top in report["dirs"]:
        if os.path.isdir(top):
            _prune_tree(top, cutoff, dry_run, report)
    if report["files"] and not dry_run:
        log.info("cache prune: deleted %d file(s) older than %g days under %s, freed %d bytes", report["files"],
                 days, root(settings), report["bytes_freed"])
    return report


def _prune_tree(top, cutoff, dry_run, report):
    old_dirs, files = [], []
    for dirpath, _dirs, names in os.walk(top):  # never follows symlinks
        try:
            # judged before anything in it is deleted (deleting makes the directory new)
            if dirpath != top and _age_ts(os.lstat(dirpath)) < cutoff:
                old_dirs.append(dirpath)
        except OSError:
            continue
        files.extend(os.path.join(dirpath, n) for n in names)
    for path in files:
        try:
            st = os.lstat(path)
            if _age_ts(st) >= cutoff:
                continue
            if not dry_run:
                os.unlink(path)
        except FileNotFoundError:
            continue  # gone meanwhile (gradio's own clean-up)
        except OSError as e:
            report["errors"].append("%s: %s" % (path, e))
            continue
        report["files"] += 1
        report["bytes_freed"] += st.st_size
    if dry_run:
        return
    for d in sorted(old_dirs, key=len, reverse=True):  # deepest first
        try:
            os.rmdir(d)
        except OSError:
            pass  # not empty: something in it is still young


class Pruner:
    """Prunes the cache at start and every ``every_s`` on a daemon thread of its own;
    ``stop()`` ends it at once (the loop waits on an Event)."""

    def __init__(self, settings, every_s=PRUNE_EVERY_S, now=time.time):
        self.settings = settings
        self.every_s = every_s
        self.now = now
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="glmtts-cache-prune", daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()

    def _run(self):
        while True:
            try:
                prune(self.settings, now=self.now())
            except Exception as e:  # a failed prune must not end the pruning
                log.warning("cache prune failed: %s: %s", type(e).__name__, e)
            if self._stop.wait(self.every_s):
                return
