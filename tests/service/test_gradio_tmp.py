"""The UI's uploads and results live under paths.state_dir/cache, never in /tmp, and are
pruned with batch.retention_days (glmtts/cachedir.py).

The end-to-end test runs a real service with the UI and TMPDIR pointed at an empty
directory (Python's tempfile and gradio's default both follow TMPDIR), uploads a reference
and synthesizes through the UI's Gradio endpoints, then looks where the files went. The
pruning tests use an injected clock: a file's ctime cannot be set back, and the pruner
ages files by the later of mtime and ctime."""

import json
import os
import subprocess
import sys
import time

import pytest

from glmtts import cachedir, config
from glmtts.batch import retention
from tests.support.gradio_api import GradioAPI
from tests.support.service import REPO, ServiceProcess

DAY = 86400.0
TRANSCRIPT = "今天天气很好，我们一起去公园散步吧。"


def files_under(top):
    return sorted(os.path.join(d, n) for d, _dirs, names in os.walk(top) for n in names)


@pytest.mark.integration
def test_ui_uploads_and_results_land_under_the_state_dir_and_nothing_in_tmpdir(tmp_path):
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    svc = ServiceProcess(tmp_path, {"TMPDIR": str(tmpdir), "GRADIO_TEMP_DIR": ""}, ui=True)
    try:
        svc.start(timeout=120)
        reference = svc.post("/v1/audio/speech", json={"input": TRANSCRIPT}).content
        cache = os.path.realpath(os.path.join(svc.state_dir, "cache", "gradio"))
        ui = GradioAPI(svc.url)
        uploaded = ui.upload("reference.wav", reference)
        assert os.path.realpath(uploaded).startswith(cache + os.sep), uploaded
        with open(uploaded, "rb") as f:
            assert f.read() == reference

        voice = next(p for p in ui.parameters("synthesize") if p["label"] == "Voice")
        choices = voice["type"].get("enum") or []
        upload_choice = next((c for c in choices if "upload" in c), "default")
        data = ui.inputs("synthesize", {"Voice": upload_choice, "Reference audio": ui.file(uploaded, "reference.wav"),
                                        "Prompt text": TRANSCRIPT, "Text to speak": "你好，世界。"})
        result, status = ui.call("synthesize", data)[:2]
        assert result and status.startswith("Done"), status
        assert os.path.realpath(result["path"]).startswith(cache + os.sep), result
        assert os.path.getsize(result["path"]) > 1000

        saved = ui.call("save_voice", ["Iris", ui.file(uploaded, "reference.wav"), TRANSCRIPT])[2]
        assert saved.startswith("Saved voice Iris"), saved
        assert svc.get("/healthz").json()["ui"] == "ready"
        assert os.listdir(tmpdir) == [], "the service wrote into TMPDIR: %s" % os.listdir(tmpdir)
        assert "GRADIO_TEMP_DIR" not in svc.stderr(), "an empty GRADIO_TEMP_DIR is no reason to warn"
    finally:
        svc.stop()
    assert os.listdir(tmpdir) == []
    assert os.stat(os.path.join(svc.state_dir, "cache")).st_mode & 0o077 == 0, "personal data: 0700"


@pytest.fixture
def settings(tmp_path):
    cfg = tmp_path / "glmtts.toml"
    cfg.write_text('[paths]\nstate_dir = "%s"\noutput_dir = "%s"\n' % (tmp_path / "state", tmp_path / "outputs"))
    return config.load(str(cfg), env={})


