"""The trust boundary with a real service: whose X-Forwarded-For is believed
(server.forwarded_allow_ips), which bucket of the per-client rate limit a request lands
in, what the access log names as the client, and the UI's synthesis under the same
limit. Clients come from two loopback addresses: 127.0.0.1 (the "proxy" when trusted)
and 127.0.0.2 (a client that is never trusted)."""

import pytest

from tests.support.proxy import access_entries, session_from, ui_call

pytestmark = pytest.mark.integration

SPEECH = "/v1/audio/speech"
RATE = 3
UI_INPUTS = ["default", None, "", "你好。", 24000, 42, True, False, 1.0]  # voice, reference, transcript, text, rate, seed, cache, phoneme, speed


def _env(trusted):
    return {"GLMTTS_LIMITS_RATE_LIMIT_PER_MINUTE": str(RATE),
            "GLMTTS_SERVER_FORWARDED_ALLOW_IPS": ",".join(trusted)}


def speak(session, svc, xff=None):
    headers = {"X-Forwarded-For": xff} if xff else {}
    return session.post(svc.url + SPEECH, json={"input": "hi", "response_format": "pcm"}, headers=headers, timeout=60)


def ui_speak(session, svc, xff=None):
    """The Synthesize button's handler, through the UI's HTTP API: the status line."""
    headers = {"X-Forwarded-For": xff} if xff else {}
    return ui_call(session, svc.url, "synthesize", UI_INPUTS, headers=headers)[1]


def test_spoofed_header_from_an_untrusted_peer_changes_nothing(service):
    svc = service(env=_env([]), ui=True)  # the default: nobody is trusted
    local = session_from("127.0.0.1")
    codes = [speak(local, svc, xff="198.51.100.%d" % i).status_code for i in range(RATE + 1)]
    # one bucket (the peer's), whatever the header says: the fourth is refused
    assert codes == [200] * RATE + [429]
    r = speak(local, svc, xff="198.51.100.99")
    assert r.status_code == 429 and "limits.rate_limit_per_minute" in r.json()["error"]["message"]
    # the UI shares the bucket and believes the header no more than the API does
    status = ui_speak(local, svc, xff="198.51.100.50")
    assert "rate limit exceeded" in status and "limits.rate_limit_per_minute" in status, status
    # a second real client (another address) has its own bucket
    assert speak(session_from("127.0.0.2"), svc, xff="198.51.100.1").status_code == 200
    clients = {c for c, _, _, _ in access_entries(svc, SPEECH)}
    assert clients == {"127.0.0.1", "127.0.0.2"}, clients  # never a forged address
    ui_clients = {c for c, m, p, _ in access_entries(svc) if p.startswith("/gradio_api/")}
    assert ui_clients == {"127.0.0.1"}, ui_clients


def test_trusted_proxy_is_believed_and_only_it(service):
    svc = service(env=_env(["127.0.0.1"]), ui=True)
    proxy, outsider = session_from("127.0.0.1"), session_from("127.0.0.2")
    # through the trusted "proxy": one bucket per forwarded client
    a = [speak(proxy, svc, xff="198.51.100.7").status_code for _ in range(RATE + 1)]
    assert a == [200] * RATE + [429]
    assert speak(proxy, svc, xff="198.51.100.8").status_code == 200
    # a client that put its own address in front of the real one is still the real one
    assert speak(proxy, svc, xff="198.51.100.8, 198.51.100.7").status_code == 429
    # an untrusted peer sending the header: its own bucket, whatever it claims
    b = [speak(outsider, svc, xff="198.51.100.%d" % (20 + i)).status_code for i in range(RATE + 1)]
    assert b == [200] * RATE + [429]
    logged = [c for c, _, _, _ in access_entries(svc, SPEECH)]
    assert logged == ["198.51.100.7"] * (RATE + 1) + ["198.51.100.8", "198.51.100.7"] + ["127.0.0.2"] * (RATE + 1)

    # the UI: the forwarded client is its client too, and the API's bucket is its bucket
    status = ui_speak(proxy, svc, xff="198.51.100.7")
    assert "rate limit exceeded" in status, status
    assert ui_speak(proxy, svc, xff="198.51.100.9").startswith("Done"), "a fresh forwarded client is served"
    ui_clients = [c for c, m, p, _ in access_entries(svc) if m == "POST" and p.startswith("/gradio_api/call/")]
    assert ui_clients == ["198.51.100.7", "198.51.100.9"], ui_clients


def test_ui_synthesis_is_rate_limited_like_the_api(service):
    svc = service(env=_env([]), ui=True)
    s = session_from("127.0.0.1")
    statuses = [ui_speak(s, svc) for _ in range(RATE)]
    assert all(st.startswith("Done") for st in statuses), statuses
    over = ui_speak(s, svc)
    assert over.startswith("**Error:** rate limit exceeded: %d requests per minute per client" % RATE), over
    assert "retry in" in over
    # the API is refused for the same client: one bucket, spent through the UI
    assert speak(s, svc).status_code == 429
    metrics = s.get(svc.url + "/metrics", timeout=30).text
    refused = [l for l in metrics.splitlines() if l.startswith("glmtts_rejected_total") and "rate_limit_exceeded" in l]
    assert refused and float(refused[0].rsplit(" ", 1)[1]) >= 2, refused
