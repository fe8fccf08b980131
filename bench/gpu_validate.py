#!/usr/bin/env python3
"""Manual GPU validation of the glmtts engine with the real GLM-TTS weights.

CI has no GPU, so the adapter's tests run against tests/fixtures/glmtts_checkout. This
script is the step a person runs once on a GPU box after installing `.[glmtts]`:

    python bench/gpu_validate.py --glmtts-home /opt/GLM-TTS [--out /tmp/glmtts-validate]

It loads the real model, synthesizes short and long text at 24000 and 32000 Hz (full and
streamed), checks the audio is non-silent and plausible, repeats one request with the same
seed, triggers clear_gpu_memory() and prints GPU figures at each step. It writes the wavs
to --out so a person can listen. Exit status 0 only if every check passed.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from glmtts import audio as audio_mod  # noqa: E402
from glmtts import config, gpu  # noqa: E402
from glmtts.engines import SynthesisRequest, create  # noqa: E402

SHORT = "你好，欢迎使用语音合成服务。"
LONG = ("今天是个好日子，我们一起去公园散步吧。路边的花都开了，空气里有淡淡的清香。"
        "孩子们在草地上奔跑，老人们坐在长椅上聊天。傍晚的时候，夕阳把湖面染成了金色。"
        "GLM-TTS supports mixed Chinese and English text, too.")


def mem_line(label):
    s = gpu.status()
    parts = [label]
    for d in s["devices"]:
        parts.append("gpu%d used %.0f / %.0f MB (free %.0f MB, %d processes)"
                     % (d["index"], d["used_mb"], d["total_mb"], d["free_mb"], len(d["processes"])))
    for t in s["torch"]["devices"]:
        parts.append("torch%d allocated %.0f MB reserved %.0f MB peak %.0f MB"
                     % (t["index"], t["allocated_mb"], t["reserved_mb"], t["max_allocated_mb"]))
    if not s["available"]:
        parts.append("no GPU: %s" % s["reason"])
    print(" | ".join(parts), flush=True)


def check(result, label, failures):
    a = result.audio
    rms = float(np.sqrt(np.mean(a ** 2))) if len(a) else 0.0
    ok = len(a) > 0.3 * result.sample_rate and rms > 0.005 and np.isfinite(a).all()
    if not ok:
        failures.append("%s: %d samples, rms %.4f" % (label, len(a), rms))
    return rms


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--glmtts-home", required=True, help="checkout of github.com/zai-org/GLM-TTS with ckpt/")
    p.add_argument("--device", default="auto", help="auto | cuda | cuda:N (engine.device)")
    p.add_argument("--out", default="/tmp/glmtts-validate", help="directory for the synthesized wavs")
    p.add_argument("--prompt-audio", help="reference voice (default: the checkout's examples/ prompt)")
    p.add_argument("--prompt-text", default="", help="transcript of --prompt-audio")
    args = p.parse_args(argv)

    os.makedirs(args.out, exist_ok=True)
    settings = config.load(path="", env={}).replace(engine__name="glmtts", engine__glmtts_home=os.path.abspath(args.glmtts_home),
                                                    engine__device=args.device)
    failures = []
    mem_line("before load:")
    engine = create(settings)
    t0 = time.monotonic()
    engine.load()
    print("load: %.1f s; %s" % (time.monotonic() - t0, json.dumps(engine.describe(), ensure_ascii=False)), flush=True)
    mem_line("after load:")

    prompt = {}
    if args.prompt_audio:
        with open(args.prompt_audio, "rb") as f:
            ref, ref_sr = audio_mod.decode(f.read())
        t0 = time.monotonic()
        prompt["prompt_features"] = engine.prepare_prompt(ref, ref_sr, args.prompt_text)
        print("prepare_prompt: %.2f s" % (time.monotonic() - t0))

    for rate in (24000, 32000):
        if rate not in engine.describe()["sample_rates"]:
            failures.append("%d Hz not loaded" % rate)
            continue
        for name, text in (("short", SHORT), ("long", LONG)):
            req = SynthesisRequest(text=text, sample_rate=rate, seed=42, **prompt)
            t0 = time.monotonic()
            r = engine.synthesize(req)
            wall = time.monotonic() - t0
            rms = check(r, "%s@%d" % (name, rate), failures)
            path = os.path.join(args.out, "%s_%d.wav" % (name, rate))
            with open(path, "wb") as f:
                f.write(audio_mod.encode(r.audio, rate, "wav"))
            print("%-5s %d Hz: %.2f s audio in %.2f s (RTF %.3f), rms %.3f, %s chunks -> %s"
                  % (name, rate, r.duration_s, wall, wall / max(r.duration_s, 1e-9), rms, r.meta.get("chunks"), path))
            t0 = time.monotonic()
            first, parts = None, []
            for part in engine.synthesize_stream(req):
                first = first or time.monotonic() - t0
                parts.append(part.audio)
            streamed = np.concatenate(parts) if parts else np.zeros(0, np.float32)
            print("      streamed: %d chunks, first after %.2f s, total %.2f s audio (full: %.2f s)"
                  % (len(parts), first or 0, len(streamed) / rate, r.duration_s))
            if not len(streamed):
                failures.append("stream %s@%d empty" % (name, rate))
        mem_line("after %d Hz:" % rate)

    again = [engine.synthesize(SynthesisRequest(text=SHORT, seed=123, **prompt)).audio for _ in range(2)]
    same = len(again[0]) == len(again[1]) and np.allclose(again[0], again[1], atol=1e-3)
    print("same seed twice: %s (GPU kernels may be nondeterministic; lengths %d / %d)"
          % ("identical" if same else "DIFFERENT", len(again[0]), len(again[1])))

    cleared = gpu.clear_gpu_memory([])
    print("clear_gpu_memory: steps %s, freed %s MB" % (cleared["steps"], cleared.get("freed_mb")))
    mem_line("after clear:")
    decision = gpu.check_memory_pressure(settings, 32000)
    print("pressure check at 32000 Hz: %s" % json.dumps(decision.as_dict()))

    if failures:
        print("FAILED: " + "; ".join(failures))
        return 1
    print("OK: all checks passed; listen to the wavs in %s" % args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
