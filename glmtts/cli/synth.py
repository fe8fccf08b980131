"""`glmtts synth`: synthesize one text to an audio file with the configured engine,
optionally matching a reference voice (zero-shot). Writes the file atomically."""

import logging
import os
import sys
import time

from .. import audio as audio_mod
from .. import config, fsutil
from .. import request as reqdecl
from ..errors import InputError

log = logging.getLogger(__name__)

# -o extension -> format, for the formats glmtts.audio encodes (the API's response_format
# list): an extension of no such format is an error, never WAV bytes under another name.
_KNOWN_EXTENSIONS = {".wav": "wav", ".flac": "flac", ".mp3": "mp3", ".pcm": "pcm", ".raw": "pcm",
                     ".opus": "opus", ".aac": "aac"}
EXTENSIONS = {ext: fmt for ext, fmt in _KNOWN_EXTENSIONS.items() if fmt in audio_mod.FORMATS}


def output_format(path, explicit=None):
    """The format to write ``path`` in: its extension's, or ``explicit`` (--format), or
    wav for a name without an extension. InputError names the formats otherwise."""
    ext = os.path.splitext(path)[1].lower()
    implied = EXTENSIONS.get(ext)
    if ext and implied is None:
        raise InputError("-o %s: %r is not an extension of a supported format; use one of %s (formats: %s)"
                         % (path, ext, " ".join(sorted(EXTENSIONS)), ", ".join(sorted(set(EXTENSIONS.values())))))
    if explicit and implied and explicit != implied:
        raise InputError("-o %s is a %s file name but --format is %s: make them agree" % (path, implied, explicit))
    return explicit or implied or "wav"


def add_parser(sub):
    p = sub.add_parser(
        "synth", help="synthesize text to an audio file",
        description="Synthesize text with the configured engine (engine.name) and write an audio file. "
                    "With --prompt-audio/--prompt-text the output matches that voice "
                    "(espeak: pitch and speaking rate; glmtts: timbre cloning).",
        epilog="example: glmtts synth --text '你好，世界。' -o hello.wav")
    p.add_argument("--text", help="text to speak (Mandarin, English or mixed)")
    p.add_argument("--text-file", metavar="FILE", help="read the text from a UTF-8 file instead")
    p.add_argument("--prompt-audio", metavar="FILE", help="reference recording (wav/flac/ogg/mp3, 2-30 s)")
    p.add_argument("--prompt-text", metavar="TEXT", default="", help="transcript of the reference recording")
    p.add_argument("--sample-rate", type=str, default=None, help="24000 or 32000 (default: engine.sample_rate)")
    p.add_argument("--seed", type=str, default=None, help="random seed (default: engine.seed)")
    p.add_argument("--speed", type=str, default="1.0", help="speaking speed factor 0.25-4.0 (default 1.0)")
    p.add_argument("--phoneme", action="store_true", default=None,
                   help="apply the G2P replacement dictionary (engine.g2p_dict)")
    p.add_argument("--no-cache", dest="use_cache", action="store_false", default=None,
                   help="do not prompt later chunks with the earlier chunks as history (engine glmtts prompt cache)")
    p.add_argument("--format", choices=sorted(set(EXTENSIONS.values())), default=None,
                   help="output format (default: from the -o extension, else wav)")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="output file (written atomically); its extension picks the format: %s"
                        % ", ".join(sorted(EXTENSIONS)))
    p.set_defaults(func=run, parser=p)


def _number(raw, kind, name, allowed):
    try:
        return kind(raw)
    except (TypeError, ValueError):
        raise InputError("--%s %r is not a number; allowed: %s" % (name, raw, allowed)) from None


def _checked(name, value):
    """The API's check of one field (glmtts/request.py), its message naming the option."""
    try:
        return reqdecl.check(name, value)
    except reqdecl.FieldError as e:
        raise InputError(reqdecl.option_message(e, "--" + name.replace("_", "-"))) from None


