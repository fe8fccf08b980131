"""The probe contract: the probe settings of the rendered GPU overlay
(ops/kubernetes/gpu, which every region inherits unchanged), driven with the kubelet's own
semantics (tests/support/kubelet.py, a FAKE kubelet: the one thing this machine cannot
run) against the REAL service process.

Time is scaled by SCALE (periods, the preStop sleep, the grace period, the back-off, and
the service's own clocks: the engine's load time, limits.worker_stall_s, the drain);
probe timeouts are not (the service must answer as fast as on a real node). Verdicts are
in the manifest's seconds: measured real seconds / SCALE.

(a) a load close to the startup budget (tests/plugins/deadline_load.py: load() ends at a
    set time after the container start) is never killed; one past it is killed by the
    startup probe, at (failureThreshold - 1..failureThreshold) x periodSeconds, and no
    liveness probe ever runs against the loading model;
(b) saturating synthesis (more requests than max_concurrency + max_queue): liveness and
    readiness never fail; a full queue answers 429 itself and the pod stays ready (by
    design: /readyz is about the model and the worker, not the load);
(c) a wedged worker: liveness fails within worker_stall_s + failureThreshold x
    periodSeconds, the kubelet restarts the container, the new one becomes ready.
"""

import threading
import time

import pytest
import requests

from tests.support import fleet
from tests.support.kubelet import LIVENESS, READINESS, STARTUP, ScaledPod, render
from tests.support.service import REPO

pytestmark = pytest.mark.integration

SCALE = 0.05           # 600 manifest s of startup budget = 30 s here
SLACK_REAL_S = 1.5     # scheduling noise on a loaded machine, in real seconds
SLOW_LOAD = "tests.plugins.faults:SlowLoadEngine"
DEADLINE_LOAD = "tests.plugins.deadline_load:DeadlineLoadEngine"
FAULT = "tests.plugins.faults:FaultEngine"


@pytest.fixture(scope="module")
def docs():
    return render("gpu", fleet.tool("kubectl"), REPO)


@pytest.fixture
def pods(tmp_path):
    made = []

    def make(docs, **kw):
        pod = ScaledPod(tmp_path / ("pod%d" % len(made)), docs, SCALE, **kw)
        made.append(pod)
        return pod

    yield make
    for pod in made:
        pod.cleanup()


def probe(docs, kind):
    container = docs_container(docs)
    return container[{"startup": "startupProbe", "liveness": "livenessProbe", "readiness": "readinessProbe"}[kind]]


def docs_container(docs):
    return next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]


def slack_manifest():
    return SLACK_REAL_S / SCALE


def test_a_load_close_to_the_startup_budget_is_never_killed_and_liveness_waits_for_it(docs, pods):
    startup = probe(docs, STARTUP)
    tolerated = (startup["failureThreshold"] - 1) * startup["periodSeconds"]
    # The engine's load() ends 90 % of the way into what the startup probe always tolerates,
    # counted from the container start (the imports before it included); the warm-up
    # synthesis after it (milliseconds) has the remaining 10 %, 3 s real.
    pod = pods(docs, engine=DEADLINE_LOAD, env={"GLMTTS_TEST_LOAD_UNTIL": repr(time.time() + 0.9 * tolerated * SCALE)})
    kubelet = pod.kubelet(restart=False).start()
    try:
        started = kubelet.wait_for("started", timeout=tolerated * SCALE + 30)
        assert started is not None, "%s\nservice stderr:\n%s" % (kubelet.events, pod.started[0].stderr()[-3000:])
        ready = kubelet.wait_for("ready", timeout=10)
        time.sleep(3 * probe(docs, LIVENESS)["periodSeconds"] * SCALE)  # a few liveness rounds on the loaded model
    finally:
        kubelet.stop()
    assert kubelet.first("kill") is None or kubelet.first("kill")[3].endswith("pod deleted"), kubelet.events
    assert ready is not None, kubelet.events
    t_ready = started[1]
    print("\n[probe contract] load ready at %.0f manifest s = %.0f %% of the %d s the startup probe always "
          "tolerates (%d x %d s budget); the kubelet kept it" % (
              t_ready, 100 * t_ready / tolerated, tolerated, startup["failureThreshold"], startup["periodSeconds"]))
    assert t_ready >= 0.88 * tolerated, "the load was not close to the budget; the test proves nothing"
    assert t_ready < tolerated
    live = [p for p in kubelet.probe_log if p[1] in (LIVENESS, READINESS)]
    assert live and min(p[0] for p in live) >= started[0], "liveness/readiness ran before the startup probe passed"
    assert kubelet.failures(LIVENESS) == []


