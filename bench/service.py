"""Service figures on the embedded engine (prints; never asserts):

  start-to-ready time; streaming time-to-first-audio vs total; first-request /
  warm-median latency ratio; /healthz p50/p99 idle and under saturating synthesis load;
  service overhead over a direct engine call (ratio); requests per minute at the
  default limits.

    .venv/bin/python bench/service.py [--requests N] [--figures docs/figures.md]
"""

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tests.support.service import ServiceProcess  # noqa: E402

import figures  # noqa: E402  (bench/figures.py, beside this script)

TEXT = "你好，欢迎使用语音合成服务。"
LONG = "今天天气很好，我们一起去公园散步吧。" * 20


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100.0 * (len(values) - 1))))]


def timed(fn):
    t = time.perf_counter()
    r = fn()
    return time.perf_counter() - t, r


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=20, help="warm requests per measurement (default 20)")
    figures.add_argument(ap)
    args = ap.parse_args(argv)
    n = args.requests
    rows = []
    with tempfile.TemporaryDirectory(prefix="glmtts-bench-") as tmp:
        svc = ServiceProcess(tmp, {"GLMTTS_LIMITS_MAX_QUEUE": "64"})
        t0 = time.perf_counter()
        svc.start(wait=False)
        try:
            svc.wait_healthy(timeout=120)
            rows.append(("start-to-ready (process start -> /healthz 200)", "%.2f s" % (time.perf_counter() - t0)))
            post = lambda body: svc.post("/v1/audio/speech", json=body)  # noqa: E731

            lat = [timed(lambda: post({"input": TEXT}))[0] for _ in range(n + 1)]
            rows.append(("first request / warm median latency", "%.2f (first %.1f ms, warm median %.1f ms)"
                         % (lat[0] / statistics.median(lat[1:]), lat[0] * 1e3, statistics.median(lat[1:]) * 1e3)))

            t = time.perf_counter()
            first = None
            with svc.post("/v1/audio/speech", json={"input": LONG, "stream": True}, stream=True) as r:
                for _ in r.iter_content(chunk_size=None):
                    first = first or time.perf_counter() - t
            total = time.perf_counter() - t
            rows.append(("streaming: time to first audio / total (%d chars)" % len(LONG),
                         "%.2f (%.1f ms of %.1f ms)" % (first / total, first * 1e3, total * 1e3)))

            idle = [timed(lambda: svc.get("/healthz"))[0] for _ in range(200)]
            stop = threading.Event()

            def load():
                while not stop.is_set():
                    post({"input": LONG})

            workers = [threading.Thread(target=load, daemon=True) for _ in range(4)]
            for w in workers:
                w.start()
            time.sleep(0.5)
            busy = [timed(lambda: svc.get("/healthz"))[0] for _ in range(200)]
            stop.set()
            for w in workers:
                w.join(60)
            rows.append(("/healthz p50 / p99 idle", "%.1f / %.1f ms" % (pct(idle, 50) * 1e3, pct(idle, 99) * 1e3)))
            rows.append(("/healthz p50 / p99 under 4 saturating clients",
                         "%.1f / %.1f ms" % (pct(busy, 50) * 1e3, pct(busy, 99) * 1e3)))

            from glmtts import config
            from glmtts.engines import create
            from glmtts.engines.base import SynthesisRequest

            engine = create(config.load(env={"GLMTTS_CONFIG": ""}))
            engine.load()
            direct = [timed(lambda: engine.synthesize(SynthesisRequest(text=TEXT)))[0] for _ in range(n)]
            http = [timed(lambda: post({"input": TEXT}))[0] for _ in range(n)]
            rows.append(("service overhead: HTTP median / direct engine median",
                         "%.2f (%.1f ms vs %.1f ms)" % (statistics.median(http) / statistics.median(direct),
                                                        statistics.median(http) * 1e3, statistics.median(direct) * 1e3)))

            t = time.perf_counter()
            done = 0
            while time.perf_counter() - t < 10:
                done += post({"input": TEXT}).status_code == 200
            rpm = done * 60.0 / (time.perf_counter() - t)
            rows.append(("throughput, one client, rate limit off", "%.0f requests/min" % rpm))
            rows.append(("requests/min per unauthenticated client at the default limits",
                         "%d (limits.rate_limit_per_minute; service capacity above)" % min(10, int(rpm))))
        finally:
            svc.stop()
    width = max(len(k) for k, _ in rows)
    print("glmtts service bench (engine espeak, embedded; CPU)")
    for k, v in rows:
        print("%-*s  %s" % (width, k, v))
    figures.publish(args, "service", "The service process on the embedded espeak engine (CPU): start-up, "
                    "latency, streaming, /healthz under load, its overhead over a direct engine call (ratio), "
                    "throughput. Medians of %d warm requests." % n, figures.table(("figure", "value"), rows), argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
