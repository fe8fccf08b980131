"""create_app(settings, engine): the FastAPI app with every route, the Gradio UI at "/".

Adding a feature is one line: a router in ROUTERS, a start-up step in
``runtime.on_ready`` (runs after the warm-up, before READY=1), a UI tab in ui.TABS.

Nothing here imports gradio (or torch): the UI is built after READY (uigate.py)."""

import contextlib

from fastapi import APIRouter, FastAPI

from glmtts import __version__, cachedir
from glmtts.errors import NotFoundError

from . import admin, errors, health, metrics, models, speech, voices
from . import batch_routes
from . import docs
from .access import AccessMiddleware
from .drain import DrainGate
from .forwarded import ForwardedMiddleware
from .limits import RATE_LIMITED, LimitsMiddleware
from .runtime import Runtime
from .uigate import UiGate, start_building

ROUTERS = [health.router, metrics.router, speech.router, models.router, voices.router, admin.router]
ROUTERS.append(batch_routes.router)

# Unknown API paths answer our JSON 404, not the UI mounted at "/".
_fallback = APIRouter()


@_fallback.api_route("/v1/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
@_fallback.api_route("/admin/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
async def _no_route(rest: str):
    raise NotFoundError("no such API route; see /docs for the routes", code="not_found")


def create_app(settings, engine, *, runtime=None, notifier=None, reopener=None):
    runtime = runtime or Runtime(settings, engine, notifier=notifier, reopener=reopener)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    # docs_url/redoc_url None: FastAPI's pages load Swagger from a CDN; service/docs.py
    # serves them (and their assets) from this process, so /docs works offline.
    app = FastAPI(title="glmtts", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="GLM-TTS speech service: OpenAI-compatible /v1/audio/speech, saved voices, health.")
    app.state.runtime = runtime
    batch_routes.attach(runtime)  # batch jobs: resume at start-up (on_ready), run at BATCH priority
    errors.install(app)
    for router in ROUTERS:
        app.include_router(router)
    docs.install(app)  # /docs, /redoc, /docs/assets/*; /openapi.json with every body and error shape
    app.include_router(_fallback)
    # Starlette runs the last added middleware first: access sees every answer, refusals included.
    app.add_middleware(LimitsMiddleware, limits=runtime.limits, metrics=runtime.metrics)
    # After SIGTERM new synthesis gets 503 draining before any other work (service/drain.py).
    app.add_middleware(DrainGate, drain=runtime.drain, routes=RATE_LIMITED, metrics=runtime.metrics,
                       max_body=runtime.limits.max_upload)
    app.add_middleware(AccessMiddleware, metrics=runtime.metrics)
    # Outermost of all: the client address every layer below sees (access log, rate limit,
    # the UI) is the one server.forwarded_allow_ips allows (service/forwarded.py).
    app.add_middleware(ForwardedMiddleware, trusted=settings.server.forwarded_allow_ips)
    if settings.server.ui:
        runtime.ui = UiGate()
        app.mount("/", runtime.ui)
        runtime.after_ready.append(lambda rt: start_building(rt.ui, rt, _build_ui, rt.loop))
    return app


def _build_ui(runtime):
    # Before gradio is imported (it reads GRADIO_TEMP_DIR then): uploads and results go to
    # <state_dir>/cache, pruned with batch.retention_days, never to /tmp (glmtts/cachedir.py).
    cachedir.use_for_process(runtime.settings)
    cachedir.Pruner(runtime.settings).start()
    from . import ui  # gradio: seconds of imports, paid after READY on the UI's own thread

    return ui.build_app(runtime)
