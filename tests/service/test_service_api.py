"""The service's HTTP API against one real server process (module-scoped; the tests
here do not disturb each other, and each checks the service is healthy afterwards).
The engine is the fault-injecting wrapper of espeak, normally with no fault."""

import io
import os
import re
import signal
import threading
import time

import numpy as np
import pytest
import requests
import soundfile as sf

from tests.support.service import FAULT_ENGINE, ServiceProcess

pytestmark = pytest.mark.integration

TEXT = "你好，欢迎使用语音合成服务。"
LONG_TEXT = "今天天气很好，我们一起去公园散步吧。" * 12


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api")
    fault = tmp / "fault"
    fault.write_text("")
    s = ServiceProcess(tmp, {"GLMTTS_TEST_FAULT_FILE": str(fault), "GLMTTS_LIMITS_MAX_QUEUE": "1",
                             "GLMTTS_LIMITS_MAX_TEXT_CHARS": "1000", "GLMTTS_ENGINE_MAX_CHUNK_CHARS": "40"},
                       engine=FAULT_ENGINE, ui=True)
    s.fault = fault
    s.start(timeout=90)
    yield s
    s.stop()


def set_fault(svc, word):
    svc.fault.write_text(word + "\n" if word else "")


def assert_healthy(svc):
    r = svc.get("/healthz", timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "ok"


def decode(data):
    audio, sr = sf.read(io.BytesIO(data), dtype="float32")
    return audio, sr


def assert_speech(data, sr_expected=24000, min_s=0.3):
    audio, sr = decode(data)
    assert sr == sr_expected
    assert len(audio) / sr >= min_s
    assert np.sqrt(np.mean(audio ** 2)) > 0.01, "audio is silent"
    return audio


def speech(svc, **body):
    body.setdefault("input", TEXT)
    return svc.post("/v1/audio/speech", json=body)


def reference_wav(svc, seconds_min=2.5):
    r = speech(svc, input="今天天气很好，我们一起去公园散步吧。", response_format="wav")
    assert r.status_code == 200
    audio, sr = decode(r.content)
    assert len(audio) / sr >= seconds_min
    return r.content


# -- synthesis ---------------------------------------------------------------------------

def test_speech_returns_playable_mp3_by_default_and_health_fields(svc):
    r = speech(svc)  # OpenAI's default response_format: mp3
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "audio/mpeg"
    assert r.headers["x-request-id"]
    assert_speech(r.content)
    h = svc.get("/healthz").json()
    for key in ("status", "reason", "engine", "uptime_s", "queue_depth", "in_flight", "gpu", "last_error", "version"):
        assert key in h
    assert "espeak" in h["engine"]["name"]
    assert svc.get("/livez").status_code == 200 and svc.get("/readyz").status_code == 200


@pytest.mark.parametrize("fmt", ["flac", "wav", "pcm"])
def test_other_formats_and_32k(svc, fmt):
    r = speech(svc, response_format=fmt, sample_rate=32000)
    assert r.status_code == 200, r.text
    if fmt == "pcm":
        pcm = np.frombuffer(r.content, dtype="<i2")
        assert len(pcm) / 32000 > 0.3 and np.abs(pcm).max() > 300
    else:
        assert_speech(r.content, 32000)


def test_same_seed_same_audio(svc):
    a = speech(svc, seed=7).content
    b = speech(svc, seed=7).content
    assert a == b


def test_models_lists_the_engine(svc):
    data = svc.get("/v1/models").json()
    assert data["object"] == "list" and data["data"][0]["id"] == FAULT_ENGINE


def test_zero_shot_multipart_and_saved_voice_lifecycle(svc):
    ref = reference_wav(svc)
    form = {"input": TEXT, "prompt_text": "今天天气很好，我们一起去公园散步吧。"}
    r = svc.post("/v1/audio/speech", data=form, files={"prompt_audio": ("ref.wav", ref, "audio/wav")})
    assert r.status_code == 200, r.text
    assert_speech(r.content)

    r = svc.post("/v1/voices", data={"name": "narrator", "prompt_text": form["prompt_text"]},
                 files={"prompt_audio": ("ref.wav", ref, "audio/wav")})
    assert r.status_code == 201, r.text
    voice = r.json()
    assert re.fullmatch(r"voice_[0-9a-f]{12}", voice["id"])
    assert os.path.isfile(os.path.join(svc.state_dir, "voices", voice["id"], "features.pkl"))
    assert voice["id"] in [v["id"] for v in svc.get("/v1/voices").json()["data"]]
    for name in (voice["id"], "narrator"):
        r = speech(svc, voice=name)
        assert r.status_code == 200, r.text
        assert_speech(r.content)
    assert svc.delete("/v1/voices/" + voice["id"]).json()["deleted"] is True
    r = speech(svc, voice=voice["id"])
    assert r.status_code == 404 and voice["id"] in r.json()["error"]["message"]
    assert not os.path.exists(os.path.join(svc.state_dir, "voices", voice["id"]))


# -- bad input ---------------------------------------------------------------------------

def _ten_minute_wav():
    buf = io.BytesIO()
    t = np.arange(8000 * 600) / 8000.0
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32), 8000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _upload(data, name="ref.wav"):
    return {"data": {"input": TEXT, "prompt_text": "你好。"}, "files": {"prompt_audio": (name, data, "audio/wav")}}


