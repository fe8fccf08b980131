"""The ``glmtts`` engine: an adapter over a checkout of the official GLM-TTS repository.

It loads through the repository's own ``load_models`` and synthesizes through its
``generate_long``, called the way the repository's ``tools/gradio_app.py`` calls it:
normalised prompt text + " " -> prompt text tokens; prompt speech tokens; prompt speech
features at the output rate; speaker embedding; a fresh prompt-history dict per request
(``cache_text``, ``cache_text_token``, ``cache_speech_token``, ``use_cache``: with
``use_cache`` later chunks of a long text are prompted with the earlier chunks' text
and speech tokens as history; it is not a KV cache). Incremental synthesis runs the same
per-chunk steps itself (seed, normalise, optional G2P, text tokens, prompt from the
history, language model, flow) and yields each chunk.

Both output rates stay resident: ``load_models`` at ``engine.sample_rate`` (language
model, flow, vocoder, front ends), and for the other rate only what differs — the
repository's ``load_frontends`` (the mel extractor, sharing the one text front end) and
a ``Token2Wav`` vocoder over the same flow model — so the language model is loaded once.

What the real repository does that the adapter must contain, without touching a file
of the checkout (``git pull`` there stays the way to update the model):
- its mel extractor caches basis and window in module globals keyed without the rate:
  each rate gets private caches (glmtts_repo.ModuleCaches);
- its audio loading is ``torchaudio.load`` (torchcodec + FFmpeg since torchaudio 2.9):
  reference audio is decoded, down-mixed and resampled here and handed to the front end
  as tensors, which its methods accept;
- every ``TextFrontEnd`` rebuilds WeTextProcessing's FSTs into the installed package:
  they are built once into ``paths.state_dir`` (wetext_cache.py), and only one text
  front end is built;
- it hard-codes ``.cuda()``: ``engine.device = "cpu"`` is a configuration error;
- it ``print()``s on stdout: the model thread's output goes to stderr.

All model work runs on one thread with a private cwd (see glmtts_repo.py). A CUDA OOM
surfaces as EngineOOMError only after memory was released; a fatal CUDA error as
CudaFatalError, and the engine refuses further work until the process restarts.
"""

import json
import logging
import os
import sys
import traceback

import numpy as np

from .. import audio as audio_io
from .. import gpu
from ..errors import AudioError, ConfigError, CudaFatalError, EngineLoadError, EngineOOMError, InputError
from . import wetext_cache
from .base import Engine, PromptFeatures, SynthesisResult
from .glmtts_repo import ModuleCaches, RepoThread, import_repo, substituted

log = logging.getLogger(__name__)

RATES = (24000, 32000)
SAMPLE_METHOD = "ras"  # what the repository's gradio tool uses
DEFAULT_VOICE_LIST = os.path.join("examples", "example_zh.jsonl")
TOKENIZER_RATE = 16000  # the speech tokenizer and the speaker embedding (kaldi fbank) take 16 kHz
MEL_CACHES = ("mel_basis", "hann_window")  # utils/audio.py's module-global caches


class _Rate:
    """What differs per output rate: the front end (mel extractor) and the vocoder."""

    def __init__(self, frontend, token2wav):
        self.frontend = frontend
        self.token2wav = token2wav


