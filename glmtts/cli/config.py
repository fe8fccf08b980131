"""`glmtts config show|example|check`."""

import sys

from .. import config


def add_parser(sub):
    p = sub.add_parser("config", help="show the effective configuration, or print the example config")
    p.add_argument("action", choices=["show", "example", "check", "table"],
                   help="show: effective values and where each came from; example: a commented "
                        "glmtts.toml with every default; check: validate and exit 0/78; table: Markdown table")
    p.add_argument("--show-secrets", action="store_true", help="do not mask api keys and alert URLs")
    p.set_defaults(func=run)


def run(args):
    if args.action == "example":
        sys.stdout.write(config.example_toml())
        return 0
    if args.action == "table":
        sys.stdout.write(config.markdown_table())
        return 0
    settings = config.load(args.config)
    if args.action == "check":
        print("configuration OK (%s)" % (settings.config_path or "defaults and environment"))
        return 0
    sys.stdout.write(config.show(settings, mask_secrets=not args.show_secrets))
    return 0
