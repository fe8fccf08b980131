"""`python -m glmtts.cli`: the glmtts console script."""

import sys

from . import main

sys.exit(main())
