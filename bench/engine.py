#!/usr/bin/env python3
"""Real-time factor of the embedded espeak engine (synthesis seconds per second of
audio; lower is faster) for short and long text at both output rates, and, for long
text, the first-chunk latency against the total (what streaming buys a listener).

    .venv/bin/python bench/engine.py [--repeat N] [--figures docs/figures.md]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from glmtts import audio, config  # noqa: E402
from glmtts.engines import SynthesisRequest, create  # noqa: E402

import figures  # noqa: E402  (bench/figures.py, beside this script)

SHORT = "你好，欢迎使用语音合成服务。"
LONG = ("人工智能正在改变我们的生活。语音合成可以把文字变成自然的声音，让机器开口说话。"
        "这个服务在夜里也能自己恢复，出了问题会告诉值班的工程师该做什么。"
        "It speaks English too, and it can mix both languages in one sentence. "
        "我们希望它稳定、可靠、快速。每一个请求都会被认真对待，不会丢失任何工作。") * 3


def measure(engine, text, sample_rate, repeat):
    best = None
    for _ in range(repeat):
        request = SynthesisRequest(text=text, sample_rate=sample_rate)
        start = time.perf_counter()
        first = None
        samples = 0
        chunks = 0
        for part in engine.synthesize_stream(request):
            if first is None:
                first = time.perf_counter() - start
            samples += len(part.audio)
            chunks += 1
        total = time.perf_counter() - start
        if best is None or total < best[0]:
            best = (total, first, samples / float(sample_rate), chunks)
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; the fastest is reported")
    figures.add_argument(parser)
    args = parser.parse_args(argv)
    rows = []
    engine = create(config.load(path="", env={}))
    start = time.perf_counter()
    engine.load()
    load_s = time.perf_counter() - start
    print("engine espeak: load (incl. calibration) %.2f s" % load_s)
    print("%-6s %6s %8s %7s %9s %7s %12s" % ("text", "rate", "audio_s", "chunks", "synth_s", "RTF", "first_chunk"))
    for label, text in (("short", SHORT), ("long", LONG)):
        for sample_rate in (24000, 32000):
            total, first, audio_s, chunks = measure(engine, text, sample_rate, args.repeat)
            print("%-6s %6d %8.2f %7d %9.3f %7.4f %6.3f s (%3.0f%%)"
                  % (label, sample_rate, audio_s, chunks, total, total / audio_s, first, 100.0 * first / total))
            rows.append((label, sample_rate, "%.2f" % audio_s, chunks, "%.3f" % total, "%.4f" % (total / audio_s),
                         "%.3f s (%.0f%%)" % (first, 100.0 * first / total), ""))
    # zero-shot: prosody matched to a high reference (espeak speech shifted up 2.4x)
    base = engine.synthesize(SynthesisRequest(text=SHORT * 2, speed=0.6)).audio
    reference = audio.resample(base, int(24000 * 2.4), 24000)
    features = engine.prepare_prompt(reference, 24000, SHORT * 2)
    for sample_rate in (24000, 32000):
        best = None
        for _ in range(args.repeat):
            start = time.perf_counter()
            first = None
            samples = 0
            for part in engine.synthesize_stream(SynthesisRequest(text=LONG, sample_rate=sample_rate,
                                                                  prompt_features=features)):
                first = first if first is not None else time.perf_counter() - start
                samples += len(part.audio)
            total = time.perf_counter() - start
            best = min(best or (total, first, samples), (total, first, samples))
        total, first, samples = best
        audio_s = samples / float(sample_rate)
        print("%-6s %6d %8.2f %7s %9.3f %7.4f %6.3f s (%3.0f%%)  zero-shot (prosody matched, %.0f Hz)"
              % ("long", sample_rate, audio_s, "-", total, total / audio_s, first, 100.0 * first / total,
                 features.data["median_hz"]))
        rows.append(("long", sample_rate, "%.2f" % audio_s, "-", "%.3f" % total, "%.4f" % (total / audio_s),
                     "%.3f s (%.0f%%)" % (first, 100.0 * first / total),
                     "zero-shot, prosody matched to %.0f Hz" % features.data["median_hz"]))
    figures.publish(args, "engine", "The embedded espeak engine: load time, and the real-time factor (RTF: "
                    "synthesis seconds per second of audio, lower is faster; the fastest of %d runs) for short and "
                    "long text at both output rates, with the first chunk's latency against the total." % args.repeat,
                    "load() including the calibration: %.2f s\n\n" % load_s
                    + figures.table(("text", "rate Hz", "audio s", "chunks", "synth s", "RTF", "first chunk (of total)",
                                     "note"), rows, "lrrrrrrl"), argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
