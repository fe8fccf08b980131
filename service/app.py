"""create_app(settings, engine): the FastAPI app with every route, the Gradio UI at "/".

Adding a feature is one line: a router in ROUTERS, a start-up step in
``runtime.on_ready`` (runs after the warm-up, before READY=1), a UI tab in ui.TABS.

Nothing here imports gradio (or torch): the UI is built after READY (uigate.py)."""

import contextlib

from fastapi import APIRouter, FastAPI

from glmtts import __version__
from glmtts.errors import NotFoundError

from . import admin, errors, health, metrics, models, speech, voices
from . import batch_routes
from .access import AccessMiddleware
from .limits import LimitsMiddleware
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

    app = FastAPI(title="glmtts", version=__version__, lifespan=lifespan,
                  description="GLM-TTS speech service: OpenAI-compatible /v1/audio/speech, saved voices, health.")
    app.state.runtime = runtime
    batch_routes.attach(runtime)  # batch jobs: resume at start-up (on_ready), run at BATCH priority
    errors.install(app)
    for router in ROUTERS:
        app.include_router(router)
    app.include_router(_fallback)
    # Starlette runs the last added middleware first: access sees every answer, refusals included.
    app.add_middleware(LimitsMiddleware, limits=runtime.limits, metrics=runtime.metrics)
    app.add_middleware(AccessMiddleware, metrics=runtime.metrics)
    if settings.server.ui:
        runtime.ui = UiGate()
        app.mount("/", runtime.ui)
        runtime.after_ready.append(lambda rt: start_building(rt.ui, rt, _build_ui, rt.loop))
    return app


def _build_ui(runtime):
    from . import ui  # gradio: seconds of imports, paid after READY on the UI's own thread

    return ui.build_app(runtime)
