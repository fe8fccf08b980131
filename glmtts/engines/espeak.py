"""The embedded default engine: espeak-ng through ctypes, from the ``espeakng_loader``
wheel (library + data, Mandarin ``cmn`` and English included). CPU only, no download.

Zero-shot here is *prosody matching*: the reference's pitch median, pitch range and
speaking rate (``glmtts.prosody``) are applied through espeak's pitch/range/rate
parameters and a voice variant chosen from a calibration table measured at ``load()``.
espeak cannot reach every voice by its pitch parameter alone, so each chunk's F0 is
measured after synthesis and the remaining error is closed by a resampling pitch
shift, with the speaking rate pre-compensated so duration stays put. Timbre cloning
needs the ``glmtts`` engine.
"""

import _ctypes
import ctypes
import logging
import math
import threading

import numpy as np

from .. import audio as audio_mod
from .. import prosody, text as text_mod
from ..errors import AudioError, EngineError, EngineLoadError, InputError
from .base import Engine, PromptFeatures, SynthesisResult

log = logging.getLogger(__name__)

VOICES = {"zh": "cmn", "en": "en"}
VARIANTS = ("", "+f3")  # espeak's default (low) voice and a higher one
CALIBRATION_PITCHES = (0, 25, 50, 75, 100)
CALIBRATION_TEXT = {"zh": "今天天气很好，我们一起去公园散步吧。", "en": "The weather is lovely today, so let us take a walk in the park."}
DEFAULT_RATE_WPM = 175
# espeak-ng slows down to 80 wpm at most (0.46x); above 450 it speeds up through its
# built-in sonic time-stretcher, usable to ~1000 wpm (5.7x)
MIN_RATE_WPM, MAX_RATE_WPM = 80, 1000
MAX_SHIFT = 1.6          # largest resampling pitch shift (either direction)
SHIFT_TOLERANCE = 0.02   # closer than 2% to the target: no shift needed
MIN_VOICED_FRAMES = 15   # fewer voiced frames than this: trust the calibration table

# espeak-ng C API constants (speak_lib.h)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _PITCH, _RANGE = 1, 3, 4

# The C library keeps global state (voice, parameters, callback) and is not thread
# safe: every call into it happens under this one lock. It also keeps static state
# between syntheses that no API resets (wavegen phase, the pitch-flutter index), so the
# same text would come out slightly different each time. Each synthesis therefore runs
# on a freshly loaded copy of the library (dlopen + initialise + dlclose, ~3 ms):
# output is then a function of the input alone, whatever ran before.
_LOCK = threading.Lock()
_BUFFER = []
_CALLBACK_TYPE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


def _on_samples(wav, numsamples, events):
    if numsamples > 0 and wav:
        _BUFFER.append(np.ctypeslib.as_array(wav, shape=(numsamples,)).copy())
    return 0  # 0 = continue synthesis


_CALLBACK = _CALLBACK_TYPE(_on_samples)  # module-level: C keeps only the pointer
_LIBC = ctypes.CDLL(None)
_LIBC.srand.argtypes = [ctypes.c_uint]


def _paths():
    try:
        import espeakng_loader
        return espeakng_loader.get_library_path(), espeakng_loader.get_data_path()
    except ImportError as e:
        raise EngineLoadError("espeak engine: the espeakng-loader wheel is missing (%s); "
                              "install it with `pip install espeakng-loader`" % e) from None


def _open():
    """A freshly initialised libespeak-ng: (lib, native sample rate). Call with _LOCK held."""
    library_path, data_path = _paths()
    try:
        lib = ctypes.CDLL(library_path)
    except OSError as e:
        raise EngineLoadError("espeak engine: cannot load %s (%s); reinstall espeakng-loader" % (library_path, e)) from None
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                 ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), _INITIALIZE_DONT_EXIT)
    if rate <= 0:
        _close(lib)
        raise EngineLoadError("espeak engine: espeak_Initialize failed with the data at %s" % data_path)
    lib.espeak_SetSynthCallback(_CALLBACK)
    return lib, rate


def _close(lib):
    lib.espeak_Terminate()
    handle = lib._handle
    del lib
    _ctypes.dlclose(handle)


def _voice_available(voice):
    with _LOCK:
        lib, rate = _open()
        try:
            return lib.espeak_SetVoiceByName(voice.encode()) == 0, rate
        finally:
            _close(lib)


