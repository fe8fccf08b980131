import sys

from .child import main

sys.exit(main())
