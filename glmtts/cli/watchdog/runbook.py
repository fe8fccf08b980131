"""`glmtts-watchdog runbook list | show ID | exec ID | render [ID]`."""

import sys

from ... import config
from ...errors import GlmttsError
from .common import watchdog_for


def add_parser(sub):
    rb = sub.add_parser("runbook", help="list | show ID | exec ID | render [ID]")
    rb.set_defaults(func=run, rb_command=None)
    verbs = rb.add_subparsers(dest="rb_command", metavar="ACTION")
    verbs.add_parser("list", help="runbooks and their triggers")
    show = verbs.add_parser("show", help="print a runbook")
    show.add_argument("id", help="runbook id (see `runbook list`)")
    ex = verbs.add_parser("exec", help="run a runbook's steps now (records an incident; --dry-run only describes the steps)")
    ex.add_argument("id", help="runbook id (see `runbook list`)")
    ex.add_argument("--unit", help="instance to act on (default: watchdog.unit)")
    ex.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    ren = verbs.add_parser("render", help="print a runbook with its generated steps section "
                                          "(--write: update the file in place)")
    ren.add_argument("id", nargs="?", help="runbook id (default: all)")
    ren.add_argument("--write", action="store_true", help="rewrite the runbook file(s) (atomically)")
    ren.add_argument("--check", action="store_true", help="exit 1 if a file's generated section is stale")


def run(args):
    from ...watchdog.runbook import default_dir, load_all
    runbooks = load_all(default_dir(config.load(args.config)))
    if args.rb_command in (None, "list"):
        for rb in runbooks.values():
            print("%-12s %-9s %-40s triggers: %s" % (rb.id, rb.severity, rb.title, ", ".join(rb.triggers)))
        return 0
    if args.rb_command == "render":
        return render(runbooks, args)
    rb = runbooks.get(args.id)
    if rb is None:
        raise GlmttsError("no runbook %r; runbooks: %s" % (args.id, ", ".join(runbooks)))
    if args.rb_command == "show":
        with open(rb.path, encoding="utf-8") as f:
            sys.stdout.write(f.read())
        return 0
    return execute(runbooks, rb, args)


def execute(runbooks, rb, args):
    dry = args.dry_run
    if not dry and not args.yes:
        if not sys.stdin.isatty():
            raise GlmttsError("refusing to run %s without --yes (stdin is not a terminal)" % rb.id)
        steps = ", ".join(str(s) for s in rb.steps)
        if input("run runbook %s (%s) now? [y/N] " % (rb.id, steps)).strip().lower() not in ("y", "yes"):
            print("not run")
            return 1
    from ...watchdog.manual import exec_runbook
    inc = exec_runbook(watchdog_for(args, runbooks=runbooks, dry_run=dry), rb, args.unit)
    for st in inc.steps:
        print("%-20s %-8s %6.1fs  %s" % (st["action"], st["status"], st["duration_s"], st["detail"]))
    print(inc.summary())
    return 0 if inc.state in ("recovered", "dry_run") else 2


def render(runbooks, args):
    from ...generated import sync
    from ...watchdog.runbook import rendered
    if args.id and args.id not in runbooks:
        raise GlmttsError("no runbook %r; runbooks: %s" % (args.id, ", ".join(runbooks)))
    documents = []
    for rb in [runbooks[args.id]] if args.id else list(runbooks.values()):
        with open(rb.path, encoding="utf-8") as f:
            documents.append((rb.path, rendered(f.read(), rb)))
    return sync(documents, write=args.write, check=args.check, dry_run=args.dry_run,
                hint=" (run `glmtts-watchdog runbook render --write`)")
