"""Kept so that a supervisord.conf or a monitoring check written before the CLI moved
(`python -m glmtts.watchdog.cli run`) still starts the watchdog. The console script is
glmtts/cli/watchdog/."""

import sys

from ..cli.watchdog import build_parser, main  # noqa: F401 (the old import path)

if __name__ == "__main__":
    sys.exit(main())
