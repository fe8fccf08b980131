"""ops/proxy/haproxy.cfg, for real: HAProxy (the Debian program) in front of two real
glmtts instances that trust only 127.0.0.1, rendered like the nginx config (instance
list, ports, certificate path only). Proves: `haproxy -c` accepts it; its numbers follow
glmtts's settings; the active health check on /readyz marks a draining instance DOWN
before its listener closes, and a stopped one stays DOWN, while every request through
HAProxy still succeeds; a client's own X-Forwarded-For cannot forge its address."""

import csv
import io
import os
import re
import signal
import threading
import time

import pytest
import requests

from glmtts import config
from tests.support.fleet import tool
from tests.support.proxy import HAPROXY_PEM, Instances, ProxyProcess, only_substituted_fields_differ, session_from, \
    shipped

SPEECH = "/v1/audio/speech"
CLIENT = "127.0.0.2"


def _seconds(value):
    m = re.fullmatch(r"(\d+)(ms|s|m)?", value)
    n = int(m.group(1))
    return n / 1000.0 if m.group(2) == "ms" else n * (60 if m.group(2) == "m" else 1)


def test_shipped_numbers_follow_the_settings():
    text = shipped("haproxy.cfg")
    lines = [l.split("#", 1)[0].strip() for l in text.splitlines()]
    defaults = config.load(path="", env={})
    timeout = {l.split()[1]: _seconds(l.split()[2]) for l in lines if l.startswith("timeout ")}
    assert timeout["server"] > defaults.limits.request_timeout_s
    assert timeout["client"] > defaults.limits.request_timeout_s
    check = next(l for l in lines if l.startswith("default-server "))
    inter, fall = _seconds(re.search(r"inter (\S+)", check).group(1)), int(re.search(r"fall (\d+)", check).group(1))
    # DOWN (fall checks, inter apart, each bounded by timeout check) before the listener closes
    assert inter * fall < defaults.server.drain_delay_s, (inter, fall, defaults.server.drain_delay_s)
    for needed in ("option httpchk GET /readyz", "http-check expect status 200", "balance leastconn",
                   "option forwardfor", "http-request del-header X-Forwarded-For",
                   "http-request del-header Forwarded", "retry-on conn-failure 503",
                   "http-request disable-l7-retry if !METH_GET !{ path /v1/audio/speech }"):
        assert needed in lines, needed
    assert any(l.startswith("bind *:443 ssl crt %s" % HAPROXY_PEM) for l in lines)


def test_rendered_config_is_valid_and_only_the_substituted_fields_differ(tmp_path):
    tool("haproxy")
    proxy = ProxyProcess("haproxy", tmp_path, ["127.0.0.1:1", "127.0.0.1:2"])
    only_substituted_fields_differ(proxy.shipped, proxy.rendered, proxy.cert_paths)
    ok, out = proxy.check()
    assert ok, out
    assert "ALERT" not in out and "WARNING" not in out, out


def _states(proxy):
    """{server name: status} of the API backend, from HAProxy's own stats CSV."""
    r = requests.get("http://127.0.0.1:%d/stats;csv" % proxy.stats_port, timeout=10)
    rows = list(csv.DictReader(io.StringIO(r.text.lstrip("# "))))
    return {row["svname"]: row["status"] for row in rows if row["pxname"] == "glmtts"
            and row["svname"] not in ("FRONTEND", "BACKEND")}


def _wait_states(proxy, want, timeout):
    deadline = time.monotonic() + timeout
    while True:
        states = _states(proxy)
        if all(states.get(k, "").startswith(v) for k, v in want.items()):
            return states, time.monotonic()
        assert time.monotonic() < deadline, "HAProxy states %s, wanted %s:\n%s" % (states, want, proxy.log()[-2000:])
        time.sleep(0.2)


@pytest.mark.integration
def test_health_checks_take_a_draining_instance_out_and_requests_succeed(tmp_path):
    tool("haproxy")
    env = {"GLMTTS_SERVER_FORWARDED_ALLOW_IPS": "127.0.0.1", "GLMTTS_TEST_FAULT": "slow:0.3",
           "GLMTTS_LIMITS_MAX_QUEUE": "32"}
    with Instances(tmp_path, 2, env, engine="tests.plugins.faults:FaultEngine") as instances, \
            ProxyProcess("haproxy", tmp_path / "haproxy", ["127.0.0.1:%d" % i.port for i in instances]) as proxy:
        _wait_states(proxy, {"glmtts0": "UP", "glmtts1": "UP"}, timeout=30)
        s = session_from(CLIENT)
        s.verify = proxy.cert

        # the client's address reaches the instance; its own X-Forwarded-For does not
        r = s.post(proxy.url + SPEECH, json={"input": "hello", "response_format": "pcm"},
                   headers={"X-Forwarded-For": "6.6.6.6", "Forwarded": "for=7.7.7.7"}, timeout=60)
        assert r.status_code == 200, r.text
        rid = r.headers["x-request-id"]
        deadline = time.monotonic() + 15
        lines = []
        while not lines and time.monotonic() < deadline:
            lines = [l for i in instances for l in i.stdout().splitlines() if l.endswith("rid=" + rid)]
            time.sleep(0.1)
        assert len(lines) == 1 and lines[0].split()[1] == CLIENT, lines

        # SIGTERM one instance under load: DOWN by its /readyz within the drain delay,
        # no failed request, exit 0; stopped, it stays DOWN and requests still succeed
        results, stop, lock = [], threading.Event(), threading.Lock()

        def load():
            c = session_from(CLIENT)
            c.verify = proxy.cert
            while not stop.is_set():
                try:
                    resp = c.post(proxy.url + SPEECH, json={"input": "hello there", "response_format": "pcm"},
                                  timeout=120)
                    outcome = (resp.status_code, resp.text[:200] if resp.status_code != 200 else "")
                except requests.RequestException as e:
                    outcome = ("error", repr(e))
                with lock:
                    results.append(outcome)

        threads = [threading.Thread(target=load, daemon=True) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(2)
        victim = instances[1]
        t0 = time.monotonic()
        os.kill(victim.pid, signal.SIGTERM)
        _, t_down = _wait_states(proxy, {"glmtts1": "DOWN"}, timeout=30)
        assert t_down - t0 < config.load(path="", env={}).server.drain_delay_s + 1.0, \
            "HAProxy took %.1f s to mark the draining instance DOWN" % (t_down - t0)
        assert victim.wait_exit(timeout=90) == 0, victim.stderr()[-2000:]
        time.sleep(5)  # stopped: still DOWN (a refused check), and the other instance serves
        states = _states(proxy)
        assert states["glmtts0"] == "UP" and states["glmtts1"].startswith("DOWN"), states
        stop.set()
        for t in threads:
            t.join(150)
        failed = [o for o in results if o[0] != 200]
        assert not failed, "%d of %d requests failed: %s\n%s" % (len(failed), len(results), failed[:5],
                                                                 proxy.log()[-3000:])
        assert len(results) >= 10
        r = s.get(proxy.url + "/v1/voices", timeout=30)
        assert r.status_code == 200
        assert "Server glmtts/glmtts1 is DOWN" in proxy.log()
