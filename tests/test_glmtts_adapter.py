"""The glmtts engine against tests/fixtures/glmtts_checkout, a stand-in checkout with the
official repository's layout and signatures that returns real audio (no GPU here)."""

import io
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import soundfile as sf

from glmtts import config
from glmtts.engines import PromptFeatures, SynthesisRequest, create
from glmtts.engines.glmtts_adapter import GlmTtsEngine
from glmtts.errors import ConfigError, CudaFatalError, EngineOOMError, InputError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(REPO_ROOT, "tests", "fixtures", "glmtts_checkout")
LONG_TEXT = "你好，欢迎使用我们的语音合成服务。今天天气很好，我们一起去公园散步吧。明天见。"
FIXTURE_PROMPT_F0 = 180.0  # examples/prompt/fixture_zh.wav


def glm_settings(home=FIXTURE, **overrides):
    return config.load(path="", env={}).replace(engine__name="glmtts", engine__glmtts_home=home, **overrides)


@pytest.fixture(scope="module")
def engine():
    eng = create(glm_settings())
    eng.load()
    yield eng
    # The checkout's generic top-level packages (utils, llm, cosyvoice) must not leak
    # into the rest of the suite's interpreter.
    for name, mod in list(sys.modules.items()):
        if (getattr(mod, "__file__", None) or "").startswith(FIXTURE + os.sep):
            del sys.modules[name]
    while FIXTURE in sys.path:
        sys.path.remove(FIXTURE)


@pytest.fixture
def calls(engine):
    log = sys.modules["utils.call_log"]
    log.CALLS.clear()
    return log


def median_f0(audio, sr):
    frame = int(0.04 * sr)
    lo, hi = int(sr / 400), int(sr / 60)
    f0s = []
    for start in range(0, len(audio) - frame, frame):
        seg = audio[start:start + frame]
        if np.sqrt(np.mean(seg ** 2)) < 0.05:
            continue
        ac = np.correlate(seg, seg, mode="full")[frame - 1:]
        f0s.append(sr / (lo + int(np.argmax(ac[lo:hi]))))
    return float(np.median(f0s))


def as_wav_and_back(result):
    buf = io.BytesIO()
    sf.write(buf, result.audio, result.sample_rate, format="WAV", subtype="PCM_16")
    buf.seek(0)
    return sf.read(buf, dtype="float32")


def voice(f0, seconds=3.0, sr=16000):
    t = np.arange(int(seconds * sr)) / sr
    ph = 2 * np.pi * f0 * t
    return (0.4 * (np.sin(ph) + 0.5 * np.sin(2 * ph)) / 1.5).astype(np.float32), sr


def test_load_describes_engine_and_runs_repo_with_its_root_as_cwd(engine, calls):
    d = engine.describe()
    assert d["name"] == "glmtts" and d["loaded"] is True
    assert d["sample_rates"] == [24000, 32000]
    assert "timbre_cloning" in d["capabilities"] and "streaming" in d["capabilities"]
    assert d["device"] == "cpu" and d["cwd_isolation"] == "thread" and d["default_voice"] is True
    assert os.getcwd() != FIXTURE


