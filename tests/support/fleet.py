"""The real engines users run around glmtts (Prometheus, Alertmanager, nginx, HAProxy,
dockerd), found on this machine for the fleet tests. `make test` installs them
(ops/system-deps.sh). A machine without them skips those tests, except when
GLMTTS_TEST_REQUIRE_FLEET=1 (CI: .ci/run), where that is a failure: in CI a fleet test
never silently stops running."""

import os
import shutil

import pytest

REQUIRE = os.environ.get("GLMTTS_TEST_REQUIRE_FLEET") == "1"


def unavailable(reason):
    if REQUIRE:
        pytest.fail("GLMTTS_TEST_REQUIRE_FLEET=1 but: %s" % reason, pytrace=False)
    pytest.skip(reason)


def tool(name, *also):
    """Path of a program (searched on PATH, then in the sbin directories Debian uses)."""
    for candidate in (name,) + also:
        found = shutil.which(candidate, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
        if found:
            return found
    unavailable("%s not installed (ops/system-deps.sh installs it; needs root and apt-get)" % name)


def require_root(what):
    if os.geteuid() != 0:
        unavailable("%s needs root" % what)