def test_a_load_past_the_startup_budget_is_killed_at_the_budget(docs, pods):
    startup = probe(docs, STARTUP)
    n, period = startup["failureThreshold"], startup["periodSeconds"]
    budget = n * period
    pod = pods(docs, engine=SLOW_LOAD, env={"GLMTTS_TEST_LOAD_DELAY_S": repr(2 * budget * SCALE)})
    kubelet = pod.kubelet(restart=False).start()
    try:
        kill = kubelet.wait_for("kill", timeout=budget * SCALE + 30)
        assert kill is not None, kubelet.events
        gone = kubelet.wait_for("exited", timeout=kubelet.grace_s * SCALE + 10) or kubelet.first("SIGKILL")
    finally:
        kubelet.stop()
    print("\n[probe contract] a load that never finishes: killed by the startup probe at %.0f manifest s "
          "(budget %d x %d = %d s; the kubelet kills between %d and %d s after the start); %s" % (
              kill[1], n, period, budget, (n - 1) * period, budget, gone[2] + " " + gone[3]))
    assert "startup probe failed %d times" % n in kill[3]
    assert (n - 1) * period - 1 <= kill[1] <= budget + slack_manifest()
    assert not [p for p in kubelet.probe_log if p[1] in (LIVENESS, READINESS)], "liveness ran against a loading model"
    assert len(kubelet.failures(STARTUP)) == n
    # SIGTERM while loading ends the process inside the grace period (no SIGKILL needed).
    assert gone[2] == "exited", kubelet.events


def test_saturating_load_never_fails_liveness_or_readiness_and_the_queue_answers_429(docs, pods):
    pod = pods(docs, engine=FAULT, env={"GLMTTS_TEST_FAULT": "slow:0.25"})
    limits = pod.settings.limits
    kubelet = pod.kubelet(restart=False).start()
    auth = {"Authorization": "Bearer " + pod.api_key}
    codes, retry_after, depths = [], [], []
    stop = threading.Event()

    def client():
        with requests.Session() as s:
            while not stop.is_set():
                try:
                    r = s.post(pod.url + "/v1/audio/speech", json={"input": "你好。"}, headers=auth, timeout=60)
                except requests.RequestException as e:
                    codes.append(type(e).__name__)
                    continue
                codes.append(r.status_code)
                if r.status_code == 429:
                    retry_after.append(r.headers.get("Retry-After"))

    try:
        assert kubelet.wait_for("ready", timeout=90) is not None, kubelet.events
        t_load = kubelet.now()
        clients = [threading.Thread(target=client, daemon=True)
                   for _ in range(limits.max_concurrency + limits.max_queue + 8)]
        for t in clients:
            t.start()
        deadline = time.monotonic() + 8.0  # 200 manifest s: 20 liveness and 40 readiness periods
        while time.monotonic() < deadline:
            text = requests.get(pod.url + "/metrics", headers=auth, timeout=10).text
            depths += [float(line.split()[1]) for line in text.splitlines() if line.startswith("glmtts_queue_depth ")]
            time.sleep(0.1)
        stop.set()
        for t in clients:
            t.join(60)
        health = requests.get(pod.url + "/readyz", timeout=5).status_code
    finally:
        stop.set()
        kubelet.stop()
    during = [p for p in kubelet.probe_log if p[0] >= t_load]
    slowest = {k: max((p[5] for p in during if p[1] == k), default=None) for k in (LIVENESS, READINESS)}
    print("\n[probe contract] saturation: %d requests (%d x 200, %d x 429), queue depth max %d of %d; %d probes, "
          "slowest /livez %.3f s, /readyz %.3f s (timeouts %d s, %d s)" % (
              len(codes), codes.count(200), codes.count(429), max(depths), limits.max_queue, len(during),
              slowest[LIVENESS], slowest[READINESS], probe(docs, LIVENESS)["timeoutSeconds"],
              probe(docs, READINESS)["timeoutSeconds"]))
    assert set(codes) <= {200, 429}, sorted(set(map(str, codes)))
    assert codes.count(429) > 0 and codes.count(200) > 0, "the load did not saturate the pod"
    assert all(v and v.isdigit() for v in retry_after)
    assert max(depths) == limits.max_queue, "glmtts_queue_depth (the HPA's metric) must show the full queue"
    assert kubelet.failures(LIVENESS) == [] and kubelet.failures(READINESS) == []
    assert [e for e in kubelet.events if e[2] in ("unready", "liveness failure")
            or (e[2] == "kill" and not e[3].endswith("pod deleted"))] == []
    assert len([p for p in during if p[1] == LIVENESS]) >= 10
    assert health == 200


