"""`glmtts-watchdog`: check (one cycle, Nagios exit codes), run (loop), diagnose,
runbook list|show|exec|render, incidents, resume. One module per verb (``add_parser`` /
``run``), in the shape of every console script (glmtts/cli/program.py)."""

import logging
import sys

from ..program import Program

EPILOG = """exit codes of check (Nagios plugin convention): 0 OK, 1 WARNING (an incident was
handled or only warned about), 2 CRITICAL (remediation failed, or escalated and waiting
for `resume`), 3 UNKNOWN (bad config, or another cycle holds the lock).
Runbooks: runbooks/README.md. Incidents: <paths.state_dir>/incidents.jsonl."""

COMMANDS = {
    "check": "glmtts.cli.watchdog.check",
    "run": "glmtts.cli.watchdog.loop",
    "diagnose": "glmtts.cli.watchdog.diagnose",
    "runbook": "glmtts.cli.watchdog.runbook",
    "incidents": "glmtts.cli.watchdog.incidents",
    "resume": "glmtts.cli.watchdog.resume",
}


def _globals(parser):
    parser.add_argument("--config", metavar="PATH", help="config file (default: $GLMTTS_CONFIG or /etc/glmtts/glmtts.toml)")
    parser.add_argument("--dry-run", action="store_true",
                        help="observe and decide like a real cycle; change nothing (read-only host, unsaved state, no alerts)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (repeat for debug)")


def _logging(args):
    # `check` is a monitoring plugin: one summary line on stdout, log lines only when asked
    level = logging.WARNING if args.command == "check" and not args.verbose else logging.INFO
    if args.verbose > 1:
        level = logging.DEBUG
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


PROGRAM = Program(
    "glmtts-watchdog", "Watch the glmtts service: probe /healthz, scan logs for failure signatures, "
                       "run the matching runbook, verify with a smoke test, record and alert.",
    COMMANDS, add_globals=_globals, globals_=("config", "dry_run", "verbose"), epilog=EPILOG,
    no_verb_exit=3, setup=_logging)
build_parser = PROGRAM.build_parser
main = PROGRAM.main
