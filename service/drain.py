"""The drain: what one service process does between SIGTERM (or SIGINT) and exit 0, so a
stop, a rolling update or a scale-down loses no request.

    SERVING -> DELAY      the signal. /readyz and /healthz answer 503 "draining" at once
                          (/livez stays 200); new synthesis gets 503 + Retry-After; the
                          listener stays open server.drain_delay_s so load balancers and
                          Kubernetes endpoints notice (no delay when the instance was not
                          ready: nobody was routing traffic to it)
    DELAY -> FINISHING    the delay is over: the listener closes; in-flight and queued work
                          goes on
    FINISHING -> DONE     nothing in flight or queued any more
    FINISHING -> EXPIRED  server.drain_timeout_s after the delay, work is still left: it is
                          answered 503 draining (never 500, never a cancelled task)
    EXPIRED -> DONE       those 503s are written (or LEFTOVER_GRACE_S passed)

Then uvicorn closes the remaining connections, the lifespan shutdown runs and the process
exits 0. The budget a manager must allow, delay + timeout + the margin that follows, is
``glmtts.config.stop_grace_s()``.

``Drain`` is the state machine (time passed in, no I/O); ``DrainGate`` is the HTTP edge
(refuses new synthesis, marks what was admitted before the signal); ``DrainingServer`` is
uvicorn with signal handlers that start a drain instead of closing the listener at once.
"""

import asyncio
import contextlib
import contextvars
import logging
import math
import signal
import threading
import time

import uvicorn

from glmtts.machine import Machine

from .errors import NotReadyError, error_response

log = logging.getLogger(__name__)

SERVING, DELAY, FINISHING, EXPIRED, DONE = "serving", "delay", "finishing", "expired", "done"
DRAINING = (DELAY, FINISHING, EXPIRED)
# The arrows above, and what entering a state does: "done" stamps done_at, then every
# state runs the hooks its owner registered (DrainGate closes the listener on finishing,
# the runtime answers the leftovers 503 on expired).
DRAIN = Machine("drain", {
    SERVING: (DELAY,),
    DELAY: (FINISHING,),
    FINISHING: (DONE, EXPIRED),
    EXPIRED: (DONE,),
}, entry={DELAY: ("hooks",), FINISHING: ("hooks",), EXPIRED: ("hooks",), DONE: ("stamp_done", "hooks")},
   levels={EXPIRED: logging.WARNING}, key=lambda d: None, log=log)
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)
TICK_S = 0.1
# After the deadline the leftovers' 503s take milliseconds to write; a waiter that has not
# answered by then is not worth holding the process for.
LEFTOVER_GRACE_S = 3.0
# Once the work is done, open connections (idle keep-alives, a UI's event stream) get this
# long before uvicorn cancels them; part of config.STOP_MARGIN_S.
CONNECTION_GRACE_S = 5.0

# True in the context of a synthesis request that arrived before the drain began: it is
# served even if it reaches the worker's queue a moment after the signal. Work from
# anywhere else (the UI's threads, the batch runner) has it False and is refused.
ADMITTED = contextvars.ContextVar("glmtts_admitted_before_drain", default=False)


class DrainingError(NotReadyError):
    """503 + Retry-After: this process is shutting down; another instance (or this
    service once restarted) takes the request."""

    code = "draining"
    http_status = 503

    def __init__(self, message, *, retry_after=1):
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))


