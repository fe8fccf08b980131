"""The batch task: one JSON object per line of a JSONL file.

Canonical fields and the official GLM-TTS repository's names, which are accepted too::

    prompt_audio  (prompt_speech)  reference audio, relative to paths.prompt_root
    prompt_text                    transcript of the reference audio
    input_text    (syn_text)       the text to speak
    output_name   (uttid)          file stem of the output (<output_name>.wav)
    sample_rate                    optional: 24000 | 32000 (default engine.sample_rate)
    seed                           optional: integer (default engine.seed)

This module only checks shape and types; validate.py checks the file system and limits.
"""

import re
from dataclasses import asdict, dataclass, field
from typing import Optional

REQUIRED = ("prompt_audio", "prompt_text", "input_text", "output_name")
OPTIONAL = ("sample_rate", "seed")
ALIASES = {"prompt_speech": "prompt_audio", "syn_text": "input_text", "uttid": "output_name"}
SAMPLE_RATES = (24000, 32000)
MAX_SEED = 2**32 - 1

# A file stem that is safe on every file system and inside a zip: letters (any script),
# digits, '_', '-', '.', starting with a letter or digit, no '..', at most 120 characters.
_SAFE_STEM = re.compile(r"[^\W_]|[^\W_][\w.\-]{0,118}[\w\-]", re.UNICODE)
_RESERVED = {"con", "prn", "aux", "nul"} | {"com%d" % i for i in range(1, 10)} | {"lpt%d" % i for i in range(1, 10)}


@dataclass
class Problem:
    """One finding about one line. ``line`` is 1-based; 0 means the whole file."""

    line: int
    message: str
    field: Optional[str] = None
    severity: str = "error"  # error | warning

    def __str__(self):
        return "line %d: %s: %s" % (self.line, self.severity, self.message) if self.line else \
            "%s: %s" % (self.severity, self.message)

    def to_dict(self):
        return asdict(self)


@dataclass
class Task:
    index: int  # position among the job's tasks (0-based); the journal's key
    line: int  # line in the submitted file (1-based), for messages
    prompt_audio: str
    prompt_text: str
    input_text: str
    output_name: str
    sample_rate: Optional[int] = None
    seed: Optional[int] = None
    extra: dict = field(default_factory=dict)

    @property
    def filename(self):
        return self.output_name + ".wav"

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, data):
        return cls(**data)


def safe_stem_problem(name):
    """Why ``name`` is not a safe output file stem, or None when it is."""
    if not _SAFE_STEM.fullmatch(name) or ".." in name:
        return ("output_name %r is not a safe file name: use letters, digits, '_', '-' and '.', "
                "start with a letter or digit, no '/', no '..', at most 120 characters" % name)
    if name.split(".")[0].lower() in _RESERVED:
        return "output_name %r is a reserved device name on Windows; choose another" % name
    return None


def parse_task(obj, *, line, index):
    """Check one decoded JSON value. Returns (Task or None, [Problem])."""
    problems = []
    if not isinstance(obj, dict):
        return None, [Problem(line, "must be a JSON object {...}, got %s" % type(obj).__name__)]
    values = {}
    for key, value in obj.items():
        name = ALIASES.get(key, key)
        if name in values and values[name] != value:
            problems.append(Problem(line, "both %r and its alias %r are given with different values; keep one" % (
                name, next(a for a, c in ALIASES.items() if c == name)), name))
        values[name] = value
    for name in REQUIRED:
        value = values.get(name)
        alias = next((a for a, c in ALIASES.items() if c == name), None)
        hint = " (or %r)" % alias if alias else ""
        if value is None:
            problems.append(Problem(line, "missing required field %r%s" % (name, hint), name))
        elif not isinstance(value, str):
            problems.append(Problem(line, "field %r must be a string, got %s" % (name, _json_type(value)), name))
        elif not value.strip():
            problems.append(Problem(line, "field %r is empty" % name, name))
    sr = values.get("sample_rate")
    if sr is not None and (isinstance(sr, bool) or sr not in SAMPLE_RATES):
        problems.append(Problem(line, "field 'sample_rate' must be one of %s, got %s" % (
            " | ".join(map(str, SAMPLE_RATES)), _show(sr)), "sample_rate"))
    seed = values.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED):
        problems.append(Problem(line, "field 'seed' must be an integer 0..%d, got %s" % (MAX_SEED, _show(seed)), "seed"))
    name = values.get("output_name")
    if isinstance(name, str) and name.strip():
        why = safe_stem_problem(name)
        if why:
            problems.append(Problem(line, why, "output_name"))
    extra = {k: v for k, v in values.items() if k not in REQUIRED + OPTIONAL}
    for key in extra:
        problems.append(Problem(line, "unknown field %r is ignored" % key, key, "warning"))
    if any(p.severity == "error" for p in problems):
        return None, problems
    task = Task(index=index, line=line, prompt_audio=values["prompt_audio"], prompt_text=values["prompt_text"],
                input_text=values["input_text"], output_name=values["output_name"],
                sample_rate=sr, seed=seed, extra=extra)
    return task, problems


def _json_type(value):
    return {bool: "true/false", int: "a number", float: "a number", list: "a list", dict: "an object"}.get(
        type(value), type(value).__name__)


def _show(value):
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
