"""Reference audio: decoded by content whatever the file name, each rejection one
clear message; mono/resample/encode round trips; loudness."""

import io
import math
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from glmtts import audio
from glmtts.errors import AudioError, NotAudioError

SR = 16000


def voice(seconds, sr=SR, f0=140.0, level=0.3):
    t = np.arange(int(seconds * sr)) / sr
    x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 12))
    x *= 0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)  # syllable-rate envelope
    return (level * x / np.abs(x).max()).astype(np.float32)


def encoded(x, sr, fmt, subtype=None, channels=1):
    buf = io.BytesIO()
    data = np.stack([x] * channels, axis=1) if channels > 1 else x
    sf.write(buf, data, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


@pytest.mark.parametrize("fmt, subtype", [("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("OGG", "VORBIS"),
                                          ("MP3", "MPEG_LAYER_III")])
def test_formats_decode_by_content_whatever_the_file_name(tmp_path, fmt, subtype):
    data = encoded(voice(3.0), SR, fmt, subtype)
    misnamed = tmp_path / "reference.wav"  # a FLAC/OGG/MP3 called .wav
    misnamed.write_bytes(data)
    for source in (data, io.BytesIO(data), str(misnamed)):
        x, sr = audio.decode_reference(source)
        assert sr == SR
        assert x.dtype == np.float32 and x.ndim == 1
        assert abs(len(x) / sr - 3.0) < 0.1  # mp3 pads a few frames
        assert audio.loudness_dbfs(x) > -30


def test_stereo_is_downmixed():
    x, sr = audio.decode(encoded(voice(2.5), SR, "WAV", "FLOAT", channels=2))
    assert x.ndim == 1 and np.allclose(x, voice(2.5), atol=1e-6)


def test_not_audio_is_415_with_one_message(tmp_path):
    fake = tmp_path / "voice.wav"
    fake.write_text("this is a text file renamed to .wav\n" * 20)
    with pytest.raises(NotAudioError) as err:
        audio.decode_reference(str(fake))
    assert err.value.http_status == 415
    assert str(err.value) == ("reference audio is not a recognised audio file (720 bytes); "
                              "accepted: WAV, FLAC, OGG/Vorbis or MP3")


@pytest.mark.parametrize("make, message", [
    (lambda: b"", "reference audio is empty (0 bytes): upload a WAV, FLAC, OGG/Vorbis or MP3 file"),
    (lambda: encoded(np.zeros(0, np.float32), SR, "WAV"),
     "reference audio contains no samples: upload a recording of at least 2 s"),
    (lambda: encoded(voice(1.0), SR, "WAV"),
     "reference audio is 1.0 s long; it must be at least 2 s (use 2-30 s of clear speech)"),
    (lambda: encoded(voice(40.0), SR, "FLAC"),
     "reference audio is 40.0 s long; it must be at most 30 s (trim it to 2-30 s of clear speech)"),
    (lambda: encoded(np.zeros(SR * 3, np.float32), SR, "WAV"),
     "reference audio is silent (level -inf dBFS, below -55 dBFS): record someone speaking"),
    (lambda: encoded(voice(3.0, level=0.0005), SR, "WAV"),
     "reference audio is silent (level -75 dBFS, below -55 dBFS): record someone speaking"),
])
def test_each_rejection_has_one_clear_message(make, message):
    with pytest.raises(AudioError) as err:
        audio.decode_reference(make())
    assert str(err.value) == message
    assert err.value.http_status == 400


def test_limits_come_from_settings():
    limits = SimpleNamespace(min_reference_s=0.5, max_reference_s=1.5)
    x, _ = audio.decode_reference(encoded(voice(1.0), SR, "WAV"), limits)
    assert len(x) == SR
    with pytest.raises(AudioError, match="at most 1.5 s"):
        audio.decode_reference(encoded(voice(2.0), SR, "WAV"), limits)


@pytest.mark.parametrize("sr_from, sr_to", [(22050, 24000), (22050, 32000), (16000, 24000), (48000, 24000)])
def test_resample_keeps_duration_and_pitch(sr_from, sr_to):
    from glmtts import prosody
    x = voice(2.0, sr=sr_from)
    y = audio.resample(x, sr_from, sr_to)
    assert abs(len(y) - 2.0 * sr_to) <= 1
    assert prosody.pitch_median(prosody.track_f0(y, sr_to)[0]) == pytest.approx(140.0, rel=0.02)


def test_encode_round_trips():
    x = voice(2.0, sr=24000)
    for fmt in ("wav", "flac", "mp3"):
        y, sr = sf.read(io.BytesIO(audio.encode(x, 24000, fmt)), dtype="float32")
        assert sr == 24000 and abs(len(y) - len(x)) < 2000
        if fmt != "mp3":
            assert np.max(np.abs(y - x)) < 1e-3
    pcm = audio.encode(x, 24000, "pcm")
    assert len(pcm) == 2 * len(x)
    back = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32767
    assert np.max(np.abs(back - x)) < 1e-3
    assert audio.media_type("wav") == "audio/wav"


def test_loudness():
    t = np.arange(24000) / 24000
    assert audio.loudness_dbfs(np.sin(2 * np.pi * 440 * t)) == pytest.approx(-3.01, abs=0.02)
    assert audio.loudness_dbfs(np.zeros(10)) == -math.inf
    assert audio.loudness_dbfs(np.zeros(0)) == -math.inf
