#!/usr/bin/env python3
"""Print the time to recover per fault scenario, as measured by the system tests under a
real systemd (tests/system/, written to artifacts/recovery.json).

    .venv/bin/python -m pytest -m system tests/system   # produces the figures
    .venv/bin/python bench/recovery.py [--json PATH] [--markdown] [--restart-runs N] [--figures docs/figures.md]

It first measures restart speed live, side by side in one run: process start -> /readyz
200 of the service on the embedded engine (no service manager, so no RestartSec) against
a bare `python -c 'import fastapi, uvicorn'` plus the engine's own load(), and prints the
ratio (target <= 1.5).

Time to recover = the outage: from the fault (kill, SIGSTOP, fault word written, disk
filled) to the service answering /healthz 200 again. For a watchdog incident that is its
``outage_s`` (fault_at: the manager's exit time, a log line's time or the first failed
probe's start; service_back_at: the manager's ready time or the first healthy probe);
"verify s" is the time from healthy again to the watchdog's smoke test (when the cycle ran).
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import figures  # bench/figures.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "artifacts" / "recovery.json"
RESTART_TARGET = 1.5  # issue 11: start -> ready at most 1.5 x (bare fastapi+uvicorn import + engine load())

# The engine's own cost in a fresh interpreter: import its module, construct it, load() it,
# and the one warm-up synthesis the service does before ready. Printed as JSON.
ENGINE_ALONE = r"""
import json, sys, time
t0 = time.perf_counter()
from glmtts import config, engines
from glmtts.engines.base import SynthesisRequest
s = config.load(env={"GLMTTS_CONFIG": ""})
cls = engines.resolve(sys.argv[1])
t1 = time.perf_counter()
e = cls(s)
t2 = time.perf_counter()
e.load()
t3 = time.perf_counter()
e.synthesize(SynthesisRequest(text=s.engine.warmup_text, sample_rate=s.engine.sample_rate, seed=s.engine.seed))
t4 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t3 - t2, "warmup_s": t4 - t3}))
"""


def rows(data):
    for scenario in sorted(data):
        entry = data[scenario]
        seconds = entry.get("seconds")
        verify = entry.get("verification_s")
        yield (scenario, "-" if seconds is None else "%.1f" % seconds, "-" if verify is None else "%.1f" % verify,
               entry.get("detail", ""), entry.get("recorded_at", ""))


def render(data, markdown=False):
    table = list(rows(data))
    head = ("scenario", "outage s", "verify s", "how", "measured")
    if markdown:
        out = ["| %s |" % " | ".join(head), "|---|---:|---:|---|---|"]
        out += ["| %s |" % " | ".join(r) for r in table]
        return "\n".join(out)
    widths = [max(len(str(r[i])) for r in table + [head]) for i in range(len(head))]
    fmt = "  ".join("%%-%ds" % w if i not in (1, 2) else "%%%ds" % w for i, w in enumerate(widths))
    return "\n".join([fmt % head, fmt % tuple("-" * w for w in widths)] + [fmt % r for r in table])


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _timed(cmd, env=None):
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd=ROOT).stdout
    return time.perf_counter() - t0, out


def service_start_to_ready(engine, ui=True, timeout=120.0):
    """Seconds from spawning `python -m service` to /readyz 200 (no manager, so no
    RestartSec), and whether the process has torch loaded then."""
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="glmtts-bench-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GLMTTS_") and k not in ("NOTIFY_SOCKET",)}
        env.update({"GLMTTS_CONFIG": "", "GLMTTS_SERVER_PORT": str(port), "GLMTTS_ENGINE_NAME": engine,
                    "GLMTTS_SERVER_UI": "true" if ui else "false", "GRADIO_ANALYTICS_ENABLED": "False",
                    "PYTHONPATH": str(ROOT)})
        for d in ("state", "log", "prompts", "outputs"):
            os.makedirs(os.path.join(tmp, d))
            env["GLMTTS_PATHS_%s" % {"state": "STATE_DIR", "log": "LOG_DIR", "prompts": "PROMPT_ROOT",
                                     "outputs": "OUTPUT_DIR"}[d]] = os.path.join(tmp, d)
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError("the service exited with %s before ready" % proc.returncode)
                if time.perf_counter() - t0 > timeout:
                    raise RuntimeError("the service was not ready within %.0f s" % timeout)
                try:
                    with urllib.request.urlopen("http://127.0.0.1:%d/readyz" % port, timeout=1) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                time.sleep(0.02)
            ready_s = time.perf_counter() - t0
            with urllib.request.urlopen("http://127.0.0.1:%d/healthz" % port, timeout=5) as r:
                torch_loaded = json.loads(r.read()).get("torch_loaded")
        finally:
            proc.terminate()  # the process this function started
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return ready_s, torch_loaded


def restart_speed(engine="espeak", runs=3, out=sys.stdout):
    """Side by side, interleaved in one run: service start -> ready vs a bare
    `python -c 'import fastapi, uvicorn'` plus the engine's own cost; the ratio. Printed to
    ``out``; returned as a Markdown table for the figures file."""
    bare, alone, ready, torch_seen = [], [], [], set()
    for _ in range(runs):
        bare.append(_timed([sys.executable, "-c", "import fastapi, uvicorn"])[0])
        alone.append(json.loads(_timed([sys.executable, "-c", ENGINE_ALONE, engine])[1]))
        r, t = service_start_to_ready(engine)
        ready.append(r)
        torch_seen.add(t)
    med = statistics.median
    bare_s, ready_s = med(bare), med(ready)
    imp, load, warm = (med(a[k] for a in alone) for k in ("import_s", "load_s", "warmup_s"))
    strict = bare_s + load
    full = bare_s + imp + load + warm
    out.write("restart speed, engine %s (median of %d, interleaved; the UI is on and built after ready):\n"
              % (engine, runs))
    out.write("  python -c 'import fastapi, uvicorn'          %6.2f s\n" % bare_s)
    out.write("  engine alone: import %.2f s, load() %.2f s, warm-up %.2f s\n" % (imp, load, warm))
    out.write("  service: process start -> /readyz 200        %6.2f s   (torch loaded: %s)\n"
              % (ready_s, "/".join(sorted(str(t) for t in torch_seen))))
    out.write("  ratio to bare import + load()                 %6.2f   (target <= %.1f)\n" % (ready_s / strict,
                                                                                           RESTART_TARGET))
    out.write("  ratio to bare import + engine import + load() + warm-up  %.2f\n" % (ready_s / full))
    return figures.table(("restart speed, engine %s (median of %d, interleaved; UI on, built after ready)"
                          % (engine, runs), "value"),
                         [("python -c 'import fastapi, uvicorn'", "%.2f s" % bare_s),
                          ("engine alone: import / load() / warm-up", "%.2f / %.2f / %.2f s" % (imp, load, warm)),
                          ("service: process start -> /readyz 200", "%.2f s (torch loaded: %s)"
                           % (ready_s, "/".join(sorted(str(t) for t in torch_seen)))),
                          ("ratio to bare import + load()", "**%.2f** (target <= %.1f)" % (ready_s / strict,
                                                                                           RESTART_TARGET)),
                          ("ratio to bare import + engine import + load() + warm-up", "%.2f" % (ready_s / full))])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", default=str(DEFAULT), help="results file (default: %(default)s)")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown (--figures writes it to docs/figures.md)")
    p.add_argument("--restart-runs", type=int, default=3, metavar="N",
                   help="start the service N times to measure restart speed (0 = skip; default %(default)s)")
    p.add_argument("--engine", default="espeak", help="engine for the restart-speed figure (default %(default)s)")
    figures.add_argument(p)
    args = p.parse_args(argv)
    blocks = []
    if args.restart_runs:
        blocks.append(restart_speed(args.engine, args.restart_runs))
        print()
    data, problem = load(args.json)
    if problem:
        print(problem, file=sys.stderr)
        # the restart speed was measured: it still goes to the figures, the missing table is said
        blocks.append("Recovery table: %s." % problem)
    else:
        print(render(data, args.markdown))
        blocks.append("Recovery per fault scenario, from `%s` (written by the system tests under a real systemd, "
                      "`pytest -m system tests/system`; this bench only reads it: the *measured* column says when "
                      "each row was):\n\n%s" % (_shown(args.json), render(data, markdown=True)))
    if blocks and (args.restart_runs or not problem):
        figures.publish(args, "recovery", "Restart speed measured live (the service's process start to /readyz 200 "
                        "against a bare `import fastapi, uvicorn` plus the engine's own load(), the ratio), then "
                        "the time to recover per fault scenario as the system tests recorded it. outage s = from "
                        "the fault to /healthz 200 again; verify s = from healthy again to the watchdog's smoke "
                        "test.", "\n\n".join(blocks), argv)
    return 1 if problem else 0


def load(path):
    """(scenarios, None) from the system tests' results file, or (None, what is wrong)."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None, "no results at %s: run the system tests first (pytest -m system tests/system)" % _shown(path)
    except ValueError as e:
        return None, "%s is not valid JSON: %s" % (_shown(path), e)
    if not data:
        return None, "%s holds no scenario yet" % _shown(path)
    return data, None


def _shown(path):
    """A path as the figures file may print it: relative to the checkout when inside it."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
