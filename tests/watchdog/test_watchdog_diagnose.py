"""`glmtts-watchdog diagnose` tells the current story: evidence the watchdog has not
handled yet (not the highest-ranked line of an old, handled incident), the runbook the
cycle itself would choose, the escalated incident's runbook while automation waits, and
the engine's own last error line. It changes nothing."""

import os

from glmtts.watchdog import diagnose
from glmtts.watchdog.cycle import Watchdog
from glmtts.watchdog.incidents import IncidentLog, incidents_path
from glmtts.watchdog.runbook import default_dir, load_all
from tests.support.watchdog_fakes import RecordingHost, FakeClock, FakeManager, HealthServer, settings_for

RUNBOOKS = load_all(default_dir())


def write(s, text):
    with open(os.path.join(s.paths.log_dir, "error.log"), "a") as f:
        f.write(text)


def test_diagnose_follows_the_story_and_names_the_runbook_the_cycle_runs(tmp_path):
    with HealthServer(200) as srv:
        s = settings_for(tmp_path, url=srv.url, watchdog__ready_timeout_s=3.0)
        mgr = FakeManager(pid=100)
        wd = Watchdog(s, host=RecordingHost(clock=FakeClock()), manager=mgr, runbooks=RUNBOOKS)
        write(s, "2026-12-01T10:00:00.000Z ERROR service.worker: RuntimeError: CUDA error: an illegal memory access was encountered\n")
        item = diagnose.report(wd)["instances"][0]
        assert item["runbook_id"] == "cuda-fatal" and item["decision"] == "remediating"
        wd.check()  # the cycle handles the CUDA error
        assert IncidentLog(incidents_path(s)).read()[-1]["runbook"] == "cuda-fatal"

        # later: the engine cannot load and the manager gives up
        write(s, "2026-12-01T11:00:00.000Z ERROR service.runtime: engine load failed: test engine cannot load: "
                 "weights file ckpt/missing.safetensors not found\n")
        mgr.state, mgr.pid, srv.status_code = "crash_loop", None, 503
        state_before = open(wd.state_path).read()
        rep = diagnose.report(wd)
        item = rep["instances"][0]
        assert item["runbook_id"] == "crash-loop", item["now"]
        assert not any("illegal memory access" in e["line"] for e in item["evidence"])  # handled already
        assert "weights file ckpt/missing.safetensors not found" in item["engine_error"]
        text = diagnose.render(rep)
        assert "runbook to open: " in text and "crash-loop.md" in text and "engine's last error: " in text
        assert open(wd.state_path).read() == state_before  # read-only

        wd.check()
        inc = IncidentLog(incidents_path(s)).read()[-1]
        assert inc["runbook"] == item["runbook_id"] and inc["outcome"] == "escalated"
        item = diagnose.report(wd)["instances"][0]  # escalated: the story is that incident's
        assert item["decision"] == "suppressed" and item["runbook_id"] == "crash-loop" and "ESCALATED" in item["now"]


def test_diagnose_says_nothing_is_wrong_when_nothing_is(tmp_path):
    with HealthServer(200) as srv:
        s = settings_for(tmp_path, url=srv.url)
        wd = Watchdog(s, host=RecordingHost(clock=FakeClock()), manager=FakeManager(pid=100), runbooks=RUNBOOKS)
        wd.check()
        item = diagnose.report(wd)["instances"][0]
        assert item["decision"] == "ok" and item["runbook"] is None and item["now"] == "nothing is wrong now"
