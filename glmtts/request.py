"""One synthesis request, declared once: every field's type, default, range and error.

POST /v1/audio/speech (JSON and multipart), the UI, `glmtts synth` and batch lines all
read their fields from FIELDS below and validate them with ``parse`` (or ``check`` for a
single value), so the four faces accept and refuse exactly the same input with the same
words. docs/service.md's request table is ``markdown_table()`` (tests/service/test_request_decl.py keeps
them equal), the OpenAPI body is ``json_schema()``.

Defaults that are settings (engine.sample_rate, engine.seed, ...) are read from the
Settings at parse time, so an operator's configuration is every face's default. No
FastAPI here: the CLI and the batch runner import this without the web stack.
"""

from dataclasses import dataclass

from . import config
from .errors import InputError

# What each response_format is and whether it can be streamed. A streamed answer starts
# before its length is known; WAV and FLAC headers state the length (a streamed WAV's
# 0xFFFFFFFF sizes make `soxi` report 24 hours), so they are whole-answer only.
FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
STREAMABLE = ("mp3", "opus", "aac", "pcm")
STREAM_FORMATS = ("audio", "sse")
SPEED_RANGE = (0.25, 4.0)
SEED_RANGE = (0, 2 ** 32 - 1)
SAMPLE_RATES = (24000, 32000)
REQUIRED = object()
_KINDS = {str: "a string", float: "a number", int: "an integer", bool: "true or false", bytes: "a file upload"}


class FieldError(InputError):
    """A field's value is refused (400); ``param`` names the field, as OpenAI's errors do."""

    def __init__(self, message, *, param, code=None):
        super().__init__(message, code=code)
        self.param = param


class FieldTypeError(FieldError):
    """A field has the wrong type (422, like FastAPI's own validation)."""

    code = "invalid_type"
    http_status = 422


@dataclass(frozen=True)
class Field:
    name: str
    type: type
    default: object  # a value, REQUIRED, or a setting's name ("engine.seed") read at parse time
    doc: str
    allowed: str = ""  # the range/choices as README shows them
    cli: str = ""  # the `glmtts synth` option, "" = none
    form_only: bool = False  # multipart only (a file)

    def default_for(self, settings):
        """The default in effect: the setting's value in ``settings`` (None: its declared default)."""
        if self.is_setting:
            if settings is None:
                return next(s.default for s in config.SETTINGS if s.name == self.default)
            section, key = self.default.split(".", 1)
            return getattr(getattr(settings, section), key)
        return None if self.default is REQUIRED else self.default

    @property
    def is_setting(self):
        return isinstance(self.default, str) and self.default.startswith(("engine.", "limits."))

    @property
    def default_doc(self):
        if self.default is REQUIRED:
            return "required"
        if self.is_setting:
            return "setting `%s` (`%s`)" % (self.default, str(self.default_for(None)).lower())
        if self.default is None:
            return "none"
        if isinstance(self.default, bool):
            return "`%s`" % str(self.default).lower()
        return "`%s`" % (self.default if self.default != "" else '""')


