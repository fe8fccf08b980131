"""The processes that build and drive the copy, and the command line
(``python -m tests.support.realrepo``). The process half is stdlib-only, usable from
any interpreter."""

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from .cpu import cpu_shims, torchaudio_without_native
from .weights import build_random_checkout

RESULT_PREFIX = "REALREPO_RESULT "


REPO_ROOT = Path(__file__).resolve().parents[3]


class ChildFailed(RuntimeError):
    """A ``build`` or ``engine`` process exited non-zero; ``stderr`` has its traceback."""

    def __init__(self, cmd, returncode, stderr):
        tail = "\n".join(stderr.splitlines()[-60:])
        super().__init__("%s exited %s:\n%s" % (" ".join(map(str, cmd)), returncode, tail))
        self.returncode, self.stderr = returncode, stderr


def child_env(python, workdir):
    """Environment for a process that builds or runs the copy with ``python``: hubs
    offline, transformers' caches (the tokenizer's remote code lands there) under
    ``workdir``, this tree's glmtts first on the path, and the torchaudio overlay
    where that interpreter's torchaudio cannot load."""
    workdir = Path(workdir)
    overlay_dir = workdir / "torchaudio-py"
    if (overlay_dir / "torchaudio").is_dir():
        overlay = overlay_dir
    else:
        overlay = torchaudio_without_native(python, overlay_dir)
    path = ([str(overlay)] if overlay else []) + [str(REPO_ROOT)]
    if os.environ.get("PYTHONPATH"):
        path.append(os.environ["PYTHONPATH"])
    return dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(workdir / "hf"),
                PYTHONPATH=os.pathsep.join(path), PYTHONUNBUFFERED="1")


def run_child(python, args, env, timeout=900, prefix=()):
    """Run ``python -m tests.support.realrepo ARGS`` (optionally under ``prefix``, e.g.
    ``readonly_prefix``); return its parsed result and the wall time of the process."""
    import subprocess
    cmd = list(prefix) + [python, "-m", "tests.support.realrepo"] + list(args)
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    wall = round(time.perf_counter() - started, 2)
    if proc.returncode != 0:
        raise ChildFailed(cmd, proc.returncode, proc.stderr + proc.stdout[-2000:])
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX):])
            result["process_wall_s"] = wall
            result["stderr"] = proc.stderr
            return result
    raise ChildFailed(cmd, "0 without a %r line" % RESULT_PREFIX.strip(), proc.stderr + proc.stdout[-2000:])