class GlmTtsEngine(Engine):
    name = "glmtts"
    sample_rates = RATES

    def __init__(self, settings, *, thread_cwd=None):
        super().__init__(settings)
        self._thread_cwd = thread_cwd  # the OS seam of RepoThread; None = the real one
        home = settings.engine.glmtts_home
        if not home:
            raise ConfigError("engine.glmtts_home is empty: set it to a checkout of the official GLM-TTS "
                              "repository with its ckpt/ weights")
        self.home = os.path.realpath(home)
        for need, what in (("ckpt", "directory"), ("glmtts_inference.py", "file")):
            path = os.path.join(self.home, need)
            if not (os.path.isdir(path) if what == "directory" else os.path.isfile(path)):
                raise ConfigError("engine.glmtts_home = %s has no %s %s (clone github.com/zai-org/GLM-TTS there and "
                                  "download the weights into %s/ckpt)" % (home, what, path, self.home))
        if settings.engine.device == "cpu":
            raise ConfigError('engine.device = "cpu" cannot run engine glmtts: the official repository hard-codes '
                              ".cuda() (its speech tokenizer and audio loading in cosyvoice/cli/frontend.py and "
                              'utils/yaml_util.py). Use "auto", "cuda" or "cuda:N" on a GPU server, or '
                              'engine.name = "espeak" on a machine without a GPU')
        self.default_rate = settings.engine.sample_rate
        self._fst_cache = wetext_cache.cache_root(settings.paths.state_dir)
        self._repo = None  # the imported glmtts_inference module
        self._thread = None
        self._rates = {}
        self._mel_caches = None
        self._text_frontend = None
        self._llm = None
        self._default_voice = None
        self.fatal = None

    # -- load --------------------------------------------------------------------------

    def load(self):
        if self.loaded:
            return
        self._thread = RepoThread(self.home, cwd=self._thread_cwd)
        try:
            self._load_guarded()
        except Exception:
            self._thread.shutdown()
            raise
        self.loaded = True
        log.info("GLM-TTS loaded from %s on %s, rates %s, cwd isolation %s", self.home, self._device(),
                 sorted(self._rates), self._thread.isolation)

    def _load_guarded(self):
        try:
            self._guard(lambda: self._thread.call_in_home(self._load_on_model_thread))
        except (EngineOOMError, CudaFatalError) as e:
            raise EngineLoadError("loading GLM-TTS from %s failed: %s" % (self.home, e)) from None
        except (EngineLoadError, ConfigError):
            raise
        except FileNotFoundError as e:
            raise EngineLoadError("GLM-TTS weights missing: %s (looked in %s; download them into %s/ckpt)"
                                  % (e, self.home, self.home)) from None
        except Exception as e:
            raise EngineLoadError("loading GLM-TTS from %s failed: %s: %s%s"
                                  % (self.home, type(e).__name__, e, _no_cuda_hint(e))) from e

    def _load_on_model_thread(self):
        repo = import_repo(self.home)
        self._select_device(repo)
        # A rebuild of WeTextProcessing's FSTs goes to our writable cache, not site-packages.
        wetext_cache.install(sys.modules[repo.TextFrontEnd.__module__], self._fst_cache)
        # use_phoneme=True loads the G2P front end once, as the gradio tool does;
        # each request then decides with generate_long(use_phoneme=...).
        frontend, text_frontend, speech_tokenizer, llm, token2wav = repo.load_models(
            use_phoneme=True, sample_rate=self.default_rate)
        self._repo, self._text_frontend, self._llm = repo, text_frontend, llm
        self._rates = {self.default_rate: _Rate(frontend, token2wav)}
        self._mel_caches = _mel_caches_of(frontend)
        other = 32000 if self.default_rate == 24000 else 24000
        try:
            # load_frontends builds a TextFrontEnd of its own; the one we have serves both rates
            with substituted(repo, "TextFrontEnd", lambda use_phoneme=False: text_frontend):
                other_frontend, _ = repo.load_frontends(speech_tokenizer, sample_rate=other, use_phoneme=False)
            other_vocoder = repo.tts_model_util.Token2Wav(token2wav.flow, sample_rate=other, device=repo.DEVICE)
            self._rates[other] = _Rate(other_frontend, other_vocoder)
        except Exception as e:  # e.g. an older checkout without the 32 kHz vocoder
            if gpu.classify_cuda_error(e):
                raise
            log.warning("GLM-TTS: %d Hz unavailable, serving %d Hz only: %s: %s",
                        other, self.default_rate, type(e).__name__, e)
        if self.settings.engine.g2p_dict:
            from ..text import load_g2p_dict
            text_frontend.replace_dict.update(load_g2p_dict(self.settings.engine.g2p_dict))
        self._default_voice = self._load_default_voice()

    def _select_device(self, repo):
        wanted = self.settings.engine.device
        if wanted == "auto":
            return
        import torch
        if wanted.startswith("cuda:"):
            torch.cuda.set_device(int(wanted.split(":", 1)[1]))  # per thread: the model thread
        repo.DEVICE = torch.device(wanted)

    def _load_default_voice(self):
        """The checkout's first example prompt, so requests without a voice (and the
        start-up warm-up) have one. Missing or unreadable examples are fine: such
        requests get a 400. A failure to extract its features is not: it would fail
        every uploaded voice too, so it fails the load."""
        path = os.path.join(self.home, DEFAULT_VOICE_LIST)
        try:
            with open(path, encoding="utf-8") as f:
                item = json.loads(f.readline())
            wav = os.path.join(self.home, item["prompt_speech"])
            audio, sr = audio_io.decode(wav, "default voice %s" % wav)
        except (OSError, ValueError, KeyError, AudioError) as e:
            log.warning("GLM-TTS: no default voice (%s: %s); requests must bring a reference voice", path, e)
            return None
        return self._features(audio, sr, item["prompt_text"])

    def _device(self):
        return str(self._repo.DEVICE) if self._repo is not None else self.settings.engine.device

    # -- prompt features -----------------------------------------------------------------

    def prepare_prompt(self, audio, sample_rate, prompt_text) -> PromptFeatures:
        self._check_ready()
        if audio is None or not sample_rate:
            raise InputError("a reference voice needs its audio and sample rate")
        return self._guard(lambda: self._thread.call(self._features, audio, sample_rate, prompt_text))

    def _features(self, audio, sample_rate, prompt_text):
        """Prompt features from decoded audio (float32, any rate, mono or not). The
        front end gets (1, T) tensors at the rate each method assumes, never a path:
        its own loader is torchaudio.load."""
        import torch
        mono = audio_io.to_mono(audio)

        def at(rate):
            return torch.from_numpy(np.clip(audio_io.resample(mono, sample_rate, rate), -1.0, 1.0))[None]

        tf = self._text_frontend
        main = self._rates[self.default_rate].frontend
        norm = tf.text_normalize(prompt_text) + " "
        text_token = main._extract_text_token(norm)
        wav16 = at(TOKENIZER_RATE)
        speech_token = main._extract_speech_token([(wav16, TOKENIZER_RATE)])
        feats = {rate: self._speech_feat(rate, at(rate)).cpu() for rate in self._rates}
        embedding = main._extract_spk_embedding(wav16)
        # CPU copies: picklable for saved voices, and no GPU memory held between requests
        data = {"prompt_text_norm": norm, "text_token": text_token.cpu(),
                "speech_token": speech_token.squeeze().reshape(-1).tolist(),
                "speech_feat": feats, "embedding": embedding.cpu()}
        return PromptFeatures(engine=self.name, prompt_text=prompt_text, data=data)

    def _speech_feat(self, rate, wav):
        with self._mel_caches.scoped(rate):
            return self._rates[rate].frontend._extract_speech_feat(wav, sample_rate=rate)

    def _features_for(self, request):
        if request.prompt_features is not None:
            f = request.prompt_features
            if f.engine != self.name:
                raise InputError("this voice was saved with engine %r; register it again for engine glmtts" % f.engine)
            if request.sample_rate not in f.data.get("speech_feat", {}):
                raise InputError("this voice has no %d Hz features; register it again" % request.sample_rate)
            return f
        if request.prompt_audio is not None:
            return self.prepare_prompt(request.prompt_audio, request.prompt_sample_rate, request.prompt_text)
        if self._default_voice is None:
            raise InputError("engine glmtts needs a reference voice: send prompt_audio + prompt_text or a saved voice")
        return self._default_voice

    # -- synthesis -----------------------------------------------------------------------

    def _inputs(self, request, features):
        """Tensors and the prompt-history dict for one request, on the model's device."""
        import torch
        dev = self._repo.DEVICE
        d = features.data
        cache_speech_token = [list(d["speech_token"])]  # fresh lists: generate_long appends to them
        cache = {"cache_text": [d["prompt_text_norm"]], "cache_text_token": [d["text_token"].to(dev)],
                 "cache_speech_token": cache_speech_token, "use_cache": bool(request.use_cache)}
        return {"cache": cache, "embedding": d["embedding"].to(dev),
                "flow_prompt_token": torch.tensor(cache_speech_token, dtype=torch.int32).to(dev),
                "speech_feat": d["speech_feat"][request.sample_rate].to(dev)}

    def _check_request(self, request):
        self._check_ready()
        if request.sample_rate not in self._rates:
            raise InputError("sample_rate %s is not available; allowed: %s"
                             % (request.sample_rate, " | ".join(str(r) for r in sorted(self._rates))))
        if not (request.text or "").strip():
            raise InputError("input text is empty")

    def synthesize(self, request):
        """One call of the repository's generate_long, exactly as its gradio tool."""
        self._check_request(request)
        features = self._features_for(request)
        rate = self._rates[request.sample_rate]

        def run():
            inputs = self._inputs(request, features)
            speech, _mel, tokens, info = self._repo.generate_long(
                frontend=rate.frontend, text_frontend=self._text_frontend, llm=self._llm, flow=rate.token2wav,
                text_info=["", self._text_frontend.text_normalize(request.text)], cache=inputs["cache"],
                embedding=inputs["embedding"], flow_prompt_token=inputs["flow_prompt_token"],
                speech_feat=inputs["speech_feat"], sample_method=SAMPLE_METHOD, seed=int(request.seed),
                device=self._repo.DEVICE, use_phoneme=bool(request.phoneme))
            # generate_long's own record of the chunks it ran (its prompt history is pruned on long texts)
            return _to_audio(speech), len(tokens), len(info["syn_text_tn"])

        audio, n_tokens, n_chunks = self._guard(lambda: self._thread.call(run))
        return SynthesisResult(audio, request.sample_rate, self._meta(request, chunks=n_chunks, speech_tokens=n_tokens))

    def synthesize_stream(self, request):
        """The repository's per-chunk steps, one chunk per yield."""
        self._check_request(request)
        features = self._features_for(request)
        rate = self._rates[request.sample_rate]
        state = {}

        def begin():
            state.update(self._inputs(request, features))
            return self._text_frontend.split_by_len(self._text_frontend.text_normalize(request.text))

        chunks = self._guard(lambda: self._thread.call(begin))
        for index, chunk in enumerate(chunks):
            # on an OOM this stream's own prompt-history dict is dropped along with the rest
            audio = self._guard(lambda: self._thread.call(self._chunk_step, rate, state, chunk, request),
                                drop=state.clear)
            yield SynthesisResult(audio, request.sample_rate, self._meta(request, chunk=index, chunks=len(chunks)))

    def _chunk_step(self, rate, state, text, request):
        """One iteration of generate_long's loop: seed, normalise, G2P, text tokens,
        prompt (from the earlier chunks as history when use_cache), language model, flow."""
        import torch
        repo, tf, dev, cache = self._repo, self._text_frontend, self._repo.DEVICE, state["cache"]
        repo.seed_util.set_seed(int(request.seed))
        tn = tf.text_normalize(text)
        if request.phoneme:
            tn = tf.g2p_infer(tn)
        text_token = rate.frontend._extract_text_token(tn)
        if cache["use_cache"] and len(cache["cache_text_token"]) > 1:
            prompt_text_token, prompt_speech_token = repo.get_cached_prompt(cache, text_token, dev)
        else:
            prompt_text_token = cache["cache_text_token"][0].to(dev)
            prompt_speech_token = torch.tensor([cache["cache_speech_token"][0]], dtype=torch.int32).to(dev)
        tokens = repo.local_llm_forward(llm=self._llm, prompt_text_token=prompt_text_token, tts_text_token=text_token,
                                        prompt_speech_token=prompt_speech_token, sample_method=SAMPLE_METHOD)
        speech, _mel = repo.local_flow_forward(flow=rate.token2wav, token_list=tokens,
                                               prompt_speech_tokens=state["flow_prompt_token"],
                                               speech_feat=state["speech_feat"], embedding=state["embedding"])
        cache["cache_text"].append(tn)
        cache["cache_text_token"].append(text_token)
        cache["cache_speech_token"].append(tokens)
        return _to_audio(speech)

    def _meta(self, request, **extra):
        meta = {"engine": self.name, "seed": int(request.seed), "use_cache": bool(request.use_cache),
                "phoneme": bool(request.phoneme)}
        if request.speed != 1.0:
            meta["speed_ignored"] = request.speed  # GLM-TTS has no speed control
        meta.update(extra)
        return meta

    # -- failures --------------------------------------------------------------------------

    def _check_ready(self):
        if self.fatal:
            raise CudaFatalError("GLM-TTS CUDA context is unusable since: %s; restart the service" % self.fatal)
        if not self.loaded:
            raise InputError("engine glmtts is not loaded yet")

    def _guard(self, fn, drop=None):
        """Run model work; turn CUDA failures into typed errors. The original exception
        and its traceback (whose frames hold the tensors that filled the GPU) are dropped
        before memory is released, then the typed error is raised."""
        failure = None
        try:
            return fn()
        except Exception as exc:
            kind = gpu.classify_cuda_error(exc)
            if kind is None:
                raise
            failure = (kind, str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                       "".join(traceback.format_exception(exc)))
        kind, message, detail = failure
        # The genuine traceback goes to stderr: the watchdog's signatures match it.
        log.error("GLM-TTS %s:\n%s", "CUDA out of memory" if kind == "oom" else "fatal CUDA error", detail.rstrip())
        if kind == "oom":
            freed = gpu.clear_gpu_memory((self.release_memory,) + ((drop,) if drop else ()))
            err = EngineOOMError("CUDA out of memory in GLM-TTS (%s); memory was released, retry or use a "
                                 "shorter text / 24000 Hz" % message)
            err.detail, err.released = detail, freed
            raise err
        self.fatal = message
        err = CudaFatalError("fatal CUDA error in GLM-TTS: %s; the service must restart" % message)
        err.detail = detail
        raise err

    def release_memory(self):
        """The drop-references step of gpu.clear_gpu_memory(): the weights stay, and the
        adapter keeps no tensors between requests (each request's prompt tensors and
        prompt-history dict live only in that request's call), so there is nothing to drop
        here beyond what gc.collect() and empty_cache() then free."""

    def describe(self):
        return {"name": self.name, "device": self._device(), "sample_rates": sorted(self._rates) or list(RATES),
                "default_sample_rate": self.default_rate,
                "capabilities": ["zero_shot", "timbre_cloning", "streaming", "seed", "prompt_cache", "phoneme"],
                "loaded": self.loaded, "home": self.home, "default_voice": self._default_voice is not None,
                "cwd_isolation": self._thread.isolation if self._thread else None, "fatal": self.fatal}


