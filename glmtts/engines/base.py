"""The Engine protocol: what the service, the batch runner and the CLI rely on.

An engine is constructed cheaply from Settings (no model, no GPU touched), then
``load()`` makes every weight resident, once, before the service reports ready.
``synthesize_stream`` yields audio chunk by chunk as each sentence chunk is done, so
the service can stream real incremental output; ``synthesize`` is the concatenation.
"""

from dataclasses import dataclass, field
from typing import Iterator, Optional

import numpy as np


@dataclass
class PromptFeatures:
    """What an engine extracts from a reference voice. Saved voices cache this so a
    saved voice is cheaper than an upload. ``data`` is engine-specific and must be
    picklable; ``engine`` names the engine that produced it."""

    engine: str
    prompt_text: str
    data: dict = field(default_factory=dict)


@dataclass
class SynthesisRequest:
    text: str
    sample_rate: int = 24000
    seed: int = 42
    use_cache: bool = True
    phoneme: bool = False
    speed: float = 1.0
    # Zero-shot reference: either raw audio (float32 mono + its rate) and transcript,
    # or features already extracted by ``Engine.prepare_prompt`` (saved voices).
    prompt_audio: Optional[np.ndarray] = None
    prompt_sample_rate: Optional[int] = None
    prompt_text: str = ""
    prompt_features: Optional[PromptFeatures] = None


@dataclass
class SynthesisResult:
    audio: np.ndarray  # float32 mono in [-1, 1]
    sample_rate: int
    meta: dict = field(default_factory=dict)

    @property
    def duration_s(self):
        return len(self.audio) / float(self.sample_rate)


class Engine:
    """Base class for engines. Subclasses implement ``load``, ``prepare_prompt``,
    ``synthesize_stream`` and ``describe``; the rest has sensible defaults."""

    name = "base"
    sample_rates = (24000, 32000)

    def __init__(self, settings):
        self.settings = settings
        self.loaded = False

    def load(self):
        raise NotImplementedError

    def prepare_prompt(self, audio, sample_rate, prompt_text) -> PromptFeatures:
        raise NotImplementedError

    def synthesize_stream(self, request: SynthesisRequest) -> Iterator[SynthesisResult]:
        raise NotImplementedError

    def synthesize(self, request: SynthesisRequest) -> SynthesisResult:
        parts = list(self.synthesize_stream(request))
        if not parts:
            return SynthesisResult(np.zeros(0, dtype=np.float32), request.sample_rate, {})
        audio = np.concatenate([p.audio for p in parts]).astype(np.float32, copy=False)
        meta = dict(parts[-1].meta)
        meta["chunks"] = len(parts)
        return SynthesisResult(audio, parts[0].sample_rate, meta)

    def describe(self) -> dict:
        return {"name": self.name, "device": "cpu", "sample_rates": list(self.sample_rates),
                "capabilities": [], "loaded": self.loaded}

    def release_memory(self):
        """Drop caches and transient tensors; the model itself stays resident."""
