"""The OCI image (ops/container/Dockerfile), built and run for real under a private dockerd
(tests/support/docker.py), as a user would:

- the base: no registry is reachable here, so `debootstrap --variant=minbase bookworm` +
  `docker import` stands in for debian:bookworm-slim (the same minimal Debian: no Python,
  no CA certificates; the Dockerfile installs those itself, exactly as on the real image);
- the embedded image is built, refuses a bare `docker run` (no API key: exit 78), is
  started with a mounted config file, GLMTTS_* variables and a read-only root file system,
  reaches Docker's `healthy` within the HEALTHCHECK's start period, synthesizes a WAV
  through the published port, builds its UI, runs as a non-root user, and
  `docker stop -t <stop_grace_s>`
  with requests queued loses none of them, answers no 5xx but 503 draining (+ Retry-After)
  to late ones, and leaves exit code 0;
- the CUDA variant is built from the same imported base (no nvidia/cuda image can be
  pulled here) with the local CPU torch wheel (no CUDA torch can be downloaded either), and
  inspected, not run: there is no GPU and there are no GLM-TTS weights.

Needs root (dockerd, debootstrap, a bridge) and the Debian packages of ops/system-deps.sh:
without them the test skips, and fails in CI (GLMTTS_TEST_REQUIRE_FLEET=1). Phase timings
are printed at the end and written with the drain figures to artifacts/container.json.

Build inputs the test provides in ops/container/local/ (git-ignored, removed afterwards):
the torch wheel (`pip download torch==<pin> --no-deps`: the machine's pip configuration
resolves it to the local CPU wheel) and the host's CA bundle (pip inside the build goes
through the same TLS-intercepting proxy as the host, if there is one).
"""

import datetime
import io
import json
import os
import re
import secrets
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import soundfile as sf

from glmtts import config
from tests.plugins import drain_load
from tests.plugins.drain_load import DrainLoad
from tests.support.docker import DockerError, PrivateDocker
from tests.support.fleet import require_root, tool, unavailable

pytestmark = pytest.mark.integration

