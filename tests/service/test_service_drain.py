"""The drain (service/drain.py): the state machine with time passed in, then a real service
process stopped with real signals under load: queued work finishes with real audio, new
work is refused with 503 draining + Retry-After, the health routes tell the truth, exit 0."""

import re
import signal
import time

import pytest
import requests

from service.drain import DELAY, DONE, EXPIRED, FINISHING, SERVING, ADMITTED, Drain, DrainingError
from tests.plugins.drain_load import DrainLoad
from tests.support.service import FAULT_ENGINE, ServiceProcess

# -- the state machine ----------------------------------------------------------------------


def test_a_drain_arrow_outside_its_table_raises_and_changes_nothing():
    """service/drain.py DRAIN is the one table: a finished drain never serves again, and
    no state is skipped (the listener closes on finishing, always)."""
    from glmtts.machine import InvalidTransition
    from service.drain import DRAIN, SERVING
    assert DRAIN.pairs == [(SERVING, DELAY), (DELAY, FINISHING), (FINISHING, DONE), (FINISHING, EXPIRED),
                           (EXPIRED, DONE)]
    d = Drain(delay_s=0, timeout_s=1)
    for bad in (FINISHING, EXPIRED, DONE):
        with pytest.raises(InvalidTransition, match="serving -> %s" % bad):
            d._transition(bad, 1.0, "skipping")
        assert d.state == SERVING and d.done_at is None


def test_drain_walks_delay_finishing_done_in_time():
    d = Drain(delay_s=5, timeout_s=60)
    entered = []
    for state in (DELAY, FINISHING, EXPIRED, DONE):
        d.on_enter[state].append(lambda dr, s=state: entered.append(s))
    assert d.refusal() is None and not d.active
    assert d.begin(100.0, "SIGTERM", pending=3)
    assert not d.begin(101.0, "SIGTERM"), "a second signal starts no second drain"
    assert d.advance(104.9, pending=3) == DELAY, "the listener stays open for the whole delay"
    assert d.advance(105.0, pending=2) == FINISHING
    assert d.advance(150.0, pending=1) == FINISHING
    assert d.advance(151.0, pending=0) == DONE
    assert entered == [DELAY, FINISHING, DONE]


@pytest.mark.parametrize("ready, expires_at", [(True, 165.0), (False, 160.0)])
def test_drain_deadline_counts_from_the_end_of_the_delay(ready, expires_at):
    # not ready at the signal (loading, failed): nobody routes to it, so no delay
    d = Drain(delay_s=5, timeout_s=60)
    d.begin(100.0, "SIGTERM", pending=4, ready=ready)
    d.advance(expires_at - 0.01, pending=4)
    assert d.state == FINISHING
    assert d.advance(expires_at, pending=4) == EXPIRED
    d.admitted_in_flight = 2  # their 503s are being written
    assert d.advance(expires_at + 1.0, pending=0) == EXPIRED
    d.admitted_in_flight = 0
    assert d.advance(expires_at + 1.1, pending=0) == DONE


def test_expired_gives_up_on_waiters_after_the_leftover_grace():
    d = Drain(delay_s=0, timeout_s=1)
    d.begin(0.0, "SIGTERM", pending=1)
    d.advance(1.0, pending=1)
    d.admitted_in_flight = 1  # a waiter that never answers
    assert d.advance(3.9, pending=1) == EXPIRED
    assert d.advance(4.1, pending=1) == DONE


def test_refusal_admits_only_work_that_arrived_before_the_signal():
    d = Drain(delay_s=2, timeout_s=10)
    d.begin(0.0, "SIGINT")
    err = d.refusal()
    assert isinstance(err, DrainingError) and err.http_status == 503 and err.code == "draining"
    assert err.retry_after == 2 and "draining" in str(err) and "SIGINT" in str(err)
    token = ADMITTED.set(True)
    try:
        assert d.refusal() is None, "a request admitted before the signal is still served"
        d.advance(12.0, pending=1)
        assert d.state == EXPIRED and d.refusal() is not None, "after the deadline nothing is"
    finally:
        ADMITTED.reset(token)


def test_second_sigint_stops_waiting():
    d = Drain(delay_s=5, timeout_s=60)
    d.begin(0.0, "SIGINT", pending=2)
    d.hurry(1.0)
    assert d.advance(1.0, pending=2) == EXPIRED


def test_serving_is_untouched_by_advance():
    d = Drain(delay_s=5, timeout_s=60)
    assert d.advance(1e9, pending=0) == SERVING and d.describe(0.0)["state"] == SERVING


# -- a real process, real signals -------------------------------------------------------------

DELAY_S = 3.0


