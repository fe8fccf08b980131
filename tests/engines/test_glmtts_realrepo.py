"""The glmtts engine against the real GLM-TTS code: a copy of a checkout of the official
repository with tiny random weights in the real formats (tests/support/realrepo/).

The fixture checkout (test_glmtts_adapter.py) mimics the repository; this drives the
repository itself, so the adapter's assumptions about it are checked, not restated.
Opt-in: CI has no checkout.

    GLMTTS_TEST_REAL_CHECKOUT=/path/to/GLM-TTS \\
    GLMTTS_TEST_REAL_PYTHON=/path/to/venv-with-the-glmtts-extra/bin/python \\
    .venv/bin/python -m pytest tests/engines/test_glmtts_realrepo.py -v -s

GLMTTS_TEST_REAL_PYTHON (default: this interpreter) needs ``pip install '.[glmtts]' onnx``.
The engine runs in its own processes with that interpreter: the repository's generic
top-level packages (utils, llm, flow, cosyvoice) and, without CUDA, the CPU shims stay
out of pytest's interpreter. The random weights make noise, not speech: what is checked
is that every path of the adapter runs the real code and that lengths, rates and flags
come out as the repository's own logic says.
"""

import os
import sys

import pytest

from tests.support import realrepo

CHECKOUT = os.environ.get("GLMTTS_TEST_REAL_CHECKOUT", "")
PYTHON = os.environ.get("GLMTTS_TEST_REAL_PYTHON") or sys.executable

pytestmark = [pytest.mark.realrepo,
              pytest.mark.skipif(not CHECKOUT, reason="GLMTTS_TEST_REAL_CHECKOUT=/path/to/GLM-TTS is not set")]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("realrepo")


@pytest.fixture(scope="module")
def env(work):
    return realrepo.child_env(PYTHON, work)


@pytest.fixture(scope="module")
def home(work, env):
    built = realrepo.run_child(PYTHON, ["build", CHECKOUT, str(work / "GLM-TTS")], env, timeout=600)
    print("\n[realrepo] random-weight checkout: %.1f MB of weights, built in %.1f s"
          % (built["weights_bytes"] / 1e6, built["build_s"]))
    return built["dest"]


def engine(home, state_dir, env, scenario="load", prefix=()):
    return realrepo.run_child(PYTHON, ["engine", "--home", home, "--state-dir", str(state_dir),
                                       "--scenario", scenario], env, prefix=prefix)


def audible(figures, rate):
    assert figures["sample_rate"] == rate
    assert figures["samples"] > 0 and figures["finite"] and figures["rms"] > 0, figures


@pytest.mark.timeout(1200)
def test_real_repository_load_rates_stream_prompt_history_and_phoneme(home, env, work):
    r = engine(home, work / "state", env, scenario="conformance")
    d = r["describe"]
    assert d["loaded"] and d["sample_rates"] == [24000, 32000] and d["default_voice"], d
    print("\n[realrepo] load %.1f s (process %.1f s), device %s, cpu shims: %s"
          % (r["load_s"], r["process_wall_s"], d["device"], ", ".join(r["cpu_shims"]) or "none (CUDA)"))

    synth = r["synth"]
    for rate in (24000, 32000):
        s = synth[str(rate)]
        audible(s, rate)
        print("[realrepo] synthesize %d Hz: %.2f s of audio in %.2f s (%d speech tokens)"
              % (rate, s["seconds"], s["wall_s"], s["meta"]["speech_tokens"]))
    # same text and seed -> the same speech tokens -> the same mel frames (50/s at both
    # rates: hop 480 at 24 kHz, 640 at 32 kHz) -> the same duration
    assert synth["24000"]["meta"]["speech_tokens"] == synth["32000"]["meta"]["speech_tokens"]
    assert synth["24000"]["seconds"] == synth["32000"]["seconds"]

    st = r["stream"]
    assert len(st["chunks"]) == st["one_shot"]["meta"]["chunks"] >= 2, st
    for chunk in st["chunks"]:
        audible(chunk, 24000)
    assert st["stream_samples"] == st["one_shot"]["samples"], "streamed total != one-shot length, same seed"
    print("[realrepo] stream: %d chunks, %d samples (one-shot %d) in %.2f s (one-shot %.2f s)"
          % (len(st["chunks"]), st["stream_samples"], st["one_shot"]["samples"], st["stream_wall_s"],
             st["one_shot"]["wall_s"]))

    on, off = r["use_cache"]["true"], r["use_cache"]["false"]
    audible(on, 24000)
    audible(off, 24000)
    assert on["meta"]["use_cache"] is True and off["meta"]["use_cache"] is False
    # with the history the second chunk is prompted differently: other tokens, other audio
    assert (on["meta"]["speech_tokens"], on["samples"], on["rms"]) != (off["meta"]["speech_tokens"], off["samples"],
                                                                       off["rms"])
    print("[realrepo] use_cache on: %d tokens %.2f s; off: %d tokens %.2f s"
          % (on["meta"]["speech_tokens"], on["wall_s"], off["meta"]["speech_tokens"], off["wall_s"]))

    ph = r["phoneme"]
    audible(ph, 24000)
    assert ph["meta"]["phoneme"] is True
    print("[realrepo] phoneme: %.2f s of audio in %.2f s" % (ph["seconds"], ph["wall_s"]))


@pytest.mark.timeout(900)
def test_load_with_read_only_tn_package_builds_fsts_under_state_dir_once(home, env, work):
    tn = realrepo.package_dir(PYTHON, "tn")
    prefix = realrepo.readonly_prefix(tn)
    if prefix is None:
        pytest.skip("needs root and util-linux unshare/mount to make %s read-only" % tn)
    state = work / "state-readonly-tn"
    first = engine(home, state, env, prefix=prefix)
    assert first["fst_before"] == {}
    assert len(first["fst_after"]) == 1, first["fst_after"]
    (entry, record), = first["fst_after"].items()
    assert any("building its FSTs" in line for line in first["fst_log"]), first["fst_log"]

    second = engine(home, state, env, prefix=prefix)
    assert second["fst_before"] == second["fst_after"] == first["fst_after"], "the second start rebuilt the FSTs"
    assert any("reusing" in line for line in second["fst_log"]), second["fst_log"]
    assert not any("building its FSTs" in line for line in second["fst_log"]), second["fst_log"]
    print("\n[realrepo] %s read-only; FSTs built under paths.state_dir in %.1f s (%s)"
          % (tn, record["built_s"], entry))
    print("[realrepo] first start: load %.1f s (process %.1f s); second start, cache present: load %.1f s "
          "(process %.1f s)" % (first["load_s"], first["process_wall_s"], second["load_s"],
                                second["process_wall_s"]))
