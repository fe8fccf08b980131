"""Who may call, how often, and how much: API keys (Authorization: Bearer) on every
route but the health routes, a per-client rate limit, upload size, text length and a
blocklist of words the service refuses to speak. Voice ids are generated here and
validated before any use, so no user-supplied name ever becomes a path.

The watchdog's requests carry the per-host watchdog token (glmtts/watchdog_token.py):
on the routes of its lane (WATCHDOG_LANE) a valid token stands in for an API key and
skips the per-client rate limit, so the watchdog is never refused by the service it
guards. A wrong token counts as no token.

"Client" is the address service/forwarded.py resolved (the peer, or what a proxy in
server.forwarded_allow_ips says): the UI's synthesis (service/ui.py) is counted in the
same per-client buckets as the API's."""

import collections
import hmac
import logging
import re
import secrets
import threading
import time

from glmtts import watchdog_token
from glmtts.errors import InputError, NotFoundError, TooLargeError

from .errors import AuthError, RateLimitError, error_response
from .forwarded import client_of

log = logging.getLogger(__name__)

HEALTH_PATHS = frozenset({"/healthz", "/livez", "/readyz"})
# Routes behind the Bearer key when keys are configured. The UI ("/" and Gradio's own
# routes) is protected by Gradio's login form instead, with the same keys as passwords.
KEYED_PREFIXES = ("/v1/", "/admin/", "/metrics", "/docs", "/redoc", "/openapi.json")
# Routes that cost a synthesis, counted by the rate limit (the batch router adds its own).
RATE_LIMITED = {("POST", "/v1/audio/speech"), ("POST", "/v1/voices")}
# What the watchdog calls besides the health routes: its smoke test.
WATCHDOG_LANE = {("POST", "/v1/audio/speech")}
WATCHDOG_HEADER = watchdog_token.HEADER.lower()
BAD_TOKEN_LOG_EVERY_S = 60.0

VOICE_ID = re.compile(r"^voice_[0-9a-f]{12}$")


def new_voice_id():
    return "voice_" + secrets.token_hex(6)


def safe_voice_id(value):
    """The id itself if it is one we generate, else NotFoundError (never a path)."""
    if not isinstance(value, str) or not VOICE_ID.match(value):
        raise NotFoundError("unknown voice %r: voice ids look like voice_0123456789ab (GET /v1/voices lists them)"
                            % (value[:64] if isinstance(value, str) else value), code="voice_not_found")
    return value


def load_blocklist(path):
    if not path:
        return []
    try:
        with open(path, encoding="utf-8") as f:
            words = [w.strip() for w in f if w.strip() and not w.lstrip().startswith("#")]
    except OSError as e:
        raise InputError("server.blocklist_file %s cannot be read: %s" % (path, e.strerror)) from None
    log.info("blocklist: %d words from %s", len(words), path)
    return words


class RateLimiter:
    """Sliding one-minute window per client."""

    def __init__(self, per_minute, clock=time.monotonic):
        self.per_minute = per_minute
        self.clock = clock
        self._hits = collections.defaultdict(collections.deque)
        self._lock = threading.Lock()

    def check(self, client):
        if not self.per_minute:
            return
        now = self.clock()
        with self._lock:
            hits = self._hits[client]
            while hits and now - hits[0] >= 60.0:
                hits.popleft()
            if len(hits) >= self.per_minute:
                retry = int(60.0 - (now - hits[0])) + 1
                raise RateLimitError("rate limit exceeded: %d requests per minute per client "
                                     "(limits.rate_limit_per_minute); retry in %d s" % (self.per_minute, retry),
                                     retry_after=retry)
            hits.append(now)
            if len(self._hits) > 10000:  # forget idle clients so memory stays bounded
                for key in [k for k, v in self._hits.items() if not v or now - v[-1] >= 60.0]:
                    del self._hits[key]


