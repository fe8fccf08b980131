"""The OpenAI-compatible API as the official `openai` Python client uses it, against a real
service process: every format decoded by a decoder other than the one that encoded it,
SSE events as OpenAI sends them, error objects with `param`, Retry-After on 503/429,
`instructions` refused, voice aliases, GET /v1/audio/voices, and streams that need no
length (a streamed WAV is refused instead of declaring 0xFFFFFFFF sizes)."""

import base64
import io
import json
import time

import av
import numpy as np
import openai
import pytest
import requests
import soundfile as sf

from tests.support.service import ServiceProcess

pytestmark = pytest.mark.integration

TEXT = "你好，欢迎使用语音合成服务。"
TWO_SENTENCES = "今天天气很好。我们一起去公园散步吧。"
REFERENCE_TEXT = "今天天气很好，我们一起去公园散步吧。"


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("oai")
    # "Anna" is saved by the fixture below; the aliases name it by name, and "nova" the default voice
    s = ServiceProcess(tmp, {"GLMTTS_VOICES_ALIASES": "shimmer=Anna, nova=default, echo=ghost",
                             "GLMTTS_ENGINE_MAX_CHUNK_CHARS": "10"})
    s.start(timeout=90)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(svc):
    return openai.OpenAI(base_url=svc.url + "/v1", api_key="not-needed-on-loopback", max_retries=0)


@pytest.fixture(scope="module")
def anna(svc):
    ref = svc.post("/v1/audio/speech", json={"input": REFERENCE_TEXT, "response_format": "wav"}).content
    r = svc.post("/v1/voices", data={"name": "Anna", "prompt_text": REFERENCE_TEXT},
                 files={"prompt_audio": ("ref.wav", ref, "audio/wav")})
    assert r.status_code == 201, r.text
    return r.json()


def av_decode(data):
    """(samples, rate, container, codec) decoded by FFmpeg (PyAV)."""
    with av.open(io.BytesIO(data)) as c:
        stream = c.streams.audio[0]
        frames = [f.to_ndarray().reshape(-1) for f in c.decode(stream)]
        rate = stream.codec_context.sample_rate
        return np.concatenate(frames), rate, c.format.name, stream.codec_context.name


def sf_duration(data):
    """Duration by libsndfile (its own MP3/Ogg/FLAC/WAV readers, no FFmpeg)."""
    audio, rate = sf.read(io.BytesIO(data), dtype="float32")
    assert np.sqrt(np.mean(audio ** 2)) > 0.01, "libsndfile decoded silence"
    return len(audio) / rate


def adts_duration(data, rate):
    """Duration from the ADTS frame headers themselves (1024 samples per AAC-LC frame),
    walked without any decoder: checks the stream's framing independently of FFmpeg."""
    pos, frames = 0, 0
    while pos + 7 <= len(data):
        assert data[pos] == 0xFF and data[pos + 1] & 0xF0 == 0xF0, "no ADTS sync word at byte %d" % pos
        length = ((data[pos + 3] & 0x03) << 11) | (data[pos + 4] << 3) | (data[pos + 5] >> 5)
        assert length > 7
        pos += length
        frames += 1
    assert pos == len(data), "trailing bytes after the last ADTS frame"
    return frames * 1024 / rate


def reference_duration(svc, text):
    """The length of the same synthesis as an exact WAV (the yardstick for lossy formats)."""
    r = svc.post("/v1/audio/speech", json={"input": text, "response_format": "wav"})
    info = sf.info(io.BytesIO(r.content))
    return info.frames / info.samplerate


def test_default_format_is_mp3_and_two_decoders_agree(svc, client, tmp_path):
    resp = client.audio.speech.create(model="tts-1", voice="default", input=TEXT)
    assert resp.response.headers["content-type"] == "audio/mpeg"
    path = tmp_path / "speech.mp3"
    resp.write_to_file(path)
    data = path.read_bytes()
    expected = reference_duration(svc, TEXT)
    samples, rate, container, codec = av_decode(data)
    assert container == "mp3" and codec.startswith("mp3") and rate == 24000
    assert abs(len(samples) / rate - expected) < 0.1
    assert abs(sf_duration(data) - expected) < 0.1