class Drain:
    def __init__(self, delay_s, timeout_s):
        self.delay_s = float(delay_s)
        self.timeout_s = float(timeout_s)
        self.state = SERVING
        self.why = None
        self.started_at = None
        self.delay_end = None
        self.deadline = None
        self.done_at = None
        self.pending_at_start = 0
        self.refused = 0            # new synthesis answered 503 draining
        self.expired = 0            # work answered 503 at the deadline
        self.admitted_in_flight = 0  # synthesis requests admitted before the signal, not yet answered
        self.on_enter = {state: [] for state in (DELAY, FINISHING, EXPIRED, DONE)}

    @property
    def active(self):
        return self.state != SERVING

    @property
    def retry_after(self):
        # A client behind a load balancer lands on another instance once the LB has noticed:
        # that takes about the delay. Longer would only idle it.
        return max(1, int(math.ceil(self.delay_s)))

    def _transition(self, state, now, note):
        def stamp_done(drain, *_):
            drain.done_at = now

        def hooks(drain, old, new, reason):
            for effect in self.on_enter.get(new, ()):
                effect(drain)

        DRAIN.advance(self, state, note, {"stamp_done": stamp_done, "hooks": hooks})

    def begin(self, now, why, pending=0, ready=True):
        """The signal. Returns False if a drain is already under way (a second signal)."""
        if self.active:
            return False
        self.why, self.started_at, self.pending_at_start = why, now, pending
        delay = self.delay_s if ready else 0.0
        self.delay_end = now + delay
        self.deadline = self.delay_end + self.timeout_s
        # SERVING -> DELAY: readiness 503 and new synthesis refused from here on
        self._transition(DELAY, now, "%s: %d request(s) in flight or queued; listener open %.1f s%s, then up to "
                         "%.0f s for the work (server.drain_delay_s, server.drain_timeout_s)"
                         % (why, pending, delay, "" if ready else " (was not ready: no delay)", self.timeout_s))
        return True

    def advance(self, now, pending):
        """Move on as time and the work left (``pending``: requests in flight or queued,
        batch runner included) allow; returns the state."""
        if self.state == DELAY and now >= self.delay_end:
            # DELAY -> FINISHING: load balancers have had their chance to notice
            self._transition(FINISHING, now, "listener closed after %.1f s; %d request(s) left, %.0f s to finish them"
                             % (now - self.started_at, pending, max(0.0, self.deadline - now)))
        if self.state == FINISHING:
            if pending == 0:
                # FINISHING -> DONE: everything admitted was served
                self._transition(DONE, now, "all work finished %.1f s after %s" % (now - self.started_at, self.why))
            elif now >= self.deadline:
                # FINISHING -> EXPIRED: what is left is answered 503, not cut off
                self._transition(EXPIRED, now, "server.drain_timeout_s = %g s is up with %d request(s) left; they get "
                                 "503 draining" % (self.timeout_s, pending))
        elif self.state == EXPIRED and (self.admitted_in_flight == 0 or now >= self.deadline + LEFTOVER_GRACE_S):
            # EXPIRED -> DONE: the leftovers have their answers
            self._transition(DONE, now, "%d request(s) answered 503 at the deadline" % self.expired)
        return self.state

    def hurry(self, now):
        """A second SIGINT (Ctrl-C twice): stop waiting for the work."""
        if self.state in (DELAY, FINISHING):
            self.deadline = self.delay_end = now

    def refusal(self):
        """The error for new work now, or None. Work admitted before the signal is served
        until the deadline; after it nothing is."""
        if self.state == SERVING:
            return None
        if self.state in (DELAY, FINISHING) and ADMITTED.get():
            return None
        return self.error()

    def error(self, expired=False):
        what = ("server.drain_timeout_s = %g s ran out before this request was done" % self.timeout_s if expired
                else "%s received" % (self.why or "a stop signal"))
        return DrainingError("service draining: this instance is shutting down (%s); retry in %d s, another instance "
                             "or the restarted service will take it" % (what, self.retry_after),
                             retry_after=self.retry_after)

    def reason(self, now, pending):
        if self.state == DONE:
            return "drained after %s; exiting" % self.why
        left = max(0.0, (self.deadline or now) - now)
        if self.state == DELAY:
            return ("draining after %s: not taking new synthesis; %d request(s) in flight or queued; listener closes "
                    "in %.1f s" % (self.why, pending, max(0.0, self.delay_end - now)))
        if self.state == FINISHING:
            return "draining after %s: finishing %d request(s), %.0f s left" % (self.why, pending, left)
        return "draining after %s: drain timeout reached, answering what is left with 503" % self.why

    def describe(self, now):
        return {"state": self.state, "signal": self.why, "since_s": round(now - self.started_at, 3) if self.started_at else None,
                "listener_closes_in_s": round(max(0.0, self.delay_end - now), 3) if self.delay_end else None,
                "deadline_in_s": round(max(0.0, self.deadline - now), 3) if self.deadline else None,
                "pending_at_signal": self.pending_at_start, "refused": self.refused, "expired": self.expired}


