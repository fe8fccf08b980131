#!/usr/bin/env python3
"""Batch throughput on the embedded espeak engine, and what durability costs.

Runs the same job in two modes through the real runner and store, in a temp dir:
  durable   outputs fsync'd before rename, journal record fsync'd per task (the default)
  volatile  the same writes without any fsync
and prints tasks per minute for each and their ratio (the price of the guarantees), the
fastest of --rounds runs of each, alternating which goes first.

    .venv/bin/python bench/batch.py [--tasks 200] [--rounds 3] [--dir DIR] [--figures docs/figures.md]

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

import figures  # noqa: E402  (bench/figures.py, beside this script)

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


def _filesystem(path):
    """The type of the file system under ``path`` (the fsync cost depends on it)."""
    best = ("", "?")
    try:
        with open("/proc/self/mounts", encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                under = len(parts) > 2 and (path + "/").startswith(parts[1].rstrip("/") + "/")
                if under and len(parts[1]) >= len(best[0]):
                    best = (parts[1], parts[2])
    except OSError:
        pass
    return "%s at %s" % (best[1], best[0] or "?")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=200)
    ap.add_argument("--dir", default=None, help="parent directory of the temp job dirs")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each mode, alternating (default 3)")
    figures.add_argument(ap)
    args = ap.parse_args(argv)
    rows = []
    root = tempfile.mkdtemp(prefix="glmtts-bench-batch-", dir=args.dir)
    try:
        settings = sandbox(root)
        engine = engines.create(settings)
        engine.load()
        ref = engine.synthesize(SynthesisRequest(text=PROMPT_TEXT, sample_rate=24000))
        with open(os.path.join(settings.paths.prompt_root, "voice.wav"), "wb") as f:
            f.write(audio.encode(ref.audio, ref.sample_rate))
        run_job(settings, engine, 10, True, "warmup")
        # Rounds alternate which mode goes first and the fastest run of each mode counts: on a
        # shared machine one run's noise is larger than the fsync cost being measured.
        results = {"volatile": [], "durable": []}
        modes = (("volatile", False), ("durable", True))
        for n in range(args.rounds):
            for label, durable in (modes if n % 2 == 0 else modes[::-1]):
                elapsed, audio_s = run_job(settings, engine, args.tasks, durable, "%s%d" % (label, n))
                results[label].append(elapsed)
                print("%-9s %4d tasks in %6.2f s = %7.0f tasks/min  (%.0f s of audio, %.1fx real time)" % (
                    label, args.tasks, elapsed, args.tasks * 60.0 / elapsed, audio_s, audio_s / elapsed))
        for label, _ in modes:
            best = min(results[label])
            rows.append((label, args.tasks, "%.2f" % best, " / ".join("%.2f" % t for t in results[label]),
                         "%.0f" % (args.tasks * 60.0 / best), "%.0f" % audio_s, "%.1fx" % (audio_s / best)))
        ratio = min(results["durable"]) / min(results["volatile"])
        print("durability cost: durable/volatile time ratio = %.2f, fastest of %d rounds each  (file system under %s)"
              % (ratio, args.rounds, root))
        fs = _filesystem(root)
        figures.publish(args, "batch", "A batch job through the real runner and store on the embedded engine, "
                        "in two modes: *durable* (every output and journal record fsync'd: the default) and *volatile* "
                        "(the same writes without fsync). The ratio is what the guarantees cost; it depends on "
                        "the disk. Rounds alternate which mode runs first; the fastest of %d runs of each mode "
                        "counts." % args.rounds,
                        figures.table(("run", "tasks", "seconds (fastest)", "all rounds s", "tasks/min", "audio s",
                                       "real time"), rows, "lrrrrrr")
                        + "\n\ndurability cost, durable / volatile time: **%.2f** (file system %s)" % (ratio, fs), argv)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
