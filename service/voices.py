"""Saved reference voices: /v1/voices create (upload + transcript) / list / get /
rename (PATCH) / delete.

A voice lives in ``<state_dir>/voices/<id>/``: meta.json, reference.wav (the decoded
reference, 16-bit) and features.pkl (the engine's PromptFeatures), so using a saved
voice skips decoding and feature extraction. Ids are generated (voice_<12 hex>) and
validated before every use; the user's name is only metadata, never a path. A voice
appears by one atomic rename of a complete directory, so a crash never leaves half a
voice; a rename rewrites meta.json atomically.

Names are unique, compared case-insensitively (``str.casefold``): saving or renaming to
a name another voice has is 409 ``voice_name_taken``, because ``{"voice": "Anna"}`` must
keep meaning the voice it meant yesterday. Voices saved twice under one name before this
rule existed are resolved, not refused: the oldest (first created) one wins, and a
warning naming every id is logged once per process, so a request that worked keeps
working while the operator renames or deletes the extra ones."""

import asyncio
import json
import logging
import os
import pickle
import shutil
import threading
import time

import soundfile as sf
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from glmtts import audio as audiolib
from glmtts import fsutil
from glmtts.errors import InputError, NotFoundError

from .limits import new_voice_id, safe_voice_id
from .worker import INTERACTIVE

log = logging.getLogger(__name__)

NAME_MAX = 64


class VoiceNameError(InputError):
    """A bad voice name (400 invalid_name); the error's ``param`` is "name"."""

    code = "invalid_name"

    def __init__(self, message, *, code=None):
        super().__init__(message, code=code)
        self.param = "name"  # set after the base class, whatever default it gives param


class VoiceNameTaken(VoiceNameError):
    """409: another saved voice already has this name (compared case-insensitively)."""

    code = "voice_name_taken"
    http_status = 409


def name_key(name):
    """What two names must differ in: case and surrounding blanks do not count."""
    return (name or "").strip().casefold()


def _reserved_names():
    """Names the speech route never looks up as a saved voice ("default", OpenAI's
    built-in names): a voice saved under one could never be used by its name."""
    from . import speech  # at call time: no import cycle if speech.py ever imports this module

    return {name_key(n) for n in getattr(speech, "DEFAULT_VOICES", ())} | {"default"}


def check_name(name):
    """A name as it will be stored (stripped) or InputError naming what to fix. Uniqueness
    is the store's check (VoiceStore.create / rename), under its lock."""
    if not isinstance(name, str):
        raise VoiceNameError("name must be a string")
    name = name.strip()
    if len(name) > NAME_MAX:
        raise VoiceNameError("name is %d characters; at most %d" % (len(name), NAME_MAX))
    if name_key(name).startswith("voice_"):
        raise VoiceNameError("name %r starts with \"voice_\", which is how voice ids start: choose another name" % name)
    if name and name_key(name) in _reserved_names():
        raise VoiceNameError("name %r is reserved: voice %r means the engine's default voice, so a saved voice "
                             "of that name could never be used by it; choose another name" % (name, name))
    return name


