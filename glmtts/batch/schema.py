"""The batch task: one JSON object per line of a JSONL file.

Canonical fields and the official GLM-TTS repository's names, which are accepted too::

    input_text    (syn_text)       the text to speak
    output_name   (uttid)          file stem of the output (<output_name>.<format>)
    the voice, one of:
      prompt_audio  (prompt_speech)  reference audio, relative to paths.prompt_root,
      + prompt_text                  with its transcript
      voice                          a saved voice (its id "voice_...", or its name),
                                     or "default"; no voice field at all = "default"
    sample_rate                    optional: 24000 | 32000 (default engine.sample_rate)
    seed                           optional: integer (default engine.seed)
    speed                          optional: 0.25..4.0 (default 1.0), as the API's speed
    response_format                optional: wav | flac | mp3 | ... (what glmtts/audio.py
                                   encodes, raw pcm excepted; default wav)

This module only checks shape and types; validate.py checks the file system, saved
voices and limits.
"""

import re
from dataclasses import asdict, dataclass, field
from typing import Optional

from .. import audio as audio_mod
from .. import request as reqdecl

REQUIRED = ("input_text", "output_name")
OPTIONAL = ("prompt_audio", "prompt_text", "voice", "sample_rate", "seed", "speed", "response_format")
DEFAULT_VOICE = "default"
# speed, sample_rate and seed are the request's own fields (glmtts/request.py): the same
# types, ranges and words as POST /v1/audio/speech and `glmtts synth`
SPEED_RANGE = reqdecl.SPEED_RANGE
DEFAULT_FORMAT = "wav"
ALIASES = {"prompt_speech": "prompt_audio", "syn_text": "input_text", "uttid": "output_name"}
SAMPLE_RATES = reqdecl.SAMPLE_RATES
MAX_SEED = reqdecl.SEED_RANGE[1]

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
    prompt_audio: Optional[str]  # None: a saved voice or the default voice
    prompt_text: Optional[str]
    input_text: str
    output_name: str
    sample_rate: Optional[int] = None
    seed: Optional[int] = None
    extra: dict = field(default_factory=dict)
    # Fields added later carry defaults, so the tasks.jsonl of older jobs still loads.
    voice: Optional[str] = None  # a saved voice id/name, or "default"; None with prompt_audio
    speed: Optional[float] = None
    response_format: str = DEFAULT_FORMAT

    @property
    def filename(self):
        return "%s.%s" % (self.output_name, extension(self.response_format))

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, data):
        return cls(**data)


def _request_field_problems(values, line):
    """speed, sample_rate and seed of a line, checked by the request declaration."""
    out = []
    for name, kinds, kind_words in (("speed", (int, float), "a number"), ("sample_rate", (int,), "an integer"),
                                    ("seed", (int,), "an integer")):
        value = values.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, kinds):
            out.append(Problem(line, "field %r must be %s, got %s" % (name, kind_words, _show(value)), name))
            continue
        try:
            reqdecl.check(name, value)
        except reqdecl.FieldError as e:
            out.append(Problem(line, str(e), name))  # starts with the field name, as the API says it
    return out


def file_formats():
    """The output formats a batch line may ask for: whatever glmtts/audio.py encodes,
    except raw pcm (a headerless file no player opens)."""
    return tuple(f for f in audio_mod.FORMATS if f != "pcm")


def extension(fmt):
    """File extension of an output in ``fmt`` (audio.py's table when it has one)."""
    table = getattr(audio_mod, "EXTENSIONS", None) or {}
    return table.get(fmt, fmt).lstrip(".")


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
    problems += _voice_problems(values, line)
    problems += _request_field_problems(values, line)
    fmt = values.get("response_format")
    formats = file_formats()
    if fmt is not None and (not isinstance(fmt, str) or fmt.lower() not in formats):
        problems.append(Problem(line, "field 'response_format' must be one of %s, got %s" % (
            " | ".join(formats), _show(fmt)), "response_format"))
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
    sr, seed, speed = values.get("sample_rate"), values.get("seed"), values.get("speed")
    prompt = values.get("prompt_audio")
    voice = None if prompt is not None else (values.get("voice") or DEFAULT_VOICE)
    if voice is not None and voice.strip().lower() == DEFAULT_VOICE:
        voice = DEFAULT_VOICE
    task = Task(index=index, line=line, prompt_audio=prompt, prompt_text=values.get("prompt_text") if prompt else None,
                input_text=values["input_text"], output_name=values["output_name"],
                sample_rate=sr, seed=seed, extra=extra, voice=voice,
                speed=None if speed is None else float(speed),
                response_format=(fmt or DEFAULT_FORMAT).lower())
    return task, problems


def _voice_problems(values, line):
    """Which voice speaks: a reference file with its transcript, a saved voice, or the
    default voice, never two at once (the same rule as POST /v1/audio/speech)."""
    problems = []
    for name in ("prompt_audio", "prompt_text", "voice"):
        value = values.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            problems.append(Problem(line, "field %r must be a string, got %s" % (name, _json_type(value)), name))
        elif not value.strip():
            problems.append(Problem(line, "field %r is empty%s" % (name, "; leave it out for the default voice"
                                                                    if name != "prompt_text" else ""), name))
    if problems:
        return problems
    prompt, text, voice = values.get("prompt_audio"), values.get("prompt_text"), values.get("voice")
    if prompt is not None and voice is not None:
        problems.append(Problem(line, "give either 'voice' (%s) or 'prompt_audio' (%s), not both: remove one" % (
            _show(voice), _show(prompt)), "voice"))
    elif prompt is not None and text is None:
        problems.append(Problem(line, "missing required field 'prompt_text': the transcript of prompt_audio %s "
                                      "(the engine needs both)" % _show(prompt), "prompt_text"))
    elif text is not None and prompt is None:
        problems.append(Problem(line, "field 'prompt_text' is given without 'prompt_audio': add the reference audio "
                                      "it transcribes, or remove it (a saved voice keeps its own transcript)",
                                "prompt_text"))
    return problems


def _json_type(value):
    return {bool: "true/false", int: "a number", float: "a number", list: "a list", dict: "an object"}.get(
        type(value), type(value).__name__)


def _show(value):
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
