"""POST /v1/audio/speech: OpenAI's speech API plus sample_rate, seed, use_cache,
phoneme; multipart adds prompt_audio + prompt_text (zero-shot); ``voice`` may name a
saved voice; ``stream: true`` sends each sentence chunk as soon as the engine has it.

``parse_params`` and ``build_request`` are shared with the UI, so both faces accept
and refuse exactly the same input."""

import asyncio
import io
import json
import logging
import struct

import numpy as np
import soundfile as sf
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from glmtts import audio as audiolib
from glmtts import text as textlib
from glmtts.engines.base import SynthesisRequest
from glmtts.errors import InputError, NotAudioError

from .errors import SynthesisTimeout, ValidationFailed
from .worker import INTERACTIVE, WATCHDOG

log = logging.getLogger(__name__)

# OpenAI's built-in voice names mean "the engine's default voice" here, so stock
# clients work unchanged; any other name must be a saved voice.
DEFAULT_VOICES = {"default", "alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage",
                  "shimmer", "verse", "marin", "cedar"}
STREAM_FORMATS = ("wav", "pcm")
IGNORED = {"instructions"}  # accepted from OpenAI clients, no effect on these engines
_T = {str: "a string", float: "a number", int: "an integer", bool: "true or false"}


def _fields(settings):
    e = settings.engine
    return {"model": (str, None), "input": (str, None), "voice": (str, "default"), "response_format": (str, "wav"),
            "speed": (float, 1.0), "sample_rate": (int, e.sample_rate), "seed": (int, e.seed),
            "use_cache": (bool, e.use_cache), "phoneme": (bool, e.phoneme), "stream": (bool, False),
            "prompt_text": (str, ""), "stream_format": (str, "audio")}


def _coerce(name, kind, value, from_form):
    if from_form and isinstance(value, str) and kind is not str:
        v = value.strip()
        try:
            if kind is bool:
                if v.lower() in ("true", "1", "yes", "on"):
                    return True
                if v.lower() in ("false", "0", "no", "off"):
                    return False
                raise ValueError
            return kind(v)
        except ValueError:
            raise ValidationFailed("field %r must be %s, got %r" % (name, _T[kind], value[:40])) from None
    ok = (isinstance(value, str) if kind is str else
          isinstance(value, bool) if kind is bool else
          isinstance(value, int) and not isinstance(value, bool) if kind is int else
          isinstance(value, (int, float)) and not isinstance(value, bool))
    if not ok:
        raise ValidationFailed("field %r must be %s, got %s" % (name, _T[kind], type(value).__name__ if value is not None
                                                              else "null"))
    return float(value) if kind is float else value


def parse_params(raw, settings, sample_rates, *, from_form=False):
    """Validate a request's fields into a plain dict (InputError/ValidationFailed name the field)."""
    if not isinstance(raw, dict):
        raise InputError("request body must be a JSON object with at least \"input\"")
    fields = _fields(settings)
    unknown = sorted(set(raw) - set(fields) - IGNORED - {"prompt_audio"})
    if unknown:
        raise InputError("unknown field %r; allowed: %s" % (unknown[0], ", ".join(sorted(fields))))
    p = {}
    for name, (kind, default) in fields.items():
        value = raw.get(name)
        p[name] = default if value is None else _coerce(name, kind, value, from_form)
    if p["input"] is None:
        raise InputError("field 'input' is required: the text to speak")
    if not p["input"].strip():
        raise InputError("input is empty: give some text to speak", code="empty_input")
    if p["response_format"] not in audiolib.FORMATS:
        raise InputError("unsupported response_format %r; allowed: %s" % (p["response_format"], ", ".join(audiolib.FORMATS)))
    if p["stream"] and p["response_format"] not in STREAM_FORMATS:
        raise InputError("stream supports response_format wav or pcm, not %r" % p["response_format"])
    if p["stream_format"] != "audio":
        raise InputError("stream_format %r is not supported; use \"audio\"" % p["stream_format"])
    if not 0.25 <= p["speed"] <= 4.0:
        raise InputError("speed %g is out of range; allowed: 0.25..4.0" % p["speed"])
    if p["sample_rate"] not in sample_rates:
        raise InputError("unsupported sample_rate %d; allowed: %s" % (p["sample_rate"],
                                                                      ", ".join(str(r) for r in sample_rates)))
    if not 0 <= p["seed"] <= 2 ** 32 - 1:
        raise InputError("seed %d is out of range; allowed: 0..4294967295" % p["seed"])
    return p


def supported_rates(engine):
    rates = engine.describe().get("sample_rates") or getattr(engine, "sample_rates", (24000, 32000))
    return tuple(r for r in rates if r in (24000, 32000))


def build_request(runtime, p, upload=None):
    """SynthesisRequest for validated params; ``upload`` = reference audio bytes or None."""
    runtime.limits.check_text(p["input"])
    if runtime.settings.server.log_request_text:
        log.info("request text: %r", p["input"])
    text = textlib.require_text(p["input"])
    req = SynthesisRequest(text=text, sample_rate=p["sample_rate"], seed=p["seed"], use_cache=p["use_cache"],
                           phoneme=p["phoneme"], speed=p["speed"])
    saved = None
    if p["voice"] and p["voice"].lower() not in DEFAULT_VOICES:
        saved = runtime.voices.find(p["voice"])
    if upload is not None:
        if saved is not None:
            raise InputError("give either a saved voice or prompt_audio, not both")
        prompt_text = p["prompt_text"].strip()
        if not prompt_text:
            raise InputError("prompt_text is required with prompt_audio: the transcript of the reference audio")
        runtime.limits.check_text(prompt_text, "prompt_text")
        req.prompt_audio, req.prompt_sample_rate = audiolib.decode_reference(upload, runtime.settings.limits,
                                                                             what="prompt_audio")
        req.prompt_text = prompt_text
    elif saved is not None:
        req.prompt_text = saved["prompt_text"]
        feats = runtime.voices.features(saved["id"])
        if feats is not None and saved.get("engine_setting") == runtime.settings.engine.name:
            req.prompt_features = feats
        else:  # features from another engine: let this one extract its own
            req.prompt_audio, req.prompt_sample_rate = runtime.voices.reference(saved["id"])
    return req