F = Field
FIELDS = [
    F("input", str, REQUIRED, "The text to speak (Mandarin, English or mixed); at most `limits.max_text_chars` "
      "characters.", "non-empty text", cli="--text / --text-file"),
    F("voice", str, "default", "`default` (the engine's voice), a saved voice's id or name, or an alias from "
      "`voices.aliases` (e.g. `alloy`). OpenAI's built-in names work only when aliased.", "see GET /v1/audio/voices"),
    F("prompt_audio", bytes, None, "Reference recording for zero-shot voice cloning (multipart only); decoded by "
      "content: WAV, FLAC, OGG/Vorbis or MP3, `limits.min_reference_s`..`limits.max_reference_s`.", "a file",
      cli="--prompt-audio", form_only=True),
    F("prompt_text", str, "", "Transcript of `prompt_audio`; required with it, refused without it.", "text",
      cli="--prompt-text"),
    F("response_format", str, "mp3", "Audio encoding of the answer (OpenAI's default is mp3).", " \\| ".join(FORMATS),
      cli="--format / -o extension"),
    F("speed", float, 1.0, "Speaking speed factor.", "%s..%s" % SPEED_RANGE, cli="--speed"),
    F("sample_rate", int, "engine.sample_rate", "Output sample rate in Hz.", " \\| ".join(map(str, SAMPLE_RATES)),
      cli="--sample-rate"),
    F("seed", int, "engine.seed", "Random seed: same text, voice and seed give the same audio.",
      "%d..%d" % SEED_RANGE, cli="--seed"),
    F("use_cache", bool, "engine.use_cache", "Prompt cache (engine glmtts): later chunks are prompted with the "
      "earlier ones, for a steadier voice.", "true \\| false", cli="--no-cache"),
    F("phoneme", bool, "engine.phoneme", "Apply the G2P replacement dictionary (`engine.g2p_dict`).",
      "true \\| false", cli="--phoneme"),
    F("stream", bool, False, "Send each sentence chunk as soon as it is synthesized (formats %s)."
      % ", ".join(STREAMABLE), "true \\| false"),
    F("stream_format", str, "audio", "`audio`: raw audio bytes; `sse`: Server-Sent Events `speech.audio.delta` "
      "(base64 `audio`) then `speech.audio.done` (`usage`), as OpenAI sends them; sse streams.",
      " \\| ".join(STREAM_FORMATS)),
    F("instructions", str, "", "OpenAI's voice instructions. No glmtts engine can follow them: a non-empty value "
      "is refused (400 `unsupported_parameter`) rather than ignored.", "empty"),
    F("model", str, None, "Accepted for OpenAI clients and not used: the engine is `engine.name` (GET /v1/models).",
      "any"),
]
del F
BY_NAME = {f.name: f for f in FIELDS}


def _coerce(field, value, from_form):
    """``value`` as the field's type; from a form (strings only) numbers and booleans are parsed."""
    kind, name = field.type, field.name
    if kind is bytes:
        if not isinstance(value, (bytes, bytearray)):
            raise FieldTypeError("%s must be a file upload, not a text field" % name, param=name)
        return bytes(value)
    if from_form and isinstance(value, str) and kind is not str:
        v = value.strip()
        try:
            if kind is bool:
                if v.lower() in ("true", "1", "yes", "on"):
                    return True
                if v.lower() in ("false", "0", "no", "off"):
                    return False
                raise ValueError
            return kind(v)
        except ValueError:
            raise FieldTypeError("field %r must be %s, got %r" % (name, _KINDS[kind], value[:40]), param=name) from None
    ok = (isinstance(value, str) if kind is str else
          isinstance(value, bool) if kind is bool else
          isinstance(value, int) and not isinstance(value, bool) if kind is int else
          isinstance(value, (int, float)) and not isinstance(value, bool))
    if not ok:
        raise FieldTypeError("field %r must be %s, got %s" % (
            name, _KINDS[kind], type(value).__name__ if value is not None else "null"), param=name)
    return float(value) if kind is float else value


def check(name, value, *, sample_rates=SAMPLE_RATES):
    """Range/choice check of one already-typed value: the value, or FieldError with the
    message every face prints."""
    if name == "response_format" and value not in FORMATS:
        raise FieldError("unsupported response_format %r; allowed: %s" % (value, ", ".join(FORMATS)), param=name)
    if name == "stream_format" and value not in STREAM_FORMATS:
        raise FieldError("stream_format %r is not supported; allowed: %s" % (value, ", ".join(STREAM_FORMATS)),
                         param=name)
    if name == "speed" and not SPEED_RANGE[0] <= value <= SPEED_RANGE[1]:
        raise FieldError("speed %g is out of range; allowed: %s..%s" % ((value,) + SPEED_RANGE), param=name)
    if name == "sample_rate" and value not in sample_rates:
        raise FieldError("sample_rate %d is not supported; allowed: %s"
                         % (value, " | ".join(str(r) for r in sample_rates)), param=name)
    if name == "seed" and not SEED_RANGE[0] <= value <= SEED_RANGE[1]:
        raise FieldError("seed %d is out of range; allowed: %d..%d" % ((value,) + SEED_RANGE), param=name)
    if name == "instructions" and value.strip():
        raise FieldError("instructions are not supported: the glmtts engines cannot steer a voice by a text "
                         "description; remove instructions (pick the voice with voice or prompt_audio)",
                         param=name, code="unsupported_parameter")
    return value


