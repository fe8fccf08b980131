"""`python -m glmtts.cli.watchdog`: the glmtts-watchdog console script."""

import sys

from . import main

sys.exit(main())