BAD = [
    # id, request kwargs, status, words the message must contain
    ("not-audio-renamed-wav", _upload(b"this is a text file, not audio\n" * 50), 415, "not a recognised audio"),
    ("empty-file", _upload(b""), 400, "empty"),
    ("ten-minute-reference", _upload(_ten_minute_wav()), 400, "at most 30"),
    ("oversize-upload", _upload(os.urandom(21 * 1024 * 1024)), 413, "limit is 20 MB"),
    ("unknown-voice", {"json": {"input": TEXT, "voice": "nobody"}}, 404, "unknown voice 'nobody'"),
    ("voice-path-traversal", {"json": {"input": TEXT, "voice": "voice_../../etc/passwd"}}, 404, "unknown voice"),
    ("text-over-limit", {"json": {"input": "好" * 1001}}, 400, "limit is 1000"),
    ("empty-text", {"json": {"input": ""}}, 400, "input is empty"),
    ("no-speakable-text", {"json": {"input": "。。。"}}, 400, "empty after normalization"),
    ("missing-input", {"json": {"voice": "default"}}, 400, "'input' is required"),
    ("invalid-json", {"data": b'{"input": "x",', "headers": {"Content-Type": "application/json"}}, 400, "invalid JSON"),
    ("wrong-type-input", {"json": {"input": 42}}, 422, "'input' must be a string"),
    ("wrong-type-speed", {"json": {"input": TEXT, "speed": "fast"}}, 422, "'speed' must be a number"),
    ("wrong-type-seed-form", {"data": {"input": TEXT, "seed": "abc"}}, 422, "'seed' must be an integer"),
    ("unsupported-sample-rate", {"json": {"input": TEXT, "sample_rate": 44100}}, 400, "sample_rate 44100 is not supported"),
    ("unsupported-format", {"json": {"input": TEXT, "response_format": "ogg"}}, 400, "response_format 'ogg'"),
    ("streamed-wav", {"json": {"input": TEXT, "stream": True, "response_format": "wav"}}, 400, "wav cannot be streamed"),
    ("openai-voice-not-aliased", {"json": {"input": TEXT, "voice": "alloy"}}, 400, "voices.aliases"),
    ("instructions", {"json": {"input": TEXT, "instructions": "cheerful"}}, 400, "instructions are not supported"),
    ("unknown-field", {"json": {"input": TEXT, "sample_rat": 24000}}, 400, "unknown field 'sample_rat'"),
    ("prompt-audio-without-text", {"data": {"input": TEXT}, "files": {"prompt_audio": ("r.wav", b"x", "audio/wav")}},
     400, "prompt_text is required"),
]


