#!/usr/bin/env python3
"""Thin executable entry of the watchdog (`glmtts-watchdog`), for hosts and monitoring
systems that call a script path: `ops/healthcheck.py check` exits 0/1/2/3 (Nagios)."""

import os
import sys

if __name__ == "__main__":
    # Run from a deploy tree without installing: make the repository importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from glmtts.cli.watchdog import main
    sys.exit(main())
