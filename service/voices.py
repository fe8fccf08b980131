"""Saved reference voices: /v1/voices create (upload + transcript) / list / delete.

A voice lives in ``<state_dir>/voices/<id>/``: meta.json, reference.wav (the decoded
reference, 16-bit) and features.pkl (the engine's PromptFeatures), so using a saved
voice skips decoding and feature extraction. Ids are generated (voice_<12 hex>) and
validated before every use; the user's name is only metadata. A voice appears by one
atomic rename of a complete directory, so a crash never leaves half a voice."""

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
from glmtts.errors import InputError, NotFoundError

from .limits import new_voice_id, safe_voice_id
from .worker import INTERACTIVE

log = logging.getLogger(__name__)

NAME_MAX = 64


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
        self._features = {}  # id -> PromptFeatures, loaded lazily

    def _dir(self, voice_id):
        return os.path.join(self.root, safe_voice_id(voice_id))

    def create(self, *, name, prompt_text, audio, sample_rate, features, engine_setting=""):
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
        return sorted(out, key=lambda m: m.get("created", 0))

    def get(self, voice_id):
        path = os.path.join(self._dir(voice_id), "meta.json")
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            raise NotFoundError("unknown voice %r (GET /v1/voices lists the saved voices)" % voice_id,
                                code="voice_not_found") from None

    def find(self, voice):
        """A saved voice by id, or by its name when exactly one voice has it."""
        if isinstance(voice, str) and voice.startswith("voice_"):
            return self.get(voice)
        matches = [m for m in self.list() if m.get("name") == voice]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise InputError("voice name %r is ambiguous (%d saved voices have it): use the id" % (voice, len(matches)))
        raise NotFoundError("unknown voice %r: use \"default\" or a saved voice's id or name "
                            "(GET /v1/voices lists them)" % (voice[:64],), code="voice_not_found")

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
    name = (name or "").strip()
    if len(name) > NAME_MAX:
        raise InputError("name is %d characters; at most %d" % (len(name), NAME_MAX))
    text = (prompt_text or "").strip()
    if not text:
        raise InputError("prompt_text is required: the transcript of the reference audio")
    runtime.limits.check_text(text, "prompt_text")
    audio, sr = audiolib.decode_reference(data, runtime.settings.limits, what="prompt_audio")
    return audio, sr, text, name


router = APIRouter()


@router.post("/v1/voices", status_code=201)
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


@router.get("/v1/voices")
async def list_voices(request: Request):
    return {"object": "list", "data": request.app.state.runtime.voices.list()}


@router.get("/v1/voices/{voice_id}")
async def get_voice(request: Request, voice_id: str):
    return request.app.state.runtime.voices.get(safe_voice_id(voice_id))


@router.delete("/v1/voices/{voice_id}")
async def delete_voice(request: Request, voice_id: str):
    request.app.state.runtime.voices.delete(safe_voice_id(voice_id))
    return {"id": voice_id, "object": "voice.deleted", "deleted": True}
