"""Check a whole batch file before any synthesis.

Every line is checked independently so one report lists every problem with its line
number and what to fix; valid lines are reported valid. Lines are read with a bounded
``readline`` so a 100 MB line is skipped in chunks, never held in memory whole.
"""

import json
import logging
import os
import pickle
import re
from dataclasses import dataclass, field

from .. import audio as audio_mod
from ..errors import GlmttsError, NotFoundError
from .schema import DEFAULT_VOICE, Problem, parse_task

log = logging.getLogger(__name__)

_SKIP_CHUNK = 1 << 20
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_WORD = re.compile(r"[A-Za-z0-9']+")
# Speaking-rate heuristics for the audio estimate (seconds per CJK character / word).
CJK_S = 0.24
WORD_S = 0.38
WAV_HEADER = 44  # bytes; outputs are 16-bit mono WAV


@dataclass
class Report:
    path: str
    tasks: list = field(default_factory=list)  # schema.Task for every valid line
    problems: list = field(default_factory=list)  # schema.Problem, errors and warnings
    lines: int = 0  # non-blank lines seen
    estimate: dict = field(default_factory=dict)

    @property
    def errors(self):
        return [p for p in self.problems if p.severity == "error"]

    @property
    def ok(self):
        return not self.errors

    @property
    def valid_lines(self):
        return [t.line for t in self.tasks]

    @property
    def invalid_lines(self):
        return sorted({p.line for p in self.errors if p.line})

    def to_dict(self):
        return {"ok": self.ok, "file": self.path, "lines": self.lines, "tasks": len(self.tasks),
                "valid_lines": self.valid_lines, "invalid_lines": self.invalid_lines,
                "errors": [p.to_dict() for p in self.errors],
                "warnings": [p.to_dict() for p in self.problems if p.severity == "warning"],
                "estimate": self.estimate}

    def format_text(self):
        out = [str(p) for p in sorted(self.problems, key=lambda p: (p.line, p.severity != "error"))]
        out.append("%d of %d lines valid%s" % (len(self.tasks), self.lines,
                                                (": " + ranges(self.valid_lines)) if self.tasks else ""))
        if self.invalid_lines:
            out.append("invalid lines: %s" % ranges(self.invalid_lines))
        if self.estimate and self.tasks:
            e = self.estimate
            out.append("estimate: about %s of audio (%s of WAV output), about %s to synthesize (%s)" % (
                duration(e["audio_s"]), human_bytes(e.get("output_bytes", 0)), duration(e["run_s"]), e["basis"]))
        out.append("OK: ready to run" if self.ok else "NOT OK: fix the errors above (nothing was synthesized)")
        return "\n".join(out)


def validate_file(path, settings, *, speed=None, check_audio=True):
    """Validate the JSONL file at ``path``. ``speed`` is a speed.Speed (run-time estimate)."""
    report = Report(path=str(path))
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        report.problems.append(Problem(0, "batch file %s does not exist" % path))
        return report
    except IsADirectoryError:
        report.problems.append(Problem(0, "%s is a directory, not a batch file" % path))
        return report
    with f:
        validate_stream(f, settings, report, check_audio=check_audio)
    report.estimate = estimate(report.tasks, settings, speed)
    return report


def validate_bytes(data, settings, *, name="upload", speed=None, check_audio=True):
    """Validate an uploaded batch file held in memory (the service's POST /v1/batches)."""
    import io
    report = Report(path=name)
    validate_stream(io.BytesIO(data), settings, report, check_audio=check_audio)
    report.estimate = estimate(report.tasks, settings, speed)
    return report


