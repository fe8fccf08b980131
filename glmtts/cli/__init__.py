"""The console scripts. ``program.Program`` is their one shape; this module is `glmtts`
(config, engines, synth, serve; batch in glmtts/batch/cmd.py), ``cli.watchdog`` is
`glmtts-watchdog` and ``cli.system`` is `glmtts-system`. Each verb is a module with
``add_parser(subparsers)`` and ``run(args) -> exit code``.
"""

import sys

from .. import __version__
from .program import Program

# subcommand -> module that implements it (explicit table, no folder scanning)
COMMANDS = {
    "config": "glmtts.cli.config",
    "engines": "glmtts.cli.engines",
    "synth": "glmtts.cli.synth",
    "serve": "glmtts.cli.serve",
    "batch": "glmtts.batch.cmd",
}


def _globals(parser):
    parser.add_argument("--version", action="version", version="glmtts %s" % __version__)
    parser.add_argument("--config", metavar="PATH", help="config file (default: $GLMTTS_CONFIG, else /etc/glmtts/glmtts.toml, else ./run/glmtts.toml)")


PROGRAM = Program(
    "glmtts", "GLM-TTS text-to-speech: library, service and tools. "
              "Configuration: /etc/glmtts/glmtts.toml (GLMTTS_CONFIG) < GLMTTS_<SECTION>_<KEY> env.",
    COMMANDS, add_globals=_globals, globals_=("config",))
build_parser = PROGRAM.build_parser
main = PROGRAM.main


if __name__ == "__main__":
    sys.exit(main())
