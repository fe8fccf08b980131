"""`glmtts batch run` against the running service: submit the file to POST /v1/batches,
follow GET /v1/batches/{id}, download the zip into --out.

Why: on a GPU server the service already holds the model; a second engine in the CLI
process is a second model copy on the same GPU (CUDA out of memory). The service runs
the job through its own worker at batch priority, journalled and resumable like any
service job, and Ctrl-C here only stops following it.

Where the service is: ``watchdog.url`` (derived from server.host/port unless set), the
URL glmtts-watchdog probes. Its key: ``watchdog.api_key``, else the first of
``server.api_keys`` (the CLI on the service's host reads the same config file).
"""

import io
import os
import zipfile
from types import SimpleNamespace

from ..errors import GlmttsError
from ..host import Host, HttpError
from .schema import Problem
from .validate import Report

PROBE_TIMEOUT_S = 3.0
POLL_S = 1.0


class ServiceUnavailable(GlmttsError):
    code = "service_unavailable"


class ServiceError(GlmttsError):
    code = "service_error"


def service_url(settings):
    return settings.watchdog.url.rstrip("/")


def api_key(settings):
    keys = [k for k in settings.server.api_keys if k]
    return settings.watchdog.api_key or (keys[0] if keys else "")


class BatchClient:
    def __init__(self, settings, *, url=None, key=None, timeout=60.0, host=None):
        self.url = (url or service_url(settings)).rstrip("/")
        key = api_key(settings) if key is None else key
        self.host = host or Host()  # sends the requests (glmtts/host/http.py)
        self.headers = {"Authorization": "Bearer %s" % key} if key else {}
        self.timeout = timeout

    def _request(self, method, path, timeout=None, **kw):
        return self.host.request(method, self.url + path, timeout=timeout or self.timeout, headers=self.headers, **kw)

    def answers(self):
        """True when a glmtts service answers /healthz at self.url (ready or not: a
        loading service queues the job and runs it once warm)."""
        try:
            r = self._request("GET", "/healthz", timeout=PROBE_TIMEOUT_S)
        except HttpError:
            return False
        try:
            body = r.json()
        except ValueError:
            return False
        return isinstance(body, dict) and "status" in body

    def _check(self, r, what):
        if r.status < 400:
            return r
        try:
            err = r.json().get("error") or {}
            message = err.get("message") or r.text[:300]
        except (ValueError, AttributeError):
            message = r.text[:300]
        if r.status in (401, 403):
            message += " (the CLI sends watchdog.api_key, else the first of server.api_keys)"
        raise ServiceError("%s: the service at %s answered HTTP %d: %s" % (what, self.url, r.status, message))

    def submit(self, path, *, skip_invalid=False):
        """(job dict, None) when the job was created, (None, Report) when the file is
        invalid (the service's own per-line report)."""
        with open(path, "rb") as f:
            data = f.read()
        try:
            r = self._request("POST", "/v1/batches", params={"skip_invalid": "true"} if skip_invalid else None,
                              files={"file": (os.path.basename(path), data, "application/x-ndjson")})
        except HttpError as e:
            raise ServiceUnavailable("submitting to the service at %s failed: %s" % (self.url, e)) from None
        if r.status == 422:
            try:
                report = r.json().get("report")
            except ValueError:
                report = None
            if isinstance(report, dict):
                return None, report_from_dict(report)
        return self._check(r, "submitting the batch").json(), None

    def status(self, job_id):
        try:
            r = self._request("GET", "/v1/batches/%s" % job_id)
        except HttpError as e:
            raise ServiceUnavailable("asking the service at %s about job %s failed: %s" % (self.url, job_id, e)) \
                from None
        return self._check(r, "job %s" % job_id).json()

    def follow(self, job_id, *, stop, on_progress=None, poll_s=POLL_S):
        """Poll until the job is finished (or ``stop`` is set); returns the last summary.
        A service restart in between is waited out: the job resumes there."""
        last = None
        while True:
            try:
                last = self.status(job_id)
            except ServiceUnavailable:
                if last is None:
                    raise
            else:
                if on_progress:
                    on_progress(None, progress_of(last))
                if last["status"] in ("done", "failed", "cancelled"):
                    return last
            if stop.wait(poll_s):
                return last

    def download(self, job_id, out_dir):
        """Extract the job's zip (outputs + manifest.json) into ``out_dir``; returns the
        names written."""
        try:
            r = self._request("GET", "/v1/batches/%s/archive" % job_id)
        except HttpError as e:
            raise ServiceUnavailable("downloading the outputs of job %s failed: %s" % (job_id, e)) from None
        self._check(r, "outputs of job %s" % job_id)
        os.makedirs(out_dir, exist_ok=True)
        names = []
        with zipfile.ZipFile(io.BytesIO(r.body)) as z:
            for info in z.infolist():
                name = os.path.basename(info.filename)
                if not name or name != info.filename:
                    continue  # the archive is flat; anything else is not ours to write
                with z.open(info) as src:
                    self.host.atomic_write(os.path.join(out_dir, name), src.read(),
                                           tmp=os.path.join(out_dir, ".%s.part" % name))
                names.append(name)
        return names


def progress_of(summary):
    """What cmd.ProgressBar.update reads, from a job summary's progress."""
    p = summary["progress"]
    return SimpleNamespace(total=p["total"], pending=p["pending"], failed=[None] * p["failed"])


def report_from_dict(d):
    """A validate.Report rebuilt from its to_dict() (the service's 422), so the CLI
    prints the same text as `glmtts batch validate`."""
    report = Report(path=d.get("file") or "upload")
    report.problems = [Problem(**p) for p in (d.get("errors") or []) + (d.get("warnings") or [])]
    report.lines = d.get("lines") or 0
    report.tasks = [SimpleNamespace(line=n) for n in d.get("valid_lines") or []]
    report.estimate = d.get("estimate") or {}
    return report

