"""`python -m glmtts.cli.system`: the glmtts-system console script."""

import sys

from . import main

sys.exit(main())
