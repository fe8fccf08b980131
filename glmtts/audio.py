"""Audio in and out: reference-audio decoding and validation, mono/resampling,
encoding responses, loudness.

Reference audio is decoded by its *content* (libsndfile sniffs the header), never by
its file name: a FLAC uploaded as ``voice.wav`` decodes, a text file named
``voice.wav`` is rejected as not audio. Each rejection is one message that says what
is wrong and what is accepted.
"""

import io
import logging
import math

import numpy as np
import soundfile as sf

from .errors import AudioError, InputError, NotAudioError

log = logging.getLogger(__name__)

ACCEPTED = "WAV, FLAC, OGG/Vorbis or MP3"
SILENCE_DBFS = -55.0  # a reference whose loudness is below this carries no voice
DEFAULT_MIN_S = 2.0
DEFAULT_MAX_S = 30.0

# response_format -> (libsndfile format, subtype, media type). The order is OpenAI's list
# (mp3 first: its default). wav and flac are written by libsndfile; mp3, opus and aac by
# PyAV (FFmpeg's libmp3lame, libopus and native AAC encoders, bundled in PyAV's wheels):
# one encoder that also encodes incrementally, for streamed answers (StreamEncoder).
FORMATS = {
    "mp3": (None, None, "audio/mpeg"),
    "opus": (None, None, "audio/ogg"),  # Opus in an Ogg container (RFC 7845), like OpenAI's
    "aac": (None, None, "audio/aac"),  # AAC-LC in ADTS frames: playable while it arrives
    "flac": ("FLAC", "PCM_16", "audio/flac"),
    "wav": ("WAV", "PCM_16", "audio/wav"),
    "pcm": (None, None, "audio/pcm"),  # raw s16le, mono, at the requested rate
}
# PyAV formats: (container, encoder, the sample rates the encoder takes or None for any,
# bit rate). libopus takes 8/12/16/24/48 kHz only: 32 kHz audio is resampled to 48 kHz
# (every Opus decoder outputs 48 kHz anyway). Bit rates are generous for mono speech.
_AV_FORMATS = {
    "mp3": ("mp3", "libmp3lame", None, 96000),
    "opus": ("ogg", "libopus", (8000, 12000, 16000, 24000, 48000), 48000),
    "aac": ("adts", "aac", None, 96000),
}


def _read_bytes(data):
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    if hasattr(data, "read"):
        return data.read()
    with open(data, "rb") as f:  # a path
        return f.read()


def decode(data, what="reference audio"):
    """Decode bytes / a binary file object / a path to (float32 mono, sample_rate).
    Raises NotAudioError (415) when the content is not a supported audio format."""
    raw = _read_bytes(data)
    if not raw:
        raise AudioError("%s is empty (0 bytes): upload a %s file" % (what, ACCEPTED))
    try:
        audio, sr = sf.read(io.BytesIO(raw), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        log.debug("decode failed: %s", e)
        raise NotAudioError("%s is not a recognised audio file (%d bytes); accepted: %s"
                            % (what, len(raw), ACCEPTED)) from None
    if audio.shape[0] == 0:
        raise AudioError("%s contains no samples: upload a recording of at least %.0f s"
                         % (what, DEFAULT_MIN_S))
    return to_mono(audio), int(sr)


def to_mono(audio):
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 2:
        audio = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]
    return np.ascontiguousarray(audio, dtype=np.float32)


def loudness_dbfs(audio):
    """RMS level in dB relative to full scale (-inf for digital silence)."""
    audio = np.asarray(audio, dtype=np.float64)
    if audio.size == 0:
        return -math.inf
    rms = math.sqrt(float(np.mean(audio * audio)))
    return 20.0 * math.log10(rms) if rms > 0 else -math.inf


def _limit(limits, key, explicit, default):
    if explicit is not None:
        return float(explicit)
    if limits is not None and hasattr(limits, key):
        return float(getattr(limits, key))
    return default


def validate_reference(audio, sample_rate, limits=None, *, min_s=None, max_s=None, what="reference audio"):
    """Check duration bounds and that the audio is not silent. ``limits`` is
    ``settings.limits`` (min_reference_s, max_reference_s) or None for the defaults."""
    lo = _limit(limits, "min_reference_s", min_s, DEFAULT_MIN_S)
    hi = _limit(limits, "max_reference_s", max_s, DEFAULT_MAX_S)
    duration = len(audio) / float(sample_rate)
    if duration < lo:
        raise AudioError("%s is %.1f s long; it must be at least %g s (use %g-%g s of clear speech)"
                         % (what, duration, lo, lo, hi))
    if duration > hi:
        raise AudioError("%s is %.1f s long; it must be at most %g s (trim it to %g-%g s of clear speech)"
                         % (what, duration, hi, lo, hi))
    level = loudness_dbfs(audio)
    if level < SILENCE_DBFS:
        shown = "-inf" if math.isinf(level) else "%.0f" % level
        raise AudioError("%s is silent (level %s dBFS, below %.0f dBFS): record someone speaking"
                         % (what, shown, SILENCE_DBFS))