@pytest.mark.parametrize("kwargs,status,words", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_refused_with_a_clear_error(svc, kwargs, status, words):
    r = svc.post("/v1/audio/speech", **kwargs)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert words in err["message"], err
    assert err["type"] and err["code"] and "param" in err
    assert_healthy(svc)


def test_unknown_api_routes_are_json_errors(svc):
    r = svc.get("/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = svc.delete("/admin/nothing")
    assert r.status_code == 404 and "no such API route" in r.json()["error"]["message"]


# -- the official OpenAI client ------------------------------------------------------------

def test_openai_client_gets_playable_audio_and_parses_errors(svc, tmp_path):
    import openai

    client = openai.OpenAI(base_url=svc.url + "/v1", api_key="not-needed-on-loopback", max_retries=0)
    resp = client.audio.speech.create(model="tts-1", voice="default", input=TEXT, response_format="wav")
    path = tmp_path / "openai.wav"
    resp.write_to_file(path)
    assert_speech(path.read_bytes())
    with pytest.raises(openai.BadRequestError) as e:
        client.audio.speech.create(model="tts-1", voice="default", input="", response_format="wav")
    assert e.value.status_code == 400
    assert "input is empty" in e.value.message
    assert e.value.body["code"] == "empty_input"
    with pytest.raises(openai.NotFoundError):
        client.audio.speech.create(model="tts-1", voice="no-such-voice", input=TEXT)


# -- streaming ----------------------------------------------------------------------------

def test_streaming_is_incremental_and_equals_the_whole_answer(svc):
    set_fault(svc, "slow_chunk:0.4")
    try:
        t0 = time.monotonic()
        arrivals, chunks = [], []
        with svc.post("/v1/audio/speech", json={"input": LONG_TEXT, "stream": True, "seed": 3, "response_format": "pcm"},
                      stream=True) as r:
            assert r.status_code == 200, r.text
            for piece in r.iter_content(chunk_size=None):
                arrivals.append(time.monotonic() - t0)
                chunks.append(piece)
        streamed = b"".join(chunks)
        whole = speech(svc, input=LONG_TEXT, seed=3, response_format="pcm")
    finally:
        set_fault(svc, "")
    first, last = arrivals[0], arrivals[-1]
    assert len(chunks) >= 4, "expected several chunks, got %d" % len(chunks)
    assert first < last / 2, "first audio at %.2fs, last at %.2fs: not incremental" % (first, last)
    assert len(streamed) > 24000 and streamed == whole.content


def test_stream_pcm(svc):
    r = speech(svc, stream=True, response_format="pcm")
    assert r.status_code == 200
    whole = speech(svc, response_format="pcm")
    assert r.content == whole.content


# -- worker under load and faults ----------------------------------------------------------

def test_healthz_fast_while_busy_and_queue_full_is_429(svc):
    set_fault(svc, "slow:3")
    results = {}

    def call(name):
        results[name] = speech(svc)

    try:
        running = threading.Thread(target=call, args=("running",))
        running.start()
        deadline = time.monotonic() + 5
        while svc.get("/healthz").json()["in_flight"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        queued = threading.Thread(target=call, args=("queued",))
        queued.start()
        while svc.get("/healthz").json()["queue_depth"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        times = []
        for _ in range(10):
            t = time.monotonic()
            h = svc.get("/healthz", timeout=5)
            times.append(time.monotonic() - t)
            assert h.status_code == 200 and h.json()["status"] == "ok"
        assert max(times) < 1.0, "healthz took %.2fs while the worker was busy" % max(times)
        r = speech(svc)
        assert r.status_code == 429, r.text
        assert int(r.headers["Retry-After"]) >= 1
        assert "queue full" in r.json()["error"]["message"]
        running.join(30)
        queued.join(30)
    finally:
        set_fault(svc, "")
    assert results["running"].status_code == 200 and results["queued"].status_code == 200
    assert_healthy(svc)


def _metric(svc, name):
    for line in svc.get("/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_cuda_oom_is_503_counted_and_the_next_request_succeeds(svc):
    before = _metric(svc, "glmtts_cuda_oom_total")
    set_fault(svc, "oom")
    try:
        r = speech(svc)
    finally:
        set_fault(svc, "")
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "cuda_oom"
    assert "CUDA out of memory" in r.json()["error"]["message"]
    assert _metric(svc, "glmtts_cuda_oom_total") == before + 1
    assert "torch.OutOfMemoryError: CUDA out of memory" in svc.stderr()
    r = speech(svc)
    assert r.status_code == 200
    assert_speech(r.content)
    h = svc.get("/healthz").json()
    assert h["status"] == "ok" and h["last_error"].startswith("cuda_oom")


def test_metrics_are_prometheus_text(svc):
    text = svc.get("/metrics").text
    for name in ("glmtts_http_requests_total", "glmtts_http_request_duration_seconds_bucket", "glmtts_queue_depth",
                 "glmtts_in_flight", "glmtts_cuda_oom_total", "glmtts_engine_load_seconds", 'glmtts_state{state="ok"} 1.0'):
        assert name in text
    assert 'route="/v1/audio/speech"' in text and 'status="200"' in text


def test_admin_gpu_clear_reports_before_and_after(svc):
    r = svc.post("/admin/gpu/clear")
    assert r.status_code == 200
    body = r.json()
    assert "before" in body and "after" in body and body["cuda"] is False


# -- logs ---------------------------------------------------------------------------------

ACCESS = re.compile(r"^\S+Z \S+ (GET|POST|DELETE|PUT) (\S+) (\d{3}) (\d+) [\d.]+ms rid=[0-9a-zA-Z._-]+$")


def test_access_and_error_lines_land_on_the_right_stream(svc):
    rid = "trace-access-1"
    assert svc.post("/v1/audio/speech", json={"input": "秘密的句子。"}, headers={"X-Request-ID": rid}).status_code == 200
    speech(svc, input="")  # a 400
    out, err = svc.stdout(), svc.stderr()
    lines = out.strip().splitlines()
    assert lines and all(ACCESS.match(line) for line in lines), [l for l in lines if not ACCESS.match(l)][:3]
    assert any(line.endswith("rid=" + rid) and " POST /v1/audio/speech 200 " in line for line in lines)
    assert any(" POST /v1/audio/speech 400 " in line for line in lines)
    assert "Traceback" not in out and "Traceback" in err  # the OOM test's traceback went to stderr
    assert not any(ACCESS.match(line) for line in err.splitlines())
    assert "秘密的句子" not in out and "秘密的句子" not in err  # request text never logged


# -- the UI in a real browser --------------------------------------------------------------

@pytest.mark.browser
def test_ui_in_headless_chromium_synthesizes_and_screenshots(svc):
    from tests.support.browser import chromium

    art = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "artifacts")
    os.makedirs(art, exist_ok=True)
    with chromium() as driver:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as EC
        from selenium.webdriver.support.ui import WebDriverWait

        driver.set_window_size(1280, 1000)
        driver.get(svc.url + "/")
        wait = WebDriverWait(driver, 60)
        button = wait.until(EC.element_to_be_clickable((By.ID, "tts-go")))
        assert "glmtts" in driver.page_source
        button.click()
        wait.until(lambda d: "Done:" in d.find_element(By.ID, "tts-status").text)
        status = driver.find_element(By.ID, "tts-status").text
        assert re.search(r"Done: \d+\.\d s of audio at 24000 Hz", status), status
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#tts-out audio, #tts-out [data-testid='waveform-x']")
                   or "0:0" in d.find_element(By.ID, "tts-out").text)
        path = os.path.join(art, "service-ui.png")
        driver.save_screenshot(path)
    assert os.path.getsize(path) > 10000
    assert_healthy(svc)


# -- SIGHUP reopen (last: it rotates this server's log files) ------------------------------

def test_sighup_reopens_log_files_after_rename_and_loses_nothing(svc):
    before_ids = ["before-%d" % i for i in range(5)]
    after_ids = ["after-%d" % i for i in range(5)]
    for rid in before_ids:
        assert svc.get("/healthz", headers={"X-Request-ID": rid}).status_code == 200
    os.rename(svc.stdout_path, svc.stdout_path + ".1")
    os.rename(svc.stderr_path, svc.stderr_path + ".1")
    os.kill(svc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while not os.path.exists(svc.stdout_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    for rid in after_ids:
        assert svc.get("/healthz", headers={"X-Request-ID": rid}).status_code == 200
    assert os.path.exists(svc.stdout_path) and os.path.exists(svc.stderr_path)
    old = open(svc.stdout_path + ".1").read()
    new = open(svc.stdout_path).read()
    for rid in before_ids + after_ids:
        assert (old + new).count("rid=%s\n" % rid) == 1, rid
    for rid in after_ids:
        assert "rid=%s\n" % rid in new
    assert "reopened log files on SIGHUP" in open(svc.stderr_path).read()
    assert_healthy(svc)
