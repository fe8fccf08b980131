"""POST /admin/gpu/clear: the UI's "clear GPU memory" button as an API. Runs beside
synthesis (empty_cache only returns blocks nothing uses), answers before/after figures."""

import asyncio

from fastapi import APIRouter, Request

from glmtts import gpu

router = APIRouter()


def clear(runtime):
    return gpu.clear_gpu_memory((runtime.engine.release_memory,))


@router.post("/admin/gpu/clear")
async def clear_gpu(request: Request):
    runtime = request.app.state.runtime
    result = await asyncio.to_thread(clear, runtime)
    runtime.gpu_status = result["after"]["nvml"] | {"torch": result["after"]["torch"]}
    return result
