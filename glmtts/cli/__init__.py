"""`glmtts` command line: a small dispatcher. Each subcommand lives in its own module of
this package (config, engines, synth, serve; batch in glmtts/batch/cmd.py) exposing
``add_parser(subparsers)`` and ``run(args) -> exit code``; a module imports what its work
needs inside ``run``, so `glmtts --help` and `glmtts config show` never import torch.

User errors (GlmttsError) print one line on stderr and exit with the error's exit code.
"""

import argparse
import importlib
import sys

from .. import __version__
from ..errors import EXIT_FAILURE, GlmttsError
from .globals import anywhere

# subcommand -> module that implements it (explicit table, no folder scanning)
COMMANDS = {
    "config": "glmtts.cli.config",
    "engines": "glmtts.cli.engines",
    "synth": "glmtts.cli.synth",
    "serve": "glmtts.cli.serve",
    "batch": "glmtts.batch.cmd",
}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="glmtts",
        description="GLM-TTS text-to-speech: library, service and tools. "
                    "Configuration: /etc/glmtts/glmtts.toml (GLMTTS_CONFIG) < GLMTTS_<SECTION>_<KEY> env.")
    parser.add_argument("--version", action="version", version="glmtts %s" % __version__)
    parser.add_argument("--config", metavar="PATH", help="config file (default: $GLMTTS_CONFIG, else /etc/glmtts/glmtts.toml, else ./run/glmtts.toml)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMANDS.values():
        importlib.import_module(module_name).add_parser(sub)
    return anywhere(parser, "config")


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except GlmttsError as e:
        print("glmtts %s: error: %s" % (args.command, e), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