def _read_text(args):
    if args.text is not None and args.text_file:
        raise InputError("give either --text or --text-file, not both")
    if args.text_file:
        try:
            with open(args.text_file, encoding="utf-8") as f:
                return f.read()
        except FileNotFoundError:
            raise InputError("text file %s does not exist" % args.text_file) from None
        except UnicodeDecodeError:
            raise InputError("text file %s is not UTF-8 text" % args.text_file) from None
    if args.text is None:
        raise InputError("nothing to say: give --text '...' or --text-file FILE")
    return args.text


def _check_prompt_args(args):
    """Usage errors, as the API refuses them: prompt_audio needs prompt_text and the other
    way round. From the command line an argparse error (usage line, exit 2)."""
    problem = None
    if args.prompt_audio and not (args.prompt_text or "").strip():
        problem = "--prompt-audio needs --prompt-text (the transcript of the reference recording)"
    elif args.prompt_text and not args.prompt_audio:
        problem = "--prompt-text needs --prompt-audio (the recording it transcribes)"
    if problem is None:
        return
    parser = getattr(args, "parser", None)
    if parser is not None:
        parser.error(problem)  # exits 2
    raise InputError(problem)


def _read_prompt(args, settings):
    if not args.prompt_audio:
        return None, None
    try:
        with open(args.prompt_audio, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise InputError("prompt audio file %s does not exist" % args.prompt_audio) from None
    except IsADirectoryError:
        raise InputError("prompt audio %s is a directory, not an audio file" % args.prompt_audio) from None
    except PermissionError:
        raise InputError("prompt audio file %s is not readable by this user" % args.prompt_audio) from None
    return audio_mod.decode_reference(data, settings.limits, what="prompt audio %s" % args.prompt_audio)


def write_atomic(path, data):
    """Write the output so a reader never sees a half-written file."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise InputError("output directory %s does not exist" % directory)
    fsutil.atomic_write(path, data, tmp=os.path.join(directory, ".%s.%d.tmp" % (os.path.basename(path), os.getpid())))


def run(args):
    from ..engines import SynthesisRequest, create

    _check_prompt_args(args)
    settings = config.load(args.config)
    if not args.output:
        raise InputError("no output file: give -o out.wav")
    text = _read_text(args)
    # ranges, defaults and messages: the request declaration the API validates with (glmtts/request.py)
    sample_rate = _checked("sample_rate", settings.engine.sample_rate if args.sample_rate is None else
                           _number(args.sample_rate, int, "sample-rate", "24000 | 32000"))
    seed = _checked("seed", settings.engine.seed if args.seed is None else
                    _number(args.seed, int, "seed", "an integer %d..%d" % reqdecl.SEED_RANGE))
    speed = _checked("speed", _number(args.speed, float, "speed", "%s..%s" % reqdecl.SPEED_RANGE))
    fmt = output_format(args.output, args.format)
    prompt_audio, prompt_rate = _read_prompt(args, settings)

    engine = create(settings)
    started = time.monotonic()
    engine.load()
    loaded = time.monotonic()
    request = SynthesisRequest(
        text=text, sample_rate=sample_rate, seed=seed, speed=speed,
        use_cache=settings.engine.use_cache if args.use_cache is None else args.use_cache,
        phoneme=settings.engine.phoneme if args.phoneme is None else args.phoneme,
        prompt_audio=prompt_audio, prompt_sample_rate=prompt_rate, prompt_text=args.prompt_text)
    result = engine.synthesize(request)
    done = time.monotonic()
    write_atomic(args.output, audio_mod.encode(result.audio, result.sample_rate, fmt))
    print("wrote %s: %.2f s of %s audio at %d Hz (engine %s, load %.2f s, synthesis %.2f s)"
          % (args.output, result.duration_s, fmt, result.sample_rate, engine.name,
             loaded - started, done - loaded), file=sys.stdout)
    return 0
