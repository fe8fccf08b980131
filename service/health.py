"""GET /healthz, /livez, /readyz: facts from memory only (never inference, never a
blocking call), so they answer fast while synthesis saturates the machine.

/healthz: 200 only when status is ok; its `pid` and `instance_id` (new in every process)
say which process answered, so `make run` never takes another server on the port for the
one its supervisord started. /livez: is the process worth keeping (503 only when failed
or wedged: a restart would help). /readyz: may it take traffic (= ok).

From SIGTERM on (service/drain.py) /readyz and /healthz answer 503 "draining", so load
balancers and the kubelet take the instance out, while /livez stays 200: a draining
process is doing what it was asked, and must not be killed for it."""

import os
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter()
INSTANCE_ID = uuid.uuid4().hex


@router.get("/healthz")
async def healthz(request: Request):
    body = dict(request.app.state.runtime.health(), pid=os.getpid(), instance_id=INSTANCE_ID)
    return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)


@router.get("/livez")
async def livez(request: Request):
    status, reason = request.app.state.runtime.worker.status()
    alive = status in ("ok", "loading")
    return JSONResponse({"status": "alive" if alive else status, "reason": None if alive else reason},
                        status_code=200 if alive else 503)


@router.get("/readyz")
async def readyz(request: Request):
    status, reason = request.app.state.runtime.status()
    return JSONResponse({"status": "ready" if status == "ok" else status, "reason": reason},
                        status_code=200 if status == "ok" else 503)