def decode_reference(data, limits=None, *, min_s=None, max_s=None, what="reference audio"):
    """Decode and validate an uploaded reference: (float32 mono, sample_rate)."""
    audio, sr = decode(data, what)
    validate_reference(audio, sr, limits, min_s=min_s, max_s=max_s, what=what)
    return audio, sr


def resample(audio, sr_from, sr_to):
    """Polyphase resampling (exact rational ratio)."""
    audio = np.asarray(audio, dtype=np.float32)
    sr_from, sr_to = int(sr_from), int(sr_to)
    if sr_from == sr_to or audio.size == 0:
        return audio.copy() if audio.size else audio
    g = math.gcd(sr_from, sr_to)
    # Imported here, not at the top: scipy.signal brings scipy.stats along (about 1.3 s on a
    # 2-core VM), which every `import glmtts.audio` (the service's routes, the tools) would
    # otherwise pay; an engine that resamples pays it once, in its load().
    from scipy.signal import resample_poly

    out = resample_poly(audio.astype(np.float64), sr_to // g, sr_from // g)
    return out.astype(np.float32)


def media_type(fmt):
    return FORMATS[fmt][2] if fmt in FORMATS else "application/octet-stream"


def encode(audio, sample_rate, fmt="wav"):
    """Encode float32 mono audio to bytes: mp3 / opus / aac / flac / wav (16-bit) or raw pcm s16le."""
    if fmt not in FORMATS:
        raise InputError("unsupported audio format %r; allowed: %s" % (fmt, ", ".join(FORMATS)))
    audio = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
    if fmt == "pcm":
        return pcm16(audio)
    if fmt in _AV_FORMATS:
        enc = StreamEncoder(fmt, sample_rate, whole=True)
        return enc.feed(audio) + enc.close()
    container, subtype, _ = FORMATS[fmt]
    buf = io.BytesIO()
    sf.write(buf, audio, int(sample_rate), format=container, subtype=subtype)
    return buf.getvalue()


def pcm16(audio):
    """Raw little-endian signed 16-bit samples (what streamed pcm chunks carry)."""
    audio = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
    return (np.round(audio * 32767.0)).astype("<i2").tobytes()


class _Sink:
    """A write-only, non-seekable file for PyAV: the muxer then writes a plain stream
    (no seeking back to patch headers), whose bytes can be sent as they come."""

    def __init__(self):
        self.parts = []

    def write(self, data):
        self.parts.append(bytes(data))
        return len(data)

    def take(self):
        out = b"".join(self.parts)
        self.parts = []
        return out


class StreamEncoder:
    """Encode float32 mono audio to mp3 / opus / aac piece by piece: ``feed(samples)``
    returns the bytes ready so far, ``close()`` the rest. The concatenation is one valid
    file. ``whole=True`` (``encode``): a seekable buffer, returned by close(), so the mp3
    muxer can write its Xing/LAME header (exact length, gapless playback)."""

    def __init__(self, fmt, sample_rate, *, whole=False):
        if fmt not in _AV_FORMATS:
            raise InputError("format %r cannot be encoded incrementally; allowed: %s" % (fmt, ", ".join(_AV_FORMATS)))
        import av  # imported here: only answers in these formats pay for FFmpeg's libraries

        self._av = av
        container, codec, rates, bit_rate = _AV_FORMATS[fmt]
        self.sample_rate = int(sample_rate)
        rate = self.sample_rate if rates is None or self.sample_rate in rates else 48000
        self._whole = whole
        self._sink = io.BytesIO() if whole else _Sink()
        self._out = av.open(self._sink, mode="w", format=container)
        self._stream = self._out.add_stream(codec, rate=rate, layout="mono")
        self._stream.bit_rate = bit_rate
        self._resampler = av.AudioResampler(format=self._stream.codec_context.format.name, layout="mono", rate=rate)
        self._pts = 0
        self._closed = False

    def _encode(self, frames):
        for frame in frames:
            for packet in self._stream.encode(frame):
                self._out.mux(packet)

    def feed(self, audio):
        audio = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0).reshape(1, -1)
        if audio.size:
            frame = self._av.AudioFrame.from_ndarray(np.ascontiguousarray(audio), format="flt", layout="mono")
            frame.sample_rate = self.sample_rate
            frame.pts = self._pts
            self._pts += audio.shape[1]
            self._encode(self._resampler.resample(frame))
        return b"" if self._whole else self._sink.take()

    def close(self):
        if not self._closed:
            self._closed = True
            self._encode(self._resampler.resample(None))
            self._encode([None])  # flush the encoder
            self._out.close()  # the container's trailer (the last Ogg page, the Xing header)
            if self._whole:
                return self._sink.getvalue()
        return b"" if self._whole else self._sink.take()
