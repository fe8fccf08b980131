"""Restart speed: the embedded-engine service never imports torch, and it is ready before
the Gradio UI is built (the UI is built after READY; "/" answers 503 until then)."""

import time

import requests

from tests.support.service import ServiceProcess


def test_espeak_service_never_loads_torch(tmp_path):
    svc = ServiceProcess(tmp_path)
    svc.start()
    try:
        assert svc.post("/v1/audio/speech", json={"input": "你好。"}).status_code == 200
        svc.post("/admin/gpu/clear")  # the GPU figures and the clear button must not pull it in either
        time.sleep(6)                 # one GPU refresh (runtime.GPU_EVERY_S) has run
        body = svc.get("/healthz").json()
        assert body["torch_loaded"] is False, body
        with open("/proc/%d/maps" % svc.pid) as f:
            maps = f.read()
        assert "libtorch" not in maps and "libc10" not in maps
    finally:
        svc.stop()


def test_ready_does_not_wait_for_the_ui(tmp_path):
    svc = ServiceProcess(tmp_path, ui=True)
    t0 = time.monotonic()
    svc.start(wait=False)
    try:
        ready_at = ui_at = None
        starting_answer = None
        deadline = t0 + 120
        while ui_at is None and time.monotonic() < deadline:
            try:
                body = requests.get(svc.url + "/healthz", timeout=2).json()
            except (requests.RequestException, ValueError):
                time.sleep(0.05)
                continue
            now = time.monotonic() - t0
            if ready_at is None and requests.get(svc.url + "/readyz", timeout=2).status_code == 200:
                ready_at = now
            if body.get("ui") == "starting" and ready_at is not None and starting_answer is None:
                starting_answer = requests.get(svc.url + "/", timeout=5)
            if body.get("ui") == "ready":
                ui_at = now
            assert body.get("ui") != "failed", svc.stderr()[-3000:]
            time.sleep(0.05)
        assert ready_at is not None and ui_at is not None, svc.stderr()[-3000:]
        assert ready_at < ui_at, (ready_at, ui_at)
        assert starting_answer is not None, "never saw the service ready with the UI still being built"
        assert starting_answer.status_code == 503 and starting_answer.json()["error"]["code"] == "ui_starting"
        assert int(starting_answer.headers["Retry-After"]) >= 1
        page = svc.get("/", headers={"Accept": "text/html"})
        assert page.status_code == 200 and "gradio" in page.text.lower()
    finally:
        svc.stop()