def readonly_prefix(path):
    """A command prefix that runs the rest in a private mount namespace where ``path``
    is read-only (as ``ProtectSystem=strict`` leaves site-packages), after checking that
    a write there really fails. Needs root and util-linux ``unshare``; returns None
    where either is missing."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("mount"):
        return None
    script = ('mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" || exit 96; '
              'if touch "$0/.realrepo-rw-probe" 2>/dev/null; then rm -f "$0/.realrepo-rw-probe"; '
              'echo "realrepo: $0 is still writable" >&2; exit 97; fi; exec "$@"')
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(path)]


# -- driving the engine (the ``engine`` command) ----------------------------------------------

LONG_TEXT = "你好，欢迎使用我们的语音合成服务。今天天气很好，我们一起去公园散步吧。明天见。"
SHORT_TEXT = "你好，这是一次测试。"
PHONEME_TEXT = "他长大了，银行行长来了。"


def _audio_figures(result):
    import numpy as np
    a = np.asarray(result.audio, dtype=np.float32)
    return {"samples": int(a.size), "sample_rate": int(result.sample_rate), "seconds": round(a.size / result.sample_rate, 3),
            "finite": bool(np.isfinite(a).all()), "rms": float(np.sqrt(np.mean(a ** 2))) if a.size else 0.0,
            "peak": float(np.abs(a).max()) if a.size else 0.0}


def _fst_records(state_dir):
    root = Path(state_dir) / "cache" / "wetext"
    out = {}
    for record in sorted(root.glob("*/glmtts-cache.json")):
        out[record.parent.name] = dict(json.loads(record.read_text()), mtime=record.stat().st_mtime)
    return out


def drive_engine(home, state_dir, scenario="load"):
    """Load GlmTtsEngine over ``home`` in this process and measure ``scenario``."""
    import logging
    shims = cpu_shims()
    log_lines = []

    class Keep(logging.Handler):
        def emit(self, record):
            log_lines.append("%s %s: %s" % (record.levelname, record.name, record.getMessage()))

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    logging.getLogger("glmtts").addHandler(Keep())

    from glmtts import config
    from glmtts.engines import SynthesisRequest, create

    settings = config.load(path="", env={}).replace(engine__name="glmtts", engine__glmtts_home=str(home),
                                                     paths__state_dir=str(state_dir))
    report = {"scenario": scenario, "cpu_shims": shims, "fst_before": _fst_records(state_dir)}
    started = time.perf_counter()
    engine = create(settings)
    engine.load()
    report["load_s"] = round(time.perf_counter() - started, 2)
    report["describe"] = engine.describe()
    report["fst_after"] = _fst_records(state_dir)
    report["fst_log"] = [ln for ln in log_lines if "text normalizer" in ln]
    if scenario == "conformance":
        report.update(_conformance(engine, SynthesisRequest))
    return report


def _timed(fn):
    started = time.perf_counter()
    value = fn()
    return value, round(time.perf_counter() - started, 2)


def _conformance(engine, Request):
    out = {"synth": {}, "stream": {}, "use_cache": {}, "phoneme": {}}
    for rate in (24000, 32000):
        result, secs = _timed(lambda: engine.synthesize(Request(text=SHORT_TEXT, sample_rate=rate, seed=7)))
        out["synth"][str(rate)] = dict(_audio_figures(result), wall_s=secs, meta=result.meta)
    whole, whole_s = _timed(lambda: engine.synthesize(Request(text=LONG_TEXT, sample_rate=24000, seed=11)))
    parts, stream_s = _timed(lambda: list(engine.synthesize_stream(Request(text=LONG_TEXT, sample_rate=24000, seed=11))))
    out["stream"] = {"one_shot": dict(_audio_figures(whole), wall_s=whole_s, meta=whole.meta),
                     "chunks": [_audio_figures(p) for p in parts], "stream_wall_s": stream_s,
                     "stream_samples": sum(len(p.audio) for p in parts)}
    for flag in (True, False):
        result, secs = _timed(lambda: engine.synthesize(Request(text=LONG_TEXT, sample_rate=24000, seed=3,
                                                                use_cache=flag)))
        out["use_cache"][str(flag).lower()] = dict(_audio_figures(result), wall_s=secs, meta=result.meta)
    result, secs = _timed(lambda: engine.synthesize(Request(text=PHONEME_TEXT, sample_rate=24000, seed=5,
                                                            phoneme=True)))
    out["phoneme"] = dict(_audio_figures(result), wall_s=secs, meta=result.meta)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tests.support.realrepo",
                                     description="A copy of a GLM-TTS checkout with tiny random weights, and "
                                                 "the glmtts engine driven over it (tests/support/realrepo).")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="copy a checkout and write tiny random weights into the copy")
    b.add_argument("source")
    b.add_argument("dest")
    b.add_argument("--seed", type=int, default=0)
    e = sub.add_parser("engine", help="load GlmTtsEngine over a checkout, print measurements as JSON")
    e.add_argument("--home", required=True)
    e.add_argument("--state-dir", required=True)
    e.add_argument("--scenario", choices=("load", "conformance"), default="load")
    args = parser.parse_args(argv)
    if args.command == "build":
        started = time.perf_counter()
        dest = build_random_checkout(args.source, args.dest, seed=args.seed)
        size = sum(p.stat().st_size for p in (dest / "ckpt").rglob("*") if p.is_file())
        size += (dest / "frontend" / "campplus.onnx").stat().st_size
        print(RESULT_PREFIX + json.dumps({"dest": str(dest), "build_s": round(time.perf_counter() - started, 2),
                                          "weights_bytes": size}), flush=True)
        return 0
    report = drive_engine(args.home, args.state_dir, args.scenario)
    print(RESULT_PREFIX + json.dumps(report, default=repr), flush=True)
    # the model thread is a daemon; leave without waiting on the repository's globals
    sys.stdout.flush()
    os._exit(0)