def _fsync_write(path, data):
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class VoiceStore:
    def __init__(self, root, now=time.time):
        self.root = root
        self.now = now
        self._lock = threading.Lock()
        # Held from the name check to the rename that makes a voice (or a new name) visible,
        # so two saves of one name at once cannot both pass (one process per state_dir).
        self._names = threading.Lock()
        self._features = {}  # id -> PromptFeatures, loaded lazily
        self._warned = set()  # duplicate-name sets already logged

    def _dir(self, voice_id):
        return os.path.join(self.root, safe_voice_id(voice_id))

    def name_taken(self, name, *, exclude=None):
        """The voice (meta) that already has ``name`` case-insensitively, else None."""
        key = name_key(name)
        if not key:
            return None
        for meta in self.list():
            if meta["id"] != exclude and name_key(meta.get("name")) == key:
                return meta
        return None

    def check_free(self, name, *, exclude=None):
        other = self.name_taken(name, exclude=exclude)
        if other is not None:
            raise VoiceNameTaken("a voice named %r already exists (%s); choose another name or rename/delete that "
                                 "one" % (other["name"], other["id"]))

    def create(self, *, name, prompt_text, audio, sample_rate, features, engine_setting=""):
        with self._names:
            if name:
                self.check_free(name)
            return self._create(name=name, prompt_text=prompt_text, audio=audio, sample_rate=sample_rate,
                                features=features, engine_setting=engine_setting)

    def _create(self, *, name, prompt_text, audio, sample_rate, features, engine_setting):
        os.makedirs(self.root, exist_ok=True)
        voice_id = new_voice_id()
        tmp = os.path.join(self.root, ".tmp-" + voice_id)
        os.makedirs(tmp)
        meta = {"id": voice_id, "object": "voice", "name": name or voice_id, "prompt_text": prompt_text,
                "created": int(self.now()), "duration_s": round(len(audio) / float(sample_rate), 2),
                "sample_rate": int(sample_rate), "engine": features.engine, "engine_setting": engine_setting}
        try:
            _fsync_write(os.path.join(tmp, "reference.wav"), audiolib.encode(audio, sample_rate, "wav"))
            _fsync_write(os.path.join(tmp, "features.pkl"), pickle.dumps(features))
            _fsync_write(os.path.join(tmp, "meta.json"), json.dumps(meta, ensure_ascii=False).encode())
            os.rename(tmp, os.path.join(self.root, voice_id))
            dfd = os.open(self.root, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        with self._lock:
            self._features[voice_id] = features
        log.info("voice %s created (%.1f s reference)", voice_id, meta["duration_s"])
        return meta

    def list(self):
        if not os.path.isdir(self.root):
            return []
        out = []
        for entry in sorted(os.listdir(self.root)):
            try:
                out.append(self.get(entry))
            except (NotFoundError, OSError, ValueError):
                continue  # temp dirs, trash, foreign files
        return sorted(out, key=lambda m: (m.get("created", 0), m.get("id", "")))  # oldest first, stable

    def get(self, voice_id):
        path = os.path.join(self._dir(voice_id), "meta.json")
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            raise NotFoundError("unknown voice %r (GET /v1/voices lists the saved voices)" % voice_id,
                                code="voice_not_found") from None

    def find(self, voice):
        """A saved voice by id, or by its name (case-insensitively; an exact match first).
        Names saved twice before names had to be unique: the oldest voice wins (logged)."""
        if isinstance(voice, str) and voice.startswith("voice_"):
            return self.get(voice)
        voices = self.list()  # oldest first
        matches = [m for m in voices if m.get("name") == voice] or \
                  [m for m in voices if name_key(m.get("name")) == name_key(voice)]
        if not matches:
            raise NotFoundError("unknown voice %r: use \"default\" or a saved voice's id or name "
                                "(GET /v1/voices lists them)" % (voice[:64],), code="voice_not_found")
        if len(matches) > 1:
            ids = tuple(m["id"] for m in matches)
            if ids not in self._warned:
                self._warned.add(ids)
                log.warning("%d saved voices are named %r (%s, saved before names had to be unique): %r means the "
                            "oldest, %s; rename or delete the others (PATCH/DELETE /v1/voices/{id}, or the UI's "
                            "Voices tab)", len(ids), voice, ", ".join(ids), voice, ids[0])
        return matches[0]

    def rename(self, voice_id, name):
        """Give a voice a new name (unique, case-insensitively); returns the new meta."""
        name = check_name(name)
        if not name:
            raise VoiceNameError("name is empty: give the voice's new name")
        with self._names:
            meta = self.get(voice_id)
            self.check_free(name, exclude=voice_id)
            old, meta["name"] = meta.get("name"), name
            fsutil.atomic_write(os.path.join(self._dir(voice_id), "meta.json"),
                                json.dumps(meta, ensure_ascii=False).encode())
        log.info("voice %s renamed from %r to %r", voice_id, old, name)
        return meta

    def features(self, voice_id):
        """Cached PromptFeatures, or None (then the caller uses the reference audio)."""
        with self._lock:
            feats = self._features.get(voice_id)
        if feats is None:
            try:
                with open(os.path.join(self._dir(voice_id), "features.pkl"), "rb") as f:
                    feats = pickle.load(f)
            except (OSError, pickle.UnpicklingError, EOFError, AttributeError):
                return None
            with self._lock:
                self._features[voice_id] = feats
        return feats

    def reference(self, voice_id):
        audio, sr = sf.read(os.path.join(self._dir(voice_id), "reference.wav"), dtype="float32")
        return audio, sr

    def delete(self, voice_id):
        path = self._dir(voice_id)
        if not os.path.isdir(path):
            raise NotFoundError("unknown voice %r (GET /v1/voices lists the saved voices)" % voice_id,
                                code="voice_not_found")
        trash = os.path.join(self.root, ".trash-" + voice_id)
        os.rename(path, trash)
        shutil.rmtree(trash, ignore_errors=True)
        with self._lock:
            self._features.pop(voice_id, None)
        log.info("voice %s deleted", voice_id)


def create_voice(runtime, *, name, prompt_text, data):
    """Decode + validate an upload, extract features on the worker, persist (sync; UI)."""
    audio, sr, text, name = _check_upload(runtime, name, prompt_text, data)
    job = runtime.worker.submit(lambda engine, j: engine.prepare_prompt(audio, sr, text), INTERACTIVE)
    feats = runtime.worker.wait_sync(job)
    return runtime.voices.create(name=name, prompt_text=text, audio=audio, sample_rate=sr, features=feats,
                                   engine_setting=runtime.settings.engine.name)


def _check_upload(runtime, name, prompt_text, data):
    # the name first: a clash answers at once, before seconds of decoding and feature extraction
    name = check_name(name or "")
    if name:
        runtime.voices.check_free(name)
    text = (prompt_text or "").strip()
    if not text:
        raise InputError("prompt_text is required: the transcript of the reference audio")
    runtime.limits.check_text(text, "prompt_text")
    audio, sr = audiolib.decode_reference(data, runtime.settings.limits, what="prompt_audio")
    return audio, sr, text, name


router = APIRouter()

# The request bodies, declared for /openapi.json: the handlers read them by hand (one
# multipart parser, our own error messages), so FastAPI cannot infer them.
_CREATE_BODY = {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["prompt_audio", "prompt_text"],
    "properties": {
        "prompt_audio": {"type": "string", "format": "binary",
                         "description": "the reference recording: %s, by content (see limits.min_reference_s / "
                                        "max_reference_s)" % audiolib.ACCEPTED},
        "prompt_text": {"type": "string", "description": "the transcript of the reference recording"},
        "name": {"type": "string", "maxLength": NAME_MAX,
                 "description": "unique among saved voices, case-insensitively (409 voice_name_taken); "
                                "default: the generated id"}}}}}}
