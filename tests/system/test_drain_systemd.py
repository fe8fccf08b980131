"""`systemctl stop glmtts` under load, in a real systemd, with the unit as `glmtts-system
install` rendered it (TimeoutStopSec = config.stop_grace_s(), KillSignal=SIGTERM,
KillMode=mixed): every request queued before the stop gets its audio, nothing answers 5xx
but 503 draining, the unit ends with Result=success and ExecMainStatus=0 well within its
budget, and a watchdog cycle during the drain sees a planned stop, not an incident."""

import re
import time

import pytest

from conftest import record_recovery
from glmtts import config
from tests.plugins.drain_load import DrainLoad

pytestmark = [pytest.mark.system, pytest.mark.timeout(600)]
DROP_IN = "/etc/systemd/system/glmtts.service.d/60-drain-test.conf"
DELAY_S = 2.0
SLOW_S = 0.75


def installed_budget(d):
    """TimeoutStopSec of the unit file glmtts-system install wrote (before the tests' drop-ins)."""
    text = d.file("/etc/systemd/system/glmtts.service").read_text()
    return int(re.search(r"(?m)^TimeoutStopSec=(\d+)$", text).group(1))


def test_systemctl_stop_under_load_drains_and_exits_0(deployed):
    d = deployed
    budget = installed_budget(d)
    assert budget == config.stop_grace_s(), "install renders the budget of the (default) config"
    # The session's test drop-in shortens TimeoutStopSec for the fault scenarios; this one puts
    # the installed budget back, and queues one synthesis at a time behind a short delay.
    d.write(DROP_IN, "[Service]\nTimeoutStopSec=%d\nEnvironment=GLMTTS_LIMITS_MAX_CONCURRENCY=1 "
                     "GLMTTS_LIMITS_MAX_QUEUE=32 GLMTTS_SERVER_DRAIN_DELAY_S=%g\n" % (budget, DELAY_S))
    try:
        d.sd.systemctl("daemon-reload")
        d.fault("")
        d.sd.systemctl("restart", "glmtts.service", timeout=180)
        d.wait_healthy(120)
        assert d.sd.show("glmtts.service", "TimeoutStopUSec")["TimeoutStopUSec"] in ("%ds" % budget, "%dmin %ds" % divmod(budget, 60))
        d.fault("slow:%g" % SLOW_S)  # tests/plugins/faults.py: each synthesis sleeps first
        log_at = len(d.log_text("error.log"))
        before = len(d.incidents())

        load = DrainLoad(d.url, n=12)
        load.queue()
        t0 = time.monotonic()
        stop = d.sd.run(["systemctl", "--no-block", "stop", "glmtts.service"])  # queues the stop job, as a deploy does
        load.signal_sent()
        assert stop.returncode == 0
        d.sd.wait_for(lambda: d.healthz()[1].get("status") == "draining", DELAY_S, 0.05, "/healthz draining")
        rc, report, _ = d.watchdog_check()  # a cycle during the drain
        assert rc == 0, report
        d.sd.wait_for(lambda: d.unit()["ActiveState"] == "inactive", budget, 0.2, "glmtts.service inactive")
        stopped_after = time.monotonic() - t0
        load.finish(60)
        unit = d.unit()
        new_log = d.log_text("error.log")[log_at:]
        incidents = d.incidents()[before:]
    finally:
        d.sd.run(["rm", "-f", DROP_IN])
        d.sd.systemctl("daemon-reload")
        d.fault("")
        d.start()  # leave the service as the other scenarios expect it
        d.wait_healthy(120)

    report = load.report()
    assert load.failures() == [], report
    assert report["queued_ok"] == 12 and report["lost"] == 0 and report["bad_5xx"] == 0, report
    assert unit["Result"] == "success" and unit["ExecMainStatus"] == "0", unit
    assert stopped_after < budget / 2, "well within TimeoutStopSec=%d: %.1f s" % (budget, stopped_after)
    assert stopped_after >= DELAY_S, stopped_after
    assert "Traceback" not in new_log and "drain: finishing -> done" in new_log, new_log[-3000:]
    assert all(i.get("kind") == "planned" for i in incidents), incidents  # nothing remedied, nobody paged
    record_recovery("drain: systemctl stop under load", stopped_after,
                    "%d queued at SIGTERM, %d completed, %d late refused 503 draining, 0 5xx; TimeoutStopSec=%d"
                    % (report["queued"], report["queued_ok"], report["late_503_draining"], budget))
    print("drain under systemd: %s, stopped after %.1f s" % (report, stopped_after))
