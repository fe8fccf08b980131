"""The embedded espeak engine: audible Mandarin / English / mixed speech at both
output rates, deterministic, real incremental streaming, and prosody matching that
is *measured*: the output's median F0 lands within 15% of the reference's."""

import io
import threading

import numpy as np
import pytest
import soundfile as sf

from glmtts import audio, config, prosody, text
from glmtts.engines import SynthesisRequest, create
from glmtts.engines.espeak import EspeakEngine
from glmtts.errors import AudioError, InputError

ZH = "今天天气很好，我们一起去公园散步吧。"
EN = "The weather is lovely today, so let us take a walk in the park."
MIXED = "我今天用 Python 写了一个程序, it works very well。"
LONG = ("人工智能正在改变我们的生活。语音合成可以把文字变成自然的声音。"
        "这个服务在夜里也能自己恢复。This sentence is in English. 最后，我们说再见。")
REF_TEXT = "这是一段参考录音，用来测量说话人的音高和语速。我们希望合成的声音和参考的声音一样。"


@pytest.fixture(scope="module")
def engine():
    e = create(config.load(path="", env={}))
    assert isinstance(e, EspeakEngine)
    e.load()
    return e


def speak(engine, text_, **kw):
    return engine.synthesize(SynthesisRequest(text=text_, **kw))


def assert_audible_speech(result, text_, sample_rate):
    # decode what a client would receive, then check it the way a listener would
    y, sr = sf.read(io.BytesIO(audio.encode(result.audio, result.sample_rate, "wav")), dtype="float32")
    assert sr == sample_rate == result.sample_rate
    syllables = text.count_syllables(text_)
    duration = len(y) / sr
    assert syllables / 9.0 < duration < syllables / 1.5, "%.2f s for %d syllables" % (duration, syllables)
    assert audio.loudness_dbfs(y) > -35.0
    f0 = prosody.track_f0(y, sr)[0]
    assert prosody.voiced(f0).size * prosody.HOP_S > 0.15 * duration
    assert 70.0 < prosody.pitch_median(f0) < 300.0


@pytest.mark.parametrize("sample_rate", [24000, 32000])
@pytest.mark.parametrize("text_", [ZH, EN, MIXED], ids=["mandarin", "english", "mixed"])
def test_speech_is_audible_at_both_rates(engine, text_, sample_rate):
    assert_audible_speech(speak(engine, text_, sample_rate=sample_rate), text_, sample_rate)


def test_same_input_and_seed_give_identical_samples(engine):
    a = speak(engine, MIXED, seed=7)
    b = speak(engine, MIXED, seed=7)
    assert np.array_equal(a.audio, b.audio)
    other = create(config.load(path="", env={}))
    other.load()
    assert np.array_equal(other.synthesize(SynthesisRequest(text=MIXED, seed=7)).audio, a.audio)


def test_concurrent_callers_are_serialised_safely(engine):
    expected = {t: speak(engine, t).audio for t in (ZH, EN)}
    results, errors = [], []

    def work(t):
        try:
            results.append((t, speak(engine, t).audio))
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in (ZH, EN, ZH, EN)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors and len(results) == 4
    for t, a in results:
        assert np.array_equal(a, expected[t])


def test_stream_yields_chunks_that_concatenate_to_synthesize(engine):
    request = SynthesisRequest(text=LONG, sample_rate=32000)
    stream = engine.synthesize_stream(request)
    first = next(stream)  # produced before the rest of the text is synthesized
    assert first.meta["chunk"] == 0 and first.meta["chunks"] > 1
    assert first.sample_rate == 32000 and len(first.audio) > 0
    parts = [first] + list(stream)
    assert len(parts) == first.meta["chunks"]
    assert all(len(p.meta["text"]) <= engine.settings.engine.max_chunk_chars for p in parts)
    whole = engine.synthesize(request)
    assert np.array_equal(np.concatenate([p.audio for p in parts]), whole.audio)
    assert_audible_speech(whole, LONG, 32000)


def espeak_reference(engine, target_hz):
    """Real speech moved to target_hz by resampling (pitch and tempo scale together)."""
    base = speak(engine, REF_TEXT, speed=0.6).audio
    factor = target_hz / prosody.pitch_median(prosody.track_f0(base, 24000)[0])
    return audio.resample(base, int(round(24000 * factor)), 24000)