async def _read_body(request):
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = await request.form(max_files=1, max_fields=20)
        raw, upload = {}, None
        for key, value in form.multi_items():
            if key == "prompt_audio":
                if isinstance(value, str):
                    raise InputError("prompt_audio must be a file upload, not a text field")
                upload = await value.read()
            else:
                raw[key] = value
        return raw, upload, True
    if ctype in ("application/json", ""):
        body = await request.body()
        try:
            raw = json.loads(body.decode("utf-8"))
        except UnicodeDecodeError:
            raise InputError("request body is not UTF-8 JSON") from None
        except json.JSONDecodeError as e:
            raise InputError("invalid JSON body: %s" % e, code="invalid_json") from None
        return raw, None, False
    raise NotAudioError("Content-Type %r is not accepted: send application/json, or multipart/form-data "
                        "with prompt_audio" % ctype, code="unsupported_content_type")


router = APIRouter()


@router.post("/v1/audio/speech")
async def speech(request: Request):
    runtime = request.app.state.runtime
    raw, upload, from_form = await _read_body(request)
    p = parse_params(raw, runtime.settings, supported_rates(runtime.engine), from_form=from_form)
    # Decoding an upload and encoding the answer (mp3/flac of minutes of audio) take seconds
    # on a slow CPU: off the event loop, which also sends systemd's WATCHDOG=1 pings.
    synth = await asyncio.to_thread(build_request, runtime, p, upload)
    # LimitsMiddleware marks a request that carried the valid watchdog token
    priority = WATCHDOG if request.scope.get("state", {}).get("watchdog") else INTERACTIVE
    if p["stream"]:
        return await _stream(runtime, synth, p["response_format"], priority)
    result = await runtime.worker.wait(runtime.worker.synthesize(synth, priority))
    body = await asyncio.to_thread(audiolib.encode, result.audio, result.sample_rate, p["response_format"])
    return Response(body, media_type=audiolib.media_type(p["response_format"]), headers=_headers(runtime, result))


def _headers(runtime, result):
    h = {"X-Sample-Rate": str(result.sample_rate), "X-Engine": runtime.settings.engine.name}
    if result.audio is not None and len(result.audio):
        h["X-Audio-Duration-S"] = "%.3f" % result.duration_s
    if result.meta.get("fallback"):
        h["X-Memory-Pressure"] = "fallback to %d Hz" % result.sample_rate
    return h


def wav_stream_header(sample_rate):
    """A WAV header for a stream of unknown length (sizes 0xFFFFFFFF, as OpenAI sends)."""
    return (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE" + b"fmt "
            + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
            + b"data" + struct.pack("<I", 0xFFFFFFFF))


def _chunk_bytes(part, fmt):
    """One chunk's samples, converted exactly as the non-streamed answer converts them
    (libsndfile's PCM_16 for wav, audiolib.pcm16 for pcm), so the streams decode equal."""
    if fmt == "pcm":
        return audiolib.pcm16(part.audio)
    buf = io.BytesIO()
    sf.write(buf, np.clip(np.asarray(part.audio, dtype=np.float32), -1.0, 1.0), part.sample_rate,
             format="RAW", subtype="PCM_16")
    return buf.getvalue()


async def _stream(runtime, synth, fmt, priority=INTERACTIVE):
    loop = asyncio.get_running_loop()
    items = asyncio.Queue()
    job = runtime.worker.synthesize(synth, priority,
                                    on_chunk=lambda part: loop.call_soon_threadsafe(items.put_nowait, ("chunk", part)))
    job.future.add_done_callback(lambda f: loop.call_soon_threadsafe(items.put_nowait, ("done", f)))
    deadline = loop.time() + runtime.settings.limits.request_timeout_s

    async def next_item():
        try:
            return await asyncio.wait_for(items.get(), max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            job.cancelled = True
            raise SynthesisTimeout("synthesis took longer than limits.request_timeout_s = %g s"
                                   % runtime.settings.limits.request_timeout_s) from None

    first = await next_item()
    if first[0] == "done":  # failed (or produced nothing) before the first chunk: a real status code
        result = first[1].result()
        return Response(audiolib.encode(result.audio, result.sample_rate, fmt),
                        media_type=audiolib.media_type(fmt), headers=_headers(runtime, result))
    rate = first[1].sample_rate

    async def body():
        item = first
        finished = False
        try:
            if fmt == "wav":
                yield wav_stream_header(rate)
            while item[0] == "chunk":
                yield _chunk_bytes(item[1], fmt)
                item = await next_item()
            finished = True
            if item[1].exception() is not None:  # headers are gone: end the stream early
                log.warning("stream ended early: %s", item[1].exception())
        finally:
            if not finished:
                job.cancelled = True  # client went away: stop at the next chunk

    return StreamingResponse(body(), media_type=audiolib.media_type(fmt),
                             headers={"X-Sample-Rate": str(rate), "X-Engine": runtime.settings.engine.name})