def put(path, data=b"x" * 100, mtime=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def test_prune_deletes_what_is_older_than_retention_and_keeps_the_rest(settings):
    real = time.time()
    now = real + 8 * DAY  # every file made "now" is 8 days old by this clock
    g, t = cachedir.gradio_dir(settings), cachedir.tmp_dir(settings)
    old_upload = put(os.path.join(g, "a" * 40, "anna.wav"), b"RIFF" * 50)
    old_tmp = put(os.path.join(t, "glmtts-batch-ui", "job.zip"))
    young = put(os.path.join(g, "b" * 40, "fresh.wav"), mtime=now - 1800)  # touched 30 min ago
    outside = put(os.path.join(settings.paths.state_dir, "voices", "keep.json"))

    dry = cachedir.prune(settings, now=now, dry_run=True)
    assert (dry["files"], dry["bytes_freed"]) == (2, 300) and os.path.exists(old_upload)

    report = cachedir.prune(settings, now=now)
    assert report["older_than_days"] == settings.batch.retention_days == 7.0
    assert (report["files"], report["bytes_freed"], report["errors"]) == (2, 300, [])
    assert not os.path.exists(old_upload) and not os.path.exists(old_tmp)
    assert not os.path.exists(os.path.dirname(old_upload)), "an emptied old directory stays behind"
    assert os.path.exists(young) and os.path.exists(outside)
    assert os.path.isdir(g) and os.path.isdir(t), "the cache roots themselves are kept"


def test_prune_keeps_a_recent_copy_with_an_old_mtime_and_a_floor_of_an_hour(settings):
    real = time.time()
    g = cachedir.gradio_dir(settings)
    # a copy2'd example keeps its source's old mtime; its ctime says when it was made
    copied = put(os.path.join(g, "c" * 40, "example.wav"), mtime=real - 400 * DAY)
    assert cachedir.prune(settings, now=real + 60)["files"] == 0 and os.path.exists(copied)
    # retention_days = 0 still spares what an open page may submit within the hour
    assert cachedir.prune(settings, older_than_days=0, now=real + 1800)["files"] == 0
    assert cachedir.prune(settings, older_than_days=0, now=real + 2 * 3600)["files"] == 1
    assert not os.path.exists(copied)


def test_batch_prune_prunes_the_cache_with_the_same_age(settings):
    old = put(os.path.join(cachedir.gradio_dir(settings), "d" * 40, "old.wav"))
    report = retention.prune(settings, now=time.time() + 8 * DAY)
    assert report["cache"]["files"] == 1 and not os.path.exists(old)
    assert retention.prune(settings, now=time.time() + 8 * DAY)["cache"]["files"] == 0


def test_glmtts_batch_prune_reports_the_cache(settings, tmp_path):
    put(os.path.join(cachedir.gradio_dir(settings), "e" * 40, "new.wav"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLMTTS_")}
    env.update(GLMTTS_CONFIG=str(tmp_path / "glmtts.toml"), PYTHONPATH=REPO)
    r = subprocess.run([sys.executable, "-m", "glmtts.cli", "batch", "prune", "--json", "--dry-run"], env=env,
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    cache = json.loads(r.stdout)["cache"]
    assert cache["dirs"][0] == cachedir.gradio_dir(settings) and cache["files"] == 0  # one second old: kept


def test_the_service_pruner_runs_at_start_and_then_periodically(settings):
    clock = {"now": time.time()}
    first = put(os.path.join(cachedir.gradio_dir(settings), "f" * 40, "first.wav"))
    pruner = cachedir.Pruner(settings, every_s=0.05, now=lambda: clock["now"]).start()
    try:
        time.sleep(0.3)
        assert os.path.exists(first), "pruned a file younger than batch.retention_days"
        clock["now"] += 8 * DAY
        deadline = time.monotonic() + 10
        while os.path.exists(first) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not os.path.exists(first), "the periodic prune did not run"
    finally:
        pruner.stop()
    pruner._thread.join(5)
    assert not pruner._thread.is_alive(), "stop() did not end the pruner"


def test_use_for_process_points_gradio_and_tempfile_at_the_state_dir(settings, monkeypatch, caplog):
    import tempfile

    env = {"GRADIO_TEMP_DIR": "/elsewhere/gradio"}
    monkeypatch.setattr(tempfile, "tempdir", tempfile.tempdir)  # restored after the test
    paths = cachedir.use_for_process(settings, environ=env)
    assert env == {"GRADIO_TEMP_DIR": cachedir.gradio_dir(settings), "TMPDIR": cachedir.tmp_dir(settings)} == paths
    assert tempfile.gettempdir() == cachedir.tmp_dir(settings)
    assert "GRADIO_TEMP_DIR=/elsewhere/gradio is replaced" in caplog.text