class Limits:
    def __init__(self, settings, clock=time.monotonic):
        self.settings = settings
        self.keys = [k for k in settings.server.api_keys if k]
        # server.metrics_public: Prometheus scrapes /metrics (exactly that path) without a key.
        self.public_paths = frozenset(("/metrics",)) if settings.server.metrics_public else frozenset()
        # The per-client limit is for unauthenticated use; key holders are known clients.
        self.rate = RateLimiter(0 if self.keys else settings.limits.rate_limit_per_minute, clock)
        self.max_upload = int(settings.limits.max_upload_mb * 1024 * 1024)
        self.max_text = settings.limits.max_text_chars
        self.blocklist = load_blocklist(settings.server.blocklist_file)
        self.clock = clock
        self.watchdog_token_path = watchdog_token.path_for(settings)
        self._watchdog_token = watchdog_token.read(self.watchdog_token_path)
        self._bad_token_logged_at = None
        if self._watchdog_token:
            log.info("watchdog lane on: requests with the token from %s skip the rate limit and the queue limit",
                     self.watchdog_token_path)

    def is_watchdog(self, presented, client="-"):
        """True only for the exact token. Anything else is an ordinary client; the value
        presented is never logged, only that a wrong one came (at most once a minute)."""
        if self._watchdog_token and hmac.compare_digest(presented.strip().encode("utf-8", "replace"),
                                                        self._watchdog_token.encode()):
            return True
        now = self.clock()
        if self._bad_token_logged_at is None or now - self._bad_token_logged_at >= BAD_TOKEN_LOG_EVERY_S:
            self._bad_token_logged_at = now
            log.warning("a request from %s carried a %s header that is not this host's watchdog token (%s); "
                        "treated as an ordinary client", client, watchdog_token.HEADER,
                        "no token file" if not self._watchdog_token else self.watchdog_token_path)
        return False

    def key_ok(self, presented):
        return any(hmac.compare_digest(presented.encode(), k.encode()) for k in self.keys)

    def check_auth(self, authorization):
        if not self.keys:
            return
        if not authorization:
            raise AuthError("missing API key: send the header 'Authorization: Bearer <key>' "
                            "(a key from server.api_keys)", code="missing_api_key")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not self.key_ok(token.strip()):
            raise AuthError("invalid API key: the Bearer token is not one of server.api_keys", code="invalid_api_key")

    def check_text(self, text, field="input"):
        if len(text) > self.max_text:
            raise InputError("%s is %d characters; the limit is %d (limits.max_text_chars): split the text "
                             "into several requests" % (field, len(text), self.max_text), code="text_too_long")
        low = text.lower()
        for word in self.blocklist:
            if word.lower() in low:
                raise InputError("%s contains %r, which this service refuses to speak (server.blocklist_file)"
                                 % (field, word), code="blocked_word")


class LimitsMiddleware:
    """ASGI middleware: auth, rate limit and upload size before any route runs."""

    def __init__(self, app, limits, metrics=None):
        self.app = app
        self.limits = limits
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in HEALTH_PATHS:
            return await self.app(scope, receive, send)
        path, method = scope["path"], scope["method"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        client = client_of(scope)  # the peer, or who a trusted proxy says it is (service/forwarded.py)
        lane = (method, path) in WATCHDOG_LANE and WATCHDOG_HEADER in headers \
            and self.limits.is_watchdog(headers[WATCHDOG_HEADER], client)
        scope.setdefault("state", {})["watchdog"] = lane
        try:
            if path.startswith(KEYED_PREFIXES) and not lane and path not in self.limits.public_paths:
                self.limits.check_auth(headers.get("authorization", ""))
            if (method, path) in RATE_LIMITED and not lane:
                self.limits.rate.check(client)
            length = headers.get("content-length", "")
            if length.isdigit() and int(length) > self.limits.max_upload:
                await _drain(receive, 4 * self.limits.max_upload)
                raise TooLargeError("request body is %.1f MB; the limit is %g MB (limits.max_upload_mb)"
                                    % (int(length) / 1048576.0, self.settings_mb), code="upload_too_large")
        except (AuthError, RateLimitError, TooLargeError) as e:
            if self.metrics:
                self.metrics.rejected.labels(e.code).inc()
            return await error_response(e)(scope, receive, send)
        return await self.app(scope, _counting(receive, self.limits.max_upload, self.settings_mb), send)

    @property
    def settings_mb(self):
        return self.limits.settings.limits.max_upload_mb


async def _drain(receive, cap):
    """Read and discard the body so the client sees our 413, not a reset connection."""
    seen = 0
    while seen <= cap:
        message = await receive()
        seen += len(message.get("body", b""))
        if not message.get("more_body"):
            return


def _counting(receive, limit, limit_mb):
    """Enforce the upload limit on bodies without (or lying about) Content-Length."""
    seen = 0

    async def wrapped():
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise TooLargeError("request body exceeds %g MB (limits.max_upload_mb)" % limit_mb,
                                    code="upload_too_large")
        return message

    return wrapped
