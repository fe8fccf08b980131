"""`glmtts-watchdog`: check (one cycle, Nagios exit codes), run (loop), diagnose,
runbook list|show|exec, incidents, resume."""

import argparse
import json
import logging
import signal
import sys
import threading

from .. import config
from ..cli.globals import anywhere
from ..errors import GlmttsError
from .states import GuardState

EPILOG = """exit codes of check (Nagios plugin convention): 0 OK, 1 WARNING (an incident was
handled or only warned about), 2 CRITICAL (remediation failed, or escalated and waiting
for `resume`), 3 UNKNOWN (bad config, or another cycle holds the lock).
Runbooks: runbooks/README.md. Incidents: <paths.state_dir>/incidents.jsonl."""


def build_parser():
    # `--dry-run` is accepted after the verb too (`check --dry-run`, `runbook exec ID --dry-run`);
    # SUPPRESS keeps a verb that does not repeat it from resetting the global one.
    verb = argparse.ArgumentParser(add_help=False)
    verb.add_argument("--dry-run", action="store_true", default=argparse.SUPPRESS,
                      help="observe and decide like a real cycle; change nothing (read-only host, unsaved state, no alerts)")
    p = argparse.ArgumentParser(prog="glmtts-watchdog", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Watch the glmtts service: probe /healthz, scan logs for failure signatures, "
                                            "run the matching runbook, verify with a smoke test, record and alert.")
    p.add_argument("--config", metavar="PATH", help="config file (default: $GLMTTS_CONFIG or /etc/glmtts/glmtts.toml)")
    p.add_argument("--dry-run", action="store_true", help="observe and decide like a real cycle; change nothing (read-only host, unsaved state, no alerts)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="log more (repeat for debug)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("check", parents=[verb], help="one cycle (what the systemd timer runs); one-line summary, Nagios exit code")
    sub.add_parser("run", parents=[verb], help="cycle every watchdog.interval_s until SIGTERM (hosts without systemd)")
    d = sub.add_parser("diagnose", parents=[verb], help="triage report for a human: unit, /healthz, port owner, log matches, GPU, disk, incidents")
    d.add_argument("--json", action="store_true")
    rb = sub.add_parser("runbook", parents=[verb], help="list | show ID | exec ID")
    rbs = rb.add_subparsers(dest="rb_command", metavar="ACTION")
    rbs.add_parser("list", parents=[verb], help="runbooks and their triggers")
    show = rbs.add_parser("show", parents=[verb], help="print a runbook")
    show.add_argument("id")
    ex = rbs.add_parser("exec", parents=[verb], help="run a runbook's steps now (records an incident; "
                                                      "--dry-run only describes the steps)")
    ren = rbs.add_parser("render", parents=[verb], help="print a runbook with its generated steps section "
                                                        "(--write: update the file in place)")
    ren.add_argument("id", nargs="?", help="runbook id (default: all)")
    ren.add_argument("--write", action="store_true", help="rewrite the runbook file(s) (atomically)")
    ren.add_argument("--check", action="store_true", help="exit 1 if a file's generated section is stale")
    ex.add_argument("id")
    ex.add_argument("--unit", help="instance to act on (default: watchdog.unit)")
    ex.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    inc = sub.add_parser("incidents", parents=[verb], help="recent incidents from incidents.jsonl")
    inc.add_argument("--last", type=int, default=10, metavar="N")
    inc.add_argument("--json", action="store_true", help="one JSON object per line")
    res = sub.add_parser("resume", parents=[verb], help="re-arm automation after an escalation")
    res.add_argument("--unit", help="only this instance (default: all)")
    return anywhere(p, "config", "verbose")


def _watchdog(args, dry_run=False, **kw):
    from .cycle import Watchdog
    settings = config.load(args.config)
    return Watchdog(settings, dry_run=args.dry_run or dry_run, **kw)


def cmd_check(args):
    from .cycle import EXIT_UNKNOWN
    try:
        rep = _watchdog(args).check()
    except GlmttsError as e:
        print("GLMTTS UNKNOWN - %s" % e)
        return EXIT_UNKNOWN
    print(rep.summary())
    return rep.code


def cmd_run(args):
    log = logging.getLogger("glmtts.watchdog")
    stop = threading.Event()

    def on_signal(signum, frame):  # record only; the loop below acts on it
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    wd = _watchdog(args)
    log.info("watchdog running: every %d s, instances %s", wd.settings.watchdog.interval_s, [i.unit for i in wd.instances])
    while not stop.is_set():
        try:
            log.info("%s", wd.check().summary())
        except Exception:  # one bad cycle must not end the loop that heals the service
            log.exception("watchdog cycle failed")
        stop.wait(wd.settings.watchdog.interval_s)
    log.info("watchdog stopping")
    return 0


def cmd_diagnose(args):
    from . import diagnose
    rep = diagnose.report(_watchdog(args))
    print(diagnose.to_json(rep) if args.json else diagnose.render(rep))
    return 0


def cmd_runbook(args):
    from .runbook import default_dir, load_all
    settings = config.load(args.config)
    runbooks = load_all(default_dir(settings))
    if args.rb_command == "list" or args.rb_command is None:
        for rb in runbooks.values():
            print("%-12s %-9s %-40s triggers: %s" % (rb.id, rb.severity, rb.title, ", ".join(rb.triggers)))
        return 0
    if args.rb_command == "render":
        return _render(runbooks, args)
    rb = runbooks.get(args.id)
    if rb is None:
        raise GlmttsError("no runbook %r; runbooks: %s" % (args.id, ", ".join(runbooks)))
    if args.rb_command == "show":
        with open(rb.path, encoding="utf-8") as f:
            sys.stdout.write(f.read())
        return 0
    dry = args.dry_run
    if not dry and not args.yes:
        if not sys.stdin.isatty():
            raise GlmttsError("refusing to run %s without --yes (stdin is not a terminal)" % rb.id)
        steps = ", ".join(str(s) for s in rb.steps)
        if input("run runbook %s (%s) now? [y/N] " % (rb.id, steps)).strip().lower() not in ("y", "yes"):
            print("not run")
            return 1
    from .manual import exec_runbook
    inc = exec_runbook(_watchdog(args, runbooks=runbooks, dry_run=dry), rb, args.unit)
    for st in inc.steps:
        print("%-20s %-8s %6.1fs  %s" % (st["action"], st["status"], st["duration_s"], st["detail"]))
    print(inc.summary())
    return 0 if inc.state in ("recovered", "dry_run") else 2


def _render(runbooks, args):
    from .. import fsutil
    from .runbook import rendered
    if args.id and args.id not in runbooks:
        raise GlmttsError("no runbook %r; runbooks: %s" % (args.id, ", ".join(runbooks)))
    stale = []
    for rb in [runbooks[args.id]] if args.id else list(runbooks.values()):
        with open(rb.path, encoding="utf-8") as f:
            text = f.read()
        new = rendered(text, rb)
        if new != text:
            stale.append(rb.path)
        if args.write and new != text and not args.dry_run:
            fsutil.atomic_write(rb.path, new.encode("utf-8"), mode=0o644)
            print("updated %s" % rb.path)
        elif not args.write and not args.check:
            sys.stdout.write(new)
    if args.check and stale:
        print("stale generated steps in: %s (run `glmtts-watchdog runbook render --write`)" % ", ".join(stale))
        return 1
    return 0


def cmd_incidents(args):
    from .incidents import IncidentLog, incidents_path
    settings = config.load(args.config)
    items = IncidentLog(incidents_path(settings)).read(last=args.last)
    for inc in items:
        if args.json:
            print(json.dumps(inc, ensure_ascii=False, sort_keys=True))
        else:
            times = "".join("%s %.1fs " % (label, inc[k]) for label, k in (("outage", "outage_s"), ("verify", "verification_s"))
                            if inc.get(k) is not None)
            print("%s  %-10s %-28s %-11s %-12s %s%s" % (
                inc.get("detected_at_iso"), inc.get("unit"), "+".join(inc.get("signatures", [])) or "(%s)" % (inc.get("kind") or "manual"),
                inc.get("outcome") or "open:%s" % inc.get("state"), inc.get("runbook") or "-", times,
                inc.get("reason", "")[:100]))
    if not items and not args.json:
        print("no incidents recorded in %s" % incidents_path(settings))
    return 0


def cmd_resume(args):
    wd = _watchdog(args)
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


COMMANDS = {"check": cmd_check, "run": cmd_run, "diagnose": cmd_diagnose, "runbook": cmd_runbook,
            "incidents": cmd_incidents, "resume": cmd_resume}


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 3
    level = logging.WARNING if args.command == "check" and not args.verbose else logging.INFO
    if args.verbose > 1:
        level = logging.DEBUG
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except GlmttsError as e:
        print("glmtts-watchdog %s: error: %s" % (args.command, e), file=sys.stderr)
        return 3 if args.command == "check" else e.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
