#!/usr/bin/env python3
"""Batch throughput on the embedded espeak engine, and what durability costs.

Runs the same job twice through the real runner and store, in a temp dir:
  durable   outputs fsync'd before rename, journal record fsync'd per task (the default)
  volatile  the same writes without any fsync
and prints tasks per minute for each and their ratio (the price of the guarantees).

    .venv/bin/python bench/batch.py [--tasks 200] [--dir /var/tmp]

--dir picks the file system (the fsync cost depends on the disk under it).
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from glmtts import audio, config, engines  # noqa: E402
from glmtts.batch.runner import EngineSynthesizer, Runner  # noqa: E402
from glmtts.batch.store import JobStore  # noqa: E402
from glmtts.batch.validate import validate_file  # noqa: E402
from glmtts.engines.base import SynthesisRequest  # noqa: E402

PROMPT_TEXT = "This is a reference recording of a calm voice, speaking slowly and clearly."


def sandbox(root):
    settings = config.load(path="", env={}).replace(
        paths__state_dir=os.path.join(root, "state"), paths__prompt_root=os.path.join(root, "prompts"),
        paths__output_dir=os.path.join(root, "outputs"))
    os.makedirs(settings.paths.prompt_root)
    return settings


def run_job(settings, engine, n, durable, label):
    root = os.path.dirname(settings.paths.state_dir)
    path = os.path.join(root, "%s.jsonl" % label)
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"prompt_audio": "voice.wav", "prompt_text": PROMPT_TEXT,
                                "input_text": "Sentence number %d of the benchmark." % i,
                                "output_name": "%s_%04d" % (label, i)}) + "\n")
    report = validate_file(path, settings)
    assert report.ok, report.format_text()
    job = JobStore(settings).create(path, report, source=path)
    t0 = time.perf_counter()
    summary = Runner(job, EngineSynthesizer(engine), settings, durable=durable).run()
    elapsed = time.perf_counter() - t0
    assert summary["progress"]["done"] == n, summary
    return elapsed, summary["audio_s"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=200)
    ap.add_argument("--dir", default=None, help="parent directory of the temp job dirs")
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="glmtts-bench-batch-", dir=args.dir)
    try:
        settings = sandbox(root)
        engine = engines.create(settings)
        engine.load()
        ref = engine.synthesize(SynthesisRequest(text=PROMPT_TEXT, sample_rate=24000))
        with open(os.path.join(settings.paths.prompt_root, "voice.wav"), "wb") as f:
            f.write(audio.encode(ref.audio, ref.sample_rate))
        run_job(settings, engine, 10, True, "warmup")
        results = {}
        for label, durable in (("volatile", False), ("durable", True)):
            elapsed, audio_s = run_job(settings, engine, args.tasks, durable, label)
            results[label] = elapsed
            print("%-9s %4d tasks in %6.2f s = %7.0f tasks/min  (%.0f s of audio, %.1fx real time)" % (
                label, args.tasks, elapsed, args.tasks * 60.0 / elapsed, audio_s, audio_s / elapsed))
        print("durability cost: durable/volatile time ratio = %.2f  (file system under %s)" % (
            results["durable"] / results["volatile"], root))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