def validate_stream(f, settings, report, *, check_audio=True):
    max_bytes = settings.batch.max_line_bytes
    prompt_root = settings.paths.prompt_root
    seen_names = {}
    audio_cache = {}
    voices = SavedVoices.of(settings)
    for lineno, raw, size in read_lines(f, max_bytes):
        if raw is None:
            report.lines += 1
            report.problems.append(Problem(lineno, "line is %s long; the limit is batch.max_line_bytes (%d bytes): "
                                                   "shorten the text or split the task" % (human_bytes(size), max_bytes)))
            continue
        if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # a UTF-8 byte order mark from Windows editors
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            report.lines += 1
            report.problems.append(Problem(lineno, "not valid UTF-8 (byte 0x%02x at byte %d); save the file as UTF-8"
                                           % (raw[e.start], e.start + 1)))
            continue
        if not text.strip():
            continue
        report.lines += 1
        if report.lines > settings.batch.max_tasks:
            report.problems.append(Problem(lineno, "more than batch.max_tasks (%d) tasks in one file; split the file"
                                           % settings.batch.max_tasks))
            break
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            report.problems.append(Problem(lineno, "not valid JSON (%s at column %d); each line must be one JSON object"
                                           % (e.msg, e.colno)))
            continue
        task, problems = parse_task(obj, line=lineno, index=len(report.tasks))
        report.problems.extend(problems)
        if task is None:
            continue
        line_problems = []
        if len(task.input_text) > settings.limits.max_text_chars:
            line_problems.append(Problem(lineno, "input_text is %d characters; the limit is limits.max_text_chars (%d): "
                                         "split it into several tasks" % (len(task.input_text), settings.limits.max_text_chars),
                                         "input_text"))
        key = task.output_name.casefold()
        if key in seen_names:
            line_problems.append(Problem(lineno, "output_name %r is already used on line %d; output names must be unique "
                                         "(ignoring case)" % (task.output_name, seen_names[key]), "output_name"))
        else:
            seen_names[key] = lineno
        if task.prompt_audio is not None:
            why = check_prompt(task.prompt_audio, prompt_root, settings, audio_cache if check_audio else None)
            if why:
                line_problems.append(Problem(lineno, why, "prompt_audio"))
        elif task.voice != DEFAULT_VOICE:
            try:
                voices.find(task.voice)
            except NotFoundError:
                line_problems.append(Problem(lineno, "voice %r is not a saved voice: use \"default\" (or leave "
                                             "'voice' out), a saved voice's id (\"voice_...\") or its name; "
                                             "GET /v1/voices or the UI's Voices tab lists them" % task.voice[:64],
                                             "voice"))
        report.problems.extend(line_problems)
        if not line_problems:
            report.tasks.append(task)
    if report.lines == 0 and not report.problems:
        report.problems.append(Problem(0, "the batch file is empty: write one JSON task per line"))
    return report


def read_lines(f, max_bytes):
    """Yield (line number, raw bytes or None when too long, size in bytes) without ever
    holding more than max_bytes + 1 MB of one line in memory."""
    lineno = 0
    while True:
        raw = f.readline(max_bytes + 1)
        if not raw:
            return
        lineno += 1
        if len(raw) > max_bytes and not raw.endswith(b"\n"):
            size = len(raw)
            while True:
                chunk = f.readline(_SKIP_CHUNK)
                size += len(chunk)
                if not chunk or chunk.endswith(b"\n"):
                    break
            yield lineno, None, size
            continue
        yield lineno, raw.rstrip(b"\r\n"), len(raw)


def resolve_prompt(rel, prompt_root):
    """(absolute real path, None) when ``rel`` names a file inside prompt_root,
    else (None, what is wrong). Checked again by the runner right before reading."""
    root = os.path.realpath(prompt_root)
    if "\x00" in rel:
        return None, "prompt_audio contains a NUL byte"
    if ".." in re.split(r"[\\/]", rel):
        return None, "prompt_audio %r contains '..'; give a path inside paths.prompt_root (%s)" % (rel, prompt_root)
    candidate = rel if os.path.isabs(rel) else os.path.join(root, rel)
    real = os.path.realpath(candidate)
    if real != root and not real.startswith(root + os.sep):
        if os.path.isabs(rel):
            return None, ("prompt_audio %r is an absolute path outside paths.prompt_root (%s); copy the file there and "
                          "give its path relative to that directory" % (rel, prompt_root))
        return None, ("prompt_audio %r is a symlink that leads outside paths.prompt_root (%s); copy the file itself into "
                      "the prompt root" % (rel, prompt_root))
    if not os.path.exists(real):
        return None, "prompt_audio %r not found in paths.prompt_root (%s)" % (rel, prompt_root)
    if not os.path.isfile(real):
        return None, "prompt_audio %r is not a regular file" % rel
    return real, None


