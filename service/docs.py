"""/docs and /redoc that work offline, and an /openapi.json that says what every route
takes and what every failure looks like.

FastAPI's own /docs loads Swagger UI from a CDN: on a server without Internet access
(or a browser behind a strict proxy) the page is blank. The assets come instead from
the PyPI package ``fastapi-offline`` (a vendored swagger-ui-dist 5 and redoc 2, kept
current by its maintainer; install_requires in setup.cfg), served by this process under
/docs/assets/. Only the page template is FastAPI's (``get_swagger_ui_html``).

The routes that read their bodies by hand (one multipart parser, our own error
messages) cannot have them inferred: a route declares its body with ``openapi_extra``
(service/voices.py), or is listed in REQUEST_BODIES here. Every 4xx/5xx answer is
described as service/errors.py sends it: ``{"error": {"message", "type", "code",
"param"}}``, and FastAPI's default 422 schema (which our handler never sends) is
replaced by it.

    docs.install(app)   # app = FastAPI(..., docs_url=None, redoc_url=None)
"""

import copy
import logging
from importlib import resources

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse

from glmtts import audio as audiolib
from glmtts.errors import NotFoundError

from .limits import RATE_LIMITED

log = logging.getLogger(__name__)

ASSET_PREFIX = "/docs/assets"
# file -> media type: the only files served (never a path from the request)
ASSETS = {"swagger-ui-bundle.js": "text/javascript; charset=utf-8", "swagger-ui.css": "text/css; charset=utf-8",
          "redoc.standalone.js": "text/javascript; charset=utf-8", "favicon.png": "image/png"}
ASSET_PACKAGE = "fastapi_offline"

ERROR_SCHEMA = {
    "type": "object", "required": ["error"], "title": "Error",
    "description": "Every failure: the HTTP status says the class, `code` the exact cause, `param` the request "
                   "field at fault (null when none). Same shape as OpenAI's API.",
    "properties": {"error": {"type": "object", "required": ["message", "type", "code"], "properties": {
        "message": {"type": "string", "description": "what went wrong and what to fix"},
        "type": {"type": "string", "enum": ["invalid_request_error", "authentication_error", "rate_limit_error",
                                            "server_error", "service_unavailable"]},
        "code": {"type": "string", "description": "stable machine-readable cause, e.g. voice_not_found"},
        "param": {"type": ["string", "null"], "description": "the request field at fault"}}}}}
_ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}


def _asset_dir():
    return resources.files(ASSET_PACKAGE) / "static"


router = APIRouter(include_in_schema=False)


@router.get("/docs")
async def swagger_ui(request: Request):
    app, root = request.app, request.scope.get("root_path", "")
    return get_swagger_ui_html(openapi_url=root + app.openapi_url, title=app.title + " - API",
                               swagger_js_url=root + ASSET_PREFIX + "/swagger-ui-bundle.js",
                               swagger_css_url=root + ASSET_PREFIX + "/swagger-ui.css",
                               swagger_favicon_url=root + ASSET_PREFIX + "/favicon.png",
                               oauth2_redirect_url=root + "/docs/oauth2-redirect")


@router.get("/docs/oauth2-redirect")
async def swagger_ui_redirect():
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc")
async def redoc(request: Request):
    app, root = request.app, request.scope.get("root_path", "")
    return get_redoc_html(openapi_url=root + app.openapi_url, title=app.title + " - API",
                          redoc_js_url=root + ASSET_PREFIX + "/redoc.standalone.js",
                          redoc_favicon_url=root + ASSET_PREFIX + "/favicon.png", with_google_fonts=False)


@router.get(ASSET_PREFIX + "/{name}")
async def asset(name: str):
    if name not in ASSETS:
        raise NotFoundError("no documentation asset %r; /docs lists what it loads" % name[:64], code="not_found")
    # the files change only with the package: a day of caching spares every page load
    return FileResponse(str(_asset_dir() / name), media_type=ASSETS[name],
                        headers={"Cache-Control": "public, max-age=86400"})


# --- the OpenAPI document -----------------------------------------------------------

_JSON_TYPES = {str: "string", float: "number", int: "integer", bool: "boolean"}
_SPEECH_DOC = {
    "model": "accepted for OpenAI clients (tts-1, ...); the service has one engine",
    "input": "the text to speak (limits.max_text_chars)",
    "voice": "\"default\" (or an OpenAI voice name) = the engine's default voice; else a saved voice's id or name",
    "response_format": "audio encoding of the answer",
    "speed": "speaking speed factor",
    "sample_rate": "output sample rate (Hz)",
    "seed": "random seed: same text + voice + seed = same audio",
    "use_cache": "prompt cache: later chunks prompted with the earlier ones (engine glmtts)",
    "phoneme": "apply the G2P replacement dictionary (engine.g2p_dict)",
    "stream": "send each sentence chunk as soon as it is synthesized",
    "stream_format": "how a stream is framed",
    "prompt_text": "transcript of prompt_audio (multipart only, required with it)",
}