def test_a_wedged_worker_fails_liveness_within_its_budget_and_the_kubelet_restarts_it(docs, pods, tmp_path):
    live = probe(docs, LIVENESS)
    fault = tmp_path / "fault"
    fault.write_text("")
    pod = pods(docs, engine=FAULT, env={"GLMTTS_TEST_FAULT_FILE": str(fault)})
    stall = pod.settings.limits.worker_stall_s
    n, period = live["failureThreshold"], live["periodSeconds"]
    auth = {"Authorization": "Bearer " + pod.api_key}
    kubelet = pod.kubelet().start()

    answer = []

    def wedged_request():
        try:
            answer.append(requests.post(pod.url + "/v1/audio/speech", json={"input": "你好。"}, headers=auth,
                                        timeout=60).status_code)
        except requests.RequestException as e:
            answer.append(type(e).__name__)  # the process was killed under it

    try:
        assert kubelet.wait_for("ready", timeout=90) is not None, kubelet.events
        fault.write_text("wedge\n")
        t_wedge = kubelet.now()
        threading.Thread(target=wedged_request, daemon=True).start()
        failed = kubelet.wait_for("liveness failure", timeout=(stall + n * period) * SCALE + 20)
        fault.write_text("")  # the restarted container must not wedge again
        assert failed is not None, kubelet.events
        unready = kubelet.first("unready")
        restarted = kubelet.wait_for("ready", timeout=120, container=1)
        ended = kubelet.first("exited", container=0) or kubelet.first("SIGKILL", container=0)
    finally:
        kubelet.stop()
    took = failed[1] - kubelet.manifest_s(t_wedge)
    print("\n[probe contract] wedged worker: liveness failed %.0f manifest s after the wedge (budget worker_stall_s "
          "%g + %d x %d = %g s; earliest %g s); unready after %s s; old container %s; the restarted one ready "
          "at %.0f s" % (took, stall, n, period, stall + n * period, stall + (n - 1) * period,
                         "%.0f" % (unready[1] - kubelet.manifest_s(t_wedge)) if unready else "-",
                         (ended[2] + " " + ended[3]) if ended else "?", restarted[1] if restarted else -1))
    assert stall + (n - 1) * period - 1 <= took <= stall + n * period + slack_manifest()
    assert unready is not None and unready[0] < failed[0], "the wedged pod must leave the Service first"
    assert restarted is not None and kubelet.restarts == 1, kubelet.events
    # Not asserted: with time scaled, the grace period's 10 s margin is 0.5 s, less than the
    # service's unscaled exit (about 1 s after the drain); at real scale it fits (75 s).
    drain = [line.split(": ", 1)[-1] for line in pod.started[0].stderr().splitlines() if "service.drain" in line]
    print("[probe contract] the wedged request got %s; the old container's drain: %s"
          % (answer or "-", " | ".join(drain[-2:]) or "none logged"))
