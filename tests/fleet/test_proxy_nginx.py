"""ops/proxy/nginx.conf, for real: nginx (the Debian program, run as this user on free
loopback ports) in front of three real glmtts instances that trust only 127.0.0.1
(server.forwarded_allow_ips). Clients connect from 127.0.0.2, so an instance can tell the
proxy (127.0.0.1) from the client. The shipped file is rendered by substituting only
the instance list, the ports and the certificate paths, and a test proves that.

Proves: the numbers in the file follow glmtts's settings; the load spreads over the
instances; a drain of one instance under load fails no request; the client address an
instance logs is the real client's, believed only from nginx, and a client's own
X-Forwarded-For cannot forge it."""

import concurrent.futures
import os
import re
import signal
import threading
import time
import uuid

import pytest

from glmtts import config
from tests.support.fleet import tool
from tests.support.proxy import (NGINX_CERTS, Instances, ProxyProcess, access_entries, free_port,
                                 only_substituted_fields_differ, session_from, shipped)

SPEECH = "/v1/audio/speech"
CLIENT = "127.0.0.2"  # the client's own address; nginx reaches the instances from 127.0.0.1
TRUST = {"GLMTTS_SERVER_FORWARDED_ALLOW_IPS": "127.0.0.1"}
DRAIN_DONE = "/tmp/glmtts-helpers/drain.done"


def _directives(text):
    """{name: [args, ...]} of the uncommented directives (one per line in this file)."""
    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip().rstrip(";")
        if line and not line.endswith(("{", "}")):
            name, _, args = line.partition(" ")
            out.setdefault(name, []).append(args.strip())
    return out


def _seconds(value):
    m = re.fullmatch(r"(\d+)(s|m)?", value)
    return int(m.group(1)) * (60 if m.group(2) == "m" else 1)


def _location(text, pattern):
    m = re.search(r"location %s \{(.*?)\n    \}" % re.escape(pattern), text, re.S)
    assert m, "no location %s in nginx.conf" % pattern
    return m.group(1)


def test_shipped_numbers_follow_the_settings():
    text = shipped("nginx.conf")
    d = _directives(text)
    defaults = config.load(path="", env={})
    assert d["client_max_body_size"] == ["%gm" % defaults.limits.max_upload_mb]
    assert _seconds(d["proxy_read_timeout"][0]) > defaults.limits.request_timeout_s
    fail_timeouts = {int(x) for x in re.findall(r"fail_timeout=(\d+)s", text)}
    assert fail_timeouts and min(fail_timeouts) > defaults.server.drain_delay_s
    assert d["proxy_buffering"] == ["off"], "streamed audio and server-sent events must not be buffered"
    assert d["proxy_request_buffering"] == ["on"], "a 503 can be retried only with the body in hand"
    assert d["proxy_set_header"].count("X-Forwarded-For $remote_addr") == 1, "the edge overwrites X-Forwarded-For"
    assert not any("$proxy_add_x_forwarded_for" in a for a in d["proxy_set_header"])
    assert 'Forwarded ""' in d["proxy_set_header"]
    # POSTs are never re-sent, except a synthesis (after a 503: refused, not processed)
    assert d["proxy_next_upstream"][0] == "error timeout http_502 http_503"
    assert "non_idempotent" in _location(text, "= /v1/audio/speech")
    assert "non_idempotent" not in _location(text, "/v1/") and "non_idempotent" not in _location(text, "/")
    assert text.count("non_idempotent;") == 1
    upstream = re.search(r"upstream glmtts \{(.*?)\n\}", text, re.S).group(1)
    assert "least_conn;" in upstream and "keepalive" not in _directives(upstream)
    assert d["listen"] == ["80", "443 ssl"] and d["ssl_certificate"] == [NGINX_CERTS[0]]
    assert "health_check" not in d and "NGINX Plus" in text  # and the file says why


