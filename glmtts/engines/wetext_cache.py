"""A writable, persistent home for WeTextProcessing's FSTs.

The official repository's ``TextFrontEnd`` builds WeTextProcessing's Chinese
normalizer with ``overwrite_cache=True`` and no ``cache_dir``: every front end
rebuilds the FSTs (16-22 s) and writes them into the installed package
(``site-packages/tn/``), which the shipped unit makes read-only
(``ProtectSystem=strict``: ``FstIOError: Write failed``).

``install()`` replaces the normalizer classes the front-end module imported with
``CachedNormalizer``: a request to rebuild goes to ``<state_dir>/cache/wetext/<key>/``
instead, where ``<key>`` names the class, the WeTextProcessing version and every
normalizer option, so a different option or an upgrade builds its own entry. An
entry is built in a temporary directory beside it and renamed into place only
once complete (with a ``glmtts-cache.json`` record), so a start killed mid-build
leaves no half entry, and two instances building at once both end up with a
complete one. Later starts read the entry. A normalizer asked to *read* its FSTs
(``overwrite_cache=False``, e.g. the English one, which ships them) is left alone:
reading a read-only package is fine.

This changes only names in the imported module, never a file of the checkout:
``git pull`` there stays the way to update the model.
"""

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time

from ..errors import EngineLoadError
from ..fsutil import atomic_write

log = logging.getLogger(__name__)

NAMES = ("ZhNormalizer", "EnNormalizer")  # what cosyvoice/cli/frontend.py binds
RECORD = "glmtts-cache.json"
DISTRIBUTION = "WeTextProcessing"


def cache_root(state_dir):
    return os.path.join(state_dir, "cache", "wetext")


def _version():
    from importlib import metadata
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


def cache_key(cls, options, version=None):
    ident = json.dumps({"class": "%s.%s" % (cls.__module__, cls.__qualname__), "options": options,
                        "version": version or _version()}, sort_keys=True, default=repr)
    return "%s-%s" % (cls.__module__.replace(".", "_"), hashlib.sha256(ident.encode()).hexdigest()[:16])


class CachedNormalizer:
    """Stands in for a normalizer class; constructs the real one against our cache."""

    def __init__(self, cls, root):
        self.cls, self.root = cls, root

    def __call__(self, cache_dir=None, overwrite_cache=False, **options):
        if cache_dir is not None or not overwrite_cache:
            return self.cls(cache_dir=cache_dir, overwrite_cache=overwrite_cache, **options)
        entry = os.path.join(self.root, cache_key(self.cls, options))
        if os.path.isfile(os.path.join(entry, RECORD)):
            log.info("text normalizer %s: reusing the FSTs in %s", self.cls.__module__, entry)
            return self.cls(cache_dir=entry, overwrite_cache=False, **options)
        return self._build(entry, options)

    def _build(self, entry, options):
        try:
            os.makedirs(self.root, exist_ok=True)
            work = tempfile.mkdtemp(prefix=".%s.build-" % os.path.basename(entry), dir=self.root)
        except OSError as e:
            raise EngineLoadError("cannot create the text-normalizer cache %s: %s (paths.state_dir must be "
                                  "writable by the service)" % (self.root, e.strerror or e)) from None
        log.info("text normalizer %s: building its FSTs once into %s", self.cls.__module__, entry)
        started = time.monotonic()
        try:
            normalizer = self.cls(cache_dir=work, overwrite_cache=True, **options)
            record = {"class": "%s.%s" % (self.cls.__module__, self.cls.__qualname__), "options": options,
                      "version": _version(), "built_s": round(time.monotonic() - started, 2),
                      "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            atomic_write(os.path.join(work, RECORD), (json.dumps(record, sort_keys=True, default=repr) + "\n").encode())
            try:
                os.rename(work, entry)
            except OSError:  # another instance on this state_dir finished first: keep theirs
                shutil.rmtree(work, ignore_errors=True)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        log.info("text normalizer %s: FSTs built in %.1f s", self.cls.__module__, time.monotonic() - started)
        return normalizer


def install(module, root):
    """Point the normalizer classes bound in ``module`` at ``root``. Idempotent; a
    later call (another engine in the same process) re-points them."""
    for name in NAMES:
        bound = getattr(module, name, None)
        if bound is None:  # the ttsfrd branch of the front end: no WeTextProcessing
            continue
        original = bound.cls if isinstance(bound, CachedNormalizer) else bound
        setattr(module, name, CachedNormalizer(original, root))