def _synth_raw(text, voice, rate_wpm, pitch, pitch_range, seed=0):
    """int16 samples at espeak's native rate. Call with _LOCK held. espeak adds a
    little random jitter; seeding its generators makes output a function of the input."""
    lib, _ = _open()
    try:
        lib.espeak_ng_SetRandSeed(int(seed) & 0x7FFFFFFF)
        _LIBC.srand(int(seed) & 0xFFFFFFFF)  # klatt noise draws from the C library's rand()
        if lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise EngineError("espeak engine: voice %r is not available in the espeak-ng data" % voice)
        lib.espeak_SetParameter(_RATE, int(round(rate_wpm)), 0)
        lib.espeak_SetParameter(_PITCH, int(round(pitch)), 0)
        lib.espeak_SetParameter(_RANGE, int(round(pitch_range)), 0)
        data = text.encode("utf-8")
        _BUFFER.clear()
        err = lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        lib.espeak_Synchronize()
        if err != 0:
            raise EngineError("espeak engine: espeak_Synth failed (error %d)" % err)
        samples = np.concatenate(_BUFFER) if _BUFFER else np.zeros(0, dtype=np.int16)
        _BUFFER.clear()
        return samples
    finally:
        _close(lib)


class EspeakEngine(Engine):
    name = "espeak"
    sample_rates = (24000, 32000)

    def __init__(self, settings):
        super().__init__(settings)
        self.native_rate = None
        self.g2p = {}
        self.calibration = {}  # (lang, variant) -> [(pitch_param, median_hz)], plus base figures
        self.base = {}         # lang -> {"rate_sps", "range_st"} at default settings

    # -- load & calibration -------------------------------------------------------

    def load(self):
        for voice in VOICES.values():
            ok, self.native_rate = _voice_available(voice)
            if not ok:
                raise EngineLoadError("espeak engine: voice %r is missing from the espeak-ng data (%s); "
                                      "reinstall espeakng-loader" % (voice, _paths()[1]))
        self.g2p = text_mod.load_g2p_dict(getattr(self.settings.engine, "g2p_dict", "") or None)
        self._calibrate()
        self.loaded = True
        log.info("espeak engine loaded (native %d Hz); calibration %s", self.native_rate,
                 {k: [round(hz) for _, hz in v] for k, v in self.calibration.items()})

    def _calibrate(self):
        """Measure the F0 each (voice variant, pitch parameter) actually produces, and
        the default speaking rate and pitch range, per language."""
        for lang, voice in VOICES.items():
            sentence = CALIBRATION_TEXT[lang]
            for variant in VARIANTS:
                points = []
                for pitch in CALIBRATION_PITCHES:
                    with _LOCK:
                        raw = _synth_raw(sentence, voice + variant, DEFAULT_RATE_WPM, pitch, 50)
                    measured = prosody.measure(raw.astype(np.float32) / 32768.0, self.native_rate, sentence)
                    if math.isfinite(measured.median_hz):
                        points.append((pitch, measured.median_hz))
                    if variant == "" and pitch == 50:
                        self.base[lang] = {"rate_sps": measured.rate_sps, "range_st": measured.range_st}
                if len(points) < 2:
                    raise EngineLoadError("espeak engine: calibration found no voiced speech for %s%s" % (voice, variant))
                self.calibration[(lang, variant)] = points

    # -- prompt -------------------------------------------------------------------

    def prepare_prompt(self, audio, sample_rate, prompt_text):
        audio = audio_mod.to_mono(audio)
        measured = prosody.measure(audio, int(sample_rate), prompt_text or "")
        if not math.isfinite(measured.median_hz) or measured.voiced_s < 0.3:
            raise AudioError("reference audio has no voiced speech to take the pitch from "
                             "(%.1f s voiced): upload a recording of someone speaking" % measured.voiced_s)
        data = {"median_hz": measured.median_hz, "range_st": measured.range_st,
                "rate_sps": measured.rate_sps if math.isfinite(measured.rate_sps) else None}
        return PromptFeatures(engine=self.name, prompt_text=prompt_text or "", data=data)

    def _prompt(self, request):
        features = request.prompt_features
        if features is not None and features.engine == self.name:
            return features.data
        if request.prompt_audio is not None:
            return self.prepare_prompt(request.prompt_audio, request.prompt_sample_rate or 24000,
                                       request.prompt_text).data
        if features is not None:
            raise InputError("this voice was prepared by engine %r, the active engine is %r: "
                             "register the voice again" % (features.engine, self.name))
        return None

    def _voice_plan(self, lang, target_hz):
        """(variant, pitch parameter, predicted F0) closest to target_hz, preferring a
        setting inside the calibrated span over one that needs a large shift."""
        best = None
        for variant in VARIANTS:
            points = self.calibration[(lang, variant)]
            pitches = np.array([p for p, _ in points], dtype=float)
            logs = np.log([hz for _, hz in points])
            # log-F0 is close to linear in espeak's pitch parameter; keep away from
            # the ends of the scale where espeak's voicing gets rough
            want = math.log(target_hz)
            order = np.argsort(logs)
            pitch = float(np.interp(want, logs[order], pitches[order]))
            pitch = float(np.clip(pitch, 10, 90))
            predicted = float(math.exp(np.interp(pitch, pitches, logs)))
            error = abs(math.log(target_hz / predicted))
            if best is None or error < best[3] - 1e-9:
                best = (variant, pitch, predicted, error)
        return best[:3]

    # -- synthesis ----------------------------------------------------------------

    def _chunk_settings(self, lang, prompt, speed):
        rate = DEFAULT_RATE_WPM
        variant, pitch, pitch_range, target = "", 50.0, 50.0, None
        if prompt:
            target = prompt["median_hz"]
            variant, pitch, _ = self._voice_plan(lang, target)
            base = self.base.get(lang, {})
            if prompt.get("rate_sps") and base.get("rate_sps"):
                rate = DEFAULT_RATE_WPM * prompt["rate_sps"] / base["rate_sps"]
            if base.get("range_st"):
                pitch_range = float(np.clip(50.0 * prompt["range_st"] / base["range_st"], 0, 100))
        return {"variant": variant, "pitch": pitch, "range": pitch_range, "rate": rate * speed, "target_hz": target}

    def _render(self, runs, params, shift, seed):
        """Synthesize each script run with its voice; shift > 1 raises pitch by
        resampling, so espeak speaks 1/shift slower first to keep the duration."""
        pieces = []
        for lang, piece in runs:
            p = params[lang]
            rate = float(np.clip(p["rate"] / shift, MIN_RATE_WPM, MAX_RATE_WPM))
            with _LOCK:
                pieces.append(_synth_raw(piece, VOICES[lang] + p["variant"], rate, p["pitch"], p["range"], seed))
        raw = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int16)
        return raw.astype(np.float32) / 32768.0

    def _synthesize_chunk(self, chunk, prompt, speed, seed):
        runs = [(lang, piece) for lang, piece in text_mod.script_runs(chunk) if any(c.isalnum() for c in piece)]
        if not runs:
            return np.zeros(0, dtype=np.float32), 1.0, False
        params = {lang: self._chunk_settings(lang, prompt, speed) for lang in VOICES}
        rate_limited = any(not MIN_RATE_WPM <= params[lang]["rate"] <= MAX_RATE_WPM for lang, _ in runs)
        audio = self._render(runs, params, 1.0, seed)
        shift = 1.0
        target = prompt["median_hz"] if prompt else None
        if target:
            f0, _ = prosody.track_f0(audio, self.native_rate)
            voiced = prosody.voiced(f0)
            if voiced.size >= MIN_VOICED_FRAMES:
                shift = target / float(np.median(voiced))
            else:  # too little voicing in a short chunk to measure: use the table
                lang = runs[0][0]
                shift = target / self._voice_plan(lang, target)[2]
            shift = float(np.clip(shift, 1 / MAX_SHIFT, MAX_SHIFT))
            if abs(math.log(shift)) > math.log1p(SHIFT_TOLERANCE):
                audio = self._render(runs, params, shift, seed)
            else:
                shift = 1.0
        return audio, shift, rate_limited

    def _to_output_rate(self, audio, shift, out_rate):
        # Playing espeak's samples as if recorded at native*shift raises pitch by
        # `shift`; quantise that rate to 50 Hz steps to keep the polyphase ratio small.
        source_rate = int(round(self.native_rate * shift / 50.0)) * 50
        return audio_mod.resample(audio, source_rate, out_rate)

    def synthesize_stream(self, request):
        if not self.loaded:
            raise EngineError("espeak engine used before load()")
        if request.sample_rate not in self.sample_rates:
            raise InputError("sample_rate %r is not supported; allowed: 24000 | 32000" % (request.sample_rate,))
        speed = float(request.speed or 1.0)
        if not 0.25 <= speed <= 4.0:
            raise InputError("speed %r is out of range; allowed: 0.25..4.0" % (request.speed,))
        text = text_mod.require_text(request.text)
        prompt = self._prompt(request)
        max_chars = getattr(self.settings.engine, "max_chunk_chars", 80)
        chunks = text_mod.split_text(text, max_chars)
        for index, chunk in enumerate(chunks):
            # phoneme tokens (<|ZH|><|ANG3|>) typed by the user are honoured too
            spoken = text_mod.apply_g2p(chunk, self.g2p) if request.phoneme else chunk
            spoken = text_mod.phoneme_tokens_to_pinyin(spoken)
            audio, shift, rate_limited = self._synthesize_chunk(spoken, prompt, speed, request.seed)
            out = self._to_output_rate(audio, shift, request.sample_rate)
            meta = {"engine": self.name, "chunk": index, "chunks": len(chunks), "text": chunk,
                    "seed": request.seed, "pitch_shift": round(shift, 4),
                    "prosody_matched": bool(prompt), "rate_limited": rate_limited}
            yield SynthesisResult(np.ascontiguousarray(out, dtype=np.float32), request.sample_rate, meta)

    def describe(self):
        info = super().describe()
        info.update({
            "name": self.name,
            "device": "cpu",
            "sample_rates": list(self.sample_rates),
            "capabilities": ["zh", "en", "mixed", "prosody_matching", "streaming"],
            "zero_shot": "prosody matching (pitch median, pitch range, speaking rate); "
                         "timbre cloning needs the glmtts engine",
            "loaded": self.loaded,
        })
        if self.native_rate:
            info["native_sample_rate"] = self.native_rate
        return info
