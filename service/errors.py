"""HTTP face of glmtts.errors: every failure leaves as OpenAI's error shape
``{"error": {"message", "type", "code", "param"}}`` with an honest status code, including
FastAPI's validation errors and unknown routes. ``param`` is the request field at fault
(null when no one field is), as OpenAI's errors carry it. Every 503 and 429 carries
Retry-After, whoever produced it (RetryAfterMiddleware adds it to those that lack one)."""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from glmtts.errors import GlmttsError
from glmtts.request import FieldTypeError

log = logging.getLogger(__name__)


class AuthError(GlmttsError):
    code = "invalid_api_key"
    http_status = 401


class RateLimitError(GlmttsError):
    code = "rate_limit_exceeded"
    http_status = 429

    def __init__(self, message, *, retry_after=1, code=None):
        super().__init__(message, code=code)
        self.retry_after = max(1, int(retry_after))


class QueueFullError(RateLimitError):
    code = "queue_full"


# Seconds a client is told to wait on a 503/429 that names no better figure: about one
# short synthesis, so a retrying client neither hammers a loading service nor waits long.
DEFAULT_RETRY_AFTER_S = 5


class NotReadyError(GlmttsError):
    """The engine is loading, or the service failed and waits for a restart."""

    code = "not_ready"
    http_status = 503
    retry_after = DEFAULT_RETRY_AFTER_S


class SynthesisTimeout(GlmttsError):
    code = "timeout"
    http_status = 504


class ValidationFailed(FieldTypeError):
    """A field has the wrong type or shape (422, like FastAPI's own validation)."""

    def __init__(self, message, *, param=None, code=None):
        super().__init__(message, param=param, code=code)


def error_type(status):
    if status == 401:
        return "authentication_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def error_body(status, message, code, param=None):
    return {"error": {"message": message, "type": error_type(status), "code": code, "param": param}}


def error_response(exc):
    """JSONResponse for a GlmttsError (also used by middleware, outside the handlers)."""
    status = getattr(exc, "http_status", 500)
    headers = {}
    if getattr(exc, "retry_after", None):
        headers["Retry-After"] = str(max(1, int(exc.retry_after)))
    elif status in (429, 503):
        headers["Retry-After"] = str(DEFAULT_RETRY_AFTER_S)
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(error_body(status, str(exc), exc.code, getattr(exc, "param", None)), status_code=status,
                        headers=headers)


def _validation_message(exc):
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append("%s: %s" % (where, err.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request"


def _validation_param(exc):
    for err in exc.errors()[:1]:
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
        return ".".join(loc) or None
    return None


class RetryAfterMiddleware:
    """ASGI: a 503 or 429 without Retry-After (health routes' JSON, a handler's own
    response) gets DEFAULT_RETRY_AFTER_S, so every one tells a client when to come back."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_retry_after(message):
            if message["type"] == "http.response.start" and message["status"] in (429, 503):
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"retry-after" for k, _ in headers):
                    headers.append((b"retry-after", str(DEFAULT_RETRY_AFTER_S).encode()))
                    message = dict(message, headers=headers)
            await send(message)

        return await self.app(scope, receive, send_with_retry_after)


def install(app: FastAPI):
    @app.exception_handler(GlmttsError)
    async def _glmtts_error(request: Request, exc: GlmttsError):
        if exc.http_status >= 500:
            log.warning("%s %s -> %d %s: %s", request.method, request.url.path, exc.http_status, exc.code, exc)
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return JSONResponse(error_body(422, _validation_message(exc), "invalid_request", _validation_param(exc)),
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            message = "no route %s %s; see /docs for the API" % (request.method, request.url.path)
        elif exc.status_code == 405:
            message = "method %s not allowed on %s" % (request.method, request.url.path)
        else:
            message = str(exc.detail)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(exc.status_code, message, code), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    app.add_middleware(RetryAfterMiddleware)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(error_body(500, "internal error (%s); see the service's error log" % type(exc).__name__,
                                       "internal_error"), status_code=500)
