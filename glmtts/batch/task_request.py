"""What one batch task asks the engine for: its ``SynthesisRequest``, with its voice.

A reference under ``paths.prompt_root`` is decoded (and its features extracted, where the
engine can) once for all the tasks that share it: a small LRU, which remembers a bad
reference too, so its other tasks fail fast with the same reason. A saved voice is
looked up for each task, as POST /v1/audio/speech does. Kept apart from the runner,
which decides what to do when a request fails (retry, lower rate, fail the task)."""

import collections

from .. import audio as audio_mod
from ..engines.base import SynthesisRequest
from ..errors import CudaFatalError, EngineOOMError, GlmttsError
from .schema import DEFAULT_VOICE
from .validate import resolve_prompt

PROMPT_CACHE = 16  # distinct references kept decoded


def is_oom(exc):
    return isinstance(exc, EngineOOMError) or type(exc).__name__ == "OutOfMemoryError"


def is_cuda_fatal(exc):
    return isinstance(exc, CudaFatalError) or (isinstance(exc, RuntimeError) and "CUDA error" in str(exc))


class TaskRequests:
    def __init__(self, settings, synth, voices):
        self.settings = settings
        self.synth = synth      # prepare_prompt(audio, rate, text) -> features, or NotImplementedError
        self.voices = voices    # SavedVoices or the service's VoiceStore
        self._prompts = collections.OrderedDict()  # (real path, prompt text) -> (audio, rate, features, error)

    def build(self, task):
        """The engine's SynthesisRequest for one task: its text and options, and its
        voice (a reference under paths.prompt_root, a saved voice, or the default)."""
        engine = self.settings.engine
        request = SynthesisRequest(text=task.input_text, sample_rate=task.sample_rate or engine.sample_rate,
                                   seed=engine.seed if task.seed is None else task.seed, use_cache=engine.use_cache,
                                   phoneme=engine.phoneme, prompt_text=task.prompt_text or "",
                                   speed=1.0 if task.speed is None else task.speed)
        if task.prompt_audio is None:
            if task.voice and task.voice != DEFAULT_VOICE:
                self._saved_voice(request, task.voice)
            return request  # no prompt at all: the engine's default voice
        real, why = resolve_prompt(task.prompt_audio, self.settings.paths.prompt_root)
        if why:
            raise FileNotFoundError(why) if "not found" in why else GlmttsError(why, code="invalid_prompt")
        key = (real, task.prompt_text)
        if key not in self._prompts:
            # Many tasks share one voice: decode it and extract its features once. A bad
            # reference is remembered too, so its other tasks fail fast with the same reason.
            try:
                audio, rate = audio_mod.decode_reference(real, self.settings.limits)
                features = None
                try:
                    features = self.synth.prepare_prompt(audio, rate, task.prompt_text)
                except NotImplementedError:
                    pass
                self._prompts[key] = (audio, rate, features, None)
            except (GlmttsError, OSError) as e:
                if is_oom(e) or is_cuda_fatal(e):
                    raise
                self._prompts[key] = (None, None, None, e)
            while len(self._prompts) > PROMPT_CACHE:
                self._prompts.popitem(last=False)
        self._prompts.move_to_end(key)
        audio, rate, features, error = self._prompts[key]
        if error is not None:
            raise error
        if features is not None:
            request.prompt_features = features
        else:
            request.prompt_audio, request.prompt_sample_rate = audio, rate
        return request

    def _saved_voice(self, request, voice):
        """Speak with a saved voice, as POST /v1/audio/speech does: its cached features
        when this engine made them, else its reference audio and transcript. Looked up
        for each task: a voice deleted since validation fails only its own tasks."""
        try:
            meta = self.voices.find(voice)
        except GlmttsError as e:
            raise GlmttsError("voice %r: %s (deleted since the job was submitted?)" % (voice, e),
                              code="voice_not_found") from None
        request.prompt_text = meta.get("prompt_text") or ""
        features = None
        if meta.get("engine_setting") == self.settings.engine.name:
            features = self.voices.features(meta["id"])
        if features is not None:
            request.prompt_features = features
        else:
            request.prompt_audio, request.prompt_sample_rate = self.voices.reference(meta["id"])
