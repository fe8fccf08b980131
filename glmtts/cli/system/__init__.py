"""`glmtts-system`: install | uninstall glmtts as systemd units on this host, with
--dry-run, --root and the preflight switches. One module per verb, in the shape of every
console script (glmtts/cli/program.py); the work itself is glmtts/install/."""

import os
import sys

from ...errors import GlmttsError
from ...install.layout import OpsError
from ..program import Program

COMMANDS = {
    "install": "glmtts.cli.system.install",
    "uninstall": "glmtts.cli.system.uninstall",
}


def _globals(parser):
    # before or after the verb: `glmtts-system --dry-run install` = `glmtts-system install --dry-run`
    parser.add_argument("--dry-run", action="store_true", help="print what would be done; change nothing")
    parser.add_argument("--root", default="/", metavar="DIR", help="operate on a directory tree instead of / (tests, images)")


PROGRAM = Program(
    "glmtts-system", "Install glmtts as systemd units on this host (user, dirs, config, units, logrotate, a "
                     "preflight of the engine in the unit's own sandbox, watchdog timer), or remove it. Every step "
                     "is printed; install is idempotent and never overwrites an existing /etc/glmtts/glmtts.toml.",
    COMMANDS, add_globals=_globals, globals_=("dry_run", "root"), errors=(GlmttsError, OSError))
build_parser = PROGRAM.build_parser


# main(argv, host=..., out=...): tests pass a recording host and an output stream
main = PROGRAM.main


def host_for(args):
    """The host the verb acts on (``main(host=...)``: a recording one in tests; default:
    this machine, or the tree under --root), refusing a real change of this machine
    without root."""
    from ...host import Host
    if getattr(args, "host", None) is not None:  # a host passed in (tests) brings its own rights
        return args.host
    if args.root == "/" and not args.dry_run and os.geteuid() != 0:
        raise OpsError("needs root (sudo glmtts-system %s), or --dry-run to see the plan" % args.command)
    return Host(args.root)


def output(args):
    """Where the plan is printed (``main(out=...)``), stdout by default."""
    return getattr(args, "out", None) or sys.stdout
