"""The glmtts engine against tests/fixtures/glmtts_checkout, a stand-in checkout with the
official repository's layout, signatures and load-time behaviours (mel caches keyed
without the rate, audio through torchaudio.load, FSTs written into the installed ``tn``
package, cwd-relative files, device pinning) that returns real audio (no GPU here).
tests/fixtures/wetext_site stands in for WeTextProcessing's installed ``tn`` package.
The conformance run against the real repository is tests/engines/test_glmtts_realrepo.py."""

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

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURE = os.path.join(REPO_ROOT, "tests", "fixtures", "glmtts_checkout")
WETEXT_SITE = os.path.join(REPO_ROOT, "tests", "fixtures", "wetext_site")
LONG_TEXT = "你好，欢迎使用我们的语音合成服务。今天天气很好，我们一起去公园散步吧。明天见。"
FIXTURE_PROMPT_F0 = 180.0  # examples/prompt/fixture_zh.wav


SITE = {}  # "dir": this module's copy of the fixture tn site, "state": its default state_dir


def glm_settings(home=FIXTURE, state_dir=None, **overrides):
    return config.load(path="", env={}).replace(engine__name="glmtts", engine__glmtts_home=home,
                                                paths__state_dir=state_dir or SITE["state"], **overrides)


@pytest.fixture(scope="module")
def wetext(tmp_path_factory):
    """A private copy of the stand-in ``tn`` package on sys.path, so a test can see
    whether anything was written into the "installed" package."""
    site = tmp_path_factory.mktemp("site")
    shutil.copytree(WETEXT_SITE, site / "wetext_site", ignore=shutil.ignore_patterns("__pycache__"))
    SITE.update(dir=str(site / "wetext_site"), state=str(tmp_path_factory.mktemp("state")))
    sys.path.insert(0, SITE["dir"])
    yield SITE["dir"]
    # The checkout's generic top-level packages (utils, llm, cosyvoice, tn) must not
    # leak into the rest of the suite's interpreter.
    for name, mod in list(sys.modules.items()):
        where = getattr(mod, "__file__", None) or ""
        if where.startswith(FIXTURE + os.sep) or where.startswith(SITE["dir"] + os.sep):
            del sys.modules[name]
    for path in (FIXTURE, SITE["dir"]):
        while path in sys.path:
            sys.path.remove(path)


@pytest.fixture(scope="module")
def engine(wetext):
    eng = create(glm_settings())
    eng.load()
    yield eng


