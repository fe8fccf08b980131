"""`glmtts-system install`: user, dirs, config, units, logrotate, preflight, watchdog timer."""

import argparse


def parse_instances(text):
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError("--instances takes GPU indexes such as 0,1") from None
    if any(v < 0 or v > 63 for v in values):
        raise argparse.ArgumentTypeError("--instances: GPU indexes are 0..63")
    return values


def add_parser(sub):
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
    i.set_defaults(func=run)


def run(args):
    from ...install.layout import OpsError, default_deploy_dir
    from ...install.plan import install
    from . import host_for, output
    host = host_for(args)
    deploy = args.deploy_dir or default_deploy_dir()
    if deploy is None:
        raise OpsError("cannot tell the deploy tree: pass --deploy-dir DIR (a checkout with service/, ops/, .venv/)")
    install(host, deploy, instances=args.instances, start=args.start, dry_run=args.dry_run,
            preflight=args.preflight, out=output(args))
    return 0
