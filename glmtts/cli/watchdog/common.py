"""What the watchdog verbs share: the Watchdog built from --config and --dry-run."""

from ... import config


def watchdog_for(args, dry_run=False, **kw):
    from ...watchdog.cycle import Watchdog
    return Watchdog(config.load(args.config), dry_run=args.dry_run or dry_run, **kw)