def test_rendering_changes_only_the_substituted_fields(tmp_path):
    tool("nginx")
    proxy = ProxyProcess("nginx", tmp_path, ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"])
    removed, added = only_substituted_fields_differ(proxy.shipped, proxy.rendered, proxy.cert_paths)
    assert sum(1 for l in added if l.strip().startswith("server 127.0.0.1:")) == 6  # two upstreams x three
    ok, out = proxy.check()
    assert ok, out


@pytest.fixture
def fleet(tmp_path):
    """Three instances (FaultEngine, each synthesis 0.3 s, so requests overlap) behind nginx."""
    tool("nginx")
    env = dict(TRUST, GLMTTS_TEST_FAULT="slow:0.3", GLMTTS_LIMITS_MAX_QUEUE="32", GLMTTS_SERVER_DRAIN_DELAY_S="1")
    with Instances(tmp_path, 3, env, engine="tests.plugins.faults:FaultEngine") as instances:
        proxy = ProxyProcess("nginx", tmp_path / "nginx", ["127.0.0.1:%d" % i.port for i in instances])
        with proxy:
            yield instances, proxy


def _client(proxy):
    s = session_from(CLIENT)
    s.verify = proxy.cert
    return s


def _speak(session, base, headers=None, timeout=120):
    return session.post(base + SPEECH, json={"input": "hello there", "response_format": "pcm"},
                        headers=headers or {}, timeout=timeout)


def eventually(read, good=bool, timeout=15):
    """read() until good(value) (access lines land just after the response), else the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if good(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def _speech_counts(instances):
    return [sum(1 for _, m, _, st in access_entries(i, SPEECH) if m == "POST" and st == 200) for i in instances]


@pytest.mark.integration
def test_load_spreads_and_the_client_is_the_real_one(fleet):
    instances, proxy = fleet
    local = threading.local()

    def one(_):
        if not hasattr(local, "s"):
            local.s = _client(proxy)
        return _speak(local.s, proxy.url).status_code

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        codes = list(pool.map(one, range(30)))
    assert codes == [200] * 30
    counts = eventually(lambda: _speech_counts(instances), lambda c: sum(c) >= 30)
    assert sum(counts) == 30 and min(counts) >= 5, "least_conn over three instances served %s" % counts
    # every instance names the client, not nginx (127.0.0.1), as the caller
    clients = {c for i in instances for c, _, p, _ in access_entries(i, SPEECH)}
    assert clients == {CLIENT}, clients

    # plain HTTP redirects to TLS; per-instance routes are not exposed at the edge
    s = _client(proxy)
    r = s.get("http://127.0.0.1:%d/healthz" % proxy.http_port, allow_redirects=False, timeout=30)
    assert r.status_code == 301 and r.headers["Location"] == "https://127.0.0.1/healthz"
    assert s.post(proxy.url + "/admin/gpu/clear", timeout=30).status_code == 404
    assert s.get(proxy.url + "/metrics", timeout=30).status_code == 404
    # a streamed synthesis comes through unbuffered and whole (pcm: streams need no length;
    # 24 kHz s16le mono, so more than 0.2 s of audio is more than 9600 bytes)
    r = s.post(proxy.url + SPEECH, json={"input": "hello there. and again.", "response_format": "pcm",
                                         "stream": True}, stream=True, timeout=120)
    body = b"".join(r.iter_content(4096))
    assert r.status_code == 200 and r.headers.get("content-type", "").startswith("audio/") and len(body) > 9600, r.text[:300]
    assert len(body) % 2 == 0 and body[:4] != b"RIFF"


@pytest.mark.integration
def test_client_address_is_believed_only_from_nginx(fleet):
    instances, proxy = fleet
    s = _client(proxy)

    def logged_client(rid):
        # the access line is written once the last byte is sent: the client may see it first
        lines = eventually(lambda: [l for i in instances for l in i.stdout().splitlines()
                                    if l.endswith("rid=%s" % rid)])
        assert len(lines) == 1, (rid, lines)
        return lines[0].split()[1]

    # through nginx, with a forged X-Forwarded-For and Forwarded: the instance sees the real client
    r = _speak(s, proxy.url, headers={"X-Forwarded-For": "6.6.6.6", "Forwarded": "for=7.7.7.7"})
    assert r.status_code == 200
    assert logged_client(r.headers["x-request-id"]) == CLIENT
    # X-Request-Id is nginx's own, the one in its access log
    assert r.headers["x-request-id"] in proxy.access_log()

    # the same forgery straight to an instance, from the client's address: not believed
    direct = instances[0].url
    rid = uuid.uuid4().hex
    assert _speak(s, direct, headers={"X-Forwarded-For": "6.6.6.6", "X-Request-Id": rid}).status_code == 200
    assert logged_client(rid) == CLIENT
    # from nginx's address (127.0.0.1, the one trusted peer) the header is believed: the
    # client address above is the real one only because nginx overwrote the header
    rid = uuid.uuid4().hex
    local = session_from("127.0.0.1")
    assert _speak(local, direct, headers={"X-Forwarded-For": "198.51.100.7", "X-Request-Id": rid}).status_code == 200
    assert logged_client(rid) == "198.51.100.7"


@pytest.mark.integration
def test_drain_of_one_instance_fails_no_request(tmp_path):
    """SIGTERM to one instance's PID while load runs through nginx: every request
    succeeds (in-flight ones finish on the draining instance; new ones refused with 503
    draining are sent elsewhere; once its listener closes, connects are refused and nginx
    moves on), and the instance exits 0."""
    if not os.path.exists(DRAIN_DONE):
        pytest.skip("the drain (SIGTERM -> 503 draining, in-flight finishes, exit 0) is not built yet")
    tool("nginx")
    env = dict(TRUST, GLMTTS_TEST_FAULT="slow:0.3", GLMTTS_LIMITS_MAX_QUEUE="32", GLMTTS_SERVER_DRAIN_DELAY_S="3")
    with Instances(tmp_path, 3, env, engine="tests.plugins.faults:FaultEngine") as instances, \
            ProxyProcess("nginx", tmp_path / "nginx", ["127.0.0.1:%d" % i.port for i in instances]) as proxy:
        victim = instances[1]
        results, stop = [], threading.Event()
        lock = threading.Lock()

        def load():
            s = _client(proxy)
            while not stop.is_set():
                try:
                    r = _speak(s, proxy.url)
                    outcome = (r.status_code, r.headers.get("x-request-id"),
                               r.text[:200] if r.status_code != 200 else "")
                except Exception as e:  # a reset connection is a failed request too
                    outcome = ("error", None, repr(e))
                with lock:
                    results.append((time.monotonic(), outcome))

        threads = [threading.Thread(target=load, daemon=True) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(3)  # load is flowing to all three
        before = _speech_counts(instances)
        assert min(before) >= 1, "no load on some instance before the drain: %s" % before
        t_term = time.monotonic()
        os.kill(victim.pid, signal.SIGTERM)
        code = victim.wait_exit(timeout=90)
        t_exit = time.monotonic()
        time.sleep(3)  # and after: nginx keeps serving from the other two
        stop.set()
        for t in threads:
            t.join(150)
        failed = [o for _, o in results if o[0] != 200]
        assert not failed, "%d of %d requests failed: %s\nnginx log:\n%s" % (
            len(failed), len(results), failed[:5], proxy.access_log()[-3000:])
        assert code == 0, victim.stderr()[-2000:]
        during = sum(1 for t, _ in results if t_term <= t <= t_exit)
        after = sum(1 for t, _ in results if t > t_exit)
        assert during >= 1 and after >= 3, (during, after)
        # the victim finished what it had when SIGTERM came, and nothing reached it after
        # it exited; nginx saw its 503s or refused connects and sent those requests on
        drained = victim.stdout().splitlines()
        assert any(" POST %s 200 " % SPEECH in l for l in drained)
        survivors = _speech_counts([instances[0], instances[2]])
        assert sum(survivors) > sum(before[0::2]), (before, survivors)


def _upstream_fields(proxy, rid):
    """(upstream addresses, upstream statuses) nginx logged for request ``rid``."""
    line = eventually(lambda: next((l for l in proxy.access_log().splitlines() if l.endswith("rid=" + rid)), None))
    assert line, "request %s not in nginx's log" % rid
    up = re.search(r"upstream=(.*?) upstream_status=(.*?) rid=", line)
    return [a.strip() for a in up.group(1).split(",")], [s.strip() for s in up.group(2).split(",")]


@pytest.mark.integration
def test_retry_policy_no_post_twice_except_a_refused_synthesis(tmp_path):
    """One instance draining (SIGTERM, listener open for drain_delay_s, new work 503
    draining) listed first, a healthy one second: nginx's first pick is the first server.
    A saved voice (a POST that creates something) refused by the draining instance is
    NOT sent to the healthy one: its 503 reaches the client. A synthesis refused the same
    way IS sent on, and succeeds. A connect error moves any POST on."""
    if not os.path.exists(DRAIN_DONE):
        pytest.skip("the drain (SIGTERM -> 503 draining) is not built yet")
    tool("nginx")
    # the first instance's drain keeps its listener open (and refusing) for the whole test
    with Instances(tmp_path, 2, TRUST, per_instance=[{"GLMTTS_SERVER_DRAIN_DELAY_S": "60"},
                                                      {"GLMTTS_SERVER_DRAIN_DELAY_S": "1"}]) as (draining, healthy):
        s = session_from(CLIENT)
        text = "你好，欢迎使用语音合成服务。今天天气很好。"
        reference = s.post(healthy.url + SPEECH, json={"input": text, "response_format": "wav"}, timeout=60).content
        os.kill(draining.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while s.get(draining.url + "/readyz", timeout=10).status_code != 503:
            assert time.monotonic() < deadline, "no 503 draining from /readyz after SIGTERM"
            time.sleep(0.1)
        servers = ["127.0.0.1:%d" % draining.port, "127.0.0.1:%d" % healthy.port]

        def voice(proxy):
            c = _client(proxy)
            return c.post(proxy.url + "/v1/voices", data={"name": "Anna", "prompt_text": text},
                          files={"prompt_audio": ("ref.wav", reference, "audio/wav")}, timeout=60)

        with ProxyProcess("nginx", tmp_path / "n1", servers) as proxy:
            r = voice(proxy)
            ups, codes = _upstream_fields(proxy, r.headers["x-request-id"])
            assert ups == [servers[0]], "nginx's first pick was not the first server: %s" % ups
            assert r.status_code == 503 and r.json()["error"]["code"] == "draining" and "Retry-After" in r.headers
            assert codes == ["503"], "a POST that creates a voice was sent to a second instance: %s" % codes
        assert not [e for e in access_entries(healthy, "/v1/voices") if e[1] == "POST"]

        with ProxyProcess("nginx", tmp_path / "n2", servers) as proxy:
            r = _speak(_client(proxy), proxy.url)
            ups, codes = _upstream_fields(proxy, r.headers["x-request-id"])
            assert r.status_code == 200, r.text
            assert ups == servers and codes == ["503", "200"], (ups, codes)

        closed = "127.0.0.1:%d" % free_port()
        with ProxyProcess("nginx", tmp_path / "n3", [closed, servers[1]]) as proxy:
            r = voice(proxy)
            assert r.status_code == 201, r.text
            ups, codes = _upstream_fields(proxy, r.headers["x-request-id"])
            assert ups == [closed, servers[1]] and codes == ["502", "201"], (ups, codes)
        os.kill(draining.pid, signal.SIGKILL)  # no need to wait out its 60 s delay
