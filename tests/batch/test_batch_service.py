"""Batch jobs through the real service process: kill -9 mid-job and restart (the job
completes by itself), interactive requests served while a batch runs, the per-line 422
report, cancel, the zip archive, 507 when the state disk or the outputs directory is full."""

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile

import pytest

from glmtts.batch.store import check_output_space
from glmtts.batch.validate import validate_bytes
from glmtts.errors import DiskFullError
from tests.support.batch import PROMPT_TEXT, Sandbox, assert_speech, reference_wav
from tests.support.service import FAULT_ENGINE, ServiceProcess

pytestmark = pytest.mark.integration


def jsonl(n, text="Clip %d.", **extra):
    lines = []
    for i in range(n):
        t = {"prompt_audio": "voice.wav", "prompt_text": PROMPT_TEXT, "input_text": text % i,
             "output_name": "clip_%03d" % i}
        t.update(extra)
        lines.append(json.dumps(t))
    return ("\n".join(lines) + "\n").encode()


def new_service(tmp_path, **env):
    svc = ServiceProcess(tmp_path, dict(env), engine=FAULT_ENGINE)
    with open(os.path.join(svc.prompt_root, "voice.wav"), "wb") as f:
        f.write(reference_wav())
    return svc


@contextlib.contextmanager
def slow_service(tmp_path, seconds_per_task):
    """A started service whose engine takes ``seconds_per_task`` per call (the fault
    engine's file: the test may rewrite it), stopped afterwards whatever happened."""
    fault = tmp_path / "fault"
    fault.write_text("slow:%s\n" % seconds_per_task)
    svc = new_service(tmp_path, GLMTTS_TEST_FAULT_FILE=str(fault))
    try:
        svc.start()
        yield svc, fault
    finally:
        svc.stop()


def poll(svc, job_id, until, timeout=120):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        r = svc.get("/v1/batches/%s" % job_id, timeout=10)
        assert r.status_code == 200, r.text
        last = r.json()
        if until(last):
            return last
        time.sleep(0.05)
    raise AssertionError("batch %s: condition not reached in %ds; last: %s" % (job_id, timeout, last))


def test_kill_9_the_service_mid_job_and_the_job_completes_by_itself_after_restart(tmp_path):
    fault = tmp_path / "fault"
    fault.write_text("slow:0.02\n")
    svc = new_service(tmp_path, GLMTTS_TEST_FAULT_FILE=str(fault))
    n = 200
    try:
        svc.start()
        r = svc.post("/v1/batches", data=jsonl(n), headers={"Content-Type": "application/x-ndjson"})
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        poll(svc, job_id, lambda s: s["progress"]["done"] >= 40)
        svc.proc.kill()  # SIGKILL, by the PID we started
        svc.proc.wait(30)
        interrupted = json.load(open(os.path.join(svc.state_dir, "batches", job_id, "job.json")))
        assert interrupted["status"] in ("running", "paused")
        fault.write_text("")
        svc.start()
        final = poll(svc, job_id, lambda s: s["state"] == "done")
        assert final["progress"] == {"total": n, "done": n, "failed": 0, "pending": 0, "percent": 100.0}
        assert "resume" in svc.stderr()
        out_dir = os.path.join(svc.output_dir, job_id)
        assert sorted(os.listdir(out_dir)) == ["clip_%03d.wav" % i for i in range(n)]  # no temp files
        done = [json.loads(line) for line in open(os.path.join(svc.state_dir, "batches", job_id, "journal.jsonl"))
                if '"t":"done"' in line]
        assert sorted(r["task"] for r in done) == list(range(n)), "a task was produced twice or never"
        archive = svc.get("/v1/batches/%s/archive" % job_id)
        assert archive.status_code == 200 and archive.headers["content-type"] == "application/zip"
        z = zipfile.ZipFile(io.BytesIO(archive.content))
        assert sorted(z.namelist()) == sorted(["clip_%03d.wav" % i for i in range(n)] + ["manifest.json"])
        manifest = json.loads(z.read("manifest.json"))
        assert manifest["progress"]["done"] == n and all(t["status"] == "done" for t in manifest["tasks"])
        z.extract("clip_123.wav", str(tmp_path))
        assert_speech(str(tmp_path / "clip_123.wav"))
    finally:
        svc.stop()


