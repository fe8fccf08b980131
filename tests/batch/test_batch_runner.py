"""The batch runner and store in-process, on the real espeak engine: failing tasks,
CUDA OOM (faked: no GPU here), poison tasks, torn journals, cancellation, retention."""

import errno
import json
import os
import threading

import pytest

from glmtts import engines
from glmtts.batch import states
from glmtts.batch.retention import prune
from glmtts.batch.runner import EngineSynthesizer, Runner
from glmtts.batch.store import JobStore, Journal
from glmtts.batch.validate import validate_file
from glmtts.errors import EngineOOMError
from tests.support.batch import Sandbox, assert_speech
from tests.support.host import RecordingHost

_ENGINE = {}


@pytest.fixture
def box(tmp_path):
    return Sandbox(tmp_path / "box")


def espeak(settings):
    if "e" not in _ENGINE:
        e = engines.create(settings)
        e.load()
        _ENGINE["e"] = e
    return _ENGINE["e"]


def make_job(box, tasks, out_dir=None):
    path = box.write_job("job.jsonl", tasks)
    report = validate_file(path, box.settings)
    assert report.ok, report.format_text()
    return JobStore(box.settings).create(path, report, source=path, out_dir=out_dir)


def outputs(job):
    return sorted(n for n in os.listdir(job.out_dir))


class FakeOOMSynth(EngineSynthesizer):
    """Raises EngineOOMError for texts containing 'OOM' (at 32 kHz only, or always for
    'ALWAYS'), like a GPU engine after it released what it could. No GPU here."""

    def __init__(self, engine):
        super().__init__(engine)
        self.released = 0
        self.rates = []

    def synthesize(self, request):
        self.rates.append(request.sample_rate)
        if "OOM" in request.text and (request.sample_rate == 32000 or "ALWAYS" in request.text):
            raise EngineOOMError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().synthesize(request)

    def release_memory(self):
        self.released += 1


def test_failing_tasks_are_recorded_and_the_job_goes_on(box):
    tasks = [box.task(i) for i in range(6)]
    tasks[1]["prompt_audio"] = "gone.wav"
    tasks[3]["input_text"] = "   ...   "  # no speakable text
    open(os.path.join(box.prompt_root, "gone.wav"), "wb").write(open(os.path.join(box.prompt_root, "voice.wav"), "rb").read())
    job = make_job(box, tasks)
    os.unlink(os.path.join(box.prompt_root, "gone.wav"))  # deleted after validation
    summary = Runner(job, EngineSynthesizer(espeak(box.settings)), box.settings).run()
    failed = {f["line"]: f["reason"] for f in summary["failures"]}
    assert 2 in failed and "not found" in failed[2]
    assert summary["status"] == states.DONE
    assert summary["progress"]["done"] + summary["progress"]["failed"] == 6
    for i in (0, 2, 4, 5):
        assert_speech(os.path.join(job.out_dir, "clip_%03d.wav" % i))
    assert "clip_001.wav" not in outputs(job)


def test_cuda_oom_with_fake_oom_engine_retries_at_24khz_then_fails_only_that_task(box):
    tasks = [box.task(0), box.task(1, input_text="OOM once.", sample_rate=32000),
             box.task(2, input_text="OOM ALWAYS.", sample_rate=32000), box.task(3, sample_rate=32000)]
    job = make_job(box, tasks)
    synth = FakeOOMSynth(espeak(box.settings))
    summary = Runner(job, synth, box.settings).run()
    assert summary["status"] == states.DONE
    assert [f["output_name"] for f in summary["failures"]] == ["clip_002"]
    assert "CUDA out of memory, also on the retry at 24000 Hz" in summary["failures"][0]["reason"]
    assert synth.released == 3  # once per OOM: task 1 once, task 2 twice
    done = job.progress().done
    assert done[1]["sample_rate"] == 24000 and "out-of-memory" in done[1]["note"]
    assert done[3]["sample_rate"] == 32000
    assert outputs(job) == ["clip_000.wav", "clip_001.wav", "clip_003.wav"]


def test_a_task_that_killed_the_process_three_times_is_failed_not_retried_forever(box):
    job = make_job(box, [box.task(i) for i in range(3)])
    for _ in range(3):
        job.journal.append({"t": "start", "task": 1, "line": 2, "output_name": "clip_001"})
    summary = Runner(job, EngineSynthesizer(espeak(box.settings)), box.settings).run()
    assert [(f["line"], "died 3 times" in f["reason"]) for f in summary["failures"]] == [(2, True)]
    assert outputs(job) == ["clip_000.wav", "clip_002.wav"]


def test_torn_journal_line_is_ignored_and_cut_so_appends_stay_readable(tmp_path):
    path = str(tmp_path / "journal.jsonl")
    with open(path, "w") as f:
        f.write('{"t":"done","task":0}\n{"t":"done","ta')
    j = Journal(path)
    assert j.replay() == [{"t": "done", "task": 0}]
    j.append({"t": "done", "task": 1})
    j.close()
    assert [json.loads(line) for line in open(path)] == [{"t": "done", "task": 0}, {"t": "done", "task": 1}]


