"""HTTP face of glmtts.errors: every failure leaves as OpenAI's error shape
``{"error": {"message", "type", "code"}}`` with an honest status code, including
FastAPI's validation errors and unknown routes."""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from glmtts.errors import GlmttsError, InputError

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


class NotReadyError(GlmttsError):
    """The engine is loading, or the service failed and waits for a restart."""

    code = "not_ready"
    http_status = 503


class SynthesisTimeout(GlmttsError):
    code = "timeout"
    http_status = 504


class ValidationFailed(InputError):
    """A field has the wrong type or shape (422, like FastAPI's own validation)."""

    code = "invalid_type"
    http_status = 422


def error_type(status):
    if status == 401:
        return "authentication_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def error_body(status, message, code):
    return {"error": {"message": message, "type": error_type(status), "code": code}}


def error_response(exc):
    """JSONResponse for a GlmttsError (also used by middleware, outside the handlers)."""
    status = getattr(exc, "http_status", 500)
    headers = {}
    if getattr(exc, "retry_after", None):
        headers["Retry-After"] = str(exc.retry_after)
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(error_body(status, str(exc), exc.code), status_code=status, headers=headers)


def _validation_message(exc):
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append("%s: %s" % (where, err.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request"


def install(app: FastAPI):
    @app.exception_handler(GlmttsError)
    async def _glmtts_error(request: Request, exc: GlmttsError):
        if exc.http_status >= 500:
            log.warning("%s %s -> %d %s: %s", request.method, request.url.path, exc.http_status, exc.code, exc)
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return JSONResponse(error_body(422, _validation_message(exc), "invalid_request"), status_code=422)

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

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(error_body(500, "internal error (%s); see the service's error log" % type(exc).__name__,
                                       "internal_error"), status_code=500)
