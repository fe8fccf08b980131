"""The `glmtts-system` console script: install | uninstall, with --dry-run, --root and
the preflight switches."""

import argparse
import os
import sys

from ..cli.globals import anywhere
from ..errors import EXIT_FAILURE, GlmttsError
from .host import Host
from .layout import OpsError, default_deploy_dir
from .plan import install, uninstall


def parse_instances(text):
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError("--instances takes GPU indexes such as 0,1") from None
    if any(v < 0 or v > 63 for v in values):
        raise argparse.ArgumentTypeError("--instances: GPU indexes are 0..63")
    return values


def build_parser():
    p = argparse.ArgumentParser(prog="glmtts-system", description=(
        "Install glmtts as systemd units on this host (user, dirs, config, units, logrotate, a "
        "preflight of the engine in the unit's own sandbox, watchdog timer), or remove it. Every step is printed; install is idempotent and never "
        "overwrites an existing /etc/glmtts/glmtts.toml."))
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    i = sub.add_parser("install", help="create user, dirs, config; install units and logrotate; preflight the "
                       "engine in the unit's sandbox; enable the timer")
    i.add_argument("--deploy-dir", metavar="DIR", help="checkout with service/, ops/ and .venv/ "
                   "(default: the tree this command runs from); written into the units for /opt/glmtts")
    i.add_argument("--instances", type=parse_instances, default=[], metavar="0,1",
                   help="also prepare glmtts@N per GPU: /etc/glmtts/instance-N.env (port 7860+N) and its log files")
    i.add_argument("--no-start", dest="start", action="store_false",
                   help="enable the watchdog timer without starting it now")
    i.add_argument("--no-preflight", dest="preflight", action="store_false",
                   help="skip loading the engine once in the unit's sandbox before enabling anything "
                        "(e.g. weights not downloaded yet; run `glmtts engines check` later)")
    u = sub.add_parser("uninstall", help="stop and remove units and the logrotate file (keeps config, data, logs)")
    u.add_argument("--purge", action="store_true", help="also remove /etc/glmtts, /var/lib/glmtts, /var/log/glmtts and the user")
    # before or after the verb: `glmtts-system --dry-run install` = `glmtts-system install --dry-run`
    p.add_argument("--dry-run", action="store_true", help="print what would be done; change nothing")
    p.add_argument("--root", default="/", metavar="DIR", help="operate on a directory tree instead of / (tests, images)")
    return anywhere(p, "dry_run", "root")


def main(argv=None, host=None, out=sys.stdout):
    args = build_parser().parse_args(argv)
    this_machine = host is None and args.root == "/"  # a host passed in (tests) brings its own rights
    host = host or Host(args.root)
    try:
        if os.geteuid() != 0 and not args.dry_run and this_machine:
            raise OpsError("needs root (sudo glmtts-system %s), or --dry-run to see the plan" % args.command)
        if args.command == "install":
            deploy = args.deploy_dir or default_deploy_dir()
            if deploy is None:
                raise OpsError("cannot tell the deploy tree: pass --deploy-dir DIR (a checkout with service/, ops/, .venv/)")
            install(host, deploy, instances=args.instances, start=args.start, dry_run=args.dry_run,
                    preflight=args.preflight, out=out)
        else:
            uninstall(host, purge=args.purge, dry_run=args.dry_run, out=out)
    except GlmttsError as e:
        print("glmtts-system %s: error: %s" % (args.command, e), file=sys.stderr)
        return e.exit_code
    except OSError as e:
        print("glmtts-system %s: error: %s" % (args.command, e), file=sys.stderr)
        return EXIT_FAILURE
    return 0


if __name__ == "__main__":
    sys.exit(main())