# the checkout: the nearest directory above with setup.cfg (wherever tests/ puts this file)
ROOT = next(p for p in Path(__file__).resolve().parents if (p / "setup.cfg").exists())
DOCKERFILE = ROOT / "ops" / "container" / "Dockerfile"
LOCAL = ROOT / "ops" / "container" / "local"
ARTIFACTS = ROOT / "artifacts" / "container"
MIRROR = os.environ.get("GLMTTS_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
BASE_TAG = "glmtts-test-base:bookworm-minbase"
IMAGE = "glmtts-test:embedded"
CUDA_IMAGE = "glmtts-test:cuda"
EMBEDDED_START_PERIOD_S = 60  # the Dockerfile's HEALTHCHECK --start-period of variant-embedded
GRACE_S = config.stop_grace_s()
DELAY_S = config.load(path="", env={}).server.drain_delay_s
# Each queued request of the drain: about 2 minutes of speech, which the espeak engine takes
# a good fraction of a second to make, so all of them are held by the service at once.
LONG_TEXT = "今天天气很好，我们一起去公园散步，看看花草树木，听听鸟儿唱歌。" * 12

TIMINGS = {}


def _phase(name, started):
    TIMINGS[name] = round(time.monotonic() - started, 1)


def torch_version():
    return re.search(r"(?m)^ARG TORCH_VERSION=(\S+)$", DOCKERFILE.read_text()).group(1)


def host_ca_bundle():
    """The CA bundle this machine's own pip and requests trust (None: no file to pass)."""
    for var in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        if os.environ.get(var) and os.path.isfile(os.environ[var]):
            return os.environ[var]
    paths = ssl.get_default_verify_paths()
    for p in (paths.cafile, paths.openssl_cafile):
        if p and os.path.isfile(p):
            return p
    return None


# -- fixtures: daemon, base image, build inputs, the embedded image ------------------------

@pytest.fixture(scope="module")
def docker(request):
    require_root("a private dockerd (and debootstrap, and a network bridge)")
    tool("debootstrap")
    d = PrivateDocker()
    started = time.monotonic()
    try:
        d.start()
    except DockerError as e:
        d.stop()
        unavailable("cannot start a private dockerd here: %s" % e)
    _phase("dockerd start", started)
    yield d
    started = time.monotonic()
    d.stop()
    _phase("dockerd stop + cleanup", started)
    TIMINGS["  of which dockerd stop"] = round(d.stopped_s, 1)
    line = "test_container phase timings (s): " + ", ".join("%s %s" % kv for kv in TIMINGS.items())
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print("\n" + line)
    _record({"timings_s": TIMINGS})


def _record(data):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / "container.json"
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        old = {}
    old.update(data, recorded_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    fd, tmp = tempfile.mkstemp(dir=ARTIFACTS, prefix=".container.")
    with os.fdopen(fd, "w") as f:
        json.dump(old, f, indent=2, sort_keys=True)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _debootstrap_tarball():
    """A minbase bookworm root as a tarball, kept for the day under artifacts/ (ignored by
    git; CI starts clean and makes it once)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d")
    tarball = ARTIFACTS / ("debian-bookworm-minbase-%s.tar" % today)
    if tarball.exists():
        return tarball, True
    for old in ARTIFACTS.glob("debian-bookworm-minbase-*.tar"):
        old.unlink()
    rootfs = tempfile.mkdtemp(prefix="glmtts-rootfs-")
    try:
        cp = subprocess.run([tool("debootstrap"), "--variant=minbase", "bookworm", rootfs, MIRROR],
                            capture_output=True, text=True, timeout=900)
        if cp.returncode != 0:
            raise AssertionError("debootstrap failed (%s; GLMTTS_TEST_DEBIAN_MIRROR picks another mirror):\n%s"
                                 % (MIRROR, (cp.stdout + cp.stderr)[-3000:]))
        # as in debian:*-slim: no package cache, no package lists
        for d in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for p in Path(rootfs, d).glob("*"):
                if p.is_file():
                    p.unlink()
        tmp = tarball.with_suffix(".partial")
        subprocess.run(["tar", "-C", rootfs, "--numeric-owner", "-cf", str(tmp), "."], check=True, timeout=300)
        os.replace(tmp, tarball)
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)
    return tarball, False


@pytest.fixture(scope="module")
def base_image(docker):
    started = time.monotonic()
    tarball, cached = _debootstrap_tarball()
    _phase("base: debootstrap" + (" (cached today)" if cached else ""), started)
    started = time.monotonic()
    with open(tarball, "rb") as f:
        docker.run("import", "-", BASE_TAG, stdin=f, timeout=300)
    _phase("base: docker import", started)
    return BASE_TAG


@pytest.fixture(scope="module")
def build_inputs():
    """The torch wheel and the CA bundle in ops/container/local/; what this fixture added is
    removed afterwards (a wheel the user put there stays)."""
    started = time.monotonic()
    wheels = LOCAL / "wheels"
    made_dir = not wheels.exists()
    wheels.mkdir(exist_ok=True)
    before = set(wheels.iterdir())
    cp = subprocess.run([sys.executable, "-m", "pip", "download", "torch==%s" % torch_version(), "--no-deps",
                         "-d", str(wheels)], capture_output=True, text=True, timeout=1200)
    assert cp.returncode == 0, "pip download torch failed:\n" + (cp.stdout + cp.stderr)[-3000:]
    added = set(wheels.iterdir()) - before
    ca = LOCAL / "ca-certificates.crt"
    ca_added = False
    bundle = host_ca_bundle()
    if bundle and not ca.exists():
        shutil.copyfile(bundle, ca)
        ca_added = True
    _phase("build inputs (torch wheel, CA bundle)", started)
    try:
        yield sorted(p.name for p in wheels.iterdir())
    finally:
        for p in added:
            p.unlink(missing_ok=True)
        if made_dir and not any(wheels.iterdir()):
            wheels.rmdir()
        if ca_added:
            ca.unlink(missing_ok=True)


def build(docker, tag, *build_args, timeout=1500):
    args = ["build", "--network", "host", "-f", str(DOCKERFILE), "-t", tag]
    for a in build_args:
        args += ["--build-arg", a]
    cp = docker.run(*(args + [str(ROOT)]), check=False, timeout=timeout)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    text = cp.stdout + cp.stderr
    if cp.returncode == 0:  # where the time went: each layer's creation time and size
        text += "\n" + docker.run("history", "--no-trunc", "--format", "{{.CreatedAt}}\t{{.Size}}\t{{.CreatedBy}}",
                                   tag, check=False).stdout
    (ARTIFACTS / ("build-%s.log" % tag.split(":")[-1])).write_text(text)
    return cp


@pytest.fixture(scope="module")
def image(docker, base_image, build_inputs):
    started = time.monotonic()
    cp = build(docker, IMAGE, "BASE_IMAGE=" + base_image)
    _phase("build embedded", started)
    assert cp.returncode == 0, "docker build failed:\n%s\n%s" % (cp.stdout[-4000:], cp.stderr[-2000:])
    assert "torch from the build context" in cp.stdout, "the torch wheel of the build context was not used"
    return IMAGE


# -- helpers --------------------------------------------------------------------------------

def wait_healthy(docker, name, timeout):
    """Seconds until Docker's health status is `healthy`; fails with the logs if the
    container exits or turns unhealthy first."""
    started = time.monotonic()
    state = {}
    while time.monotonic() - started < timeout:
        state = json.loads(docker.inspect("{{json .State}}", name))
        if state.get("Health", {}).get("Status") == "healthy":
            return time.monotonic() - started
        if state.get("Status") != "running" or state.get("Health", {}).get("Status") == "unhealthy":
            break
        time.sleep(0.25)
    logs = docker.run("logs", name, check=False)
    raise AssertionError("container %s not healthy within %ss: %s\n%s%s" % (
        name, timeout, json.dumps(state.get("Health", state))[-2000:], logs.stdout[-2000:], logs.stderr[-3000:]))


def logs(docker, name, n=3000):
    """The container's stderr tail, for an assertion message: what went wrong inside."""
    cp = docker.run("logs", name, check=False)
    return "\n--- docker logs %s (stderr tail) ---\n%s" % (name, cp.stderr[-n:])


def assert_wav(body, min_s=0.5):
    audio, rate = sf.read(io.BytesIO(body), dtype="float32")
    assert rate == 24000 and audio.ndim == 1, (rate, audio.shape)
    assert len(audio) / rate > min_s and float(np.sqrt(np.mean(audio ** 2))) > 1e-3


def poll(url, path, status, body_status, within_s):
    deadline = time.monotonic() + within_s
    last = None
    while time.monotonic() < deadline:
        try:
            r = requests.get(url + path, timeout=2)
            last = (r.status_code, r.text[:200])
            if r.status_code == status and r.json().get("status") == body_status:
                return r.json()
        except requests.RequestException as e:
            last = repr(e)
        time.sleep(0.05)
    raise AssertionError("%s never answered %s %s within %ss: last %s" % (path, status, body_status, within_s, last))


# -- the tests ------------------------------------------------------------------------------

@pytest.mark.timeout(2400)  # the module's builds run inside the first test that needs them
def test_embedded_image_runs_healthy_non_root_and_drains_on_docker_stop(docker, image, tmp_path):
    cfg = json.loads(docker.inspect("{{json .Config}}", image))
    assert cfg["User"] == "10001:10001"
    assert cfg["StopSignal"] == "SIGTERM"
    assert cfg["Healthcheck"]["Test"] == ["CMD", "glmtts-readyz"]
    assert cfg["Healthcheck"]["StartPeriod"] == EMBEDDED_START_PERIOD_S * 10**9
    assert cfg["Labels"]["io.glmtts.stop-grace-seconds"] == str(GRACE_S)
    assert "/var/lib/glmtts" in cfg["Volumes"]
    assert not any(e.startswith(("GLMTTS_SERVER_API_KEYS=", "GLMTTS_SERVER_ALLOW_PUBLIC")) for e in cfg["Env"])

    # A bare `docker run`: the image binds 0.0.0.0 and ships no key, so it refuses to serve
    # without an explicit choice, and says which (exit 78: retrying cannot help).
    started = time.monotonic()
    bare = docker.run("run", "--rm", image, check=False, timeout=120)
    assert bare.returncode == 78, (bare.returncode, bare.stderr[-2000:])
    assert "server.api_keys" in bare.stderr and "allow_public_without_keys" in bare.stderr, bare.stderr[-2000:]
    _phase("run: bare run refused (exit 78)", started)

    # Configuration from a mounted file and from the environment; a read-only root file
    # system (as Kubernetes' readOnlyRootFilesystem): the service writes to its state
    # volume and /tmp only.
    key = secrets.token_hex(16)
    conf = tmp_path / "glmtts.toml"
    conf.write_text('[server]\napi_keys = ["%s"]\n\n[limits]\nmax_queue = 16\n' % key)
    conf.chmod(0o644)
    docker.run("volume", "create", "glmtts-test-state")
    name = "glmtts-test-embedded"
    started = time.monotonic()
    docker.run("run", "-d", "--name", name, "-p", "127.0.0.1::7860", "--read-only", "--tmpfs", "/tmp",
               "-v", "glmtts-test-state:/var/lib/glmtts",
               "-v", "%s:/etc/glmtts/glmtts.toml:ro" % conf,
               "-e", "GLMTTS_LIMITS_RATE_LIMIT_PER_MINUTE=0",
               image)
    load_s = wait_healthy(docker, name, EMBEDDED_START_PERIOD_S + 30)
    _phase("run: docker run -> healthy", started)
    assert load_s < EMBEDDED_START_PERIOD_S, "healthy after %.1f s: beyond the HEALTHCHECK's start period" % load_s
    url = "http://127.0.0.1:%d" % docker.published_port(name, 7860)

    started = time.monotonic()
    auth = {"Authorization": "Bearer " + key}
    r = requests.post(url + "/v1/audio/speech", headers=auth, timeout=60,
                      json={"model": "glmtts", "input": "你好，这是一次容器测试。", "voice": "default",
                            "response_format": "wav"})
    assert r.status_code == 200, (r.status_code, r.text[:500], logs(docker, name))
    assert_wav(r.content)
    # the Gradio UI is built after ready (service/uigate.py): it must come up in the image too
    ui, deadline = None, time.monotonic() + 120
    while time.monotonic() < deadline and ui not in ("ready", "failed"):
        ui = requests.get(url + "/healthz", timeout=5).json().get("ui")
        time.sleep(0.25)
    assert ui == "ready", ("UI %s" % ui, logs(docker, name))
    # the dashboard's runbook links answer in the image too (runbooks/ is copied in)
    rb = requests.get(url + "/ui/runbooks/service-down", headers=auth, timeout=30)
    assert rb.status_code == 200 and "id: service-down" in rb.text, (rb.status_code, rb.text[:300])
    anon = requests.post(url + "/v1/audio/speech", json={"input": "你好。"}, timeout=60)
    assert anon.status_code == 401, anon.status_code

    uid = docker.run("exec", name, "id", "-u").stdout.strip()
    assert uid != "0" and uid == "10001", uid
    # what the service may write, and what it may not; no source tree, wheels or CA bundle
    # of the build left in the final image
    docker.run("exec", name, "sh", "-c", "test -w /var/lib/glmtts && test ! -w /opt/glmtts/lib "
               "&& test ! -e /src && test ! -e /build")
    shown = docker.run("exec", name, "glmtts", "config", "show").stdout
    assert re.search(r'(?m)^api_keys = \["\*\*\*\*"\]  # from /etc/glmtts/glmtts.toml$', shown), shown
    assert re.search(r"(?m)^rate_limit_per_minute = 0  # from env GLMTTS_LIMITS_RATE_LIMIT_PER_MINUTE$", shown), shown
    assert re.search(r'(?m)^host = "0.0.0.0"  # from env GLMTTS_SERVER_HOST$', shown), shown
    mounts = json.loads(docker.inspect("{{json .Mounts}}", name))
    assert any(m["Type"] == "volume" and m["Name"] == "glmtts-test-state" and m["Destination"] == "/var/lib/glmtts"
               for m in mounts), mounts
    memory = docker.run("stats", "--no-stream", "--format", "{{.MemUsage}}", name).stdout.strip()
    _phase("run: synthesis + checks", started)

    # `docker stop` under load: the shared drain checker (tests/plugins/drain_load.py), its
    # requests carrying the key and a long text (espeak is too fast to hold 8 short ones).
    started = time.monotonic()
    load = DrainLoad(url, n=8, headers=auth, text=drain_load.TEXT + LONG_TEXT)
    held = load.queue()
    t0 = time.monotonic()
    stop = docker.popen("stop", "-t", str(GRACE_S), name, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    load.signal_sent()
    ready = poll(url, "/readyz", 503, "draining", DELAY_S)
    assert "SIGTERM" in (ready.get("reason") or ""), ready  # tini passed Docker's STOPSIGNAL on as it is
    live = requests.get(url + "/livez", timeout=5)
    assert live.status_code == 200, live.text
    said = stop.communicate(timeout=GRACE_S + 60)[0]
    stopped_after = time.monotonic() - t0
    load.finish(60)
    _phase("run: docker stop under load", started)
    report = load.report()
    state = json.loads(docker.inspect("{{json .State}}", name))
    out = docker.run("logs", name)
    _record({"drain": dict(report, held_at_stop=held.get("queue_depth", 0) + held.get("in_flight", 0),
                           stop_s=round(stopped_after, 2), exit_code=state["ExitCode"], grace_s=GRACE_S,
                           load_s=round(load_s, 2)), "memory_after_synthesis": memory})

    tail = "\n--- docker logs (stderr tail) ---\n" + out.stderr[-3000:]
    assert stop.returncode == 0, said
    # 137 would be Docker's SIGKILL after -t, 143 a SIGTERM that was not handled
    assert state["ExitCode"] == 0 and not state["OOMKilled"], (state, tail)
    assert stopped_after < GRACE_S, stopped_after
    assert load.failures() == [], (load.failures(), report, tail)
    assert report["lost"] == 0 and report["bad_5xx"] == 0 and report["queued_ok"] == 8, (report, tail)
    assert report["late_503_draining"] >= 1, report  # new work was turned away, with Retry-After
    assert "Traceback" not in out.stderr, tail
    # access lines on stdout, the service's own log on stderr: both reach `docker logs`
    assert re.search(r"(?m) POST /v1/audio/speech 200 ", out.stdout), out.stdout[-2000:]
    assert "listening on http://0.0.0.0:7860" in out.stderr, tail


@pytest.mark.timeout(2400)
def test_cuda_variant_builds_with_the_glmtts_extra(docker, base_image, build_inputs, image):
    # A mistyped variant is refused by name, before any download.
    bad = build(docker, "glmtts-test:bad", "BASE_IMAGE=" + base_image, "VARIANT=gpu", timeout=600)
    assert bad.returncode != 0 and "VARIANT=gpu: allowed: embedded | cuda" in bad.stdout + bad.stderr, \
        (bad.stdout + bad.stderr)[-2000:]

    # Built from the same imported Debian (no nvidia/cuda image can be pulled here) and the
    # local CPU torch wheel; not run: no GPU, no GLM-TTS checkout.
    started = time.monotonic()
    cp = build(docker, CUDA_IMAGE, "BASE_IMAGE=" + base_image, "VARIANT=cuda")
    _phase("build cuda (layers shared with embedded)", started)
    assert cp.returncode == 0, "docker build (cuda) failed:\n%s\n%s" % (cp.stdout[-4000:], cp.stderr[-2000:])
    cfg = json.loads(docker.inspect("{{json .Config}}", CUDA_IMAGE))
    env = dict(e.split("=", 1) for e in cfg["Env"])
    assert env["GLMTTS_ENGINE_NAME"] == "glmtts" and env["GLMTTS_ENGINE_GLMTTS_HOME"] == "/models/GLM-TTS", env
    assert env["GLMTTS_ENGINE_DEVICE"] == "cuda" and env["NVIDIA_VISIBLE_DEVICES"] == "all", env
    assert cfg["User"] == "10001:10001" and cfg["StopSignal"] == "SIGTERM"
    assert cfg["Healthcheck"]["Test"] == ["CMD", "glmtts-readyz"]
    assert cfg["Healthcheck"]["StartPeriod"] == 15 * 60 * 10**9  # TimeoutStartSec=15min of ops/glmtts.service
    # the adapter's dependencies are in; the weights are not (engine.glmtts_home is a volume)
    docker.run("run", "--rm", "--entrypoint", "sh", CUDA_IMAGE, "-c",
               "pip show -q torchaudio transformers onnxruntime-gpu WeTextProcessing && pip check "
               "&& test ! -e /models/GLM-TTS && test ! -e /src", timeout=120)