class DrainGate:
    """ASGI middleware on the routes that cost a synthesis (``routes``: limits.RATE_LIMITED,
    read at each request, so the batch router's entry counts): during a drain they get 503
    draining + Retry-After + Connection: close (a keep-alive pool lets go of this instance);
    before it, the request is marked ADMITTED and counted until its answer is written."""

    def __init__(self, app, drain, routes, metrics=None, max_body=1 << 20):
        self.app = app
        self.drain = drain
        self.routes = routes
        self.metrics = metrics
        self.max_body = max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or (scope["method"], scope["path"]) not in self.routes:
            return await self.app(scope, receive, send)
        if self.drain.active:
            self.drain.refused += 1
            if self.metrics is not None:
                self.metrics.rejected.labels("draining").inc()
            await _discard_body(receive, self.max_body)  # so the client reads our 503, not a reset
            response = error_response(self.drain.error())
            response.headers["Connection"] = "close"
            return await response(scope, receive, send)
        token = ADMITTED.set(True)
        self.drain.admitted_in_flight += 1
        try:
            return await self.app(scope, receive, send)
        finally:
            self.drain.admitted_in_flight -= 1
            ADMITTED.reset(token)


async def _discard_body(receive, cap):
    seen = 0
    while seen <= cap:
        message = await receive()
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body"):
            return


class DrainingServer(uvicorn.Server):
    """uvicorn, except that SIGTERM/SIGINT start the drain: the handler only records the
    signal, ``on_tick`` (the server's own loop, every 0.1 s) acts on it, and the signal is
    not raised again after the shutdown (uvicorn does that; here a drained stop is exit 0).
    ``runtime`` provides pending(), ready_for_drain(), begin_drain(drain) and expire(drain)."""

    def __init__(self, config, runtime, clock=time.monotonic):
        super().__init__(config)
        self.runtime = runtime
        self.drain = runtime.drain
        self.clock = clock
        self._signals = []
        self._task = None
        self.drain.on_enter[FINISHING].append(lambda d: self._close_listeners())
        self.drain.on_enter[EXPIRED].append(self.runtime.expire)

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self._record) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    def _record(self, sig, frame):
        self._signals.append(sig)

    async def on_tick(self, counter):
        while self._signals:
            self._dispatch(self._signals.pop(0))
        if self._task is not None and self._task.done():
            if not self._task.cancelled() and self._task.exception() is not None:
                log.error("drain failed; exiting without it", exc_info=self._task.exception())
            return True
        return await super().on_tick(counter)

    def _dispatch(self, sig):
        name = signal.Signals(sig).name
        now = self.clock()
        if self._task is None:
            began = self.drain.begin(now, name, pending=self.runtime.pending(), ready=self.runtime.ready_for_drain())
            if began:
                self.runtime.begin_drain(self.drain)
                self._task = asyncio.get_running_loop().create_task(self._run())
        elif sig == signal.SIGINT:
            log.warning("second SIGINT: not waiting for the work left; it gets 503 draining")
            self.drain.hurry(now)
        else:
            log.info("%s again: already draining (%s)", name, self.drain.reason(now, self.runtime.pending()))

    async def _run(self):
        while self.drain.advance(self.clock(), self.runtime.pending()) != DONE:
            await asyncio.sleep(TICK_S)
        # what uvicorn's shutdown may still spend on open connections
        self.config.timeout_graceful_shutdown = CONNECTION_GRACE_S
        log.info("drain done in %.1f s after %s: %d request(s) were in flight or queued, %d answered 503 at the "
                 "deadline, %d new synthesis request(s) refused", self.drain.done_at - self.drain.started_at,
                 self.drain.why, self.drain.pending_at_start, self.drain.expired, self.drain.refused)

    def _close_listeners(self):
        # New connections are refused from here (a proxy retries a refused connection on
        # another upstream, even a POST); open keep-alive connections still get 503 draining.
        for server in getattr(self, "servers", []):
            server.close()