def _speech_body(app):
    """POST /v1/audio/speech: JSON, or multipart with prompt_audio + prompt_text. Types
    and defaults are read from speech.py's field table, so they follow the settings."""
    from . import speech

    runtime = app.state.runtime
    fields = speech._fields(runtime.settings)
    props = {}
    for name, (kind, default) in fields.items():
        prop = {"type": _JSON_TYPES.get(kind, "string")}
        if default is not None:
            prop["default"] = default
        if name in _SPEECH_DOC:
            prop["description"] = _SPEECH_DOC[name]
        props[name] = prop
    if "response_format" in props:
        props["response_format"]["enum"] = list(audiolib.FORMATS)
    if "speed" in props:
        props["speed"].update(minimum=0.25, maximum=4.0)
    if "sample_rate" in props:
        props["sample_rate"]["enum"] = list(speech.supported_rates(runtime.engine))
    if "seed" in props:
        props["seed"].update(minimum=0, maximum=2 ** 32 - 1)
    json_props = {k: v for k, v in props.items() if k != "prompt_text"}
    form_props = dict(props, prompt_audio={"type": "string", "format": "binary",
                                           "description": "reference recording for zero-shot (%s)" % audiolib.ACCEPTED})
    return {"required": True, "content": {
        "application/json": {"schema": {"type": "object", "required": ["input"], "properties": json_props}},
        "multipart/form-data": {"schema": {"type": "object", "required": ["input"], "properties": form_props}}}}


def _batch_body(app):
    return {"required": True, "description": "a JSONL batch file, one task per line (README: Batch)", "content": {
        "application/x-ndjson": {"schema": {"type": "string", "format": "binary",
                                            "description": "the file as the raw body (any Content-Type but "
                                                           "multipart); ?skip_invalid=true runs the valid lines"}},
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
            "file": {"type": "string", "format": "binary", "description": "the JSONL batch file"},
            "skip_invalid": {"type": "boolean", "default": False,
                             "description": "run the valid lines; the invalid ones are listed as skipped"}}}}}}


# (method, path) -> builder(app) for routes whose handlers are not ours to annotate
REQUEST_BODIES = {("post", "/v1/audio/speech"): _speech_body, ("post", "/v1/batches"): _batch_body}
# Routes that take no body at all (a POST that is only an action).
NO_BODY = {("post", "/admin/gpu/clear")}
_AUDIO_ANSWER = {("post", "/v1/audio/speech")}


def openapi(app):
    """app.openapi: FastAPI's document, completed with the bodies and the error shape."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, openapi_version=app.openapi_version,
                      description=app.description, routes=app.routes)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = copy.deepcopy(ERROR_SCHEMA)
    for path, ops in doc.get("paths", {}).items():
        for method, op in ops.items():
            _complete(app, method, path, op)
    for unused in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422 shape: never sent here
        if unused in schemas and ("#/components/schemas/" + unused) not in repr(doc["paths"]):
            del schemas[unused]
    app.openapi_schema = doc
    return doc


def _complete(app, method, path, op):
    builder = REQUEST_BODIES.get((method, path))
    if builder is not None and "requestBody" not in op:
        try:
            op["requestBody"] = builder(app)
        except Exception as e:  # a broken description must not take /docs down; the test catches it
            log.warning("openapi: no request body for %s %s: %s: %s", method.upper(), path, type(e).__name__, e)
    responses = op.setdefault("responses", {})
    if (method, path) in _AUDIO_ANSWER:
        ok = responses.setdefault("200", {"description": "the audio"})
        ok["description"] = "the audio, encoded as response_format asked"
        ok["content"] = {audiolib.media_type(f): {"schema": {"type": "string", "format": "binary"}}
                         for f in audiolib.FORMATS}
    if (method.upper(), path) in RATE_LIMITED:
        responses.setdefault("429", {"description": "rate limit (limits.rate_limit_per_minute) or queue full"})
        responses["429"]["headers"] = dict(_RETRY_AFTER)
        responses.setdefault("503", {"description": "loading, draining, or the GPU is out of memory"})
        responses["503"]["headers"] = dict(_RETRY_AFTER)
    responses.setdefault("4XX", {"description": "the request cannot be served as sent: the message says what to fix"})
    responses.setdefault("5XX", {"description": "the service could not serve it now"})
    for status, answer in responses.items():
        if status[:1] in ("4", "5"):
            answer["content"] = copy.deepcopy(_ERROR_CONTENT)
            if status == "422":
                answer["description"] = "a field has the wrong type or shape"


def install(app):
    """Serve /docs, /redoc and their assets from this process; complete /openapi.json."""
    if app.docs_url or app.redoc_url:
        raise RuntimeError("create the FastAPI app with docs_url=None, redoc_url=None: service/docs.py serves them")
    app.include_router(router)
    app.openapi = lambda: openapi(app)
