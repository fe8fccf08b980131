"""Helpers for the batch tests (tests/test_batch_*.py): a configured sandbox with a
prompt root, a real spoken reference voice, and JSONL batch files."""

import json
import os
import sys

import numpy as np

from glmtts import audio, config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROMPT_TEXT = "This is a reference recording of a calm voice, speaking slowly and clearly."
_REFERENCE = {}


def reference_wav():
    """WAV bytes of ~3 s of real speech (made once by the espeak engine)."""
    if "wav" not in _REFERENCE:
        from glmtts.engines.base import SynthesisRequest
        from glmtts.engines.espeak import EspeakEngine
        engine = EspeakEngine(config.load(path="", env={}))
        engine.load()
        result = engine.synthesize(SynthesisRequest(text=PROMPT_TEXT, sample_rate=24000))
        _REFERENCE["wav"] = audio.encode(result.audio, result.sample_rate, "wav")
    return _REFERENCE["wav"]


class Sandbox:
    """State, prompt and output dirs under one tmp dir, plus the config file naming them."""

    def __init__(self, root, **settings):
        self.root = str(root)
        self.state_dir = os.path.join(self.root, "state")
        self.prompt_root = os.path.join(self.root, "prompts")
        self.output_dir = os.path.join(self.root, "outputs")
        for d in (self.state_dir, self.prompt_root, self.output_dir):
            os.makedirs(d, exist_ok=True)
        with open(os.path.join(self.prompt_root, "voice.wav"), "wb") as f:
            f.write(reference_wav())
        self.config_path = os.path.join(self.root, "glmtts.toml")
        lines = ["[paths]", 'state_dir = "%s"' % self.state_dir, 'prompt_root = "%s"' % self.prompt_root,
                 'output_dir = "%s"' % self.output_dir, 'log_dir = "%s"' % os.path.join(self.root, "log")]
        sections = {}
        for key, value in settings.items():
            section, name = key.split("__", 1)
            sections.setdefault(section, []).append("%s = %s" % (name, json.dumps(value)))
        for section, entries in sections.items():
            lines += ["", "[%s]" % section] + entries
        with open(self.config_path, "w") as f:
            f.write("\n".join(lines) + "\n")

    @property
    def settings(self):
        return config.load(self.config_path, env={})

    def env(self, **extra):
        env = {k: v for k, v in os.environ.items() if not k.startswith("GLMTTS_")}
        env.update(GLMTTS_CONFIG=self.config_path, PYTHONPATH=REPO, PYTHONUNBUFFERED="1")
        env.update(extra)
        return env

    def task(self, i, **fields):
        t = {"prompt_audio": "voice.wav", "prompt_text": PROMPT_TEXT, "input_text": "Clip %d." % i,
             "output_name": "clip_%03d" % i}
        t.update(fields)
        return t

    def write_job(self, name, tasks):
        path = os.path.join(self.root, name)
        with open(path, "w", encoding="utf-8") as f:
            for t in tasks:
                f.write((t if isinstance(t, str) else json.dumps(t, ensure_ascii=False)) + "\n")
        return path

    def glmtts(self, *args):
        return [sys.executable, "-m", "glmtts.cli", *args]


def assert_speech(path):
    """The file decodes as audio that is not silent and of plausible length."""
    samples, rate = audio.decode(path)
    assert 0.2 < len(samples) / rate < 30, "%s: implausible length %.2f s" % (path, len(samples) / rate)
    assert audio.loudness_dbfs(samples) > -40, "%s is silent" % path
    assert np.isfinite(samples).all()
