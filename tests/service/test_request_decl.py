"""The one declaration of a synthesis request (glmtts/request.py): defaults follow the
settings, every refusal names its field (`param`) with the same words on every face,
`glmtts synth` offers the options the declaration names and prints the API's message,
and docs/service.md's request table is the generated one."""

import os
import subprocess
import sys

import pytest

from glmtts import config
from glmtts import request as reqdecl

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_readme_has_the_generated_request_table():
    """Regenerate with: python -c 'from glmtts import request; print(request.markdown_table())'"""
    with open(os.path.join(REPO, "docs", "service.md"), encoding="utf-8") as f:
        readme = f.read()
    assert reqdecl.markdown_table() in readme, "docs/service.md's request-field table is not the generated one"


def test_defaults_are_the_settings_in_effect():
    s = config.load(path="", env={"GLMTTS_ENGINE_SEED": "7", "GLMTTS_ENGINE_SAMPLE_RATE": "32000",
                                  "GLMTTS_ENGINE_PHONEME": "true", "GLMTTS_ENGINE_USE_CACHE": "false"})
    p = reqdecl.parse({"input": "你好。"}, s)
    assert (p["seed"], p["sample_rate"], p["phoneme"], p["use_cache"]) == (7, 32000, True, False)
    assert (p["response_format"], p["voice"], p["speed"], p["stream_format"]) == ("mp3", "default", 1.0, "audio")
    # without settings: the declared defaults of those settings
    p = reqdecl.parse({"input": "你好。"})
    assert (p["seed"], p["sample_rate"]) == (42, 24000)


def test_a_form_means_what_the_same_json_means():
    form = {"input": "你好。", "seed": "5", "speed": "1.5", "phoneme": "true", "stream": "no",
            "sample_rate": "32000"}
    as_json = {"input": "你好。", "seed": 5, "speed": 1.5, "phoneme": True, "stream": False, "sample_rate": 32000}
    assert reqdecl.parse(form, from_form=True) == reqdecl.parse(as_json)


@pytest.mark.parametrize("raw,param,words,status", [
    ({}, "input", "'input' is required", 400),
    ({"input": "  "}, "input", "input is empty", 400),
    ({"input": 3}, "input", "'input' must be a string", 422),
    ({"input": "x", "speed": 9}, "speed", "speed 9 is out of range; allowed: 0.25..4.0", 400),
    ({"input": "x", "speed": True}, "speed", "'speed' must be a number", 422),
    ({"input": "x", "seed": -1}, "seed", "seed -1 is out of range", 400),
    ({"input": "x", "sample_rate": 16000}, "sample_rate", "sample_rate 16000 is not supported", 400),
    ({"input": "x", "response_format": "ogg"}, "response_format", "unsupported response_format 'ogg'", 400),
    ({"input": "x", "stream_format": "ws"}, "stream_format", "stream_format 'ws' is not supported", 400),
    ({"input": "x", "stream": True, "response_format": "wav"}, "response_format", "wav cannot be streamed", 400),
    ({"input": "x", "stream_format": "sse", "response_format": "flac"}, "response_format", "flac cannot be streamed",
     400),
    ({"input": "x", "instructions": "whisper"}, "instructions", "instructions are not supported", 400),
    ({"input": "x", "prompt_audio": "not a file"}, "prompt_audio", "must be a file upload", 422),
    ({"input": "x", "sample_rat": 1}, "sample_rat", "unknown field 'sample_rat'", 400),
])
def test_every_refusal_names_its_field(raw, param, words, status):
    with pytest.raises(reqdecl.FieldError) as e:
        reqdecl.parse(raw)
    assert e.value.param == param and words in str(e.value) and e.value.http_status == status


def test_prompt_audio_and_prompt_text_go_together():
    assert reqdecl.check_prompt(True, " 参考 ") == "参考"
    assert reqdecl.check_prompt(False, "") == ""
    for has_audio, text, words in ((True, "", "prompt_text is required with prompt_audio"),
                                   (False, "参考", "prompt_text needs prompt_audio")):
        with pytest.raises(reqdecl.FieldError) as e:
            reqdecl.check_prompt(has_audio, text)
        assert e.value.param == "prompt_text" and words in str(e.value)


def test_openapi_schema_is_the_declaration():
    schema = reqdecl.json_schema(config.load(path="", env={"GLMTTS_ENGINE_SEED": "9"}), (24000,))
    assert set(schema["properties"]) == {f.name for f in reqdecl.FIELDS if not f.form_only}
    assert schema["properties"]["seed"]["default"] == 9 and schema["properties"]["sample_rate"]["enum"] == [24000]
    assert schema["properties"]["response_format"]["default"] == "mp3"
    form = reqdecl.json_schema(form=True)
    assert form["properties"]["prompt_audio"] == {"type": "string", "format": "binary",
                                                  "description": reqdecl.BY_NAME["prompt_audio"].doc}


def _glmtts(*args, cwd):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLMTTS_")}
    env.update(GLMTTS_CONFIG="", PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", "glmtts.cli", *args], cwd=str(cwd), env=env, capture_output=True,
                          text=True, timeout=120)


def test_glmtts_synth_has_the_declared_options_and_the_api_messages(tmp_path):
    helptext = _glmtts("synth", "--help", cwd=tmp_path).stdout
    for f in reqdecl.FIELDS:
        for option in (o.strip() for o in f.cli.split("/")):
            if option.startswith("-"):
                assert option.split()[0] in helptext, "glmtts synth --help lacks %s (field %s)" % (option, f.name)
    for option, value, field in (("--seed", "4294967296", "seed"), ("--speed", "0.1", "speed"),
                                 ("--sample-rate", "44100", "sample_rate")):
        r = _glmtts("synth", "--text", "你好。", option, value, "-o", "out.wav", cwd=tmp_path)
        with pytest.raises(reqdecl.FieldError) as api:
            reqdecl.check(field, float(value) if field == "speed" else int(value))
        assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].endswith(
            reqdecl.option_message(api.value, option)), r.stderr
        assert not (tmp_path / "out.wav").exists()


def test_the_declaration_needs_no_web_stack():
    """The CLI and the batch runner import it: no FastAPI, no Gradio."""
    r = subprocess.run([sys.executable, "-c", "import sys, glmtts.request; "
                        "print(sorted(m for m in ('fastapi', 'starlette', 'gradio') if m in sys.modules))"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr
