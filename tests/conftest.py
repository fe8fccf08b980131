"""Shared fixtures. The repository root goes on sys.path so tests import
``tests.support.service`` and the plug-in engines ``tests.plugins.faults``."""

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from tests.support.service import ServiceProcess  # noqa: E402


@pytest.fixture
def service(tmp_path):
    """``service(env=None, wait=True, **kw)`` starts a real service process (see
    tests/support/service.py); all of them are stopped at teardown."""
    started = []

    def start(env=None, wait=True, timeout=60, **kw):
        kw.setdefault("name", "svc%d" % len(started))
        svc = ServiceProcess(tmp_path, env, **kw)
        started.append(svc)
        return svc.start(wait=wait, timeout=timeout)

    yield start
    for svc in started:
        svc.stop()
