"""What ``--dry-run`` runs on: the real host for every read, and a refusal, logged and
kept in ``refused``, for every change the host declares (glmtts/host/seam.py): a signal,
a file write, an account, a mutating systemctl/supervisorctl/nvidia-smi verb, an HTTP
request other than GET/HEAD. The dry-run callers already only describe what they would
do; this seam makes sure nothing they or a later change forget can act. A GET still
goes out: a dry run probes /healthz like a real cycle."""

import logging

from .host import Host
from .http import READ_METHODS, HttpError
from .procs import Completed
from .seam import declared
from .services import mutates

log = logging.getLogger(__name__)

_CHANGES = declared(Host)


class ReadOnlyHost:
    def __init__(self, host):
        self._host = host
        self.refused = []

    def __getattr__(self, name):
        if _CHANGES.get(name) not in (None, "undeclared"):
            return lambda *args, **kw: self._refuse(name, args)
        return getattr(self._host, name)

    def _refuse(self, name, args, answer=None):
        said = [str(a)[:80] for a in args]  # a path, not the megabytes written to it
        self.refused.append([name] + said)
        log.warning("dry run: not doing %s %s", name, " ".join(said))
        return answer

    def run(self, argv, timeout=60.0):
        if mutates(argv):
            self.refused.append(list(argv))
            log.warning("dry run: not running %s", " ".join(argv))
            return Completed(list(argv), 1, "", "dry run: not run")
        return self._host.run(argv, timeout=timeout)

    def run_checked(self, argv, timeout=None):
        if mutates(argv):
            return self.run(argv)  # refused: nothing ran, and a dry run's plan goes on
        return self._host.run_checked(argv, timeout=timeout)

    def run_preflight(self, argv, timeout):
        self._refuse("run_preflight", argv)
        return 1, "", "dry run: not run"

    def kill(self, pid, sig):
        self.refused.append(["kill", "-%d" % int(sig), str(pid)])
        log.warning("dry run: not sending signal %d to pid %d", int(sig), pid)

    def request(self, method, url, **kw):
        if method.upper() in READ_METHODS:
            return self._host.request(method, url, **kw)
        self.refused.append([method.upper(), url])
        log.warning("dry run: not sending %s %s", method.upper(), url)
        raise HttpError("dry run: %s %s not sent" % (method.upper(), url))