def glottal_reference(target_hz, seconds=4.0, sr=24000):
    """A synthetic voice independent of espeak: glottal pulses with a falling
    intonation of +-2 semitones around target_hz and syllable gaps."""
    t = np.arange(int(seconds * sr)) / sr
    inst = target_hz * 2 ** ((2.0 - 4.0 * (t % 1.0)) / 12)
    phase = 2 * np.pi * np.cumsum(inst) / sr
    x = sum(np.sin(k * phase) / k ** 1.5 for k in range(1, 25))
    x *= (t % 0.25) < 0.18
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


@pytest.mark.parametrize("kind", ["espeak_resampled", "glottal_pulses"])
@pytest.mark.parametrize("target_hz", [100.0, 245.0], ids=["low", "high"])
def test_zero_shot_output_median_f0_within_15_percent_of_reference(engine, kind, target_hz):
    ref = espeak_reference(engine, target_hz) if kind == "espeak_resampled" else glottal_reference(target_hz)
    assert len(ref) / 24000 >= 3.0
    ref_median = prosody.pitch_median(prosody.track_f0(ref, 24000)[0])
    assert (95 <= ref_median <= 110) if target_hz < 150 else (230 <= ref_median <= 260)
    features = engine.prepare_prompt(ref, 24000, REF_TEXT if kind == "espeak_resampled" else "")
    for text_ in (ZH, EN, MIXED):
        for result in (engine.synthesize(SynthesisRequest(text=text_, prompt_features=features)),
                       engine.synthesize(SynthesisRequest(text=text_, prompt_audio=ref, prompt_sample_rate=24000,
                                                          sample_rate=32000))):
            out_median = prosody.pitch_median(prosody.track_f0(result.audio, result.sample_rate)[0])
            assert out_median == pytest.approx(ref_median, rel=0.15), (text_, out_median, ref_median)
            assert_audible_speech(result, text_, result.sample_rate)


def test_speaking_rate_follows_the_reference(engine):
    # the same voice spoken slowly and quickly (espeak at two speeds) as references
    slow = speak(engine, REF_TEXT, speed=0.7).audio
    fast = speak(engine, REF_TEXT, speed=1.6).audio
    durations = {}
    for name, ref in (("slow", slow), ("fast", fast)):
        features = engine.prepare_prompt(ref, 24000, REF_TEXT)
        durations[name] = speak(engine, ZH, prompt_features=features).duration_s
    assert durations["fast"] < 0.75 * durations["slow"]


def test_speed_scales_duration(engine):
    normal = speak(engine, ZH).duration_s
    assert speak(engine, ZH, speed=2.0).duration_s < 0.7 * normal
    assert speak(engine, ZH, speed=0.5).duration_s > 1.4 * normal
    assert speak(engine, ZH, speed=4.0).duration_s < 0.35 * normal
    # espeak cannot speak slower than 80 words/min: the result says so
    assert speak(engine, ZH, speed=0.25).meta["rate_limited"] is True
    assert speak(engine, ZH).meta["rate_limited"] is False
    with pytest.raises(InputError, match="0.25..4.0"):
        speak(engine, ZH, speed=5.0)


def test_phoneme_mode_applies_the_g2p_dict(engine):
    result = speak(engine, "他长大了，还是去了重庆。", phoneme=True)
    assert_audible_speech(result, "他长大了，还是去了重庆。", 24000)
    plain = speak(engine, "他长大了，还是去了重庆。")
    assert not np.array_equal(plain.audio, result.audio)  # the dictionary changed the reading
    # the pinyin is read as syllables, not spelled out letter by letter
    assert 0.8 < result.duration_s / plain.duration_s < 1.25


def test_bad_requests(engine):
    with pytest.raises(InputError, match="empty after normalization"):
        speak(engine, "  。，… ")
    with pytest.raises(InputError, match="allowed: 24000 \\| 32000"):
        speak(engine, ZH, sample_rate=16000)
    noise = np.random.default_rng(1).normal(0, 0.05, 24000 * 3).astype(np.float32)
    with pytest.raises(AudioError, match="no voiced speech"):
        engine.prepare_prompt(noise, 24000, "")


def test_describe(engine):
    info = engine.describe()
    assert info["name"] == "espeak" and info["device"] == "cpu" and info["loaded"] is True
    assert info["sample_rates"] == [24000, 32000]
    assert set(info["capabilities"]) == {"zh", "en", "mixed", "prosody_matching", "streaming"}
    assert "glmtts engine" in info["zero_shot"]
