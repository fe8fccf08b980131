"""/docs works without the Internet: every asset the page loads comes from the service
itself (fastapi-offline's vendored Swagger UI), a real Chromium renders the operations
from those assets alone, and /openapi.json describes every request body and the one
error shape the service sends."""

import re
from urllib.parse import urljoin

import pytest

from tests.support.service import ServiceProcess

pytestmark = pytest.mark.integration

TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}
# POST routes that are an action without a body (documented as such in service/docs.py)
NO_BODY = {("post", "/admin/gpu/clear")}
ERROR_FIELDS = {"message", "type", "code", "param"}


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    s = ServiceProcess(tmp_path_factory.mktemp("docs"))
    s.start(timeout=90)
    yield s
    s.stop()


def referenced(html):
    return re.findall(r"""(?:src|href)=["']([^"']+)["']""", html) + re.findall(r"""url:\s*'([^']+)'""", html)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_every_asset_of_the_docs_pages_is_served_locally(svc, page):
    r = svc.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), r.text[:300]
    urls = referenced(r.text)
    assert urls, "no asset references found in %s:\n%s" % (page, r.text)
    scripts = [u for u in urls if u.endswith(".js")]
    assert scripts, "no script in %s" % page
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), "%s loads %s from elsewhere" % (page, url)
        asset = svc.get(url)
        assert asset.status_code == 200, (url, asset.status_code)
        ext = re.search(r"\.[a-z]+$", url)
        if ext and ext.group(0) in TYPES:
            assert asset.headers["content-type"].startswith(TYPES[ext.group(0)]), (url, asset.headers)
            assert len(asset.content) > 1000, url
        if url.endswith(".json"):
            assert asset.json()["openapi"].startswith("3.")
    assert svc.get("/docs/assets/swagger-ui-bundle.js").text.lstrip()[:1] != "<"
    r = svc.get("/docs/assets/..%2F..%2Fsetup.cfg")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_openapi_describes_every_body_and_the_error_shape(svc):
    doc = svc.get("/openapi.json").json()
    error = doc["components"]["schemas"]["Error"]
    assert error["required"] == ["error"]
    assert set(error["properties"]["error"]["properties"]) == ERROR_FIELDS
    assert "HTTPValidationError" not in doc["components"]["schemas"], "FastAPI's 422 shape is never sent here"
    seen = set()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            seen.add((method, path))
            if method in ("post", "put", "patch") and (method, path) not in NO_BODY:
                body = op.get("requestBody")
                assert body and body["content"], "%s %s has no request body in /openapi.json" % (method, path)
                for media, content in body["content"].items():
                    assert content["schema"].get("properties") or content["schema"].get("format") == "binary", \
                        (method, path, media)
            failures = {s: r for s, r in op["responses"].items() if s[:1] in "45"}
            assert {"4XX", "5XX"} <= set(failures), (method, path, sorted(op["responses"]))
            for status, answer in failures.items():
                ref = answer["content"]["application/json"]["schema"]["$ref"]
                assert ref == "#/components/schemas/Error", (method, path, status, ref)
    for route in [("post", "/v1/audio/speech"), ("post", "/v1/voices"), ("patch", "/v1/voices/{voice_id}"),
                  ("delete", "/v1/voices/{voice_id}"), ("post", "/v1/batches")]:
        assert route in seen, route

    speech = doc["paths"]["/v1/audio/speech"]["post"]
    as_json = speech["requestBody"]["content"]["application/json"]["schema"]
    assert as_json["required"] == ["input"]
    props = as_json["properties"]
    assert {"input", "voice", "response_format", "speed", "sample_rate", "seed", "stream"} <= set(props)
    assert "wav" in props["response_format"]["enum"] and props["sample_rate"]["default"] == 24000
    form = speech["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert form["prompt_audio"]["format"] == "binary" and "prompt_text" in form
    assert "audio/wav" in speech["responses"]["200"]["content"]
    assert "Retry-After" in speech["responses"]["429"]["headers"]
    assert "Retry-After" in speech["responses"]["503"]["headers"]
    rename = doc["paths"]["/v1/voices/{voice_id}"]["patch"]
    assert rename["requestBody"]["content"]["application/json"]["schema"]["required"] == ["name"]
    assert "409" in rename["responses"]
    create = doc["paths"]["/v1/voices"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(create["required"]) == {"prompt_audio", "prompt_text"}


def test_an_answered_error_matches_the_documented_shape(svc):
    doc = svc.get("/openapi.json").json()
    fields = set(doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"])
    r = svc.post("/v1/audio/speech", json={"input": "hi", "sample_rate": 8000})
    assert r.status_code == 400
    assert set(r.json()) == {"error"} and set(r.json()["error"]) <= fields, r.json()


@pytest.mark.browser
def test_swagger_ui_renders_from_local_assets_alone(svc):
    from tests.support.browser import chromium

    with chromium() as driver:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        driver.get(svc.url + "/docs")
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"))
        paths = {e.text.replace("\u200b", "") for e in driver.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
        fetched = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert "/v1/audio/speech" in paths and "/v1/voices/{voice_id}" in paths, paths
    outside = [u for u in fetched if not urljoin(svc.url + "/", u).startswith(svc.url + "/")]
    assert not outside, "the docs page fetched from outside the service: %s" % outside