def test_interactive_requests_are_served_while_a_batch_runs_and_failures_do_not_stop_it(tmp_path):
    with slow_service(tmp_path, 0.05) as (svc, fault):
        body = jsonl(80).decode().splitlines()
        # task 6's reference disappears after validation: it fails, the job goes on
        shutil.copy(os.path.join(svc.prompt_root, "voice.wav"), os.path.join(svc.prompt_root, "doomed.wav"))
        body[5] = body[5].replace("voice.wav", "doomed.wav")
        r = svc.post("/v1/batches", data="\n".join(body).encode())
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        os.unlink(os.path.join(svc.prompt_root, "doomed.wav"))
        poll(svc, job_id, lambda s: s["progress"]["done"] >= 3)
        for i in range(3):
            t0 = time.monotonic()
            speech = svc.post("/v1/audio/speech", json={"input": "Interactive request %d." % i,
                                                        "response_format": "wav"})
            elapsed = time.monotonic() - t0
            assert speech.status_code == 200, speech.text
            with open(tmp_path / "i.wav", "wb") as f:
                f.write(speech.content)
            assert_speech(str(tmp_path / "i.wav"))
            state = svc.get("/v1/batches/%s" % job_id).json()
            assert state["progress"]["pending"] > 0, "the request waited for the whole batch"
            assert elapsed < 30
        fault.write_text("")
        final = poll(svc, job_id, lambda s: s["state"] == "done")
        assert final["progress"]["done"] == 79 and final["progress"]["failed"] == 1
        assert final["failures"][0]["line"] == 6 and "not found" in final["failures"][0]["reason"]
        assert svc.get("/healthz").status_code == 200
        metrics = svc.get("/metrics").text
        assert 'glmtts_batch_tasks_total{outcome="done"} 79.0' in metrics
        assert 'glmtts_batch_tasks_total{outcome="failed"} 1.0' in metrics


def test_invalid_upload_gets_422_with_the_per_line_report_and_cancel_and_404(tmp_path):
    with slow_service(tmp_path, 0.05) as (svc, fault):
        bad = jsonl(3).decode().splitlines()
        bad[1] = '{"prompt_audio": "../../etc/passwd", "prompt_text": "x", "input_text": "y", "output_name": "z"}'
        files = {"file": ("book.jsonl", ("\n".join(bad) + "\n").encode(), "application/x-ndjson")}
        r = svc.post("/v1/batches", files=files)
        assert r.status_code == 422
        body = r.json()
        assert body["error"]["code"] == "invalid_batch" and "line(s) 2" in body["error"]["message"]
        assert body["report"]["valid_lines"] == [1, 3]
        assert body["report"]["errors"][0]["line"] == 2 and "'..'" in body["report"]["errors"][0]["message"]
        batches = os.path.join(svc.state_dir, "batches")
        assert not os.path.isdir(batches) or not [n for n in os.listdir(batches) if n[0].isdigit()], "a job was created"
        # skip_invalid runs the valid lines
        r = svc.post("/v1/batches?skip_invalid=true", data=("\n".join(bad) + "\n").encode())
        assert r.status_code == 201 and r.json()["tasks"] == 2 and r.json()["skipped_lines"] == [2]
        # cancel a long job
        r = svc.post("/v1/batches", data=jsonl(200))
        job_id = r.json()["id"]
        poll(svc, job_id, lambda s: s["progress"]["done"] >= 2)
        r = svc.delete("/v1/batches/%s" % job_id)
        assert r.status_code == 200
        final = poll(svc, job_id, lambda s: s["state"] == "cancelled")
        assert final["progress"]["pending"] > 100
        produced = len(os.listdir(os.path.join(svc.output_dir, job_id)))
        time.sleep(0.5)
        assert len(os.listdir(os.path.join(svc.output_dir, job_id))) == produced == final["progress"]["done"]
        listing = svc.get("/v1/batches").json()
        assert len(listing["data"]) == 2
        r = svc.get("/v1/batches/20990101-000000-abcdef")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        r = svc.get("/v1/batches/..%2F..%2Fetc")
        assert r.status_code == 404


def test_submission_on_a_full_disk_answers_507(tmp_path):
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) to mount a private tmpfs")
    svc = new_service(tmp_path)
    batches = os.path.join(svc.state_dir, "batches")
    os.makedirs(batches)
    script = ('mount --make-rprivate / && mount -t tmpfs -o size=256k tmpfs "$B" && '
              'head -c 600000 /dev/zero > "$B/filler" 2>/dev/null; exec "$@"')
    with open(svc.stdout_path, "ab") as out, open(svc.stderr_path, "ab") as err:
        svc.proc = subprocess.Popen(["unshare", "--mount", "sh", "-c", script, "sh", sys.executable, "-m", "service"],
                                    cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                    env=dict(svc.env, B=batches), stdout=out, stderr=err, start_new_session=True)
    try:
        svc.wait_healthy()
        r = svc.post("/v1/batches", data=jsonl(3))
        assert r.status_code == 507, r.text
        err = r.json()["error"]
        assert err["code"] == "disk_full" and "no space left on device" in err["message"]
        assert "glmtts batch prune" in err["message"]
        assert svc.get("/healthz").status_code == 200
    finally:
        svc.stop()


