"""`glmtts engines`: the registry, and which engine the configuration selects."""

from . import config
from .engines import BUILTIN

DESCRIPTIONS = {
    "espeak": "embedded default: espeak-ng from a PyPI wheel, Mandarin + English, CPU, no download; "
              "zero-shot = prosody matching (pitch median/range, speaking rate)",
    "glmtts": "official GLM-TTS checkout (engine.glmtts_home with ckpt/): timbre cloning, GPU",
}


def add_parser(sub):
    p = sub.add_parser("engines", help="list the available engines")
    p.set_defaults(func=run)


def run(args):
    settings = config.load(args.config)
    active = settings.engine.name
    for name, target in BUILTIN.items():
        mark = "*" if name == active else " "
        print("%s %-8s %s" % (mark, name, DESCRIPTIONS.get(name, target)))
    if active not in BUILTIN:
        print("* %s (plug-in)" % active)
    print("plug-ins: engine.name = \"package.module:Class\"")
    return 0
