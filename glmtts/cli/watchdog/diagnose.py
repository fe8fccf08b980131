"""`glmtts-watchdog diagnose`: the triage report for a human."""

from .common import watchdog_for


def add_parser(sub):
    p = sub.add_parser("diagnose", help="triage report for a human: unit, /healthz, port owner, log matches, GPU, disk, incidents")
    p.add_argument("--json", action="store_true", help="the report as one JSON object")
    p.set_defaults(func=run)


def run(args):
    from ...watchdog import diagnose
    rep = diagnose.report(watchdog_for(args))
    print(diagnose.to_json(rep) if args.json else diagnose.render(rep))
    return 0