def test_output_renamed_but_not_journalled_is_redone_once_and_temp_files_removed(box):
    job = make_job(box, [box.task(i) for i in range(3)])
    os.makedirs(job.out_dir, exist_ok=True)
    # what a kill -9 can leave: a complete output not yet journalled, and a partial temp file
    open(os.path.join(job.out_dir, "clip_001.wav"), "wb").write(b"RIFF old")
    open(os.path.join(job.out_dir, ".clip_002.wav.%s.part" % job.id), "wb").write(b"RIFF partial")
    Runner(job, EngineSynthesizer(espeak(box.settings)), box.settings).run()
    assert outputs(job) == ["clip_000.wav", "clip_001.wav", "clip_002.wav"]
    assert_speech(os.path.join(job.out_dir, "clip_001.wav"))
    done = [r["task"] for r in job.journal.replay() if r["t"] == "done"]
    assert sorted(done) == [0, 1, 2]


def full_disk(fail):
    """The recording host whose output disk reports ENOSPC for the first ``fail`` writes and
    no free space on the first two looks (the real-filesystem version of this is in
    test_batch_durability.py)."""
    host = RecordingHost()
    host.fail("atomic_write", OSError(errno.ENOSPC, "No space left on device"), times=fail)
    looks = []
    host.free = lambda path: looks.append(path) or (0 if len(looks) < 3 else 10 << 30)
    return host


def test_enospc_pauses_without_failing_tasks_then_resumes(box, caplog):
    job = make_job(box, [box.task(i) for i in range(4)])
    host = full_disk(fail=2)
    states_seen = []
    orig = job.transition

    def spy(status, **kw):
        states_seen.append(status)
        return orig(status, **kw)
    job.transition = spy
    summary = Runner(job, EngineSynthesizer(espeak(box.settings)), box.settings, host=host, backoff=(0.01, 0.05)).run()
    assert summary["status"] == states.DONE and summary["progress"]["failed"] == 0
    assert outputs(job) == ["clip_%03d.wav" % i for i in range(4)]
    assert states_seen == [states.RUNNING, states.PAUSED, states.RUNNING, states.DONE]
    assert host.names().count("atomic_write") == 4 + 2  # each refused write was retried once space came back
    assert "No space left on device" in caplog.text


def test_cancel_stops_after_the_current_task(box):
    job = make_job(box, [box.task(i) for i in range(20)])
    runner = Runner(job, EngineSynthesizer(espeak(box.settings)), box.settings,
                    on_progress=lambda j, p: j.request_cancel() if len(p.done) == 3 else None)
    summary = runner.run()
    assert summary["status"] == states.CANCELLED and summary["progress"]["done"] == 3
    assert len(outputs(job)) == 3


def test_stop_leaves_the_job_resumable(box):
    stop = threading.Event()
    job = make_job(box, [box.task(i) for i in range(10)])
    summary = Runner(job, EngineSynthesizer(espeak(box.settings)), box.settings, stop=stop,
                     on_progress=lambda j, p: stop.set() if len(p.done) == 4 else None).run()
    assert summary["status"] == states.QUEUED and summary["progress"]["done"] == 4
    assert [j.id for j in JobStore(box.settings).resumable()] == [job.id]
    summary = Runner(JobStore(box.settings).get(job.id), EngineSynthesizer(espeak(box.settings)), box.settings).run()
    assert summary["status"] == states.DONE and len(outputs(job)) == 10


def test_prune_deletes_old_finished_jobs_and_reports_bytes(box, tmp_path):
    store = JobStore(box.settings)
    old = make_job(box, [box.task(i) for i in range(2)])
    Runner(old, EngineSynthesizer(espeak(box.settings)), box.settings).run()
    user_dir = str(tmp_path / "mine")
    mine = make_job(box, [box.task(i) for i in range(2)], out_dir=user_dir)
    Runner(mine, EngineSynthesizer(espeak(box.settings)), box.settings).run()
    unfinished = make_job(box, [box.task(i) for i in range(2)])
    now = store.get(old.id).state["finished_at"] + 8 * 86400
    report = prune(box.settings, now=now)
    assert sorted(report["pruned"]) == sorted([old.id, mine.id])
    assert report["bytes_freed"] > 2 * 40000 and report["unfinished"] == 1
    assert report["kept_outputs"] == [os.path.realpath(user_dir)]
    assert not os.path.exists(old.out_dir) and not os.path.exists(old.dir)
    assert sorted(os.listdir(user_dir)) == ["clip_000.wav", "clip_001.wav"]  # the user's files stay
    assert [j.id for j in store.list()] == [unfinished.id]
    assert prune(box.settings, now=now)["pruned"] == []
    assert prune(box.settings, older_than_days=30, now=now)["pruned"] == []
