"""Per-request bookkeeping as ASGI middleware: request id, one access line on stdout,
and the request counters and latency histogram. Outermost, so refusals (401, 413, 429)
are logged and counted like everything else; the duration runs to the last byte sent,
which for a streamed answer is the end of the stream. The client logged is the one
service/forwarded.py resolved: the peer, unless that is a trusted proxy."""

import json
import re
import secrets
import time

from . import logs
from .forwarded import client_of

_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

# The UI's polling (the System dashboard's and the Batch tab's gr.Timer, with queue=False):
# Gradio posts each tick to <root>/gradio_api/run/predict naming the event's fn_index in a
# small JSON body. Those requests are counted (route "ui_poll" in
# glmtts_http_requests_total and the latency histogram) but get no access line: one open
# tab would otherwise write thousands a day. A poll that fails (status >= 400) is logged.
UI_POLL_PATH = "/gradio_api/run/predict"
UI_POLL_ROUTE = "ui_poll"
UI_POLL_BODY_MAX = 16384   # a poll's body is tiny; a bigger one is not a poll and is not parsed
QUIET_UI_FNS = set()       # fn_index of the UI's polling events (quiet_poll)


def quiet_poll(dependency):
    """Register a Gradio event (what ``timer.tick(...)`` returns) as UI polling."""
    QUIET_UI_FNS.add(dependency["id"])
    return dependency


def _ui_poll(body):
    try:
        return json.loads(body).get("fn_index") in QUIET_UI_FNS
    except (ValueError, AttributeError, UnicodeDecodeError):
        return False


def route_label(scope):
    route = scope.get("route")
    path = getattr(route, "path", None)
    if path and path.startswith("/") and "{rest" not in path:
        return path
    if scope["path"] in ("/healthz", "/livez", "/readyz", "/metrics"):
        return scope["path"]
    if scope["path"].startswith(("/v1/", "/admin/")):
        return "unmatched"
    return "ui"


class AccessMiddleware:
    def __init__(self, app, metrics=None, clock=time.monotonic):
        self.app = app
        self.metrics = metrics
        self.clock = clock

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = self.clock()
        rid = None
        for k, v in scope.get("headers", []):
            if k == b"x-request-id":
                value = v.decode("latin-1")
                rid = value if _SAFE_ID.match(value) else None
        rid = rid or secrets.token_hex(8)
        scope.setdefault("state", {})["request_id"] = rid
        info = {"status": 500, "bytes": 0}
        watch = bool(QUIET_UI_FNS) and scope["method"] == "POST" and scope["path"].endswith(UI_POLL_PATH)
        body = bytearray()

        async def receive_wrapper():
            message = await receive()
            if message["type"] == "http.request" and len(body) <= UI_POLL_BODY_MAX:
                body.extend(message.get("body", b""))
            return message

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                info["status"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-request-id", rid.encode())]
            elif message["type"] == "http.response.body":
                info["bytes"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive_wrapper if watch else receive, send_wrapper)
        finally:
            elapsed = self.clock() - t0
            poll = watch and len(body) <= UI_POLL_BODY_MAX and _ui_poll(bytes(body))
            if not (poll and info["status"] < 400):
                logs.write_access(client=client_of(scope), method=scope["method"], path=scope["path"],
                                  status=info["status"], nbytes=info["bytes"], duration_ms=elapsed * 1000.0,
                                  request_id=rid)
            if self.metrics is not None:
                label = UI_POLL_ROUTE if poll else route_label(scope)
                self.metrics.requests.labels(label, scope["method"], str(info["status"])).inc()
                self.metrics.latency.labels(label).observe(elapsed)
