"""F0 tracking, pitch statistics and speaking rate, proven on signals of known F0
first: the espeak prosody-matching tests rely on this tracker."""

import math

import numpy as np
import pytest

from glmtts import prosody

SR = 24000


def glottal_vowel(f0, seconds=3.0, sr=SR, glide=0.0, syllables=0):
    """A voiced vowel-like signal: a glottal pulse train (harmonics falling 12 dB per
    octave) through two formant-ish emphases; optional F0 glide (octaves over the
    signal) and syllable-rate amplitude gaps."""
    t = np.arange(int(seconds * sr)) / sr
    inst = f0 * 2.0 ** (glide * t / seconds)
    phase = 2 * np.pi * np.cumsum(inst) / sr
    x = np.zeros_like(t)
    for k in range(1, 40):
        freq = k * inst
        weight = (1.0 / k ** 2) * (1 + 4 * np.exp(-((freq - 700) / 200) ** 2) + 2 * np.exp(-((freq - 1200) / 250) ** 2))
        x += np.where(freq < sr / 2 - 500, weight * np.sin(k * phase), 0.0)
    if syllables:
        period = seconds / syllables
        x *= ((t % period) < 0.6 * period)
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


@pytest.mark.parametrize("f0", [85.0, 100.0, 150.0, 220.0, 250.0, 320.0])
def test_tracker_finds_known_f0(f0):
    track, times = prosody.track_f0(glottal_vowel(f0), SR)
    voiced = prosody.voiced(track)
    assert voiced.size > 0.9 * len(track)
    assert prosody.pitch_median(track) == pytest.approx(f0, rel=0.02)
    assert times[1] - times[0] == pytest.approx(0.010)


def test_tracker_works_at_other_sample_rates():
    for sr in (16000, 22050, 32000, 44100):
        track, _ = prosody.track_f0(glottal_vowel(120.0, sr=sr), sr)
        assert prosody.pitch_median(track) == pytest.approx(120.0, rel=0.02)


def test_silence_and_noise_are_not_voiced():
    assert prosody.voiced(prosody.track_f0(np.zeros(SR * 2, np.float32), SR)[0]).size == 0
    noise = np.random.default_rng(0).normal(0, 0.1, SR * 2).astype(np.float32)
    track, _ = prosody.track_f0(noise, SR)
    assert prosody.voiced(track).size < 0.1 * len(track)
    assert math.isnan(prosody.pitch_median(np.full(5, np.nan)))


def test_pitch_range_of_a_one_octave_glide():
    track, _ = prosody.track_f0(glottal_vowel(100.0, seconds=4.0, glide=1.0), SR)
    # 10th..90th percentile of a log-linear glide over one octave = 0.8 octave
    assert prosody.pitch_range_semitones(track) == pytest.approx(9.6, abs=0.8)
    flat, _ = prosody.track_f0(glottal_vowel(100.0), SR)
    assert prosody.pitch_range_semitones(flat) < 0.5


def test_speaking_rate_from_transcript_and_active_duration():
    # 12 syllables in 3 s, each sounding 60% of its slot: about 6.7 syllables/s of speech
    x = glottal_vowel(180.0, seconds=3.0, syllables=12)
    m = prosody.measure(x, SR, "一二三四五六七八九十十一")
    assert m.median_hz == pytest.approx(180.0, rel=0.03)
    assert 1.5 < m.active_s < 2.6
    assert 4.5 < m.rate_sps < 8.0
    assert math.isnan(prosody.measure(x, SR, "").rate_sps)
