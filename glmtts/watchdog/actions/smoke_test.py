"""Prove the service works: a real synthesis of a short Mandarin text through the API.
Passes only on HTTP 200, audio that decodes, a plausible duration, audible loudness and
a latency within watchdog.smoke_timeout_s."""

import io
import math

import numpy as np
import soundfile

from ... import watchdog_token
from ...host import HttpError
from .base import FAILED, OK, Action, StepResult

MIN_DBFS = -50.0


def check_audio(data, text):
    """(ok, detail, facts) for audio bytes answered to ``text``."""
    try:
        audio, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as e:
        return False, "answer is not decodable audio (%s, %d bytes)" % (str(e)[:100], len(data)), {}
    mono = audio.mean(axis=1) if audio.size else np.zeros(0, dtype=np.float32)
    duration = len(mono) / float(rate) if rate else 0.0
    rms = float(np.sqrt(np.mean(mono.astype(np.float64) ** 2))) if len(mono) else 0.0
    dbfs = 20 * math.log10(rms) if rms > 0 else -math.inf
    facts = {"duration_s": round(duration, 3), "sample_rate": rate, "rms_dbfs": round(dbfs, 1) if rms > 0 else None}
    longest = max(10.0, 1.0 * len(text))  # even a very slow voice says a character in under a second
    if not 0.2 <= duration <= longest:
        return False, "implausible duration %.2f s for %d characters" % (duration, len(text)), facts
    if dbfs < MIN_DBFS:
        return False, "audio is silent (%.1f dBFS)" % dbfs, facts
    return True, "%.2f s of audio at %d Hz, %.1f dBFS" % (duration, rate, dbfs), facts


class SmokeTest(Action):
    name = "smoke_test"
    summary = "synthesize watchdog.smoke_text through POST /v1/audio/speech and check the audio"
    params = {"text": (str, None)}

    def run(self, ctx, text=None):
        wd = ctx.settings.watchdog
        text = text or wd.smoke_text
        clock = ctx.host.clock
        headers = {"Authorization": "Bearer %s" % wd.api_key} if wd.api_key else {}
        # the watchdog lane: not refused by the rate limit or a full queue (glmtts/watchdog_token.py)
        headers.update(watchdog_token.headers(ctx.settings))
        t0 = clock.monotonic()
        try:
            r = ctx.host.request("POST", ctx.instance.url + "/v1/audio/speech", headers=headers,
                                 timeout=wd.smoke_timeout_s + 5,
                                 json={"model": "glmtts", "input": text, "response_format": "wav"})
        except HttpError as e:
            return StepResult(FAILED, "smoke synthesis request failed: %s" % str(e)[:200])
        latency = clock.monotonic() - t0
        if r.status != 200:
            return StepResult(FAILED, "smoke synthesis answered HTTP %d: %s" % (r.status, r.text[:200]))
        ok, detail, facts = check_audio(r.body, text)
        facts["latency_s"] = round(latency, 3)
        if ok and latency > wd.smoke_timeout_s:
            ok, detail = False, "too slow: %.1f s > watchdog.smoke_timeout_s %.0f s" % (latency, wd.smoke_timeout_s)
        if not ok:
            return StepResult(FAILED, detail, facts)
        if ctx.incident is not None:
            ctx.incident.verified_at = clock.now()
        return StepResult(OK, "%s in %.2f s" % (detail, latency), facts)

    def manual(self, ctx, **params):
        return ("curl -fsS -o /tmp/smoke.wav -H 'Content-Type: application/json' -d "
                "'{\"input\": \"%s\", \"response_format\": \"wav\"}' %s/v1/audio/speech && soxi /tmp/smoke.wav"
                % (ctx.settings.watchdog.smoke_text, ctx.instance.url))