def test_output_space_check_with_fake_free_space_figures(tmp_path):
    box = Sandbox(tmp_path / "box")
    settings = box.settings
    report = validate_bytes(jsonl(3), settings)
    assert report.ok and report.estimate["output_bytes"] > 3 * 24000  # ~1 s of 16-bit audio per clip
    needed, free = check_output_space(settings, report, free_bytes=lambda path: 10 << 20)
    assert report.estimate["output_bytes"] < needed < free == 10 << 20
    asked = []
    with pytest.raises(DiskFullError) as e:
        check_output_space(settings, report, free_bytes=lambda path: asked.append(path) or 300 * 1024)
    assert asked == [box.output_dir]
    assert e.value.http_status == 507 and e.value.code == "disk_full"
    msg = str(e.value)
    assert "%s has 300.0 KB free, the job needs about 1." % box.output_dir in msg, msg
    assert "`glmtts batch prune --older-than DAYS`" in msg and "runbooks/disk-full.md" in msg


FULL_OUTPUTS = ('mount --make-rprivate / && mount -t tmpfs -o size=2m tmpfs "$O" && '
                'head -c 1700000 /dev/zero > "$O/filler" && exec "$@"')


def test_submission_when_the_outputs_dir_is_full_answers_507_then_runs_once_space_is_freed(tmp_path):
    if os.geteuid() != 0 or not shutil.which("unshare"):
        if os.environ.get("GLMTTS_TEST_REQUIRE_SYSTEMD"):
            pytest.fail("needs root and unshare(1) to mount a private tmpfs")
        pytest.skip("needs root and unshare(1) to mount a private tmpfs")
    svc = new_service(tmp_path)
    # a 2 MB tmpfs over the outputs directory, in the service's own mount namespace only
    with open(svc.stdout_path, "ab") as out, open(svc.stderr_path, "ab") as err:
        svc.proc = subprocess.Popen(["unshare", "--mount", "sh", "-c", FULL_OUTPUTS, "sh", sys.executable, "-m",
                                     "service"], cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                    env=dict(svc.env, O=svc.output_dir), stdout=out, stderr=err,
                                    start_new_session=True)
    try:
        svc.wait_healthy()
        inside = "/proc/%d/root%s" % (svc.proc.pid, svc.output_dir)  # the tmpfs, seen from here
        r = svc.post("/v1/batches", data=jsonl(3))
        assert r.status_code == 507, r.text
        err = r.json()["error"]
        assert err["code"] == "disk_full"
        m = re.search(r"%s has ([\d.]+ KB) free, the job needs about ([\d.]+ MB)" % re.escape(svc.output_dir),
                      err["message"])
        assert m, err["message"]
        assert "glmtts batch prune" in err["message"] and "runbooks/disk-full.md" in err["message"]
        assert os.listdir(inside) == ["filler"], "a job was started on the full disk"
        assert svc.get("/v1/batches").json()["data"] == []
        assert "POST /v1/batches -> 507 disk_full" in svc.stderr()
        assert svc.get("/healthz").status_code == 200
        speech = svc.post("/v1/audio/speech", json={"input": "Still serving.", "response_format": "wav"})
        assert speech.status_code == 200, speech.text
        (tmp_path / "s.wav").write_bytes(speech.content)
        assert_speech(str(tmp_path / "s.wav"))

        os.unlink(os.path.join(inside, "filler"))
        r = svc.post("/v1/batches", data=jsonl(3))
        assert r.status_code == 201, r.text
        final = poll(svc, r.json()["id"], lambda s: s["state"] == "done", timeout=60)
        assert final["progress"]["done"] == 3
        job_out = os.path.join(inside, r.json()["id"])
        assert sorted(os.listdir(job_out)) == ["clip_000.wav", "clip_001.wav", "clip_002.wav"]
        assert_speech(os.path.join(job_out, "clip_001.wav"))
    finally:
        svc.stop()
    assert not os.listdir(svc.output_dir), "the tmpfs leaked out of the mount namespace"