@pytest.mark.parametrize("fmt,container,codec,media", [("opus", "ogg", "opus", "audio/ogg"),
                                                       ("aac", "aac", "aac", "audio/aac"),
                                                       ("flac", "flac", "flac", "audio/flac"),
                                                       ("wav", "wav", "pcm_s16le", "audio/wav")])
def test_every_format_decodes_to_the_right_duration(svc, client, fmt, container, codec, media):
    expected = reference_duration(svc, TEXT)
    resp = client.audio.speech.create(model="tts-1", voice="default", input=TEXT, response_format=fmt)
    assert resp.response.headers["content-type"] == media
    data = resp.content
    samples, rate, got_container, got_codec = av_decode(data)
    assert (got_container, got_codec) == (container, codec)
    assert np.sqrt(np.mean(samples.astype(np.float64) ** 2)) > 0.01
    # AAC's encoder delay adds up to 2 frames (2 x 1024 samples) of priming
    assert abs(len(samples) / rate - expected) < 0.1 + (2048 / rate if fmt == "aac" else 0)
    if fmt == "aac":
        assert abs(adts_duration(data, 24000) - expected) < 0.1 + 2048 / 24000
    else:  # libsndfile reads Ogg/Opus, FLAC and WAV with its own code
        assert abs(sf_duration(data) - expected) < 0.1


def test_pcm_is_raw_s16le_at_the_sample_rate(svc, client):
    expected = reference_duration(svc, TEXT)
    pcm = np.frombuffer(client.audio.speech.create(model="tts-1", voice="default", input=TEXT,
                                                   response_format="pcm").content, dtype="<i2")
    assert abs(len(pcm) / 24000 - expected) < 0.01 and np.abs(pcm).max() > 300


def test_sse_events_as_openai_sends_them(svc, client):
    chunks = []
    with client.audio.speech.with_streaming_response.create(model="gpt-4o-mini-tts", voice="default",
                                                            input=TWO_SENTENCES, stream_format="sse",
                                                            response_format="pcm") as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = list(resp.iter_lines())
    events = []
    for line in lines:
        if not line:
            continue  # the blank line that ends each event
        assert line.startswith("data: "), line
        events.append(json.loads(line[len("data: "):]))
    deltas, done = events[:-1], events[-1]
    assert len(deltas) >= 2, "each sentence chunk should be its own delta: %d" % len(deltas)
    for e in deltas:
        assert set(e) == {"type", "audio"} and e["type"] == "speech.audio.delta"
        chunks.append(base64.b64decode(e["audio"], validate=True))
    assert done["type"] == "speech.audio.done"
    usage = done["usage"]
    assert set(usage) == {"input_tokens", "output_tokens", "total_tokens"}
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] and usage["input_tokens"] > 0
    # the deltas joined are the same samples as the whole answer
    whole = client.audio.speech.create(model="tts-1", voice="default", input=TWO_SENTENCES, response_format="pcm")
    assert b"".join(chunks) == whole.content


