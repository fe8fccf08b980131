"""`glmtts-watchdog check`: one cycle; a one-line summary and a Nagios exit code."""

from ...errors import GlmttsError
from .common import watchdog_for

EXIT_UNKNOWN = 3


def add_parser(sub):
    p = sub.add_parser("check", help="one cycle (what the systemd timer runs); one-line summary, Nagios exit code")
    p.set_defaults(func=run, error_exit=EXIT_UNKNOWN)


def run(args):
    try:
        rep = watchdog_for(args).check()
    except GlmttsError as e:  # a monitoring system reads stdout: UNKNOWN with the reason
        print("GLMTTS UNKNOWN - %s" % e)
        return EXIT_UNKNOWN
    print(rep.summary())
    return rep.code
