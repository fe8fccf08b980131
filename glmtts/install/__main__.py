"""`python -m glmtts.install`: the glmtts-system console script."""

import sys

from .cli import main

sys.exit(main())