def test_sse_mp3_deltas_join_into_one_playable_file(svc):
    r = svc.post("/v1/audio/speech", json={"input": TWO_SENTENCES, "stream_format": "sse"})
    assert r.status_code == 200, r.text
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    data = b"".join(base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta")
    expected = reference_duration(svc, TWO_SENTENCES)
    assert abs(sf_duration(data) - expected) < 0.15  # libsndfile reads the joined stream
    samples, rate, container, _ = av_decode(data)
    assert container == "mp3" and abs(len(samples) / rate - expected) < 0.15


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "pcm"])
def test_streamed_formats_need_no_length(svc, fmt):
    arrivals, parts = [], []
    t0 = time.monotonic()
    with svc.post("/v1/audio/speech", json={"input": TWO_SENTENCES * 2, "stream": True, "response_format": fmt},
                  stream=True) as r:
        assert r.status_code == 200, r.text
        for piece in r.iter_content(chunk_size=None):
            arrivals.append(time.monotonic() - t0)
            parts.append(piece)
    data = b"".join(parts)
    expected = reference_duration(svc, TWO_SENTENCES * 2)
    if fmt == "pcm":
        assert abs(len(data) / 2 / 24000 - expected) < 0.01
        return
    samples, rate, _, _ = av_decode(data)
    assert abs(len(samples) / rate - expected) < 0.1 + (2048 / rate if fmt == "aac" else 0)
    if fmt != "aac":
        assert abs(sf_duration(data) - expected) < 0.15


