"""Prosody measured from audio: F0 (YIN, voiced frames only), pitch median and range,
speaking rate. The espeak engine matches these to a reference voice; tests use them
to check that output is speech (a voiced F0 in a speech range) and that matching works.
"""

import logging
import math
from dataclasses import asdict, dataclass

import numpy as np

from . import audio as audio_mod
from .text import count_syllables

log = logging.getLogger(__name__)

ANALYSIS_SR = 16000
FRAME_S = 0.040
HOP_S = 0.010
FMIN = 60.0
FMAX = 500.0
YIN_THRESHOLD = 0.2  # espeak's voice source is less periodic than a real voice; 0.2 keeps its vowels
ACTIVE_DB_BELOW_PEAK = 35.0  # frames this far below the loudest frame count as pauses
SILENCE_FLOOR_DB = -65.0     # frames quieter than this (dBFS) are never speech


def _frames(x, length, hop):
    if len(x) < length:
        x = np.pad(x, (0, length - len(x)))
    n = 1 + (len(x) - length) // hop
    idx = np.arange(length)[None, :] + hop * np.arange(n)[:, None]
    return x[idx]


def frame_rms_db(audio, sr, frame_s=FRAME_S, hop_s=HOP_S):
    x = np.asarray(audio, dtype=np.float64)
    fr = _frames(x, int(sr * frame_s), int(sr * hop_s))
    rms = np.sqrt(np.mean(fr * fr, axis=1))
    return 20.0 * np.log10(np.maximum(rms, 1e-10))


def track_f0(audio, sr, fmin=FMIN, fmax=FMAX, threshold=YIN_THRESHOLD):
    """YIN F0 per 10 ms frame; NaN where unvoiced. Returns (f0, times_s)."""
    x = np.asarray(audio, dtype=np.float64)
    if sr != ANALYSIS_SR:
        x = audio_mod.resample(x.astype(np.float32), sr, ANALYSIS_SR).astype(np.float64)
    sr = ANALYSIS_SR
    w = int(sr * FRAME_S)
    hop = int(sr * HOP_S)
    tau_min = max(2, int(sr / fmax))
    tau_max = int(math.ceil(sr / fmin))
    fr = _frames(x, w + tau_max, hop)
    n = fr.shape[0]
    # d(tau) = sum_j (x_j - x_{j+tau})^2 over a window of w samples, via FFT
    # cross-correlation between the first w samples and the whole frame.
    size = 1 << int(math.ceil(math.log2(2 * (w + tau_max))))
    head = fr[:, :w]
    spec = np.fft.rfft(fr, size) * np.conj(np.fft.rfft(head, size))
    corr = np.fft.irfft(spec, size)[:, :tau_max + 1]
    sq = np.cumsum(np.concatenate([np.zeros((n, 1)), fr * fr], axis=1), axis=1)
    energy0 = sq[:, w][:, None]
    taus = np.arange(tau_max + 1)
    energy_tau = sq[:, taus + w] - sq[:, taus]
    d = energy0 + energy_tau - 2.0 * corr
    d[:, 0] = 0.0
    # cumulative mean normalized difference
    cum = np.cumsum(d[:, 1:], axis=1)
    cmndf = np.ones_like(d)
    cmndf[:, 1:] = d[:, 1:] * np.arange(1, tau_max + 1)[None, :] / np.maximum(cum, 1e-12)

    f0 = np.full(n, np.nan)
    level = 10.0 * np.log10(np.maximum(energy0[:, 0] / w, 1e-20))
    loud = (level > level.max() - ACTIVE_DB_BELOW_PEAK) & (level > SILENCE_FLOOR_DB)
    for i in range(n):
        if not loud[i]:
            continue
        row = cmndf[i]
        below = np.nonzero(row[tau_min:tau_max] < threshold)[0]
        if below.size == 0:
            continue
        t = tau_min + below[0]
        while t + 1 < tau_max and row[t + 1] < row[t]:
            t += 1  # descend to the local minimum
        if 1 <= t < tau_max:
            a, b, c = row[t - 1], row[t], row[t + 1]
            denom = a - 2 * b + c
            shift = 0.5 * (a - c) / denom if abs(denom) > 1e-12 else 0.0
            period = t + float(np.clip(shift, -1, 1))
        else:
            period = float(t)
        hz = sr / period
        if fmin <= hz <= fmax:
            f0[i] = hz
    times = (np.arange(n) * hop + w / 2.0) / sr
    return f0, times


def voiced(f0):
    f0 = np.asarray(f0, dtype=np.float64)
    return f0[np.isfinite(f0)]


def pitch_median(f0):
    v = voiced(f0)
    return float(np.median(v)) if v.size else float("nan")


def pitch_range_semitones(f0, lo=10, hi=90):
    v = voiced(f0)
    if v.size < 3:
        return 0.0
    p_lo, p_hi = np.percentile(v, [lo, hi])
    return float(12.0 * math.log2(p_hi / p_lo))


def active_duration(audio, sr):
    """Seconds of non-pause audio (frames within ACTIVE_DB_BELOW_PEAK of the peak)."""
    if len(audio) == 0:
        return 0.0
    db = frame_rms_db(audio, sr)
    active = (db > db.max() - ACTIVE_DB_BELOW_PEAK) & (db > SILENCE_FLOOR_DB)
    return float(np.count_nonzero(active) * HOP_S)


@dataclass
class Prosody:
    median_hz: float
    range_st: float
    rate_sps: float  # syllables per second of active speech; NaN without a transcript
    voiced_s: float
    active_s: float

    def as_dict(self):
        return asdict(self)


def measure(audio, sr, transcript=""):
    """Pitch median, pitch range and speaking rate of a recording."""
    f0, _ = track_f0(audio, sr)
    active = active_duration(audio, sr)
    syllables = count_syllables(transcript or "")
    rate = syllables / active if syllables and active > 0 else float("nan")
    return Prosody(median_hz=pitch_median(f0), range_st=pitch_range_semitones(f0), rate_sps=rate,
                   voiced_s=float(voiced(f0).size * HOP_S), active_s=active)
