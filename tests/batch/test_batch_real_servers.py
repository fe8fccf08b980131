"""`glmtts batch run` on a real server (issue 12 item 7): it submits to the running
service instead of loading a second engine (a second model copy on the GPU), loads one
itself only with --local, and says clearly when there is no service. Batch lines may use
a saved voice or the default voice, and take speed and response_format.

The CLI runs as a subprocess with the service's configuration (same port, same paths),
but with engine.name = BrokenEngine, whose load() fails: a CLI that loaded an engine
would exit with that error, so success proves the service did the synthesis."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from tests.support.batch import PROMPT_TEXT, reference_wav
from tests.support.service import REPO, ServiceProcess, free_port

BROKEN = "tests.plugins.faults:BrokenEngine"
TEXT = "The quick brown fox jumps over the lazy dog, and then it runs far away."


def cli_env(svc, **extra):
    """The environment of a CLI on the service's host: its configuration (port, paths)."""
    env = dict(svc.env)
    env.update(extra)
    return env


def batch_run(env, *args, timeout=180):
    return subprocess.run([sys.executable, "-m", "glmtts.cli", "batch", "run", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def write_jsonl(path, lines):
    path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    return str(path)


def decode(path):
    """(seconds, samples) read back with libsndfile (not the encoder's code path)."""
    data, rate = sf.read(path, dtype="float32", always_2d=True)
    return len(data) / float(rate), data[:, 0]


def save_voice(svc):
    r = svc.post("/v1/voices", files={"prompt_audio": ("anna.wav", reference_wav(), "audio/wav")},
                 data={"name": "Anna", "prompt_text": PROMPT_TEXT})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def lines_for(voice_id):
    return [
        {"voice": voice_id, "input_text": TEXT, "output_name": "saved"},
        {"input_text": TEXT, "output_name": "plain"},  # no voice at all: the default voice
        {"voice": "default", "input_text": TEXT, "output_name": "fast", "speed": 2.0},
        {"prompt_audio": "ref.wav", "prompt_text": PROMPT_TEXT, "input_text": TEXT, "output_name": "song",
         "response_format": "mp3"},
        {"voice": "Anna", "input_text": "Short one.", "output_name": "by_name", "response_format": "flac"},
    ]


def check_outputs(out):
    names = {n for n in os.listdir(out) if not n.startswith(".")} - {"manifest.json"}
    assert names == {"by_name.flac", "fast.wav", "plain.wav", "saved.wav", "song.mp3"}
    with open(os.path.join(out, "song.mp3"), "rb") as f:
        head = f.read(3)
    assert head == b"ID3" or head[0] == 0xFF, "song.mp3 is not MPEG audio: %r" % head
    with open(os.path.join(out, "by_name.flac"), "rb") as f:
        assert f.read(4) == b"fLaC"
    plain_s, plain = decode(os.path.join(out, "plain.wav"))
    fast_s, _ = decode(os.path.join(out, "fast.wav"))
    saved_s, saved = decode(os.path.join(out, "saved.wav"))
    song_s, _ = decode(os.path.join(out, "song.mp3"))
    assert plain_s > 2.0 and song_s > 2.0
    # speed 2.0 speaks the same text in clearly less time
    assert fast_s < 0.75 * plain_s, (fast_s, plain_s)
    # the saved voice is not the default voice: the same text comes out differently
    assert len(saved) != len(plain) or not np.allclose(saved, plain, atol=1e-3)
    return plain_s, fast_s


@pytest.mark.integration
def test_batch_run_submits_to_the_running_service_and_loads_no_engine(tmp_path):
    svc = ServiceProcess(tmp_path)
    with open(os.path.join(svc.prompt_root, "ref.wav"), "wb") as f:
        f.write(reference_wav())
    try:
        svc.start(timeout=120)
        voice_id = save_voice(svc)
        batch = write_jsonl(tmp_path / "book.jsonl", lines_for(voice_id))
        out = str(tmp_path / "downloaded")
        p = batch_run(cli_env(svc, GLMTTS_ENGINE_NAME=BROKEN), batch, "--out", out)
        assert p.returncode == 0, p.stdout + p.stderr
        assert "submitted to the service at %s" % svc.url in p.stderr
        assert "5 done, 0 failed of 5" in p.stdout
        # the CLI never tried to load an engine (BrokenEngine's load would have failed it)
        assert "cannot load" not in p.stderr and "engine loaded" not in p.stderr
        check_outputs(out)
        with open(os.path.join(out, "manifest.json"), encoding="utf-8") as f:
            manifest = json.load(f)
        assert [t["status"] for t in manifest["tasks"]] == ["done"] * 5
        # the service did the work: its access log saw the submission, its metrics the tasks,
        # and its own output directory holds the same files
        assert "POST /v1/batches 201" in svc.stdout()
        metrics = svc.get("/metrics").text
        assert 'glmtts_batch_tasks_total{outcome="done"} 5.0' in metrics
        [job_id] = [j for j in os.listdir(os.path.join(svc.state_dir, "batches")) if j[0].isdigit()]
        assert sorted(os.listdir(os.path.join(svc.output_dir, job_id))) == \
            ["by_name.flac", "fast.wav", "plain.wav", "saved.wav", "song.mp3"]

        # an invalid file: the service's per-line report, printed by the CLI; nothing runs
        bad = write_jsonl(tmp_path / "bad.jsonl", [{"voice": "voice_000000000000", "input_text": "x",
                                                    "output_name": "a"},
                                                   {"input_text": "y", "output_name": "b", "speed": 9}])
        p = batch_run(cli_env(svc, GLMTTS_ENGINE_NAME=BROKEN), bad)
        assert p.returncode == 1
        assert "line 1: error: voice 'voice_000000000000' is not a saved voice" in p.stderr
        assert "line 2: error: speed 9 is out of range; allowed: 0.25..4.0" in p.stderr, p.stderr
        assert "NOT OK" in p.stderr
    finally:
        svc.stop()


@pytest.mark.integration
def test_batch_run_sends_the_api_key(tmp_path):
    svc = ServiceProcess(tmp_path, {"GLMTTS_SERVER_API_KEYS": "k-batch-1"})
    try:
        svc.start(timeout=120)
        batch = write_jsonl(tmp_path / "one.jsonl", [{"input_text": TEXT, "output_name": "one"}])
        # the CLI reads the same config, server.api_keys included: it authenticates
        p = batch_run(cli_env(svc, GLMTTS_ENGINE_NAME=BROKEN), batch, "--quiet")
        assert p.returncode == 0, p.stdout + p.stderr
        assert "1 done, 0 failed of 1" in p.stdout
        # a wrong watchdog.api_key (it wins over server.api_keys): one clear error, no traceback
        p = batch_run(cli_env(svc, GLMTTS_ENGINE_NAME=BROKEN, GLMTTS_WATCHDOG_API_KEY="wrong"), batch)
        assert p.returncode == 1
        assert "answered HTTP 401" in p.stderr and "watchdog.api_key" in p.stderr
        assert "Traceback" not in p.stderr
    finally:
        svc.stop()


def local_env(tmp_path, port, **extra):
    """A configuration like a service's, on a port nobody listens on."""
    svc = ServiceProcess(tmp_path, port=port, name="nosvc")  # never started: only its dirs and env
    env = cli_env(svc, **extra)
    return svc, env


def test_no_service_and_no_local_is_one_clear_error(tmp_path):
    port = free_port()
    svc, env = local_env(tmp_path, port, GLMTTS_ENGINE_NAME=BROKEN)
    batch = write_jsonl(tmp_path / "b.jsonl", [{"input_text": TEXT, "output_name": "a"}])
    p = batch_run(env, batch)
    assert p.returncode == 1
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("glmtts batch run: error: no glmtts service answers at http://127.0.0.1:%d" % port)
    assert "glmtts serve" in lines[0] and "--local" in lines[0]
    assert not os.path.isdir(os.path.join(svc.state_dir, "batches"))  # nothing was created


def test_local_runs_the_engine_in_process_without_a_service(tmp_path):
    from glmtts import config
    from glmtts.engines.espeak import EspeakEngine
    from service.voices import VoiceStore

    svc, env = local_env(tmp_path, free_port())
    with open(os.path.join(svc.prompt_root, "ref.wav"), "wb") as f:
        f.write(reference_wav())
    # a saved voice, as the service's Voices tab would have stored it in this state_dir
    engine = EspeakEngine(config.load(path="", env={}))
    engine.load()
    audio, rate = sf.read(io.BytesIO(reference_wav()), dtype="float32")
    meta = VoiceStore(os.path.join(svc.state_dir, "voices")).create(
        name="Anna", prompt_text=PROMPT_TEXT, audio=audio, sample_rate=rate,
        features=engine.prepare_prompt(audio, rate, PROMPT_TEXT), engine_setting="espeak")
    batch = write_jsonl(tmp_path / "book.jsonl", lines_for(meta["id"]))
    out = str(tmp_path / "out")
    p = batch_run(env, batch, "--local", "--out", out)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "espeak engine loaded" in p.stderr  # it did load its own engine
    assert "5 done, 0 failed of 5" in p.stdout
    check_outputs(out)


def test_local_on_a_gpu_box_warns_about_a_second_model_copy(tmp_path):
    """FAKE NVML (tests/support/fake_nvml; this machine has no GPU) reports one GPU."""
    device = tmp_path / "gpu.json"
    device.write_text(json.dumps({"devices": [{"total": 80 << 30, "free": 10 << 30}]}))
    svc, env = local_env(tmp_path, free_port())
    env["PYTHONPATH"] = os.path.join(REPO, "tests", "support", "fake_nvml") + os.pathsep + env["PYTHONPATH"]
    env["GLMTTS_TEST_FAKE_NVML_FILE"] = str(device)
    batch = write_jsonl(tmp_path / "b.jsonl", [{"input_text": "Hello.", "output_name": "a"}])
    p = batch_run(env, batch, "--local", "--quiet")
    assert p.returncode == 0, p.stdout + p.stderr
    warning = [line for line in p.stderr.splitlines() if line.startswith("warning: --local")]
    assert warning and "NVML sees a GPU" in warning[0] and "second copy of the model" in warning[0]
    # and without a GPU, no such warning
    p = batch_run(local_env(tmp_path / "cpu", free_port())[1], batch, "--local", "--quiet")
    assert p.returncode == 0 and "warning: --local" not in p.stderr


# -- the validator's messages for the new fields -------------------------------------


@pytest.fixture
def sandbox(tmp_path):
    from tests.support.batch import Sandbox
    return Sandbox(tmp_path)


def validate(sandbox, lines):
    from glmtts.batch.validate import validate_bytes
    data = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines).encode()
    return validate_bytes(data, sandbox.settings)


def messages(report):
    return [str(p) for p in report.errors]


def test_validator_explains_each_new_field(sandbox):
    report = validate(sandbox, [
        {"voice": "voice_0123456789ab", "input_text": "a", "output_name": "l1"},
        {"voice": "Nobody", "input_text": "a", "output_name": "l2"},
        {"voice": "default", "prompt_audio": "voice.wav", "prompt_text": "t", "input_text": "a", "output_name": "l3"},
        {"prompt_text": "t", "input_text": "a", "output_name": "l4"},
        {"prompt_audio": "voice.wav", "input_text": "a", "output_name": "l5"},
        {"input_text": "a", "output_name": "l6", "speed": 5},
        {"input_text": "a", "output_name": "l7", "speed": "fast"},
        {"input_text": "a", "output_name": "l8", "response_format": "ogg"},
        {"input_text": "a", "output_name": "l9", "voice": 7},
        {"input_text": "a", "output_name": "l10", "voice": " "},
        {"input_text": "a", "output_name": "l11", "speed": True},
    ])
    got = messages(report)
    from glmtts.batch.schema import file_formats
    expected = [
        "line 1: error: voice 'voice_0123456789ab' is not a saved voice: use \"default\" (or leave 'voice' out), "
        "a saved voice's id (\"voice_...\") or its name; GET /v1/voices or the UI's Voices tab lists them",
        "line 2: error: voice 'Nobody' is not a saved voice",
        "line 3: error: give either 'voice' ('default') or 'prompt_audio' ('voice.wav'), not both: remove one",
        "line 4: error: field 'prompt_text' is given without 'prompt_audio': add the reference audio it transcribes, "
        "or remove it",
        "line 5: error: missing required field 'prompt_text': the transcript of prompt_audio 'voice.wav'",
        "line 6: error: speed 5 is out of range; allowed: 0.25..4.0",
        "line 7: error: field 'speed' must be a number, got 'fast'",
        "line 8: error: field 'response_format' must be one of %s, got 'ogg'" % " | ".join(file_formats()),
        "line 9: error: field 'voice' must be a string, got a number",
        "line 10: error: field 'voice' is empty; leave it out for the default voice",
        "line 11: error: field 'speed' must be a number",
    ]
    assert len(got) == len(expected), "\n".join(got)
    for message, want in zip(got, expected):
        assert message.startswith(want), "%s\n  does not start with\n%s" % (message, want)
    assert report.tasks == [] and report.invalid_lines == list(range(1, 12))
    assert "pcm" not in file_formats() and {"wav", "flac", "mp3"} <= set(file_formats())


def test_valid_voice_lines_become_tasks_with_their_options(sandbox):
    from glmtts.batch.validate import SavedVoices
    voices = os.path.join(sandbox.state_dir, "voices", "voice_00000000abcd")
    os.makedirs(voices)
    with open(os.path.join(voices, "meta.json"), "w") as f:
        json.dump({"id": "voice_00000000abcd", "name": "Anna", "prompt_text": PROMPT_TEXT, "created": 1}, f)
    report = validate(sandbox, [
        {"voice": "voice_00000000abcd", "input_text": "a", "output_name": "by_id", "speed": 1.5},
        {"voice": "anna", "input_text": "a", "output_name": "by_name", "response_format": "MP3"},
        {"voice": "Default", "input_text": "a", "output_name": "dflt"},
        {"syn_text": "a", "uttid": "nothing"},
        {"prompt_speech": "voice.wav", "prompt_text": "t", "syn_text": "a", "uttid": "file", "response_format": "flac"},
    ])
    assert report.ok, report.format_text()
    t = {task.output_name: task for task in report.tasks}
    assert (t["by_id"].voice, t["by_id"].speed, t["by_id"].filename) == ("voice_00000000abcd", 1.5, "by_id.wav")
    assert (t["by_name"].voice, t["by_name"].filename) == ("anna", "by_name.mp3")
    assert t["dflt"].voice == "default" and t["nothing"].voice == "default" and t["nothing"].prompt_audio is None
    assert (t["file"].voice, t["file"].prompt_audio, t["file"].filename) == (None, "voice.wav", "file.flac")
    assert SavedVoices.of(sandbox.settings).find("ANNA")["id"] == "voice_00000000abcd"
    # an old job's tasks.jsonl (written before these fields) still loads
    from glmtts.batch.schema import Task
    old = Task.from_dict({"index": 0, "line": 1, "prompt_audio": "voice.wav", "prompt_text": "t", "input_text": "a",
                          "output_name": "x", "sample_rate": None, "seed": None, "extra": {}})
    assert old.filename == "x.wav" and old.voice is None


def test_a_saved_voice_deleted_after_validation_fails_only_its_tasks(tmp_path):
    """The runner looks the voice up per task: the others of the job still finish."""
    from tests.support.batch import Sandbox
    from glmtts.batch.runner import EngineSynthesizer, Runner
    from glmtts.batch.store import JobStore
    from glmtts.batch.validate import validate_bytes
    from glmtts.engines.espeak import EspeakEngine

    box = Sandbox(tmp_path)
    voice_dir = os.path.join(box.state_dir, "voices", "voice_00000000beef")
    os.makedirs(voice_dir)
    with open(os.path.join(voice_dir, "meta.json"), "w") as f:
        json.dump({"id": "voice_00000000beef", "name": "Gone", "prompt_text": PROMPT_TEXT, "created": 1}, f)
    with open(os.path.join(voice_dir, "reference.wav"), "wb") as f:
        f.write(reference_wav())
    data = "".join(json.dumps(x) + "\n" for x in [
        {"voice": "voice_00000000beef", "input_text": "Hello there.", "output_name": "a"},
        {"input_text": "Hello there.", "output_name": "b", "response_format": "flac", "speed": 0.5}]).encode()
    settings = box.settings
    report = validate_bytes(data, settings)
    assert report.ok, report.format_text()
    job = JobStore(settings).create(data, report)
    os.rename(voice_dir, voice_dir + ".bak")  # deleted between submission and run
    engine = EspeakEngine(settings)
    engine.load()
    summary = Runner(job, EngineSynthesizer(engine), settings, durable=False).run()
    assert summary["progress"]["done"] == 1 and summary["progress"]["failed"] == 1
    [failure] = summary["failures"]
    assert failure["output_name"] == "a" and "voice 'voice_00000000beef'" in failure["reason"]
    assert os.listdir(job.out_dir) == ["b.flac"]


def test_batch_lines_and_the_api_accept_the_same_speeds_and_formats():
    """One declaration of a request (glmtts/request.py, where present): a batch line may
    ask for what POST /v1/audio/speech may, raw pcm excepted (a file no player opens)."""
    reqdecl = pytest.importorskip("glmtts.request")
    from glmtts.batch import schema
    assert schema.SPEED_RANGE == tuple(reqdecl.SPEED_RANGE)
    assert schema.SAMPLE_RATES == tuple(reqdecl.SAMPLE_RATES)
    assert set(schema.file_formats()) == set(reqdecl.FORMATS) - {"pcm"}