def package_files(root):
    """{relative path: (size, mtime_ns)} of every file under ``root`` but bytecode."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            st = os.stat(os.path.join(dirpath, name))
            out[os.path.relpath(os.path.join(dirpath, name), root)] = (st.st_size, st.st_mtime_ns)
    return out


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
    assert calls.calls("get_cached_prompt"), "later chunks are prompted with the earlier chunks as history"
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


def test_missing_home_or_ckpt_is_a_config_error_naming_the_path(wetext, tmp_path):
    with pytest.raises(ConfigError, match="engine.glmtts_home is empty"):
        create(glm_settings(home=""))
    (tmp_path / "glmtts_inference.py").write_text("")
    with pytest.raises(ConfigError) as info:
        create(glm_settings(home=str(tmp_path)))
    assert "no directory %s" % (tmp_path / "ckpt") in str(info.value)


def test_missing_weight_file_is_an_engine_load_error_naming_it(wetext, tmp_path):
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
    script = script.replace("engine__glmtts_home=sys.argv[1]", "engine__glmtts_home=sys.argv[1], paths__state_dir=sys.argv[2]")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO_ROOT, WETEXT_SITE]))
    out = subprocess.run([sys.executable, "-c", script, str(home), str(tmp_path / "state")], capture_output=True,
                         text=True, timeout=60, cwd=str(tmp_path), env=env)
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


# -- the official repository's behaviours (issue: the engine failed at load four ways) --------------


def test_fixture_reproduces_the_mel_cache_collision_between_rates(engine):
    # negative control: the stand-in's extractors, called one after the other in one
    # process as the real ones would be, fail like the real utils/audio.py does
    import torch
    audio_mod = sys.modules["utils.audio"]
    saved = audio_mod.mel_basis, audio_mod.hann_window
    audio_mod.mel_basis, audio_mod.hann_window = {}, {}
    try:
        wav = torch.zeros(1, 24000).uniform_(-0.1, 0.1)
        engine._rates[24000].frontend.feat_extractor(wav)
        with pytest.raises(RuntimeError, match="window"):
            engine._rates[32000].frontend.feat_extractor(wav)
    finally:
        audio_mod.mel_basis, audio_mod.hann_window = saved


def test_prompt_features_at_both_rates_in_one_process(engine):
    # blocker 1: the default voice's features at 24 and 32 kHz are computed in one
    # load (the old adapter failed here: stft expected a window of size 2560, got [1920])
    low = voice(120.0)
    f = engine.prepare_prompt(*low, "这是低音。")
    a, b = f.data["speech_feat"][24000], f.data["speech_feat"][32000]
    assert a.shape[0] == b.shape[0] == 1 and a.shape[2] == b.shape[2] == 80
    assert abs(a.shape[1] - b.shape[1]) <= 1, "both rates at 50 frames/s"
    assert abs(a.shape[1] - 3.0 * 50) <= 2
    assert engine.describe()["default_voice"] is True


def test_reference_audio_is_decoded_here_never_through_torchaudio(wetext, monkeypatch, tmp_path, calls):
    # blocker 4: torchaudio.load needs torchcodec + FFmpeg (absent); ImportError on import
    monkeypatch.setitem(sys.modules, "torchaudio", None)
    eng = create(glm_settings(state_dir=str(tmp_path)))
    eng.load()
    assert eng.describe()["default_voice"] is True
    sr = 44100
    t = np.arange(int(3.0 * sr)) / sr
    stereo = np.stack([0.3 * np.sin(2 * np.pi * 200.0 * t), 0.3 * np.sin(2 * np.pi * 200.0 * t)], axis=1)
    f = eng.prepare_prompt(stereo.astype(np.float32), sr, "这是参考。")
    # the embedding was measured on 16 kHz samples, as the real kaldi fbank assumes
    assert abs(calls.calls("spk_embedding")[-1]["f0"] - 200.0) / 200.0 < 0.05
    out = eng.synthesize(SynthesisRequest(text="你好，世界。", prompt_features=f, sample_rate=32000))
    assert abs(median_f0(out.audio, 32000) - 200.0) / 200.0 < 0.15


def test_text_normalizer_fsts_are_built_once_into_the_state_dir_never_into_the_package(wetext, tmp_path, calls):
    # blocker 3: the repository's TextFrontEnd asks WeTextProcessing to rebuild its FSTs
    # into site-packages/tn/ (read-only under ProtectSystem=strict; 16-22 s each start)
    tn = sys.modules.get("tn") or __import__("tn")
    before = package_files(wetext)
    builds = len(tn.BUILDS)
    first = create(glm_settings(state_dir=str(tmp_path)))
    first.load()
    assert package_files(wetext) == before, "nothing written into the installed tn package"
    built = tn.BUILDS[builds:]
    assert [prefix for prefix, _ in built] == ["zh_tn"]
    cache = os.path.dirname(built[0][1])
    assert os.path.commonpath([cache, str(tmp_path)]) == str(tmp_path), built
    entries = os.listdir(cache)
    assert len(entries) == 1 and not entries[0].startswith("."), "one complete entry, no leftover build dir"
    assert sorted(os.listdir(os.path.join(cache, entries[0]))) == [
        "glmtts-cache.json", "zh_tn_tagger.fst", "zh_tn_verbalizer.fst"]
    assert len(calls.calls("TextFrontEnd")) == 1, "one text front end for both rates"

    calls.CALLS.clear()
    second = create(glm_settings(state_dir=str(tmp_path)))
    second.load()
    assert len(tn.BUILDS) == builds + 1, "the second start reuses the cached FSTs"
    assert len(calls.calls("TextFrontEnd")) == 1
    assert package_files(wetext) == before
    assert len(second.synthesize(SynthesisRequest(text="你好。")).audio) > 0


def test_glmtts_extra_pins_what_the_real_code_needs():
    # blocker 2: transformers 5 removed modeling_attn_mask_utils (the repository's
    # vendored Whisper imports it); from_pretrained(dtype=...) needs 4.56
    import configparser
    from packaging.requirements import Requirement
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(REPO_ROOT, "setup.cfg"))
    reqs = {Requirement(line).name.lower(): Requirement(line)
            for line in cfg["options.extras_require"]["glmtts"].split("\n") if line.strip()}
    tf = reqs["transformers"].specifier
    assert "4.57.3" in tf and "4.56.0" in tf and "4.55.4" not in tf and "5.0.0" not in tf
    assert "torchvision" not in reqs and "funasr" not in reqs
    assert {"jieba", "tiktoken", "peft", "wetextprocessing", "torchaudio"} <= set(reqs)


def test_device_cpu_is_a_config_error_that_says_why(wetext):
    with pytest.raises(ConfigError, match=r"engine.device = \"cpu\".*\.cuda\(\)"):
        create(glm_settings(engine__device="cpu"))


def test_chunks_are_counted_from_generate_long_even_when_the_prompt_cache_is_pruned(engine, calls):
    long_text = "".join("第%d句话讲的是一个很长很长的故事，我们慢慢地把它讲完。" % i for i in range(12))
    r = engine.synthesize(SynthesisRequest(text=long_text, use_cache=True))
    ran = len(calls.calls("llm.inference"))
    assert ran >= 6 and r.meta["chunks"] == ran


def test_repository_prints_during_synthesis_go_to_stderr_not_the_access_log(engine, capfd):
    capfd.readouterr()
    engine.synthesize(SynthesisRequest(text="你好，世界。"))
    list(engine.synthesize_stream(SynthesisRequest(text="你好，世界。")))
    engine.prepare_prompt(*voice(150.0), "这是参考。")
    out, err = capfd.readouterr()
    assert "fixture llm sampled" in err
    assert "fixture llm" not in out
    print("the process's own stdout still works")
    assert "own stdout still works" in capfd.readouterr().out
