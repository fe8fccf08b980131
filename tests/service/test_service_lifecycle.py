"""Start-up, readiness, sd_notify, rate limit, wedge and exit codes, each against a
real service process."""

import http.client
import json
import socket
import statistics
import threading
import time

import pytest

from tests.support.service import FAULT_ENGINE, ServiceProcess

pytestmark = pytest.mark.integration

TEXT = "你好，欢迎使用语音合成服务。"


class NotifySocket:
    """A real AF_UNIX datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.messages = []  # (monotonic time, text)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def since(self, t, word):
        return [m for (ts, m) in list(self.messages) if ts >= t and word in m]

    def close(self):
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def speak_from(svc, source_ip, timeout=30, text=TEXT):
    """POST /v1/audio/speech from a chosen loopback address (a distinct client)."""
    conn = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=timeout, source_address=(source_ip, 0))
    try:
        conn.request("POST", "/v1/audio/speech", body=json.dumps({"input": text}),
                     headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def test_loading_then_ready_notify_rate_limit_and_wedge(tmp_path):
    notify = NotifySocket(str(tmp_path / "notify.sock"))
    fault = tmp_path / "fault"
    fault.write_text("")
    svc = ServiceProcess(tmp_path, {
        "NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000",
        "GLMTTS_TEST_LOAD_DELAY_S": "3", "GLMTTS_TEST_FAULT_FILE": str(fault),
        "GLMTTS_LIMITS_RATE_LIMIT_PER_MINUTE": "8", "GLMTTS_LIMITS_WORKER_STALL_S": "2",
        "GLMTTS_LIMITS_REQUEST_TIMEOUT_S": "4",
    }, engine="tests.plugins.faults:SlowLoadEngine")
    try:
        svc.start(wait=False)
        # 1. 503 "loading" while the engine loads, EXTEND_TIMEOUT_USEC sent, then 200.
        r = svc.wait_healthy(timeout=30, status=503)
        body = r.json()
        assert body["status"] == "loading" and "loading engine" in body["reason"]
        assert svc.post("/v1/audio/speech", json={"input": TEXT}).status_code == 503
        assert not notify.since(0, "READY=1")
        svc.wait_healthy(timeout=60)
        deadline = time.monotonic() + 5
        while not notify.since(0, "READY=1") and time.monotonic() < deadline:
            time.sleep(0.05)
        texts = [m for _, m in notify.messages]
        assert any(m.startswith("EXTEND_TIMEOUT_USEC=") for m in texts)
        ready_at = [i for i, m in enumerate(texts) if "READY=1" in m]
        assert ready_at and all("EXTEND_TIMEOUT_USEC" not in m for m in texts[ready_at[0]:]), texts

        # 2. First synthesis after ready is not slower than warm ones beyond noise.
        latencies = []
        for _ in range(6):
            t = time.monotonic()
            status, _, audio = speak_from(svc, "127.0.0.1")
            latencies.append(time.monotonic() - t)
            assert status == 200 and len(audio) > 10000
        warm = statistics.median(latencies[1:])
        assert latencies[0] < 5 * warm + 0.5, latencies

        # 3. Rate limit per client: 8/min from 127.0.0.1 (the 503 during loading counted too),
        # then 429; another client is fine.
        for _ in range(1):
            assert speak_from(svc, "127.0.0.1")[0] == 200
        status, headers, body = speak_from(svc, "127.0.0.1")
        assert status == 429
        assert int(headers["retry-after"]) >= 1
        assert "rate limit exceeded" in json.loads(body)["error"]["message"]
        assert speak_from(svc, "127.0.0.2")[0] == 200
        assert svc.get("/healthz").status_code == 200

        # 4. Heartbeats while responsive; none once the worker is wedged; healthz degraded.
        t = time.monotonic()
        time.sleep(1.6)
        assert len(notify.since(t, "WATCHDOG=1")) >= 2
        fault.write_text("wedge\n")
        status, _, body = speak_from(svc, "127.0.0.3", timeout=30)
        assert status == 504 and "request_timeout_s" in json.loads(body)["error"]["message"]
        h = svc.get("/healthz", timeout=5)
        assert h.status_code == 503
        assert h.json()["status"] == "degraded" and "wedged" in h.json()["reason"]
        quiet_from = time.monotonic() + 0.6  # a beat already on its way may still land
        time.sleep(2.5)
        assert notify.since(quiet_from, "WATCHDOG=1") == []
        assert "withholding the systemd watchdog heartbeat" in svc.stderr()
        assert svc.get("/livez").status_code == 503
    finally:
        svc.stop(timeout=5)
        notify.close()


def test_api_keys_guard_everything_but_health(tmp_path):
    import openai

    with ServiceProcess(tmp_path, {"GLMTTS_SERVER_API_KEYS": "k-right,k-other"}) as svc:
        svc.start()
        assert svc.get("/healthz").status_code == 200  # no key needed
        r = svc.post("/v1/audio/speech", json={"input": TEXT})
        assert r.status_code == 401 and "missing API key" in r.json()["error"]["message"]
        assert r.json()["error"]["type"] == "authentication_error"
        r = svc.post("/v1/audio/speech", json={"input": TEXT}, headers={"Authorization": "Bearer k-wrong"})
        assert r.status_code == 401 and "invalid API key" in r.json()["error"]["message"]
        assert svc.get("/metrics").status_code == 401
        assert svc.get("/v1/voices").status_code == 401
        r = svc.post("/v1/audio/speech", json={"input": TEXT}, headers={"Authorization": "Bearer k-other"})
        assert r.status_code == 200 and len(r.content) > 10000
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=svc.url + "/v1", api_key="k-wrong", max_retries=0).audio.speech.create(
                model="tts-1", voice="alloy", input=TEXT)
        assert svc.get("/healthz").status_code == 200


def test_config_error_exits_78_naming_the_key(tmp_path):
    svc = ServiceProcess(tmp_path, {"GLMTTS_LIMITS_MAX_QUEUE": "lots"})
    svc.start(wait=False)
    assert svc.wait_exit(30) == 78
    assert "GLMTTS_LIMITS_MAX_QUEUE" in svc.stderr() and "limits.max_queue" in svc.stderr()


def test_public_bind_without_keys_is_refused_with_78(tmp_path):
    svc = ServiceProcess(tmp_path, {"GLMTTS_SERVER_HOST": "0.0.0.0"})
    svc.start(wait=False)
    assert svc.wait_exit(30) == 78
    assert "api_keys" in svc.stderr()


def test_engine_load_failure_exits_3_with_the_reason(tmp_path):
    notify = NotifySocket(str(tmp_path / "notify.sock"))
    try:
        svc = ServiceProcess(tmp_path, {"NOTIFY_SOCKET": notify.path}, engine="tests.plugins.faults:BrokenEngine")
        svc.start(wait=False)
        assert svc.wait_exit(60) == 3
        assert "ckpt/missing.safetensors not found" in svc.stderr()
        # what `systemctl status` shows as Status: the reason, not a stale "loading engine ..."
        [last] = [m for _, m in notify.messages if m.startswith("STATUS=")][-1:]
        assert last.startswith("STATUS=engine load failed: ") and "ckpt/missing.safetensors not found" in last, last
    finally:
        notify.close()


def test_port_in_use_exits_4_naming_the_port(tmp_path):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        svc = ServiceProcess(tmp_path, port=port)
        svc.start(wait=False)
        assert svc.wait_exit(30) == 4
        err = svc.stderr()
        assert "port %d" % port in err and "already in use" in err and "ss -ltnp" in err
    finally:
        holder.close()


def test_cuda_fatal_answers_in_flight_and_queued_503_then_exits_75(tmp_path):
    from glmtts.errors import EXIT_CUDA_LOST
    from glmtts.watchdog import signatures

    fault = tmp_path / "fault"
    fault.write_text("")
    svc = ServiceProcess(tmp_path, {"GLMTTS_TEST_FAULT_FILE": str(fault), "GLMTTS_LIMITS_MAX_CONCURRENCY": "1",
                                    "GLMTTS_LIMITS_MAX_QUEUE": "4"}, engine=FAULT_ENGINE)
    answers = {}

    def ask(name):
        r = svc.post("/v1/audio/speech", json={"input": TEXT}, timeout=30)
        answers[name] = (time.monotonic(), r)

    def until(fact, what):
        deadline = time.monotonic() + 10
        while not fact(svc.get("/healthz").json()):
            assert time.monotonic() < deadline, what
            time.sleep(0.05)

    with svc:
        svc.start()  # the warm-up never faults, so it becomes ready first
        fault.write_text("slow:4\n")  # holds the one worker while two more requests queue behind it
        threads = [threading.Thread(target=ask, args=(name,)) for name in ("slow", "fatal", "queued")]
        threads[0].start()
        until(lambda h: h["in_flight"] == 1, "the slow request never started")
        fault.write_text("cuda_fatal\n")  # read by the next job, once the slow one is done
        threads[1].start()
        until(lambda h: h["queue_depth"] == 1, "the second request never queued")
        threads[2].start()
        until(lambda h: h["queue_depth"] == 2, "the third request never queued")
        for t in threads:
            t.join(30)

        assert answers["slow"][1].status_code == 200
        for name in ("fatal", "queued"):
            r = answers[name][1]
            assert r.status_code == 503 and r.json()["error"]["code"] == "cuda_fatal", (name, r.text)
            assert int(r.headers["Retry-After"]) >= 1, name
        assert "illegal memory access" in answers["fatal"][1].json()["error"]["message"]

        # It exits by itself, promptly: not after the 10 s graceful timeout, nor WatchdogSec.
        assert svc.wait_exit(15) == EXIT_CUDA_LOST
        exited_after = time.monotonic() - answers["fatal"][0]
        assert exited_after < 5, "exited %.1f s after answering" % exited_after

    err = svc.stderr()
    assert err.count("Traceback (most recent call last)") == 1, err[-4000:]  # the genuine one only
    assert "RuntimeError: CUDA error: an illegal memory access was encountered" in err
    assert err.count("CUDA context lost: exiting with code %d" % EXIT_CUDA_LOST) == 1, err[-4000:]
    assert "Exception in thread" not in err and "Task exception was never retrieved" not in err, err[-4000:]
    # The watchdog still recognises the genuine line in error.log as cuda_fatal.
    assert any("cuda_fatal" in signatures.classify(line) for line in err.splitlines()
               if line.startswith("RuntimeError: CUDA error"))
