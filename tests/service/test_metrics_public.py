"""server.metrics_public: /metrics without the API key for a Prometheus scrape, and only
/metrics. Real service processes with server.api_keys set, both ways."""

import pytest

pytestmark = pytest.mark.integration

KEY = "k-metrics-test"
AUTH = {"Authorization": "Bearer " + KEY}
# Keyed routes that must stay keyed when /metrics is public (a prefix match would open them).
OTHER_KEYED = ("/v1/voices", "/admin/gpu/clear", "/metricsx", "/metrics/extra", "/openapi.json")


def _status(svc, path, **kw):
    method = svc.post if path == "/admin/gpu/clear" else svc.get
    return method(path, allow_redirects=False, **kw).status_code


def test_metrics_needs_the_key_by_default(service):
    svc = service(env={"GLMTTS_SERVER_API_KEYS": KEY})
    r = svc.get("/metrics")
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == "missing_api_key"
    assert svc.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    r = svc.get("/metrics", headers=AUTH)
    assert r.status_code == 200
    assert "glmtts_ready 1.0" in r.text


def test_metrics_public_opens_only_metrics(service):
    svc = service(env={"GLMTTS_SERVER_API_KEYS": KEY, "GLMTTS_SERVER_METRICS_PUBLIC": "true"})
    r = svc.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    assert "glmtts_build_info{" in r.text and "glmtts_watchdog_incidents_total{" in r.text
    assert svc.get("/metrics", headers=AUTH).status_code == 200  # a key is still accepted
    for path in OTHER_KEYED:
        assert _status(svc, path) == 401, path
    assert _status(svc, "/v1/voices", headers=AUTH) == 200