def slow_service(tmp_path, *, slow_s, delay_s, timeout_s, name="svc"):
    return ServiceProcess(tmp_path, {
        "GLMTTS_TEST_FAULT": "slow:%g" % slow_s,  # each synthesis sleeps first (tests/plugins/faults.py)
        "GLMTTS_LIMITS_MAX_CONCURRENCY": "1",
        "GLMTTS_LIMITS_MAX_QUEUE": "32",
        "GLMTTS_SERVER_DRAIN_DELAY_S": str(delay_s),
        "GLMTTS_SERVER_DRAIN_TIMEOUT_S": str(timeout_s),
    }, engine=FAULT_ENGINE, name=name)


def no_trouble_in(stderr):
    assert "Traceback" not in stderr, stderr[-4000:]
    assert not re.search(r" (ERROR|CRITICAL) ", stderr), stderr[-4000:]


def poll(url, path, want_status, want_body_status, within_s):
    deadline = time.monotonic() + within_s
    last = None
    while time.monotonic() < deadline:
        r = requests.get(url + path, timeout=2)
        last = (r.status_code, r.json())
        if r.status_code == want_status and r.json().get("status") == want_body_status:
            return r.json()
        time.sleep(0.05)
    raise AssertionError("%s never answered %s %s: last %s" % (path, want_status, want_body_status, last))


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_sigterm_under_load_finishes_every_queued_request_and_exits_0(tmp_path):
    svc = slow_service(tmp_path, slow_s=0.5, delay_s=DELAY_S, timeout_s=60)
    svc.start()
    try:
        load = DrainLoad(svc.url, n=12)
        load.queue()
        t0 = time.monotonic()
        svc.proc.send_signal(signal.SIGTERM)
        load.signal_sent()
        # the delay: readiness out at once, liveness kept, healthz says why
        ready = poll(svc.url, "/readyz", 503, "draining", DELAY_S)
        assert "SIGTERM" in ready["reason"], ready
        live = requests.get(svc.url + "/livez", timeout=2)
        assert live.status_code == 200 and live.json()["status"] == "alive"
        health = requests.get(svc.url + "/healthz", timeout=2)
        assert health.status_code == 503 and health.json()["status"] == "draining"
        # (a late request sent within the 0.1 s before the server acted on the signal counts too)
        assert health.json()["drain"]["pending_at_signal"] >= 12
        batch = requests.post(svc.url + "/v1/batches", data=b'{"input": "x"}\n', timeout=10)
        assert batch.status_code == 503 and batch.json()["error"]["code"] == "draining" and batch.headers["Retry-After"]
        assert time.monotonic() - t0 < DELAY_S, "checked while the listener was still open"

        rc = svc.wait_exit(120)
        exited_after = time.monotonic() - t0
        load.finish(60)
    finally:
        svc.stop()
    report = load.report()
    assert rc == 0, svc.stderr()[-3000:]
    assert load.failures() == [], report
    assert report["queued_ok"] == 12 and report["lost"] == 0 and report["bad_5xx"] == 0, report
    assert report["late_503_draining"] >= 1, report  # new work was refused while the listener was open
    if report["first_refused_connection_s"] is not None:
        assert report["first_refused_connection_s"] >= DELAY_S - 0.5, report  # only once the delay was over
    assert exited_after < DELAY_S + 12 * 0.5 + 20, exited_after
    err = svc.stderr()
    no_trouble_in(err)
    assert "drain: finishing -> done" in err and "0 answered 503 at the deadline" in err, err[-3000:]
    access = svc.stdout()
    assert access.count("POST /v1/audio/speech 200") >= 12, access[-3000:]


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_drain_timeout_answers_the_leftovers_503_never_500(tmp_path):
    svc = slow_service(tmp_path, slow_s=1.5, delay_s=1, timeout_s=2)
    svc.start()
    try:
        load = DrainLoad(svc.url, n=12)
        load.queue()
        svc.proc.send_signal(signal.SIGTERM)
        load.signal_sent()
        rc = svc.wait_exit(60)
        load.finish(60)
    finally:
        svc.stop()
    report = load.report()
    assert rc == 0, svc.stderr()[-3000:]
    assert load.failures(allow_queued_503=True) == [], report
    assert report["bad_5xx"] == 0 and 500 not in report["statuses"], report
    assert 1 <= report["queued_ok"] < 12, report  # some finished in time, the rest did not
    assert report["queued_ok"] + report["queued_503_draining"] == 12, report
    err = svc.stderr()
    no_trouble_in(err)
    assert "drain: finishing -> expired" in err, err[-3000:]
    # every leftover was answered by the deadline's 503 (plus any late request the server
    # admitted in the moment before it acted on the signal)
    expired = int(re.search(r"(\d+) answered 503 at the deadline", err).group(1))
    assert expired >= report["queued_503_draining"], (expired, report)


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_sigint_drains_too_and_a_loading_instance_exits_without_the_delay(tmp_path):
    idle = slow_service(tmp_path, slow_s=0, delay_s=2, timeout_s=10, name="idle")
    idle.start()
    try:
        t0 = time.monotonic()
        idle.proc.send_signal(signal.SIGINT)
        assert poll(idle.url, "/readyz", 503, "draining", 2)["reason"].startswith("draining after SIGINT")
        assert idle.wait_exit(30) == 0
        assert time.monotonic() - t0 >= 1.5, "a ready instance keeps its listener for the delay"
    finally:
        idle.stop()
    no_trouble_in(idle.stderr())

    loading = ServiceProcess(tmp_path, {"GLMTTS_TEST_LOAD_DELAY_S": "60", "GLMTTS_SERVER_DRAIN_DELAY_S": "30"},
                             engine="tests.plugins.faults:SlowLoadEngine", name="loading")
    loading.start(wait=False)
    try:
        loading.wait_healthy(status=503, timeout=60)
        t0 = time.monotonic()
        loading.proc.send_signal(signal.SIGTERM)
        assert loading.wait_exit(20) == 0
        assert time.monotonic() - t0 < 10, "nothing routes to a loading instance: no 30 s delay"
    finally:
        loading.stop()
    assert "(was not ready: no delay)" in loading.stderr()


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_the_watchdog_reads_a_drain_as_a_planned_stop_not_an_incident(tmp_path):
    from glmtts.watchdog.cycle import Watchdog
    from glmtts.watchdog.incidents import IncidentLog, incidents_path
    from glmtts.watchdog.runbook import default_dir, load_all
    from tests.support.watchdog_fakes import RecordingHost, FakeClock, FakeManager, settings_for

    svc = slow_service(tmp_path, slow_s=1.0, delay_s=DELAY_S, timeout_s=60)
    svc.start()
    try:
        mgr = FakeManager(pid=svc.pid)  # a recording stand-in for systemctl / supervisorctl
        wd = Watchdog(settings_for(tmp_path / "wd", url=svc.url), host=RecordingHost(clock=FakeClock()), manager=mgr,
                      runbooks=load_all(default_dir()))
        assert wd.check().code == 0
        load = DrainLoad(svc.url, n=8)
        load.queue()
        t0 = time.monotonic()
        svc.proc.send_signal(signal.SIGTERM)
        poll(svc.url, "/readyz", 503, "draining", DELAY_S)
        during_delay = wd.check()  # /healthz 503 draining: its own verdict, nothing to remedy
        assert time.monotonic() - t0 < DELAY_S
        assert during_delay.code == 0 and "planned stop in progress, not an incident" in during_delay.summary(), \
            during_delay.summary()
        # the listener has closed but the work goes on; the manager says it is stopping
        while time.monotonic() - t0 < DELAY_S + 0.5:
            time.sleep(0.1)
        assert svc.proc.poll() is None, "still finishing the queue"
        mgr.state = "stopping"
        finishing = wd.check()
        assert finishing.code == 0 and "planned" in finishing.summary(), finishing.summary()
        assert svc.wait_exit(60) == 0
        load.finish(30)
    finally:
        svc.stop()
    assert mgr.calls == [], "nothing restarted or killed a draining service"
    records = IncidentLog(incidents_path(wd.settings)).read()
    assert all(r.get("kind") == "planned" for r in records), records
    assert load.failures() == [], load.report()


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_a_running_batch_is_stopped_early_and_does_not_hold_the_drain(tmp_path):
    import json
    import os

    from tests.support.batch import PROMPT_TEXT, reference_wav

    def start():
        svc = slow_service(tmp_path, slow_s=0.5, delay_s=1, timeout_s=60, name="batch")
        with open(os.path.join(svc.prompt_root, "voice.wav"), "wb") as f:
            f.write(reference_wav())
        return svc.start()

    n = 40  # 20 s of batch work at 0.5 s a task: far more than the drain waits for
    lines = [json.dumps({"prompt_audio": "voice.wav", "prompt_text": PROMPT_TEXT, "input_text": "Clip %d." % i,
                         "output_name": "clip_%03d" % i}) for i in range(n)]
    svc = start()
    try:
        r = svc.post("/v1/batches", data=("\n".join(lines) + "\n").encode(),
                     headers={"Content-Type": "application/x-ndjson"})
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        deadline = time.monotonic() + 60
        while svc.get("/v1/batches/%s" % job_id).json()["progress"]["done"] < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        load = DrainLoad(svc.url, n=2)  # interactive work queued beside the batch
        load.queue()
        t0 = time.monotonic()
        svc.proc.send_signal(signal.SIGTERM)
        load.signal_sent()
        assert svc.wait_exit(60) == 0
        took = time.monotonic() - t0
        load.finish(30)
    finally:
        svc.stop()
    assert load.failures() == [], load.report()
    assert took < 1 + 10, "the batch runner was told to stop at once, not waited out: %.1f s" % took
    no_trouble_in(svc.stderr())
    again = start()  # the job is left resumable, not failed, and finishes in the next process
    try:
        state = again.get("/v1/batches/%s" % job_id).json()
        assert state["state"] not in ("failed", "cancelled"), state
    finally:
        again.stop()
