"""`glmtts-watchdog resume`: re-arm automation after an escalation."""

from ...errors import GlmttsError
from ...watchdog.states import GuardState
from .common import watchdog_for


def add_parser(sub):
    p = sub.add_parser("resume", help="re-arm automation after an escalation")
    p.add_argument("--unit", help="only this instance (default: all)")
    p.set_defaults(func=run)


def run(args):
    wd = watchdog_for(args)
    if wd.dry_run:
        would = [u for u, g in wd.load_state().section("guards").items()
                 if (args.unit is None or u == args.unit) and g.get("state") == GuardState.ESCALATED]
        print("dry run: would re-arm: %s" % (", ".join(would) if would else "nothing is escalated"))
        return 0
    done = wd.resume(args.unit)
    if done is None:
        raise GlmttsError("another watchdog cycle holds the lock; try again in a moment")
    print("re-armed: %s" % (", ".join(done) if done else "nothing was escalated"))
    return 0
