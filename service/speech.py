"""POST /v1/audio/speech: OpenAI's speech API plus sample_rate, seed, use_cache,
phoneme; multipart adds prompt_audio + prompt_text (zero-shot); ``voice`` may name a
saved voice or an alias (voices.aliases); ``stream: true`` (or ``stream_format: "sse"``)
sends each sentence chunk as soon as the engine has it. GET /v1/audio/voices lists what
``voice`` can name.

The fields, defaults, ranges and messages are glmtts/request.py's declaration;
``parse_params`` and ``build_request`` are shared with the UI, so both faces accept and
refuse exactly the same input.

Streaming sends only formats that need no length up front (request.STREAMABLE: mp3,
opus, aac, pcm): a streamed WAV would have to declare sizes of 0xFFFFFFFF, which
standard tools read as a 24-hour file. A whole (non-streamed) WAV has exact sizes."""

import asyncio
import base64
import json
import logging

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from glmtts import audio as audiolib
from glmtts import request as reqdecl
from glmtts import text as textlib
from glmtts.engines.base import SynthesisRequest
from glmtts.errors import InputError, NotAudioError, NotFoundError

from .errors import SynthesisTimeout
from .worker import INTERACTIVE, WATCHDOG

log = logging.getLogger(__name__)

# OpenAI's built-in voice names. They are no voices of ours: each works only when
# voices.aliases maps it (to a saved voice or "default"); unmapped, it is a 400 that lists
# the voices there are. They stay reserved as saved-voice names (service/voices.py), so an
# alias is the one way to give them a meaning.
OPENAI_VOICES = {"alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse",
                 "marin", "cedar"}
DEFAULT_VOICES = {"default"} | OPENAI_VOICES  # names never looked up as saved voices
STREAM_FORMATS = reqdecl.STREAMABLE


def _fields(settings):
    """{name: (type, default)} of the JSON fields (service/docs.py builds the OpenAPI body from it)."""
    return {f.name: (f.type, f.default_for(settings)) for f in reqdecl.FIELDS if not f.form_only}


def parse_params(raw, settings, sample_rates, *, from_form=False):
    """Validate a request's fields into a plain dict (glmtts/request.py; errors name the field)."""
    return reqdecl.parse(raw, settings, sample_rates=sample_rates, from_form=from_form)


def aliases(settings):
    """voices.aliases as {casefolded name: (name, target)}."""
    out = {}
    for entry in settings.voices.aliases:
        name, _, target = entry.partition("=")
        out[name.strip().casefold()] = (name.strip(), target.strip())
    return out


def _voice_names(runtime):
    names = ["default"] + [n for n, _ in aliases(runtime.settings).values()]
    names += [m.get("name") or m["id"] for m in runtime.voices.list()]
    return ", ".join(names)


def resolve_voice(runtime, voice):
    """The saved voice (meta) that ``voice`` names, or None for the engine's default voice.
    Order: "default", an alias (voices.aliases), an OpenAI built-in name (400 unless
    aliased), a saved voice's id or name (404 otherwise)."""
    key = (voice or "default").strip().casefold()
    if key == "default":
        return None
    alias = aliases(runtime.settings).get(key)
    if alias is not None:
        name, target = alias
        if target.casefold() == "default":
            return None
        try:
            return runtime.voices.find(target)
        except NotFoundError:
            err = NotFoundError("voice %r is an alias (voices.aliases) of %r, which is no saved voice: fix the alias "
                                "or save that voice (GET /v1/audio/voices lists them)" % (name, target),
                                code="voice_not_found")
            err.param = "voice"
            raise err from None
    if key in OPENAI_VOICES:
        err = InputError("voice %r is one of OpenAI's built-in voices, which this service does not have; use one of: "
                         "%s, or map it in voices.aliases (e.g. \"%s=default\")" % (voice, _voice_names(runtime), key),
                         code="voice_not_found")
        err.param = "voice"
        raise err
    try:
        return runtime.voices.find(voice)
    except NotFoundError as e:
        err = NotFoundError("%s; voices: %s" % (e, _voice_names(runtime)), code=e.code)
        err.param = "voice"
        raise err from None


def supported_rates(engine):
    rates = engine.describe().get("sample_rates") or getattr(engine, "sample_rates", (24000, 32000))
    return tuple(r for r in rates if r in (24000, 32000))