_RENAME_BODY = {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["name"], "additionalProperties": False,
    "properties": {"name": {"type": "string", "minLength": 1, "maxLength": NAME_MAX,
                            "description": "the new name: unique among saved voices, case-insensitively"}}}}}}
_TAKEN = {409: {"description": "another saved voice has this name (code voice_name_taken, param name)"}}
_MISSING = {404: {"description": "no saved voice has this id (code voice_not_found)"}}


@router.post("/v1/voices", status_code=201, openapi_extra={"requestBody": _CREATE_BODY}, responses=_TAKEN,
             summary="Save a reference voice")
async def post_voice(request: Request):
    runtime = request.app.state.runtime
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise InputError("POST /v1/voices takes multipart/form-data with prompt_audio (file), prompt_text and name",
                         code="unsupported_content_type")
    form = await request.form(max_files=1, max_fields=10)
    upload = form.get("prompt_audio")
    if upload is None or isinstance(upload, str):
        raise InputError("prompt_audio is required: attach the reference recording as a file")
    data = await upload.read()
    # decoding and resampling an upload is seconds of CPU: off the loop that sends WATCHDOG=1
    audio, sr, text, name = await asyncio.to_thread(_check_upload, runtime, form.get("name"),
                                                    form.get("prompt_text"), data)
    job = runtime.worker.submit(lambda engine, j: engine.prepare_prompt(audio, sr, text), INTERACTIVE)
    feats = await runtime.worker.wait(job)
    meta = await asyncio.to_thread(runtime.voices.create, name=name, prompt_text=text, audio=audio, sample_rate=sr,
                                   features=feats, engine_setting=runtime.settings.engine.name)
    return JSONResponse(meta, status_code=201)


@router.get("/v1/voices", summary="List saved voices")
async def list_voices(request: Request):
    return {"object": "list", "data": request.app.state.runtime.voices.list()}


@router.get("/v1/voices/{voice_id}", responses=_MISSING, summary="One saved voice")
async def get_voice(request: Request, voice_id: str):
    return request.app.state.runtime.voices.get(safe_voice_id(voice_id))


async def _json_object(request, what):
    body = await request.body()
    try:
        raw = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError("%s takes a JSON object like {\"name\": \"Anna\"}: %s" % (what, e),
                         code="invalid_json") from None
    if not isinstance(raw, dict):
        raise InputError("%s takes a JSON object like {\"name\": \"Anna\"}" % what, code="invalid_json")
    return raw


@router.patch("/v1/voices/{voice_id}", openapi_extra={"requestBody": _RENAME_BODY}, responses={**_TAKEN, **_MISSING},
              summary="Rename a saved voice")
async def patch_voice(request: Request, voice_id: str):
    voice_id = safe_voice_id(voice_id)
    raw = await _json_object(request, "PATCH /v1/voices/{id}")
    unknown = sorted(set(raw) - {"name"})
    if unknown:
        raise InputError("field %r cannot be changed; PATCH /v1/voices/{id} changes only \"name\"" % unknown[0])
    if "name" not in raw:
        raise VoiceNameError("field 'name' is required: the voice's new name")
    return await asyncio.to_thread(request.app.state.runtime.voices.rename, voice_id, raw["name"])


@router.delete("/v1/voices/{voice_id}", responses=_MISSING, summary="Delete a saved voice")
async def delete_voice(request: Request, voice_id: str):
    request.app.state.runtime.voices.delete(safe_voice_id(voice_id))
    return {"id": voice_id, "object": "voice.deleted", "deleted": True}
