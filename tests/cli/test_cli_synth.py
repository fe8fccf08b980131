"""`glmtts synth` end to end in a real subprocess: a decodable Mandarin wav that is
audible speech; bad input = one line on stderr, non-zero exit, no traceback."""

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from glmtts import audio, prosody

ROOT = Path(__file__).resolve().parents[2]
MANDARIN = "你好，欢迎使用语音合成服务。今天天气很好。"


@pytest.fixture
def env(tmp_path):
    conf = tmp_path / "glmtts.toml"
    conf.write_text("[engine]\nseed = 42\n")
    e = {k: v for k, v in os.environ.items() if not k.startswith("GLMTTS_")}
    e["GLMTTS_CONFIG"] = str(conf)
    return e


def synth(env, *args):
    return subprocess.run([sys.executable, "-m", "glmtts.cli", "synth", *args], cwd=str(ROOT), env=env,
                          capture_output=True, text=True, timeout=120)


def check_speech(path, sample_rate):
    y, sr = sf.read(str(path), dtype="float32")
    assert sr == sample_rate
    assert 2.0 < len(y) / sr < 10.0
    assert audio.loudness_dbfs(y) > -35
    assert 70 < prosody.pitch_median(prosody.track_f0(y, sr)[0]) < 300


def test_mandarin_wav_end_to_end(env, tmp_path):
    out = tmp_path / "out.wav"
    r = synth(env, "--text", MANDARIN, "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "wrote %s" % out in r.stdout
    check_speech(out, 24000)
    assert sorted(os.listdir(tmp_path)) == ["glmtts.toml", "out.wav"]  # no temp file left behind


def test_zero_shot_from_text_file_at_32k(env, tmp_path):
    # a high reference voice, FLAC content under a .wav name
    ref_path = tmp_path / "ref.wav"
    t = np.arange(24000 * 3) / 24000
    ref = sum(np.sin(2 * np.pi * 230 * k * t) / k ** 1.5 for k in range(1, 20)) * ((t % 0.25) < 0.18)
    ref_path.write_bytes(audio.encode((0.3 * ref / np.abs(ref).max()).astype(np.float32), 24000, "flac"))
    text_file = tmp_path / "input.txt"
    text_file.write_text(MANDARIN, encoding="utf-8")
    out = tmp_path / "out.flac"
    r = synth(env, "--text-file", str(text_file), "--prompt-audio", str(ref_path), "--prompt-text", "参考音频的文字",
              "--sample-rate", "32000", "--seed", "3", "--phoneme", "-o", str(out))
    assert r.returncode == 0, r.stderr
    y, sr = sf.read(io.BytesIO(out.read_bytes()), dtype="float32")
    assert sf.info(str(out)).format == "FLAC"
    check_speech(out, 32000)
    assert prosody.pitch_median(prosody.track_f0(y, sr)[0]) == pytest.approx(230, rel=0.15)


@pytest.mark.parametrize("args, message", [
    (["--text", "你好", "--prompt-audio", "/nonexistent/ref.wav", "--prompt-text", "参考"],
     "prompt audio file /nonexistent/ref.wav does not exist"),
    (["--text", "你好", "--sample-rate", "16000"], "--sample-rate 16000 is not supported; allowed: 24000 | 32000"),
    (["--text", "。。。"], "input text is empty after normalization"),
    (["--text", "你好", "--speed", "9"], "--speed 9 is out of range; allowed: 0.25..4.0"),
    (["--prompt-audio", "PROMPT_NOT_AUDIO", "--prompt-text", "参考", "--text", "你好"], "is not a recognised audio file"),
    (["--prompt-audio", "PROMPT_SHORT", "--prompt-text", "参考", "--text", "你好"], "1.0 s long; it must be at least 2 s"),
    (["--text", "你好", "-o", "/nonexistent/dir/out.wav"], "output directory /nonexistent/dir does not exist"),
])
def test_bad_input_is_one_line_without_traceback(env, tmp_path, args, message):
    not_audio = tmp_path / "notaudio.wav"
    not_audio.write_text("hello")
    short = tmp_path / "short.wav"
    short.write_bytes(audio.encode(np.full(24000, 0.1, np.float32), 24000, "wav"))
    args = [{"PROMPT_NOT_AUDIO": str(not_audio), "PROMPT_SHORT": str(short)}.get(a, a) for a in args]
    if "-o" not in args:
        args += ["-o", str(tmp_path / "out.wav")]
    r = synth(env, *args)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("glmtts synth: error: ")
    assert message in lines[0]
    assert not (tmp_path / "out.wav").exists()
