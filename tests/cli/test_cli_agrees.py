"""The CLI agrees with the API, run as a user runs it (subprocesses): `glmtts synth -o`
writes the format its extension names or refuses naming the formats; --prompt-audio needs
--prompt-text (an argparse error naming both); `glmtts batch validate` of a missing file
is one error line; and docs/engines.md's reference-audio table quotes, row by row, the message the
API, `glmtts synth` and the batch validator print for that condition."""

import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from glmtts import audio as audiolib
from tests.support.service import REPO, ServiceProcess

README = os.path.join(REPO, "docs", "engines.md")
TRANSCRIPT = "今天天气很好，我们一起去公园散步吧。"


def glmtts(*args, cwd, timeout=120):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLMTTS_")}
    # no configuration file: defaults (engine espeak); the state stays in the test's directory
    env.update(GLMTTS_CONFIG="", GLMTTS_PATHS_STATE_DIR=os.path.join(str(cwd), "state"),
               GLMTTS_PATHS_PROMPT_ROOT=str(cwd), PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", "glmtts.cli", *args], cwd=str(cwd), env=env, capture_output=True,
                          text=True, timeout=timeout)


def wav(samples, sr=16000):
    buf = io.BytesIO()
    sf.write(buf, np.asarray(samples, dtype=np.float32), sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def voice_like(seconds, sr=16000):
    t = np.arange(int(seconds * sr)) / sr
    return wav(0.3 * np.sin(2 * np.pi * 150 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2), sr)


# -- -o and --format -----------------------------------------------------------------------

def test_an_unsupported_extension_is_an_error_naming_the_formats(tmp_path):
    r = glmtts("synth", "--text", "你好。", "-o", "x.ogg", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("glmtts synth: error: -o x.ogg: '.ogg'"), r.stderr
    for fmt in audiolib.FORMATS:
        assert fmt in lines[0], "the error does not name format %s: %s" % (fmt, lines[0])
    assert not os.path.exists(tmp_path / "x.ogg")


@pytest.mark.parametrize("name, container", [("x.flac", "FLAC"), ("x.mp3", "MP3"), ("X.WAV", "WAV")])
def test_a_supported_extension_picks_that_format(tmp_path, name, container):
    r = glmtts("synth", "--text", "你好，世界。", "-o", name, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    info = sf.info(str(tmp_path / name))
    assert info.format == container and info.duration > 0.3, info
    assert ("of %s audio" % container.lower()) in r.stdout, r.stdout


def test_raw_pcm_and_a_format_that_contradicts_the_extension(tmp_path):
    r = glmtts("synth", "--text", "你好。", "-o", "x.pcm", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    data = (tmp_path / "x.pcm").read_bytes()
    assert data[:4] != b"RIFF" and len(data) % 2 == 0 and len(data) > 24000 * 2 * 0.3
    r = glmtts("synth", "--text", "你好。", "--format", "mp3", "-o", "y.wav", cwd=tmp_path)
    assert r.returncode == 2 and "--format is mp3" in r.stderr and "y.wav" in r.stderr, r.stderr
    assert not os.path.exists(tmp_path / "y.wav")
    r = glmtts("synth", "--text", "你好。", "--format", "flac", "-o", "noext", cwd=tmp_path)
    assert r.returncode == 0 and sf.info(str(tmp_path / "noext")).format == "FLAC", r.stderr


# -- prompt audio / text -------------------------------------------------------------------

def test_prompt_audio_needs_prompt_text_as_in_the_api(tmp_path):
    (tmp_path / "ref.wav").write_bytes(voice_like(3))
    r = glmtts("synth", "--text", "你好。", "--prompt-audio", "ref.wav", "-o", "out.wav", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("usage: glmtts synth"), r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("glmtts synth: error:") and "--prompt-audio" in last and "--prompt-text" in last, last
    assert not os.path.exists(tmp_path / "out.wav")
    r = glmtts("synth", "--text", "你好。", "--prompt-text", "hi", "-o", "out.wav", cwd=tmp_path)
    assert r.returncode == 2 and "--prompt-text needs --prompt-audio" in r.stderr, r.stderr
    r = glmtts("synth", "--text", "你好。", "--prompt-audio", "ref.wav", "--prompt-text", TRANSCRIPT,
               "-o", "out.wav", cwd=tmp_path)
    assert r.returncode == 0 and sf.info(str(tmp_path / "out.wav")).duration > 0.3, r.stderr


# -- batch validate of a file that is not there ---------------------------------------------

@pytest.mark.parametrize("make, says", [(None, "batch file {} does not exist"),
                                        (os.mkdir, "{} is a directory, not a batch file")])
@pytest.mark.parametrize("extra", [[], ["--json"]])
def test_batch_validate_of_a_missing_file_is_one_error_line(tmp_path, make, says, extra):
    path = str(tmp_path / "missing.jsonl")
    if make:
        make(path)
    r = glmtts("batch", "validate", path, *extra, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stdout == "", "printed more than the error: %r" % r.stdout
    assert r.stderr == "glmtts batch: error: %s\n" % says.format(path), r.stderr


# -- README's reference-audio table --------------------------------------------------------

# Each condition the reference check refuses, keyed by what its README row says.
CONDITIONS = {
    "not audio": lambda: b"this is a text file, not audio\n" * 4,
    "empty": lambda: b"",
    "no samples": lambda: wav(np.zeros(0)),
    "shorter": lambda: voice_like(1.0),
    "longer": lambda: voice_like(40.0),
    "silent": lambda: wav(np.zeros(3 * 16000)),
}


def readme_reference_table():
    """[(condition key, status, message)] from the table under "### Reference audio"."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    section = text.split("### Reference audio", 1)[1].split("\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")][2:]  # header, rule
    table = []
    for row in rows:
        problem, status, message = [c.strip() for c in row.strip().strip("|").split("|")]
        keys = [k for k in CONDITIONS if k in problem]
        assert len(keys) == 1, "README row %r must name exactly one of %s" % (row, sorted(CONDITIONS))
        quoted = re.fullmatch(r"`([^`]+)`", message)
        assert quoted, "README row %r: the message cell must be one quoted message" % row
        table.append((keys[0], int(status), quoted.group(1)))
    assert sorted(k for k, _, _ in table) == sorted(CONDITIONS), "README's table misses a condition: %s" % table
    return table


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    s = ServiceProcess(tmp_path_factory.mktemp("refs"))
    s.start(timeout=90)
    yield s
    s.stop()


@pytest.mark.integration
def test_readme_quotes_the_messages_the_api_and_the_cli_print(svc, tmp_path):
    table = readme_reference_table()
    for key, status, message in table:
        data = CONDITIONS[key]()
        files = {"prompt_audio": ("ref.wav", data, "audio/wav")}
        for route, form in (("/v1/audio/speech", {"input": "你好。", "prompt_text": TRANSCRIPT}),
                            ("/v1/voices", {"prompt_text": TRANSCRIPT})):
            r = svc.post(route, data=form, files=files)
            err = r.json()["error"]
            assert (r.status_code, err["message"][:len(message)]) == (status, message), \
                "README says %s %r for %s; %s answers %d %r" % (status, message, key, route, r.status_code,
                                                                err["message"])
        # the CLI and the batch validator say the same, naming the file instead of the field
        path = tmp_path / ("%s.wav" % key.replace(" ", "_"))
        path.write_bytes(data)
        r = glmtts("synth", "--text", "你好。", "--prompt-audio", str(path), "--prompt-text", TRANSCRIPT,
                   "-o", str(tmp_path / "out.wav"), cwd=tmp_path)
        expected = message.replace("prompt_audio", "prompt audio %s" % path, 1)
        assert r.returncode == 2 and r.stderr.startswith("glmtts synth: error: " + expected), \
            "README says %r for %s; glmtts synth prints %r" % (message, key, r.stderr)

    jobs = tmp_path / "refs.jsonl"
    jobs.write_text("".join(json.dumps({"prompt_audio": "%s.wav" % k.replace(" ", "_"), "prompt_text": TRANSCRIPT,
                                        "input_text": "你好。", "output_name": "o%d" % i}) + "\n"
                            for i, (k, _, _) in enumerate(table)), encoding="utf-8")
    r = glmtts("batch", "validate", "--json", str(jobs), cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    errors = {e["line"]: e["message"] for e in json.loads(r.stdout)["errors"]}
    for line, (key, _status, message) in enumerate(table, start=1):
        name = "%s.wav" % key.replace(" ", "_")
        expected = message.replace("prompt_audio", "prompt_audio %r: reference audio" % name, 1)
        assert errors.get(line, "").startswith(expected), \
            "README says %r for %s; the batch validator prints %r" % (message, key, errors.get(line))
