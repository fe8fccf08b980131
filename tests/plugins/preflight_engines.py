"""Plug-in engines the preflight must catch.

``PackageWriterEngine`` writes into its own package directory while loading, as the
official GLM-TTS front end does through WeTextProcessing (it rebuilds its FSTs and writes
them into the installed ``tn/`` package every time). Outside a sandbox, as the owner of
the tree, that works; under the unit's ProtectSystem=strict the package directory is
read-only and load() fails with EROFS, which the preflight must name in one line.

``PackageWriterEngine``: load() writes ``zh_tn_tagger.fst`` next to this file (as
WeTextProcessing writes ``tn/zh_tn_tagger.fst``), then loads the embedded espeak engine it
wraps. Tests that load it outside a sandbox remove ``FST_FILE`` afterwards.

``SilentEngine`` loads and "speaks" one second of digital silence (wrong weights sound like that).
"""

import os

import numpy as np

from glmtts.engines import resolve
from glmtts.engines.base import Engine, SynthesisResult

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
FST_FILE = os.path.join(PACKAGE_DIR, "zh_tn_tagger.fst")


class PackageWriterEngine(Engine):
    name = "package_writer"

    def __init__(self, settings):
        super().__init__(settings)
        self.inner = resolve("espeak")(settings)
        self.sample_rates = getattr(self.inner, "sample_rates", self.sample_rates)

    def load(self):
        # rebuilt on every load, never "only if missing": the behaviour being reproduced
        with open(FST_FILE, "wb") as f:
            f.write(b"FST\0 compiled text-normalization rules\n")
        self.inner.load()
        self.loaded = True

    def prepare_prompt(self, audio, sample_rate, prompt_text):
        return self.inner.prepare_prompt(audio, sample_rate, prompt_text)

    def synthesize_stream(self, request):
        yield from self.inner.synthesize_stream(request)

    def describe(self):
        info = dict(self.inner.describe())
        info["name"] = "package_writer(%s)" % info.get("name", "espeak")
        info["loaded"] = self.loaded
        return info


class SilentEngine(Engine):
    name = "silent"

    def load(self):
        self.loaded = True

    def synthesize_stream(self, request):
        yield SynthesisResult(np.zeros(request.sample_rate, dtype=np.float32), request.sample_rate, {})
