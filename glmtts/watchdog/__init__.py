"""The watchdog: probe, log scanner, checks, incidents, runbook parser and executor,
actions, alerts and state. `glmtts-watchdog` (cli.py) is its command line; cycle.py is
one cycle; DESIGN.md's "Watchdog" section is the contract."""