@pytest.mark.parametrize("rate", [24000, 32000])
def test_synthesize_at_both_rates_gives_decodable_voiced_audio(engine, rate):
    r = engine.synthesize(SynthesisRequest(text="你好，欢迎使用语音合成。", sample_rate=rate))
    audio, sr = as_wav_and_back(r)
    assert sr == rate and r.sample_rate == rate
    # the fixture LM emits 3-5 tokens per character at 25 tokens/s, plus pauses
    assert 1.0 < len(audio) / sr < 4.0
    assert len(audio) % (rate // 25) == 0
    assert np.sqrt(np.mean(audio ** 2)) > 0.05, "not silent"
    assert abs(median_f0(audio, sr) - FIXTURE_PROMPT_F0) / FIXTURE_PROMPT_F0 < 0.15
    assert r.meta["chunks"] == 1 and r.meta["engine"] == "glmtts"


def test_both_rates_give_the_same_duration(engine):
    a = engine.synthesize(SynthesisRequest(text=LONG_TEXT, sample_rate=24000))
    b = engine.synthesize(SynthesisRequest(text=LONG_TEXT, sample_rate=32000))
    assert a.duration_s == pytest.approx(b.duration_s)


def test_same_seed_same_audio_other_seed_other_audio(engine):
    one = engine.synthesize(SynthesisRequest(text=LONG_TEXT, seed=7))
    two = engine.synthesize(SynthesisRequest(text=LONG_TEXT, seed=7))
    other = engine.synthesize(SynthesisRequest(text=LONG_TEXT, seed=8))
    assert np.array_equal(one.audio, two.audio)
    assert not np.array_equal(one.audio, other.audio)


def test_use_cache_reaches_generate_long_and_grows_the_prompt(engine, calls):
    engine.synthesize(SynthesisRequest(text=LONG_TEXT, use_cache=True))
    assert calls.calls("generate_long")[-1]["use_cache"] is True
    assert calls.calls("generate_long")[-1]["sample_method"] == "ras"
    assert calls.calls("get_cached_prompt"), "later chunks are prompted from the KV-cache history"
    lm = calls.calls("llm.inference")
    assert len(lm) >= 2 and lm[1]["prompt_text_len"] > lm[0]["prompt_text_len"]

    calls.CALLS.clear()
    engine.synthesize(SynthesisRequest(text=LONG_TEXT, use_cache=False))
    assert calls.calls("generate_long")[-1]["use_cache"] is False
    assert not calls.calls("get_cached_prompt")
    lm = calls.calls("llm.inference")
    assert lm[1]["prompt_text_len"] == lm[0]["prompt_text_len"]


def test_phoneme_reaches_the_repo_and_applies_its_g2p_dict(engine, calls):
    plain = engine.synthesize(SynthesisRequest(text="我去银行。", phoneme=False))
    assert calls.calls("generate_long")[-1]["use_phoneme"] is False and not calls.calls("g2p_infer")
    ph = engine.synthesize(SynthesisRequest(text="我去银行。", phoneme=True))
    assert calls.calls("generate_long")[-1]["use_phoneme"] is True
    assert "<|Y|><|IN2|><|H|><|ANG2|>" in calls.calls("llm.inference")[-1]["text"]  # configs/G2P_replace_dict.jsonl
    assert not np.array_equal(plain.audio, ph.audio)


@pytest.mark.parametrize("use_cache,phoneme,rate", [(True, False, 24000), (False, True, 32000)])
def test_stream_yields_each_chunk_and_concatenation_matches(engine, calls, use_cache, phoneme, rate):
    req = SynthesisRequest(text=LONG_TEXT + "银行在重庆。", sample_rate=rate, seed=3, use_cache=use_cache, phoneme=phoneme)
    whole = engine.synthesize(req)
    calls.CALLS.clear()
    parts = []
    for part in engine.synthesize_stream(req):
        # incremental: this chunk's LM + flow ran, the next one has not started yet
        assert len(calls.calls("llm.inference")) == len(parts) + 1
        parts.append(part)
    assert len(parts) == whole.meta["chunks"] >= 2
    assert not calls.calls("generate_long"), "streaming runs the per-chunk steps itself"
    assert all(p.sample_rate == rate and len(p.audio) > 0 for p in parts)
    assert np.array_equal(np.concatenate([p.audio for p in parts]), whole.audio)


def test_repository_prints_during_load_go_to_stderr_not_the_access_log(engine, capfd):
    create(glm_settings()).load()
    out, err = capfd.readouterr()
    assert "fixture front end ready at 24000 Hz" in err
    assert "front end ready" not in out


def test_load_and_synthesis_never_change_the_process_cwd(engine, calls):
    before = os.getcwd()
    seen, stop = set(), threading.Event()

    def watch():
        while not stop.is_set():
            seen.add(os.getcwd())

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        fresh = create(glm_settings())
        fresh.load()
        fresh.synthesize(SynthesisRequest(text=LONG_TEXT))
        list(fresh.synthesize_stream(SynthesisRequest(text=LONG_TEXT, sample_rate=32000)))
    finally:
        stop.set()
        watcher.join()
    assert seen == {before}
    assert calls.calls("load_models")[-1]["cwd"] == FIXTURE, "the repository saw its own root as cwd"
    assert calls.calls("load_models")[-1]["use_phoneme"] is True


def test_fallback_when_unshare_is_refused_restores_cwd_after_load(engine, calls):
    class RefusingCwd:
        def isolate(self):
            return "unshare(CLONE_FS) refused: Operation not permitted"

    before = os.getcwd()
    eng = GlmTtsEngine(glm_settings(), thread_cwd=RefusingCwd())
    eng.load()
    assert os.getcwd() == before
    assert eng.describe()["cwd_isolation"] == "load-lock"
    assert calls.calls("load_models")[-1]["cwd"] == FIXTURE
    assert len(eng.synthesize(SynthesisRequest(text="你好。")).audio) > 0


def test_oom_surfaces_as_typed_error_after_memory_was_released(engine, calls, monkeypatch):
    from glmtts import gpu
    hogs = sys.modules["utils.call_log"].HOGS
    events = []
    real_clear = gpu.clear_gpu_memory

    def clear_spy(drop_references=(), **kw):
        figures = real_clear(drop_references, **kw)
        events.append(("cleared", drop_references[0] == engine.release_memory, hogs[-1]() is None))
        return figures

    monkeypatch.setattr(gpu, "clear_gpu_memory", clear_spy)
    for run in (lambda r: engine.synthesize(r), lambda r: list(engine.synthesize_stream(r))):
        events.clear()
        with pytest.raises(EngineOOMError) as info:
            run(SynthesisRequest(text="第一句没问题。OOMTRIGGER 这一句会耗尽显存。"))
        # memory was cleared (engine.release_memory as the drop step) before the error
        # reached us, and by then the tensors the failing frame held were really gone,
        # not kept alive by the traceback
        assert events == [("cleared", True, True)]
        err = info.value
        assert err.http_status == 503 and err.code == "cuda_oom"
        assert "CUDA out of memory" in str(err) and "memory was released" in str(err)
        assert "torch.OutOfMemoryError" in err.detail
        assert err.released["steps"][1] == "gc.collect"
    assert engine.describe()["fatal"] is None
    assert len(engine.synthesize(SynthesisRequest(text="你好。")).audio) > 0, "still serving after an OOM"


def test_cuda_fatal_error_marks_engine_failed(engine):
    eng = create(glm_settings())
    eng.load()
    with pytest.raises(CudaFatalError, match="illegal memory access"):
        eng.synthesize(SynthesisRequest(text="FATALTRIGGER"))
    with pytest.raises(CudaFatalError, match="restart"):
        eng.synthesize(SynthesisRequest(text="你好。"))
    assert "illegal memory access" in eng.describe()["fatal"]


def test_saved_voice_features_are_reused_and_follow_the_reference(engine, calls):
    low, high = voice(110.0), voice(240.0)
    f_low = pickle.loads(pickle.dumps(engine.prepare_prompt(*low, "这是低音。")))
    f_high = engine.prepare_prompt(*high, "这是高音。")
    assert set(f_low.data["speech_feat"]) == {24000, 32000}
    calls.CALLS.clear()
    saved = engine.synthesize(SynthesisRequest(text="你好，世界。", prompt_features=f_low))
    assert not calls.calls("spk_embedding"), "a saved voice skips feature extraction"
    upload = engine.synthesize(SynthesisRequest(text="你好，世界。", prompt_audio=low[0], prompt_sample_rate=low[1],
                                                prompt_text="这是低音。"))
    assert calls.calls("spk_embedding")
    assert np.array_equal(saved.audio, upload.audio)
    out_high = engine.synthesize(SynthesisRequest(text="你好，世界。", prompt_features=f_high, sample_rate=32000))
    assert abs(median_f0(saved.audio, 24000) - 110) / 110 < 0.15
    assert abs(median_f0(out_high.audio, 32000) - 240) / 240 < 0.15


def test_bad_requests_are_clear_errors(engine):
    with pytest.raises(InputError, match="sample_rate 16000 is not available; allowed: 24000 | 32000"):
        engine.synthesize(SynthesisRequest(text="你好。", sample_rate=16000))
    with pytest.raises(InputError, match="empty"):
        engine.synthesize(SynthesisRequest(text="  "))
    with pytest.raises(InputError, match="saved with engine 'espeak'"):
        engine.synthesize(SynthesisRequest(text="你好。", prompt_features=PromptFeatures("espeak", "x")))


def test_missing_home_or_ckpt_is_a_config_error_naming_the_path(tmp_path):
    with pytest.raises(ConfigError, match="engine.glmtts_home is empty"):
        create(glm_settings(home=""))
    (tmp_path / "glmtts_inference.py").write_text("")
    with pytest.raises(ConfigError) as info:
        create(glm_settings(home=str(tmp_path)))
    assert "no directory %s" % (tmp_path / "ckpt") in str(info.value)


def test_missing_weight_file_is_an_engine_load_error_naming_it(tmp_path):
    # a fresh interpreter: one process imports one checkout (generic package names)
    home = tmp_path / "GLM-TTS"
    shutil.copytree(FIXTURE, home, ignore=shutil.ignore_patterns("__pycache__"))
    os.unlink(home / "ckpt" / "flow" / "flow.pt")
    script = textwrap.dedent("""
        import sys
        from glmtts import config
        from glmtts.engines import create
        from glmtts.errors import EngineLoadError
        s = config.load(path="", env={}).replace(engine__name="glmtts", engine__glmtts_home=sys.argv[1])
        try:
            create(s).load()
        except EngineLoadError as e:
            print("EngineLoadError:", e)
    """)
    out = subprocess.run([sys.executable, "-c", script, str(home)], capture_output=True, text=True, timeout=60,
                         cwd=str(tmp_path))
    assert "EngineLoadError: GLM-TTS weights missing" in out.stdout, out.stderr
    assert "ckpt/flow/flow.pt" in out.stdout and str(home) in out.stdout


def test_fixture_really_needs_its_root_as_cwd(engine):
    # negative control: called from this thread (cwd is not the checkout) the stand-in
    # repository fails like the real one, so the tests above prove the cwd handling
    assert os.getcwd() != FIXTURE
    with pytest.raises(FileNotFoundError, match="ckpt"):
        sys.modules["glmtts_inference"].load_models()


def test_concurrent_streams_interleave_without_mixing_state(engine):
    reqs = [SynthesisRequest(text=LONG_TEXT, seed=s, sample_rate=r) for s, r in ((1, 24000), (2, 32000))]
    expected = [engine.synthesize(r).audio for r in reqs]
    got = [None, None]

    def run(i):
        got[i] = np.concatenate([p.audio for p in engine.synthesize_stream(reqs[i])])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(np.array_equal(g, e) for g, e in zip(got, expected))


def test_engine_g2p_dict_extends_the_repositorys_dictionary(engine, calls, tmp_path):
    extra = tmp_path / "g2p.jsonl"
    extra.write_text('{"行长": "<|H|><|ANG2|><|ZH|><|ANG3|>"}\n', encoding="utf-8")
    eng = create(glm_settings(engine__g2p_dict=str(extra)))
    eng.load()
    eng.synthesize(SynthesisRequest(text="行长在银行。", phoneme=True))
    text = calls.calls("llm.inference")[-1]["text"]
    assert "<|H|><|ANG2|><|ZH|><|ANG3|>" in text and "<|Y|><|IN2|>" in text
    extra.write_text("not json\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="line 1"):
        create(glm_settings(engine__g2p_dict=str(extra))).load()