def option_message(err, option):
    """A FieldError's message as a command-line tool prints it: the field's name that
    starts it becomes the option ("speed 9 is out of range" -> "--speed 9 is out of range")."""
    msg = str(err)
    param = getattr(err, "param", None) or ""
    if param and msg.startswith(param + " "):
        return option + msg[len(param):]
    return "%s: %s" % (option, msg)


def parse(raw, settings=None, *, sample_rates=SAMPLE_RATES, from_form=False, allow=None):
    """Validate a request's fields into a dict of every field (defaults filled in from
    ``settings``). ``raw`` maps field names to values (a form's are strings);
    ``allow``: the field names this face takes (default: all). FieldError names the field."""
    if not isinstance(raw, dict):
        raise InputError("request body must be a JSON object with at least \"input\"")
    allowed = [f.name for f in FIELDS if allow is None or f.name in allow]
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise FieldError("unknown field %r; allowed: %s" % (unknown[0], ", ".join(sorted(allowed))), param=unknown[0])
    p = {}
    for f in FIELDS:
        value = raw.get(f.name)
        p[f.name] = f.default_for(settings) if value is None else _coerce(f, value, from_form)
    if p["input"] is None:
        raise FieldError("field 'input' is required: the text to speak", param="input")
    if not p["input"].strip():
        raise FieldError("input is empty: give some text to speak", param="input", code="empty_input")
    for name in ("response_format", "stream_format", "speed", "sample_rate", "seed", "instructions"):
        check(name, p[name], sample_rates=sample_rates)
    streamed = p["stream"] or p["stream_format"] == "sse"
    if streamed and p["response_format"] not in STREAMABLE:
        raise FieldError("%s cannot be streamed: a streamed answer starts before its length is known and a %s header "
                         "must state it; stream %s, or drop %s for a %s file with a correct header"
                         % (p["response_format"], p["response_format"], ", ".join(STREAMABLE),
                            "stream_format=sse" if p["stream_format"] == "sse" else "stream", p["response_format"]),
                         param="response_format", code="unsupported_stream_format")
    return p


def check_prompt(has_audio, prompt_text):
    """The pairing rule of prompt_audio and prompt_text, checked where the upload is known
    (the API's multipart body, the UI's upload, `glmtts synth --prompt-audio`): the
    stripped transcript, or FieldError."""
    prompt_text = (prompt_text or "").strip()
    if has_audio and not prompt_text:
        raise FieldError("prompt_text is required with prompt_audio: the transcript of the reference audio",
                         param="prompt_text")
    if not has_audio and prompt_text:
        raise FieldError("prompt_text needs prompt_audio (the recording it transcribes)", param="prompt_text")
    return prompt_text


def json_schema(settings=None, sample_rates=SAMPLE_RATES, *, form=False):
    """The OpenAPI/JSON-Schema object of a request body (JSON, or multipart with ``form``)."""
    types = {str: "string", int: "integer", float: "number", bool: "boolean"}
    props = {}
    for f in FIELDS:
        if f.form_only and not form:
            continue
        prop = {"type": types[f.type]} if f.type is not bytes else {"type": "string", "format": "binary"}
        default = f.default_for(settings)
        if default is not None and f.type is not bytes:
            prop["default"] = default
        prop["description"] = f.doc
        props[f.name] = prop
    props["response_format"]["enum"] = list(FORMATS)
    props["stream_format"]["enum"] = list(STREAM_FORMATS)
    props["sample_rate"]["enum"] = list(sample_rates)
    props["speed"].update(minimum=SPEED_RANGE[0], maximum=SPEED_RANGE[1])
    props["seed"].update(minimum=SEED_RANGE[0], maximum=SEED_RANGE[1])
    return {"type": "object", "required": ["input"], "additionalProperties": False, "properties": props}


def markdown_table():
    """The table of request fields in docs/service.md (tests/service/test_request_decl.py checks it)."""
    rows = ["| field | type | default | allowed | `glmtts synth` | meaning |", "|---|---|---|---|---|---|"]
    names = {str: "string", int: "integer", float: "number", bool: "boolean", bytes: "file"}
    for f in FIELDS:
        rows.append("| `%s` | %s | %s | %s | %s | %s |" % (
            f.name, names[f.type], f.default_doc, f.allowed, "`%s`" % f.cli if f.cli else "-",
            f.doc.replace("|", "\\|")))
    return "\n".join(rows) + "\n"
