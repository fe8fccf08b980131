"""The /healthz probe. A failed answer is retried within the same cycle (count and
spacing from config) before the service is called unhealthy, so a hang costs one cycle
rather than three; the caller persists consecutive failures across cycles.

A service answering 503 "draining" got SIGTERM and is finishing its work before it exits
0 (service/drain.py): a planned stop in progress, its own verdict DRAINING. It is not
unhealthy (no signature, no failed probe counted, no remediation: restarting it would only
cut the drain short); what the stop leads to (the manager's account of it, the next
process) is judged as always."""

import logging
import time
from dataclasses import dataclass, field

from .. import watchdog_token
from ..host import Host, HttpError

log = logging.getLogger(__name__)

HEALTHY, LOADING, UNHEALTHY, DRAINING = "healthy", "loading", "unhealthy", "draining"


@dataclass
class ProbeResult:
    verdict: str                 # healthy | loading | unhealthy
    url: str
    http_status: int = None
    status: str = None           # the body's "status" field
    reason: str = None
    attempts: int = 0
    latency_s: float = None
    body: dict = field(default_factory=dict)

    @property
    def ok(self):
        return self.verdict == HEALTHY

    def summary(self):
        if self.verdict == HEALTHY:
            return "healthy (%d in %.0f ms)" % (self.http_status, (self.latency_s or 0) * 1000)
        if self.verdict == DRAINING:
            return "draining: a planned stop in progress, not an incident (HTTP %s: %s)" % (self.http_status, self.reason)
        what = "HTTP %s %s" % (self.http_status, self.status) if self.http_status else "no answer"
        return "%s: %s%s after %d probe(s)" % (self.verdict, what, ": %s" % self.reason if self.reason else "", self.attempts)

    def to_dict(self):
        return {"verdict": self.verdict, "url": self.url, "http_status": self.http_status, "status": self.status,
                "reason": self.reason, "attempts": self.attempts, "latency_s": self.latency_s}


class Probe:
    def __init__(self, url, timeout_s=10.0, retries=3, interval_s=5.0, loading_grace_s=600.0,
                 api_key="", sleep=time.sleep, clock=time.monotonic, token="", http=None):
        """``http``: what sends the GET (the watchdog's Host; anything with its ``request``)."""
        self.url = url.rstrip("/") + "/healthz"
        self.timeout_s = timeout_s
        self.retries = max(1, retries)
        self.interval_s = interval_s
        self.loading_grace_s = loading_grace_s
        self.headers = {"Authorization": "Bearer %s" % api_key} if api_key else {}
        if token:  # the watchdog's identity (glmtts/watchdog_token.py); health routes never refuse anyway
            self.headers[watchdog_token.HEADER] = token
        self.sleep = sleep
        self.clock = clock
        self.http = http or Host()

    def once(self):
        t0 = self.clock()
        try:
            r = self.http.request("GET", self.url, timeout=self.timeout_s, headers=self.headers)
        except HttpError as e:
            return ProbeResult(UNHEALTHY, self.url, reason=_short(e), attempts=1, latency_s=self.clock() - t0)
        latency = self.clock() - t0
        try:
            body = r.json()
            if not isinstance(body, dict):
                body = {}
        except ValueError:
            body = {}
        status = body.get("status")
        if r.status == 200 and status in ("ok", None):
            return ProbeResult(HEALTHY, self.url, r.status, status or "ok", attempts=1, latency_s=latency, body=body)
        verdict = UNHEALTHY
        uptime = body.get("uptime_s")
        # A service that is still loading its model is not failing, until loading
        # takes longer than the ready timeout (then it is stuck).
        if status == "loading" and (uptime is None or uptime < self.loading_grace_s):
            verdict = LOADING
        elif status == "draining":
            verdict = DRAINING
        return ProbeResult(verdict, self.url, r.status, status, body.get("reason") or body.get("last_error"),
                           attempts=1, latency_s=latency, body=body)

    def check(self):
        """Probe up to ``retries`` times; the first healthy (or loading) answer wins."""
        result = None
        for attempt in range(1, self.retries + 1):
            result = self.once()
            result.attempts = attempt
            if result.verdict != UNHEALTHY:
                return result
            log.info("probe %s failed (%d/%d): %s", self.url, attempt, self.retries, result.summary())
            if attempt < self.retries:
                self.sleep(self.interval_s)
        return result


def _short(exc):
    text = str(exc)
    for key in ("Connection refused", "Read timed out", "timed out", "Name or service not known"):
        if key in text:
            return key.lower()
    return text[:200]
