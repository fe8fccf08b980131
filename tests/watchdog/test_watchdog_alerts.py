"""Alerts through real apprise to a local HTTP receiver (json://127.0.0.1:PORT)."""

import logging
import os
import socket

from glmtts.watchdog.alerts import Alerter
from glmtts.watchdog.cycle import Watchdog
from glmtts.watchdog.incidents import IncidentLog
from glmtts.watchdog.runbook import default_dir, load_all
from tests.support.watchdog_fakes import AlertReceiver, RecordingHost, FakeClock, FakeManager, HealthServer, settings_for


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_alert_is_delivered_once_per_key_and_filtered_by_severity(tmp_path):
    with AlertReceiver() as rx:
        a = Alerter(["json://127.0.0.1:%d/alerts" % rx.port], "warning", 5.0, str(tmp_path / "spool"))
        assert a.send("inc-1:opened", "critical", "glmtts down", "details") == "sent"
        assert a.send("inc-1:opened", "critical", "glmtts down", "details") == "duplicate"
        assert a.send("inc-2:opened", "info", "fyi", "details") == "filtered"
    assert len(rx.received) == 1
    assert rx.received[0]["title"] == "glmtts down" and rx.received[0]["message"] == "details"
    assert rx.received[0]["type"] == "failure"


def test_undeliverable_alert_is_spooled_and_delivered_next_cycle(tmp_path, caplog):
    port = free_port()  # nothing listens here yet
    url = "json://user:s3cr3tpass@127.0.0.1:%d/alerts" % port
    a = Alerter([url], "warning", 2.0, str(tmp_path / "spool"))
    with caplog.at_level(logging.DEBUG):
        assert a.send("inc-1:escalated", "critical", "glmtts escalated", "page someone") == "spooled"
    assert len(a.spooled()) == 1
    assert "s3cr3tpass" not in caplog.text  # secrets masked in logs
    with AlertReceiver(port=port) as rx:
        assert a.flush_spool() == (1, 0)
    assert [m["title"] for m in rx.received] == ["glmtts escalated"]
    assert a.spooled() == []


def test_remediation_goes_on_when_the_alert_channel_is_down(tmp_path):
    dead = "json://127.0.0.1:%d/x" % free_port()
    with HealthServer(status_code=503) as srv:
        clock = FakeClock()
        s = settings_for(tmp_path, url=srv.url, alerts__urls=[dead], alerts__timeout_s=1.0)
        mgr = FakeManager(on_restart=lambda: setattr(srv, "status_code", 200))
        wd = Watchdog(s, host=RecordingHost(clock=clock), manager=mgr, runbooks=load_all(default_dir()))
        rep = wd.check()
        assert "recovered" in rep.summary() and ("restart", "glmtts") in mgr.calls
        [inc] = IncidentLog(os.path.join(s.paths.state_dir, "incidents.jsonl")).read()
        assert {"alert": "recovered", "result": "spooled"} in inc["notes"]
        spool = os.path.join(s.paths.state_dir, "watchdog", "alert-spool")
        assert len(os.listdir(spool)) == 2  # opened + recovered
        # the channel comes back: the next cycle delivers both, oldest first
        port = int(dead.rsplit(":", 1)[1].split("/")[0])
        with AlertReceiver(port=port) as rx:
            rep = wd.check()
        assert [m["title"].split(" ", 3)[-1] for m in rx.received] == ["opened: unhealthy", "recovered: unhealthy"]
        assert os.listdir(spool) == []
