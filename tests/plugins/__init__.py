"""Plug-in engines for tests (engine.name = "tests.plugins.faults:FaultEngine" with the
repository root on PYTHONPATH). Production code carries no fault hooks: faults live here."""
