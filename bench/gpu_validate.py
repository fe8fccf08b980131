#!/usr/bin/env python3
"""The one short script a GPU machine runs: the glmtts engine on the real repository, on CUDA.

GPU time is scarce, so everything here was run on the CPU first (``--cpu``: the
repository's hard-coded ``.cuda()`` calls redirected, the CUDA-only steps reported
as skipped). On a GPU box:

    python bench/gpu_validate.py --random-weights /path/to/GLM-TTS   # tiny random weights, ~1 min
    python bench/gpu_validate.py --glmtts-home /opt/GLM-TTS          # the real weights

Steps, each printed as one line with its figures:
1. load the real repository code through the service (``create_app``, real ``/healthz``),
   on CUDA with nothing replaced: this exercises the ``.cuda()`` paths a CPU run cannot;
2. synthesize at 24000 and 32000 Hz in one process, whole and streamed, non-silent;
3. NVML's memory figures against ``torch.cuda.mem_get_info`` for the same device;
4. a real CUDA OOM: allocate until ``torch.cuda.OutOfMemoryError``, classify it, send a
   request (503 ``cuda_oom``), then ``clear_gpu_memory()`` frees the allocation and
   ``/healthz`` is ok again and a request succeeds;
5. a genuine fatal CUDA error (device-side assert, in a child process: the context
   is lost) classified as ``fatal``.
Exit status 0 only if every step that ran passed. ``--out`` keeps the wavs to listen to.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from glmtts import audio as audio_io  # noqa: E402
from glmtts import config, gpu  # noqa: E402

SHORT = "你好，欢迎使用语音合成服务。"
LONG = ("今天是个好日子，我们一起去公园散步吧。路边的花都开了，空气里有淡淡的清香。"
        "孩子们在草地上奔跑，老人们坐在长椅上聊天。GLM-TTS supports mixed Chinese and English text, too.")
FATAL_CHILD = ("import torch, sys; sys.path.insert(0, %r); from glmtts import gpu\n"
               "try:\n    torch.zeros(2, device='cuda')[torch.tensor([7], device='cuda')]; torch.cuda.synchronize()\n"
               "    print('no error')\nexcept Exception as e:\n    print(gpu.classify_cuda_error(e), '|', str(e).splitlines()[0])\n")


class Report:
    def __init__(self):
        self.failures = []

    def line(self, step, ok, text):
        mark = {True: "ok  ", False: "FAIL", None: "skip"}[ok]
        print("%s %-14s %s" % (mark, step, text), flush=True)
        if ok is False:
            self.failures.append(step)


def speech(client, text, rate, **extra):
    body = dict({"input": text, "response_format": "wav", "sample_rate": rate, "seed": 42}, **extra)
    return client.post("/v1/audio/speech", json=body)


def wait_ok(client, timeout):
    deadline = time.monotonic() + timeout
    body = {}
    while time.monotonic() < deadline:
        r = client.get("/healthz")
        body = r.json()
        if r.status_code == 200 and body.get("status") == "ok":
            return body
        if body.get("status") == "failed":
            break
        time.sleep(0.5)
    raise SystemExit("FAIL load: /healthz %s" % json.dumps(body, ensure_ascii=False)[:600])


def step_rates(client, engine, report, out):
    from glmtts.engines import SynthesisRequest
    for rate in (24000, 32000):
        t0 = time.monotonic()
        r = speech(client, LONG, rate)
        wall = time.monotonic() - t0
        if r.status_code != 200:
            report.line("synth@%d" % rate, False, "HTTP %d %s" % (r.status_code, r.text[:300]))
            continue
        audio, sr = audio_io.decode(r.content)
        with open(os.path.join(out, "long_%d.wav" % rate), "wb") as f:
            f.write(r.content)
        rms = float(np.sqrt(np.mean(audio ** 2))) if len(audio) else 0.0
        whole = engine.synthesize(SynthesisRequest(text=SHORT, sample_rate=rate, seed=3))
        parts = [p.audio for p in engine.synthesize_stream(SynthesisRequest(text=SHORT, sample_rate=rate, seed=3))]
        streamed = sum(len(p) for p in parts)
        ok = sr == rate and len(audio) > 0.3 * rate and rms > 1e-4 and streamed == len(whole.audio)
        report.line("synth@%d" % rate, ok, "%.2f s audio in %.2f s (RTF %.3f), rms %.4f; stream %d chunks = %d "
                    "samples, one-shot %d" % (len(audio) / sr, wall, wall / max(len(audio) / sr, 1e-9), rms,
                                              len(parts), streamed, len(whole.audio)))


def step_memory(torch, report):
    status = gpu.status()
    if not status["available"]:
        report.line("nvml", None, "no NVML: %s" % status.get("reason"))
        return
    index = gpu.nvml_index(config.load(path="", env={}))
    dev = next((d for d in status["devices"] if d["index"] == index), status["devices"][0])
    free, total = torch.cuda.mem_get_info()
    diff_total = abs(dev["total_mb"] - total / 2**20)
    diff_free = abs(dev["free_mb"] - free / 2**20)
    report.line("nvml-vs-torch", diff_total < 0.01 * dev["total_mb"],
                "NVML gpu%d total %.0f MB free %.0f MB; torch.cuda.mem_get_info total %.0f MB free %.0f MB "
                "(differ by %.0f / %.0f MB)" % (dev["index"], dev["total_mb"], dev["free_mb"], total / 2**20,
                                                 free / 2**20, diff_total, diff_free))


def step_oom(client, torch, report):
    hogs, chunk = [], 1 << 30
    try:
        while True:
            try:
                hogs.append(torch.empty(chunk, dtype=torch.uint8, device="cuda"))
            except torch.cuda.OutOfMemoryError:
                if chunk <= (1 << 20):
                    raise
                chunk //= 2  # fill what is left in smaller pieces
    except torch.cuda.OutOfMemoryError as e:
        kind = gpu.classify_cuda_error(e)
    held = sum(h.numel() for h in hogs) / 2**20
    report.line("oom-classify", kind == "oom", "allocated %.0f MB until torch.cuda.OutOfMemoryError -> %s" % (held, kind))
    r = speech(client, LONG, 32000)
    code = (r.json().get("error") or {}).get("code") if r.headers.get("content-type", "").startswith("application/json") else None
    report.line("oom-request", r.status_code == 503 and code in ("cuda_oom", "memory_pressure"),
                "request while the GPU is full: HTTP %d %s" % (r.status_code, code))
    figures = gpu.clear_gpu_memory((hogs.clear,))
    health = client.get("/healthz").json()
    after = speech(client, SHORT, 24000)
    report.line("oom-recover", health.get("status") == "ok" and after.status_code == 200,
                "clear_gpu_memory freed %s MB (steps %s); /healthz %s; next request HTTP %d"
                % (figures.get("freed_mb"), figures.get("steps"), health.get("status"), after.status_code))


def step_fatal(report):
    r = subprocess.run([sys.executable, "-c", FATAL_CHILD % ROOT], capture_output=True, text=True, timeout=120)
    line = (r.stdout.strip().splitlines() or [r.stderr.strip()[-300:]])[-1]
    report.line("fatal-classify", line.startswith("fatal"), "device-side assert in a child process -> %s" % line)


def cpu_setup(out):
    """What a run without CUDA needs (tests/support/realrepo/): hubs offline with a
    private cache, PyPI's CUDA-built torchaudio replaced by its pure-Python part, the
    repository's hard-coded .cuda() calls redirected. A checkout that needs none of it
    (the fixture: no transformers, no torchaudio) runs as it is."""
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=os.path.join(out, "hf"))
    from tests.support import realrepo
    try:
        overlay = realrepo.torchaudio_without_native(sys.executable, os.path.join(out, "torchaudio-py"))
    except RuntimeError as e:
        overlay = None
        print("info no torchaudio overlay: %s" % str(e).splitlines()[0])
    if overlay:
        sys.path.insert(0, str(overlay))
    try:
        redirected = realrepo.cpu_shims()
    except ImportError as e:  # no transformers: not the real repository
        redirected = []
        print("info no CPU shims: %s" % e)
    print("info CPU run: torchaudio overlay %s, .cuda() redirected in %s" % (overlay, ", ".join(redirected) or "nothing"))


def main(argv=None):
    p = argparse.ArgumentParser(description="Validate the glmtts engine against the real GLM-TTS code on a GPU "
                                            "(or on the CPU with --cpu).")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--glmtts-home", help="a checkout of github.com/zai-org/GLM-TTS with its real ckpt/")
    where.add_argument("--random-weights", metavar="CHECKOUT",
                       help="a checkout without weights: copied, with tiny random weights written in the real formats")
    p.add_argument("--cpu", action="store_true", help="no GPU: redirect the repository's .cuda() calls to the CPU "
                                                      "and skip the CUDA-only steps (to test this script)")
    p.add_argument("--device", default="auto", help="engine.device: auto | cuda | cuda:N")
    p.add_argument("--out", default=None, help="directory for the wavs and the state dir (default: a temp dir)")
    args = p.parse_args(argv)

    out = args.out or tempfile.mkdtemp(prefix="glmtts-validate-")
    os.makedirs(out, exist_ok=True)
    home = args.glmtts_home
    if args.cpu:
        cpu_setup(out)
    if args.random_weights:
        from tests.support.realrepo import build_random_checkout
        t0 = time.monotonic()
        home = str(build_random_checkout(args.random_weights, os.path.join(out, "GLM-TTS")))
        print("info random-weight checkout at %s in %.1f s" % (home, time.monotonic() - t0), flush=True)
    import torch
    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("no CUDA device is visible (torch %s): run on a GPU machine, or pass --cpu" % torch.__version__)

    from fastapi.testclient import TestClient

    from glmtts import engines
    from glmtts_service.app import create_app
    settings = config.load(path="", env={}).replace(
        engine__name="glmtts", engine__glmtts_home=os.path.abspath(home), engine__device=args.device,
        paths__state_dir=os.path.join(out, "state"), paths__log_dir=os.path.join(out, "log"),
        paths__prompt_root=os.path.join(out, "state", "prompts"), limits__rate_limit_per_minute=0,
        gpu__free_memory_floor_mb=0)  # the OOM step must reach the model, not the pressure check
    engine = engines.create(settings)
    report = Report()
    print("info torch %s, CUDA %s, device %s" % (torch.__version__, torch.version.cuda,
                                                 torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"))
    t0 = time.monotonic()
    with TestClient(create_app(settings, engine)) as client:
        health = wait_ok(client, timeout=900)
        report.line("load", True, "ready in %.1f s; engine %s" % (time.monotonic() - t0,
                                                                  json.dumps(health.get("engine"), ensure_ascii=False)))
        step_rates(client, engine, report, out)
        if args.cpu:
            for step in ("nvml-vs-torch", "oom", "fatal-classify"):
                report.line(step, None, "needs CUDA (--cpu)")
        else:
            step_memory(torch, report)
            step_oom(client, torch, report)
            step_fatal(report)
    print("%s: %d step(s) failed%s; wavs in %s" % ("FAILED" if report.failures else "OK", len(report.failures),
                                                  " (%s)" % ", ".join(report.failures) if report.failures else "", out))
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