class SavedVoices:
    """The saved voices of ``<state_dir>/voices`` (written by service/voices.py: one
    directory per voice holding meta.json, reference.wav and features.pkl), read-only:
    what the validator and `glmtts batch run --local` need. The service hands the
    runner its own VoiceStore instead, which has the same find/features/reference."""

    def __init__(self, root):
        self.root = root

    @classmethod
    def of(cls, settings):
        return cls(os.path.join(settings.paths.state_dir, "voices"))

    def _meta(self, voice_id):
        if not re.fullmatch(r"voice_[A-Za-z0-9_-]+", voice_id):
            return None
        try:
            with open(os.path.join(self.root, voice_id, "meta.json"), encoding="utf-8") as f:
                meta = json.load(f)
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) else None

    def list(self):
        try:
            names = sorted(os.listdir(self.root))
        except OSError:
            return []
        metas = [m for m in (self._meta(n) for n in names) if m]
        return sorted(metas, key=lambda m: (m.get("created", 0), m.get("id", "")))

    def find(self, voice):
        """By id, else by name (exact, then ignoring case; the oldest of equal names),
        as the API's ``voice`` field. NotFoundError when there is none."""
        meta = self._meta(voice) if voice.startswith("voice_") else None
        if meta is None:
            metas = self.list()
            matches = [m for m in metas if m.get("name") == voice] or \
                [m for m in metas if str(m.get("name", "")).casefold() == voice.casefold()]
            meta = matches[0] if matches else None
        if meta is None:
            raise NotFoundError("unknown voice %r" % voice[:64], code="voice_not_found")
        return meta

    def features(self, voice_id):
        try:
            with open(os.path.join(self.root, voice_id, "features.pkl"), "rb") as f:
                return pickle.load(f)  # written by this service's own VoiceStore
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError):
            return None

    def reference(self, voice_id):
        return audio_mod.decode(os.path.join(self.root, voice_id, "reference.wav"), what="saved voice %s" % voice_id)


def check_prompt(rel, prompt_root, settings, cache):
    """What is wrong with the reference audio ``rel``, or None. ``cache`` (dict) memoises
    decoding per real path, since many tasks share one voice; None skips decoding."""
    real, why = resolve_prompt(rel, prompt_root)
    if why or cache is None:
        return why
    if real not in cache:
        try:
            audio_mod.decode_reference(real, settings.limits, what="reference audio")
            cache[real] = None
        except GlmttsError as e:
            cache[real] = str(e)
        except OSError as e:
            cache[real] = "cannot read: %s" % (e.strerror or e)
    return ("prompt_audio %r: %s" % (rel, cache[real])) if cache[real] else None


def text_seconds(text):
    """Rough spoken length of ``text`` in seconds (Mandarin ~4 characters/s)."""
    cjk = len(_CJK.findall(text))
    words = len(_WORD.findall(_CJK.sub(" ", text)))
    return cjk * CJK_S + words * WORD_S + 0.3


def _task_seconds(task):
    return text_seconds(task.input_text) / (getattr(task, "speed", None) or 1.0)


def estimate(tasks, settings, speed=None):
    audio_s = sum(_task_seconds(t) for t in tasks)
    # 16-bit samples at each task's rate: what the outputs directory must hold (an upper
    # bound for the compressed formats)
    output_bytes = sum(int(_task_seconds(t) * (t.sample_rate or settings.engine.sample_rate)) * 2
                       + WAV_HEADER for t in tasks)
    if speed is None:
        from .speed import Speed
        speed = Speed.load(settings)
    rtf, basis = speed.rtf(settings.engine.name)
    return {"audio_s": round(audio_s, 1), "run_s": round(audio_s * rtf, 1), "rtf": rtf, "basis": basis,
            "output_bytes": output_bytes}


def ranges(numbers):
    """[1,2,3,5,7,8] -> '1-3, 5, 7-8'."""
    out, start, prev = [], None, None
    for n in list(numbers) + [None]:
        if start is None:
            start = prev = n
        elif n is not None and n == prev + 1:
            prev = n
        else:
            out.append(str(start) if start == prev else "%d-%d" % (start, prev))
            start = prev = n
    return ", ".join(out)


def human_bytes(n):
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return ("%d %s" % (n, unit)) if unit == "bytes" else "%.1f %s" % (n, unit)
        n /= 1024.0


def duration(seconds):
    seconds = int(round(seconds))
    if seconds < 120:
        return "%d s" % seconds
    if seconds < 7200:
        return "%d min" % round(seconds / 60.0)
    return "%.1f h" % (seconds / 3600.0)
