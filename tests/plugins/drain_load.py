"""The client side of a drain (service/drain.py), shared by the drain tests under a bare
process, supervisord and systemd, and by bench/drain.py.

    load = DrainLoad(url, n=12)
    load.queue()                 # n requests, each waiting in the service's queue or running
    load.signal_sent()           # right after the stop signal: late requests start
    ...                          # whatever stops the service (kill, supervisorctl, systemctl)
    load.finish()
    report = load.report()       # what a user counts: lost, 5xx, refused connections

Every queued request (sent before the signal) must get 200 with audio that decodes, is long
enough and is not silent. A late request (sent after the signal) may get 503 draining with
Retry-After, or a refused connection once the listener has closed, or 200 with real audio
(the server acts on a signal within 0.1 s: a request that reached it first is served);
anything else is a failure. Each request uses its own connection, as separate clients would.
"""

import io
import threading
import time
from dataclasses import dataclass

import numpy as np
import requests
import soundfile as sf

TEXT = "你好，这是排水测试的第%d句话。"
LATE_EVERY_S = 0.2
MAX_LATE = 600


@dataclass
class Outcome:
    kind: str                # "queued" (sent before the signal) | "late" (after it)
    sent_at: float           # monotonic
    done_at: float = None
    status: int = None       # None: no HTTP answer (see error)
    retry_after: str = None
    code: str = None         # the JSON error's code
    audio_s: float = None    # decoded duration of a 200
    audio_ok: bool = False
    error: str = None        # connection refused / reset / timeout

    @property
    def acceptable_refusal(self):
        return self.status == 503 and self.code == "draining" and bool(self.retry_after)


def _audio(body):
    try:
        y, rate = sf.read(io.BytesIO(body), dtype="float32")
    except Exception:  # noqa: BLE001 - any undecodable body is simply not valid audio
        return None, False
    seconds = len(y) / float(rate)
    return seconds, seconds > 0.3 and float(np.sqrt(np.mean(np.square(y)))) > 1e-3


def _post(url, text, timeout, headers=None):
    return requests.post(url + "/v1/audio/speech", json={"input": text, "response_format": "wav"}, timeout=timeout,
                         headers={"Connection": "close", **(headers or {})})


class DrainLoad:
    def __init__(self, url, n=12, timeout=180.0, clock=time.monotonic, headers=None, text=None):
        """``headers`` go with every request (an API key); ``text`` replaces the request
        text (a longer one holds a fast engine busy long enough to queue n requests)."""
        self.headers = headers or {}
        self.text = text
        self.url = url.rstrip("/")
        self.n = n
        self.timeout = timeout
        self.clock = clock
        self.outcomes = []
        self.signal_at = None
        self.pending_at_signal = None
        self._threads = []
        self._lock = threading.Lock()
        self._stop_late = threading.Event()

    def _send(self, kind, i, timeout):
        o = Outcome(kind, self.clock())
        try:
            text = self.text or TEXT
            r = _post(self.url, text.replace("%d", str(i)), timeout, self.headers)
            o.status, o.retry_after = r.status_code, r.headers.get("Retry-After")
            if r.status_code == 200:
                o.audio_s, o.audio_ok = _audio(r.content)
            else:
                try:
                    o.code = (r.json().get("error") or {}).get("code")
                except ValueError:
                    o.code = None
        except requests.RequestException as e:
            o.error = type(e).__name__ + ": " + str(e)[:160]
        o.done_at = self.clock()
        with self._lock:
            self.outcomes.append(o)
        return o

    def health(self):
        return requests.get(self.url + "/healthz", timeout=5).json()

    def queue(self, wait_s=60.0):
        """Send n requests and wait until the service holds all of them (queued or running)."""
        for i in range(self.n):
            t = threading.Thread(target=self._send, args=("queued", i, self.timeout), daemon=True)
            t.start()
            self._threads.append(t)
        deadline = self.clock() + wait_s
        while self.clock() < deadline:
            h = self.health()
            if h.get("queue_depth", 0) + h.get("in_flight", 0) >= self.n:
                return h
            time.sleep(0.05)
        raise AssertionError("the service never held %d requests at once: %s" % (self.n, self.health()))

    def signal_sent(self, pending=None):
        """Call right after the stop signal was sent: from now on requests are late."""
        self.signal_at = self.clock()
        self.pending_at_signal = self.n if pending is None else pending
        t = threading.Thread(target=self._late, daemon=True)
        t.start()
        self._threads.append(t)

    def _late(self):
        """A new client every LATE_EVERY_S (each on its own thread: an admitted one may wait
        out the whole drain), until connections have been refused for 2 s, or at most
        MAX_LATE of them."""
        refused_since = None
        for i in range(1000, 1000 + MAX_LATE):
            if self._stop_late.is_set():
                return
            t = threading.Thread(target=self._send, args=("late", i, 60.0), daemon=True)
            t.start()
            self._threads.append(t)
            if self._stop_late.wait(LATE_EVERY_S):
                return
            with self._lock:
                last = [o for o in self.outcomes if o.kind == "late"][-1:]
            if last and last[0].status is None:
                refused_since = refused_since or self.clock()
                if self.clock() - refused_since > 2.0:
                    return  # the listener is gone for good
            else:
                refused_since = None

    def finish(self, timeout=None):
        self._stop_late.set()
        deadline = self.clock() + (timeout or self.timeout)
        for t in self._threads:
            t.join(max(0.0, deadline - self.clock()))

    # -- what a user counts ---------------------------------------------------------------

    def queued(self):
        return [o for o in self.outcomes if o.kind == "queued"]

    def late(self):
        return [o for o in self.outcomes if o.kind == "late"]

    def report(self):
        queued, late = self.queued(), self.late()
        ok = [o for o in queued if o.status == 200 and o.audio_ok]
        bad_5xx = [o for o in self.outcomes if o.status is not None and o.status >= 500 and not o.acceptable_refusal]
        return {
            "queued": len(queued),
            "queued_ok": len(ok),
            "queued_503_draining": sum(1 for o in queued if o.acceptable_refusal),
            "lost": len(queued) - len(ok) - sum(1 for o in queued if o.acceptable_refusal),
            "late": len(late),
            "late_503_draining": sum(1 for o in late if o.acceptable_refusal),
            "late_served": sum(1 for o in late if o.status == 200 and o.audio_ok),
            "late_refused_connection": sum(1 for o in late if o.status is None),
            "late_other": sum(1 for o in late if o.status is not None and not o.acceptable_refusal
                              and not (o.status == 200 and o.audio_ok)),
            "bad_5xx": len(bad_5xx),
            "statuses": sorted({o.status for o in self.outcomes if o.status is not None}),
            "first_refused_connection_s": min((o.sent_at - self.signal_at for o in late if o.status is None),
                                              default=None),
            "last_done_s": max((o.done_at - self.signal_at for o in queued if o.done_at), default=None),
        }

    def failures(self, allow_queued_503=False):
        """Human-readable lines for every outcome a user would call a failure."""
        out = []
        for o in self.outcomes:
            if o.kind == "queued":
                if o.status == 200 and o.audio_ok:
                    continue
                if allow_queued_503 and o.acceptable_refusal:
                    continue
                out.append("queued request lost: status %s code %s audio %s error %s" % (o.status, o.code, o.audio_s,
                                                                                       o.error))
            elif o.status is not None and not o.acceptable_refusal and not (o.status == 200 and o.audio_ok):
                out.append("late request got %s (code %s, Retry-After %s)" % (o.status, o.code, o.retry_after))
        return out