def _mel_caches_of(frontend):
    """The module-global caches of the front end's mel extractor (a functools.partial of
    utils/audio.py's mel_spectrogram in the real repository)."""
    func = getattr(frontend.feat_extractor, "func", frontend.feat_extractor)
    caches = ModuleCaches(sys.modules.get(getattr(func, "__module__", "")), MEL_CACHES)
    if not caches.names:
        log.warning("GLM-TTS: the mel extractor %r keeps no module caches this adapter knows (%s); the two "
                    "rates share whatever it caches", func, ", ".join(MEL_CACHES))
    return caches


def _no_cuda_hint(exc):
    """The repository hard-codes .cuda(): say so when that is why load failed."""
    text = str(exc)
    if "CUDA" in text or "cuda" in text:
        try:
            import torch
            if not torch.cuda.is_available():
                return (" (the official repository needs a CUDA GPU and none is visible to this process: check "
                        "nvidia-smi, CUDA_VISIBLE_DEVICES and the unit's DeviceAllow=)")
        except ImportError:
            pass
    return ""


def _to_audio(speech):
    """(1, T) tensor from the repository -> float32 mono numpy in [-1, 1]."""
    audio = speech.detach().reshape(-1).float().cpu().numpy()
    return np.clip(audio, -1.0, 1.0).astype(np.float32, copy=False)
