"""Batch file validation: every problem reported with its line number and what to fix,
valid lines reported valid, nothing synthesized (tests/support/batch.py builds the sandbox)."""

import json
import os
import subprocess

import pytest

from glmtts.batch.validate import ranges, validate_file
from tests.support.batch import PROMPT_TEXT, Sandbox


@pytest.fixture
def box(tmp_path):
    b = Sandbox(tmp_path / "box")
    with open(os.path.join(b.prompt_root, "notes.wav"), "w") as f:
        f.write("this is a text file, not audio\n" * 20)
    secret = tmp_path / "outside.wav"
    secret.write_bytes(open(os.path.join(b.prompt_root, "voice.wav"), "rb").read())
    os.symlink(str(secret), os.path.join(b.prompt_root, "escape.wav"))
    os.makedirs(os.path.join(b.prompt_root, "sub"))
    os.symlink("../voice.wav", os.path.join(b.prompt_root, "sub", "inside.wav"))  # stays inside: fine
    return b


def T(i, **kw):
    t = {"prompt_audio": "voice.wav", "prompt_text": PROMPT_TEXT, "input_text": "Line %d." % i,
         "output_name": "out_%d" % i}
    t.update(kw)
    return json.dumps(t, ensure_ascii=False)


# (line content, expected words in the message, field) — one bad line each, between valid ones
BAD = [
    ('{"prompt_audio": "voice.wav", "input_text": "x",', "not valid JSON", None),
    ('["a", "list"]', "must be a JSON object", None),
    (json.dumps({"prompt_audio": "voice.wav", "prompt_text": "t", "output_name": "o_missing"}), "missing required field 'input_text'", "input_text"),
    (T(0, input_text=42, output_name="o_type"), "'input_text' must be a string", "input_text"),
    (T(0, sample_rate=44100, output_name="o_rate"), "sample_rate 44100 is not supported; allowed: 24000 | 32000", "sample_rate"),
    (T(0, seed="x", output_name="o_seed"), "'seed' must be an integer", "seed"),
    (T(0, prompt_audio="nope.wav", output_name="o_404"), "not found in paths.prompt_root", "prompt_audio"),
    (T(0, prompt_audio="notes.wav", output_name="o_text"), "not a recognised audio file", "prompt_audio"),
    (T(0, prompt_audio="../outside.wav", output_name="o_dots"), "contains '..'", "prompt_audio"),
    (T(0, prompt_audio="/etc/passwd", output_name="o_abs"), "absolute path outside paths.prompt_root", "prompt_audio"),
    (T(0, prompt_audio="escape.wav", output_name="o_link"), "symlink that leads outside", "prompt_audio"),
    (T(0, output_name="../evil"), "not a safe file name", "output_name"),
    (T(0, output_name="a/b"), "not a safe file name", "output_name"),
    (T(0, output_name="OUT_1"), "already used on line 1", "output_name"),
    (T(0, input_text="x" * 300, output_name="o_long"), "limit is limits.max_text_chars (200)", "input_text"),
]


def test_validation_table_reports_each_problem_with_its_line_and_valid_lines_as_valid(box, tmp_path):
    lines = [T(1)]
    expected = {}
    for content, words, field in BAD:
        lines.append(content)
        expected[len(lines)] = (words, field)
        lines.append(T(len(lines) + 1))
    lines.append(T(0, prompt_audio="sub/inside.wav", output_name="via_inner_link"))
    lines.append(json.dumps({"prompt_speech": "voice.wav", "prompt_text": "t", "syn_text": "official names",
                             "uttid": "official_0"}))
    path = box.write_job("job.jsonl", lines)
    settings = box.settings.replace(limits__max_text_chars=200)
    report = validate_file(path, settings)

    assert not report.ok
    by_line = {}
    for p in report.errors:
        by_line.setdefault(p.line, []).append(p)
    assert sorted(by_line) == sorted(expected), report.format_text()
    for line, (words, field) in expected.items():
        messages = " / ".join(p.message for p in by_line[line])
        assert words in messages, "line %d: %s" % (line, messages)
        if field:
            assert by_line[line][0].field == field
    valid = [n for n in range(1, len(lines) + 1) if n not in expected]
    assert report.valid_lines == valid
    assert report.tasks[-1].output_name == "official_0" and report.tasks[-1].input_text == "official names"
    text = report.format_text()
    assert "line 2: error: not valid JSON" in text
    assert "%d of %d lines valid" % (len(valid), len(lines)) in text
    # nothing was written anywhere: validation is read-only
    assert os.listdir(box.output_dir) == [] and os.listdir(box.state_dir) == []


def test_empty_file_is_an_error(box):
    report = validate_file(box.write_job("empty.jsonl", []), box.settings)
    assert not report.ok and "empty" in report.errors[0].message


def test_huge_line_is_rejected_without_reading_it_into_memory(box):
    import resource
    path = os.path.join(box.root, "huge.jsonl")
    with open(path, "wb") as f:
        f.write((T(1) + "\n").encode())
        f.write(b'{"input_text": "')
        chunk = b"a" * (1 << 20)
        for _ in range(100):  # a 100 MB line
            f.write(chunk)
        f.write(b'"}\n')
        f.write((T(3) + "\n").encode())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report = validate_file(path, box.settings)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024.0
    assert [p.line for p in report.errors] == [2]
    assert "100.0 MB long" in report.errors[0].message and "batch.max_line_bytes (65536 bytes)" in report.errors[0].message
    assert report.valid_lines == [1, 3]
    assert grown_mb < 50, "validation held the long line in memory (%d MB)" % grown_mb


def test_non_utf8_bytes_are_reported_with_their_line(box):
    path = os.path.join(box.root, "latin1.jsonl")
    with open(path, "wb") as f:
        f.write((T(1) + "\n").encode())
        f.write(T(2, input_text="caf\u00e9").encode("latin-1") + b"\n")
    report = validate_file(path, box.settings)
    assert [(p.line, "not valid UTF-8" in p.message) for p in report.errors] == [(2, True)]
    assert report.valid_lines == [1]


def test_cli_validate_exit_codes_and_json(box):
    good = box.write_job("good.jsonl", [T(1), T(2)])
    bad = box.write_job("bad.jsonl", [T(1), "{oops", T(3, output_name="out_1")])
    ok = subprocess.run(box.glmtts("batch", "validate", good), env=box.env(), capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "2 of 2 lines valid" in ok.stdout and "OK: ready to run" in ok.stdout
    assert "estimate: about" in ok.stdout
    res = subprocess.run(box.glmtts("batch", "validate", "--json", bad), env=box.env(), capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 1
    data = json.loads(res.stdout)
    assert data["ok"] is False and data["valid_lines"] == [1]
    assert [(e["line"], e["field"]) for e in data["errors"]] == [(2, None), (3, "output_name")]


def test_ranges():
    assert ranges([1, 2, 3, 5, 7, 8]) == "1-3, 5, 7-8"
    assert ranges([]) == ""
