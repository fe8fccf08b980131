"""GET /v1/models: the one engine this process serves, in OpenAI's list shape."""

from fastapi import APIRouter, Request

router = APIRouter()


@router.get("/v1/models")
async def models(request: Request):
    runtime = request.app.state.runtime
    info = runtime.engine.describe()
    return {"object": "list", "data": [{
        "id": runtime.settings.engine.name, "object": "model", "created": 0, "owned_by": "glmtts",
        "engine": info, "sample_rates": info.get("sample_rates", []),
    }]}