def build_request(runtime, p, upload=None):
    """SynthesisRequest for validated params; ``upload`` = reference audio bytes or None
    (a multipart prompt_audio is ``p["prompt_audio"]``)."""
    if upload is None:
        upload = p.get("prompt_audio")
    prompt_text = reqdecl.check_prompt(upload is not None, p["prompt_text"])
    runtime.limits.check_text(p["input"])
    if runtime.settings.server.log_request_text:
        log.info("request text: %r", p["input"])
    text = textlib.require_text(p["input"])
    req = SynthesisRequest(text=text, sample_rate=p["sample_rate"], seed=p["seed"], use_cache=p["use_cache"],
                           phoneme=p["phoneme"], speed=p["speed"])
    saved = resolve_voice(runtime, p["voice"])
    if upload is not None:
        if saved is not None:
            err = InputError("give either a saved voice or prompt_audio, not both")
            err.param = "voice"
            raise err
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
                    err = InputError("prompt_audio must be a file upload, not a text field")
                    err.param = "prompt_audio"
                    raise err
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
    if p["stream"] or p["stream_format"] == "sse":
        return await _stream(runtime, synth, p["response_format"], priority, sse=p["stream_format"] == "sse",
                             input_chars=len(p["input"]))
    result = await runtime.worker.wait(runtime.worker.synthesize(synth, priority))
    body = await asyncio.to_thread(audiolib.encode, result.audio, result.sample_rate, p["response_format"])
    return Response(body, media_type=audiolib.media_type(p["response_format"]), headers=_headers(runtime, result))


@router.get("/v1/audio/voices", summary="What `voice` can name: default, aliases, saved voices")
async def audio_voices(request: Request):
    """Every name POST /v1/audio/speech takes as ``voice``: the default voice, each alias
    of voices.aliases (with the voice it means and whether that exists), each saved voice."""
    runtime = request.app.state.runtime
    saved = await asyncio.to_thread(runtime.voices.list)
    data = [{"id": "default", "object": "voice", "name": "default", "kind": "default"}]
    for name, target in aliases(runtime.settings).values():
        entry = {"id": name, "object": "voice", "name": name, "kind": "alias", "voice": target}
        if target.casefold() != "default":
            try:
                entry["voice"] = (await asyncio.to_thread(runtime.voices.find, target))["id"]
                entry["exists"] = True
            except NotFoundError:
                entry["exists"] = False
        else:
            entry["exists"] = True
        data.append(entry)
    for meta in saved:
        data.append({k: v for k, v in meta.items()
                     if k in ("id", "object", "name", "created", "duration_s", "sample_rate", "engine")}
                    | {"kind": "saved"})
    return {"object": "list", "data": data}


def _headers(runtime, result):
    h = {"X-Sample-Rate": str(result.sample_rate), "X-Engine": runtime.settings.engine.name}
    if result.audio is not None and len(result.audio):
        h["X-Audio-Duration-S"] = "%.3f" % result.duration_s
    if result.meta.get("fallback"):
        h["X-Memory-Pressure"] = "fallback to %d Hz" % result.sample_rate
    return h


class _ChunkEncoder:
    """Bytes of a stream, chunk by chunk: raw pcm per chunk, or one StreamEncoder for
    mp3/opus/aac (one valid file across all chunks)."""

    def __init__(self, fmt, sample_rate):
        self.fmt = fmt
        self.enc = None if fmt == "pcm" else audiolib.StreamEncoder(fmt, sample_rate)

    def feed(self, audio):
        return audiolib.pcm16(audio) if self.enc is None else self.enc.feed(audio)

    def close(self):
        return b"" if self.enc is None else self.enc.close()


def sse_event(obj):
    """One Server-Sent Event as OpenAI frames them: a ``data:`` line of JSON, a blank line."""
    return ("data: %s\n\n" % json.dumps(obj, separators=(",", ":"))).encode()


def _sse_delta(data):
    return sse_event({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode("ascii")})


def _sse_done(input_chars):
    # glmtts counts no tokens: input_tokens is the input's characters, output_tokens 0.
    return sse_event({"type": "speech.audio.done",
                      "usage": {"input_tokens": input_chars, "output_tokens": 0, "total_tokens": input_chars}})


async def _stream(runtime, synth, fmt, priority=INTERACTIVE, *, sse=False, input_chars=0):
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
        data = await asyncio.to_thread(audiolib.encode, result.audio, result.sample_rate, fmt)
        if sse:
            return StreamingResponse(iter([_sse_delta(data), _sse_done(input_chars)]), media_type="text/event-stream",
                                     headers=_headers(runtime, result))
        return Response(data, media_type=audiolib.media_type(fmt), headers=_headers(runtime, result))
    rate = first[1].sample_rate
    encoder = _ChunkEncoder(fmt, rate)

    def framed(data):
        return _sse_delta(data) if sse and data else data

    async def body():
        item = first
        finished = False
        try:
            while item[0] == "chunk":
                data = await asyncio.to_thread(encoder.feed, item[1].audio)
                if data:
                    yield framed(data)
                item = await next_item()
            finished = True
            if item[1].exception() is not None:  # headers are gone: end the stream early
                log.warning("stream ended early: %s", item[1].exception())
                return
            data = await asyncio.to_thread(encoder.close)
            if data:
                yield framed(data)
            if sse:
                yield _sse_done(input_chars)
        finally:
            if not finished:
                job.cancelled = True  # client went away: stop at the next chunk

    return StreamingResponse(body(), media_type="text/event-stream" if sse else audiolib.media_type(fmt),
                             headers={"X-Sample-Rate": str(rate), "X-Engine": runtime.settings.engine.name})
