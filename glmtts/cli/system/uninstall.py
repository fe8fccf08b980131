"""`glmtts-system uninstall`: stop and remove the units and the logrotate file."""


def add_parser(sub):
    u = sub.add_parser("uninstall", help="stop and remove units and the logrotate file (keeps config, data, logs)")
    u.add_argument("--purge", action="store_true", help="also remove /etc/glmtts, /var/lib/glmtts, /var/log/glmtts and the user")
    u.set_defaults(func=run)


def run(args):
    from ...install.plan import uninstall
    from . import host_for, output
    uninstall(host_for(args), purge=args.purge, dry_run=args.dry_run, out=output(args))
    return 0
