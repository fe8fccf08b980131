"""The UI's place at "/" while the Gradio UI is being built.

Importing gradio and building the Blocks costs seconds (about 4.5 s on a 2-core VM),
longer than the embedded engine's whole start-up. A restart must not wait for it: the
API, /livez and /readyz answer as soon as the engine is warm, and the UI is built after
READY, in a thread. Until it is mounted, "/" answers 503 `ui_starting` with
Retry-After (a browser sees a page that reloads itself); if the build fails, 503
`ui_failed` names the cause and the API keeps serving."""

import asyncio
import contextlib
import json
import logging
import threading

from glmtts.machine import Machine

log = logging.getLogger(__name__)

# UiGate.state: OFF (server.ui = false, never mounted), STARTING -> READY | FAILED;
# changed only through UiGate._transition, which runs GATE.
OFF, STARTING, READY, FAILED = "off", "starting", "ready", "failed"

GATE = Machine("ui", {
    STARTING: (
        READY,     # starting -> ready: built, its lifespan started, "/" routed to it
        FAILED,    # starting -> failed: the build or its start raised; the API keeps serving
    ),
    FAILED: (
        READY,     # failed -> ready: the start outlived start_building's 60 s wait, then succeeded
    ),
    # ready: no arrow out (off is never entered: no gate exists when server.ui = false)
}, entry={READY: ("note",), FAILED: ("note",)}, levels={FAILED: logging.ERROR}, log=log)

RETRY_AFTER_S = 3

_PAGE = ("<!doctype html><html><head><meta charset='utf-8'><meta http-equiv='refresh' content='%d'>"
         "<title>glmtts: starting</title></head><body><p>%s</p></body></html>")


class UiGate:
    """ASGI app mounted at "/": answers 503 until ``open(asgi_app)``, then delegates."""

    def __init__(self):
        self.state = STARTING
        self.reason = "the UI is being built (the API is already available)"
        self._target = None
        self._stack = None

    def _transition(self, state, reason):
        GATE.advance(self, state, reason, {"note": self._note})

    def _note(self, gate, old, new, reason):
        self.reason = reason  # what "/" answers with while not ready

    async def __call__(self, scope, receive, send):
        if self._target is not None:
            return await self._target(scope, receive, send)
        if scope["type"] != "http":  # a websocket before the UI exists: refuse it
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1013})
            return
        code = "ui_starting" if self.state == STARTING else "ui_failed"
        accept = dict(scope.get("headers") or []).get(b"accept", b"").decode("latin-1")
        if "text/html" in accept:
            body = (_PAGE % (RETRY_AFTER_S, self.reason)).encode()
            ctype = b"text/html; charset=utf-8"
        else:
            body = json.dumps({"error": {"message": self.reason, "type": "service_unavailable",
                                         "code": code}}).encode()
            ctype = b"application/json"
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", ctype), (b"retry-after", str(RETRY_AFTER_S).encode()),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    def fail(self, reason):
        if self.state == READY:  # the start outlived the 60 s wait but succeeded: it serves
            log.warning("ui: ready already, not marking it failed (%s)", reason)
            return
        self._transition(FAILED, reason)  # starting -> failed: API unaffected, UI needs a restart

    async def open(self, shell, asgi_app):
        """On the event loop: run the built app's lifespan (Gradio's queue starts there) and
        route "/" to it from now on. ``shell`` is the FastAPI app Gradio was mounted on."""
        stack = contextlib.AsyncExitStack()
        await stack.enter_async_context(shell.router.lifespan_context(shell))
        self._stack = stack
        self._target = asgi_app
        self._transition(READY, None)  # starting -> ready

    async def close(self):
        if self._stack is not None:
            stack, self._stack = self._stack, None
            with contextlib.suppress(Exception):
                await stack.aclose()


def start_building(gate, runtime, build, loop):
    """Build the UI on a thread of its own (``build(runtime)`` -> (shell, asgi_app)), then
    open the gate on ``loop``. Called once the service is ready."""

    def work():
        try:
            shell, asgi_app = build(runtime)
        except Exception as e:  # the API must outlive a broken UI
            log.error("building the UI failed: %s: %s", type(e).__name__, e, exc_info=e)
            loop.call_soon_threadsafe(gate.fail, "the UI could not be built: %s: %s" % (type(e).__name__, e))
            return
        future = asyncio.run_coroutine_threadsafe(gate.open(shell, asgi_app), loop)
        try:
            future.result(60)
        except Exception as e:
            log.error("starting the UI failed: %s: %s", type(e).__name__, e, exc_info=e)
            loop.call_soon_threadsafe(gate.fail, "the UI could not be started: %s: %s" % (type(e).__name__, e))

    threading.Thread(target=work, name="glmtts-ui-build", daemon=True).start()