def test_streamed_wav_is_refused_and_a_whole_wav_has_exact_sizes(svc):
    r = svc.post("/v1/audio/speech", json={"input": TEXT, "stream": True, "response_format": "wav"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "response_format" and err["code"] == "unsupported_stream_format"
    assert "mp3, opus, aac, pcm" in err["message"]
    whole = svc.post("/v1/audio/speech", json={"input": TEXT, "response_format": "wav"}).content
    riff, data_size = int.from_bytes(whole[4:8], "little"), int.from_bytes(whole[40:44], "little")
    assert riff == len(whole) - 8 and data_size == len(whole) - 44  # what soxi/ffprobe read the length from
    r = svc.post("/v1/audio/speech", json={"input": TEXT, "stream_format": "sse", "response_format": "flac"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format"


def test_errors_carry_param(svc, client):
    with pytest.raises(openai.BadRequestError) as e:
        client.audio.speech.create(model="tts-1", voice="default", input=TEXT, speed=9.0)
    assert e.value.body["param"] == "speed" and "0.25..4" in e.value.body["message"]
    with pytest.raises(openai.UnprocessableEntityError) as e:
        client.audio.speech.create(model="tts-1", voice="default", input=TEXT, extra_body={"seed": "x"})
    assert e.value.body["param"] == "seed"
    with pytest.raises(openai.BadRequestError) as e:
        client.audio.speech.create(model="tts-1", voice="default", input=TEXT, extra_body={"sample_rat": 1})
    assert e.value.body["param"] == "sample_rat"
    # every error object has the four keys, param null where no one field is at fault
    r = svc.get("/v1/nothing-here")
    assert set(r.json()["error"]) == {"message", "type", "code", "param"} and r.json()["error"]["param"] is None


def test_instructions_are_refused_not_ignored(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.audio.speech.create(model="gpt-4o-mini-tts", voice="default", input=TEXT,
                                   instructions="Speak in a cheerful tone.")
    assert e.value.body["code"] == "unsupported_parameter" and e.value.body["param"] == "instructions"
    assert "not supported" in e.value.message


def test_voice_aliases(svc, client, anna):
    anna_audio = svc.post("/v1/audio/speech", json={"input": TEXT, "voice": anna["id"], "response_format": "pcm"})
    default_audio = client.audio.speech.create(model="tts-1", voice="default", input=TEXT, response_format="pcm")
    shimmer = client.audio.speech.create(model="tts-1", voice="shimmer", input=TEXT, response_format="pcm")
    nova = client.audio.speech.create(model="tts-1", voice="nova", input=TEXT, response_format="pcm")
    assert shimmer.content == anna_audio.content != default_audio.content  # the alias means Anna's voice
    assert nova.content == default_audio.content
    with pytest.raises(openai.BadRequestError) as e:  # an OpenAI name nobody mapped
        client.audio.speech.create(model="tts-1", voice="alloy", input=TEXT)
    body = e.value.body
    assert body["param"] == "voice" and "voices.aliases" in body["message"]
    for name in ("default", "shimmer", "nova", "Anna"):
        assert name in body["message"]
    with pytest.raises(openai.NotFoundError) as e:  # an alias whose voice is gone
        client.audio.speech.create(model="tts-1", voice="echo", input=TEXT)
    assert "ghost" in e.value.message and e.value.body["param"] == "voice"


def test_audio_voices_lists_saved_voices_and_aliases(svc, anna):
    data = svc.get("/v1/audio/voices").json()
    assert data["object"] == "list"
    by_id = {v["id"]: v for v in data["data"]}
    assert by_id["default"]["kind"] == "default"
    assert by_id["shimmer"] == {"id": "shimmer", "object": "voice", "name": "shimmer", "kind": "alias",
                                "voice": anna["id"], "exists": True}
    assert by_id["nova"]["voice"] == "default" and by_id["echo"]["exists"] is False
    assert by_id[anna["id"]]["kind"] == "saved" and by_id[anna["id"]]["name"] == "Anna"


def test_503_while_loading_and_429_carry_retry_after(tmp_path):
    svc = ServiceProcess(tmp_path, {"GLMTTS_TEST_LOAD_DELAY_S": "30"}, engine="tests.plugins.faults:SlowLoadEngine")
    svc.start(wait=False)
    try:
        deadline = time.monotonic() + 60
        r = None
        while time.monotonic() < deadline:
            try:
                r = requests.post(svc.url + "/v1/audio/speech", json={"input": TEXT}, timeout=5)
                break
            except requests.ConnectionError:
                time.sleep(0.2)
        assert r is not None and r.status_code == 503, r and r.text
        assert int(r.headers["Retry-After"]) >= 1
        assert r.json()["error"]["code"] == "not_ready" and "param" in r.json()["error"]
        client = openai.OpenAI(base_url=svc.url + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.InternalServerError) as e:
            client.audio.speech.create(model="tts-1", voice="default", input=TEXT)
        assert e.value.status_code == 503 and int(e.value.response.headers["retry-after"]) >= 1
        for path in ("/healthz", "/readyz"):  # the health routes' 503s too
            h = requests.get(svc.url + path, timeout=5)
            assert h.status_code == 503 and int(h.headers["Retry-After"]) >= 1
    finally:
        svc.stop()


def test_429_rate_limit_carries_retry_after(tmp_path):
    svc = ServiceProcess(tmp_path, {"GLMTTS_LIMITS_RATE_LIMIT_PER_MINUTE": "1"})
    svc.start(timeout=90)
    try:
        client = openai.OpenAI(base_url=svc.url + "/v1", api_key="x", max_retries=0)
        client.audio.speech.create(model="tts-1", voice="default", input=TEXT)
        with pytest.raises(openai.RateLimitError) as e:
            client.audio.speech.create(model="tts-1", voice="default", input=TEXT)
        assert int(e.value.response.headers["retry-after"]) >= 1 and "param" in e.value.body
    finally:
        svc.stop()


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac"])
def test_stream_encoder_pieces_make_one_file(fmt):
    """glmtts.audio.StreamEncoder: pieces fed one sentence at a time join into one file
    that decodes (FFmpeg; libsndfile where it reads the format) to all the samples."""
    from glmtts import audio as audiolib

    sr = 24000
    t = np.arange(int(sr * 1.5)) / sr
    pieces = [(0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32) for f in (180, 220, 260)]
    enc = audiolib.StreamEncoder(fmt, sr)
    parts = [enc.feed(p) for p in pieces] + [enc.close()]
    assert any(parts[:-1]), "nothing came out before close(): not incremental"
    data = b"".join(parts)
    samples, rate, _, _ = av_decode(data)
    slack = 2048 / rate if fmt == "aac" else 0.08  # encoder priming/padding without a gapless header
    assert abs(len(samples) / rate - 4.5) <= slack
    if fmt != "aac":
        assert abs(sf_duration(data) - 4.5) <= slack
