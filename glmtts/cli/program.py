"""The one shape of every console script (`glmtts`, `glmtts-watchdog`, `glmtts-system`).

A ``Program`` is a name, a description and an explicit table verb -> module; each module
exposes ``add_parser(subparsers)`` (which sets ``func=run`` on its parser) and
``run(args) -> exit code``, and imports what its work needs inside ``run`` so `--help`
never imports torch. The program owns what is the same everywhere: global options
accepted before or after the verb (``anywhere``), help when no verb is given, one line on
stderr for a user error (GlmttsError) with its exit code, 130 on Ctrl-C.

A verb may set ``error_exit`` (``set_defaults``) when its callers expect another code for
an error, e.g. `glmtts-watchdog check` answers 3 (Nagios UNKNOWN) for everything.
"""

import argparse
import importlib
import sys

from ..errors import EXIT_FAILURE, GlmttsError
from .globals import anywhere


class Program:
    def __init__(self, prog, description, commands, *, add_globals=None, globals_=(), epilog=None,
                 no_verb_exit=2, setup=None, errors=(GlmttsError,)):
        self.prog = prog
        self.description = description
        self.commands = commands          # verb -> module name, in --help order
        self.add_globals = add_globals    # fn(parser): the top-level options
        self.globals_ = globals_          # dests of those accepted after the verb too
        self.epilog = epilog
        self.no_verb_exit = no_verb_exit
        self.setup = setup                # fn(args) before the verb runs (logging)
        self.errors = errors              # exceptions that are the user's to fix: one line

    def build_parser(self):
        # an epilog is laid out by hand (exit-code tables); descriptions are wrapped
        fmt = argparse.RawDescriptionHelpFormatter if self.epilog else argparse.HelpFormatter
        parser = argparse.ArgumentParser(prog=self.prog, description=self.description, epilog=self.epilog,
                                         formatter_class=fmt)
        if self.add_globals:
            self.add_globals(parser)
        sub = parser.add_subparsers(dest="command", metavar="COMMAND")
        for module in self.commands.values():
            importlib.import_module(module).add_parser(sub)
        return anywhere(parser, *self.globals_)

    def main(self, argv=None, **context):
        """Run one verb. ``context`` (e.g. a host for tests) is set on the parsed args."""
        parser = self.build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return self.no_verb_exit
        vars(args).update(context)
        if self.setup:
            self.setup(args)
        try:
            return args.func(args) or 0
        except self.errors as e:
            print("%s %s: error: %s" % (self.prog, args.command, e), file=sys.stderr)
            return getattr(args, "error_exit", None) or getattr(e, "exit_code", EXIT_FAILURE)
        except KeyboardInterrupt:
            return 130
        except BrokenPipeError:
            return EXIT_FAILURE
