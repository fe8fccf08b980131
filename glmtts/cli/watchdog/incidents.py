"""`glmtts-watchdog incidents`: recent incidents from incidents.jsonl."""

import json

from ... import config


def add_parser(sub):
    p = sub.add_parser("incidents", help="recent incidents from incidents.jsonl")
    p.add_argument("--last", type=int, default=10, metavar="N", help="how many (default 10)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=run)


def run(args):
    from ...watchdog.incidents import IncidentLog, incidents_path
    settings = config.load(args.config)
    items = IncidentLog(incidents_path(settings)).read(last=args.last)
    for inc in items:
        if args.json:
            print(json.dumps(inc, ensure_ascii=False, sort_keys=True))
        else:
            print(_line(inc))
    if not items and not args.json:
        print("no incidents recorded in %s" % incidents_path(settings))
    return 0


def _line(inc):
    times = "".join("%s %.1fs " % (label, inc[k]) for label, k in (("outage", "outage_s"), ("verify", "verification_s"))
                    if inc.get(k) is not None)
    return "%s  %-10s %-28s %-11s %-12s %s%s" % (
        inc.get("detected_at_iso"), inc.get("unit"), "+".join(inc.get("signatures", [])) or "(%s)" % (inc.get("kind") or "manual"),
        inc.get("outcome") or "open:%s" % inc.get("state"), inc.get("runbook") or "-", times,
        inc.get("reason", "")[:100])
