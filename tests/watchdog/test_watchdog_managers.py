"""What the managers' own tools print, parsed without a manager: recorded `systemctl show`
output of systemd 252 and `supervisorctl status` output of supervisor 4.2, fed through the
recording host answering recorded output (tests/support/host.py; the real outputs were
captured from the private systemd of tests/system and the real supervisord of
tests/watchdog/test_watchdog_supervisord.py). The system tests exercise the same parsers live."""

import sys

import pytest

from glmtts.watchdog import managers as M
from tests.support.host import FakeClock, RecordingHost


def recorded_host(answers, now=1_800_000_000.0, mono=5_000.0):
    """The recording host answering the recorded (rc, stdout, stderr) of the longest argv
    prefix that matches, on a host up for ``mono`` seconds at ``now``."""
    return RecordingHost(clock=FakeClock(now, mono=mono), answers=answers)


def ran(host):
    return [c[1] for c in host.calls if c[0] == "run"]


def show(**props):
    return "\n".join("%s=%s" % kv for kv in props.items()) + "\n"


ACTIVE = show(LoadState="loaded", ActiveState="active", SubState="running", Result="success", MainPID="4242",
              NRestarts="2", ControlGroup="/system.slice/glmtts.service")


@pytest.mark.parametrize("out, rc, state, pid, restarts", [
    (ACTIVE, 0, M.RUNNING, 4242, 2),
    (show(LoadState="loaded", ActiveState="activating", SubState="start", Result="success", MainPID="4300",
          NRestarts="3", ControlGroup="/system.slice/glmtts.service"), 0, M.STARTING, 4300, 3),
    (show(LoadState="loaded", ActiveState="activating", SubState="auto-restart", Result="signal", MainPID="0",
          NRestarts="3", ControlGroup=""), 0, M.STARTING, None, 3),
    (show(LoadState="loaded", ActiveState="failed", SubState="failed", Result="start-limit-hit", MainPID="0",
          NRestarts="5", ControlGroup=""), 0, M.CRASH_LOOP, None, 5),
    (show(LoadState="loaded", ActiveState="failed", SubState="failed", Result="exit-code", MainPID="0",
          NRestarts="0", ControlGroup=""), 0, M.FAILED, None, 0),
    (show(LoadState="loaded", ActiveState="inactive", SubState="dead", Result="success", MainPID="0",
          NRestarts="0", ControlGroup=""), 0, M.STOPPED, None, 0),
    (show(LoadState="loaded", ActiveState="deactivating", SubState="stop-sigterm", Result="success", MainPID="4242",
          NRestarts="0", ControlGroup="/system.slice/glmtts.service"), 0, M.STOPPING, 4242, 0),
    (show(LoadState="not-found", ActiveState="inactive", SubState="dead", Result="success", MainPID="0",
          NRestarts="0", ControlGroup=""), 0, M.UNKNOWN, None, None),
    ("", 1, M.UNKNOWN, None, None),  # systemctl could not talk to PID 1
])
def test_systemctl_show_is_read_as_the_unit_state(out, rc, state, pid, restarts):
    host = recorded_host({"systemctl show glmtts": (rc, out, "Failed to connect to bus" if rc else "")})
    st = M.SystemdManager(host).status("glmtts")
    assert (st.state, st.main_pid, st.restarts) == (state, pid, restarts), st


def test_systemd_times_come_from_the_monotonic_timestamps():
    # systemd prints CLOCK_MONOTONIC microseconds; now - monotonic converts them to wall time
    out = show(ExecMainStartTimestampMonotonic="4990000000", ExecMainExitTimestampMonotonic="0",
               ActiveEnterTimestampMonotonic="4994500000", ActiveExitTimestampMonotonic="4980000000",
               ActiveState="active")
    host = recorded_host({"systemctl show glmtts": (0, out, "")}, now=1_800_000_000.0, mono=5_000.0)
    t = M.SystemdManager(host).times("glmtts")
    offset = 1_800_000_000.0 - 5_000.0
    assert t["active_since"] == pytest.approx(offset + 4994.5)
    assert t["main_exited_at"] == pytest.approx(offset + 4980.0)  # left "active" when the old process died


def test_systemd_ready_time_of_an_older_process_is_not_the_current_ones():
    out = show(ExecMainStartTimestampMonotonic="4995000000", ExecMainExitTimestampMonotonic="0",
               ActiveEnterTimestampMonotonic="4900000000", ActiveExitTimestampMonotonic="0", ActiveState="active")
    t = M.SystemdManager(recorded_host({"systemctl show glmtts": (0, out, "")})).times("glmtts")
    assert "active_since" not in t  # entered active before this main process started: not its READY


SUP = "supervisor.supervisorctl"


@pytest.mark.parametrize("out, rc, state, pid", [
    ("glmtts                           RUNNING   pid 31337, uptime 0:01:02\n", 0, M.RUNNING, 31337),
    ("glmtts                           STARTING  \n", 3, M.STARTING, None),
    ("glmtts                           BACKOFF   Exited too quickly (process log may have details)\n", 3, M.STARTING, None),
    ("glmtts                           FATAL     Exited too quickly (process log may have details)\n", 3, M.CRASH_LOOP, None),
    ("glmtts                           STOPPED   Dec 01 04:05 PM\n", 3, M.STOPPED, None),
    ("glmtts                           EXITED    Dec 01 04:05 PM\n", 3, M.FAILED, None),
    ("glmtts                           STOPPING  \n", 3, M.STOPPING, None),
    ("glmtts:glmtts                    RUNNING   pid 77, uptime 1 day, 2:03:04\n", 0, M.RUNNING, 77),  # a group
    ("glmtts: ERROR (no such process)\n", 4, M.UNKNOWN, None),
    ("unix:///run/glmtts/supervisor.sock no such file\n", 7, M.UNKNOWN, None),  # supervisord not running
    ("glmtts-other                     RUNNING   pid 5, uptime 0:00:09\n", 0, M.UNKNOWN, None),  # not ours
])
def test_supervisorctl_status_is_read_as_the_program_state(out, rc, state, pid):
    host = recorded_host({(sys.executable, "-m", SUP): (rc, out, "")})
    st = M.SupervisorManager(host, "/etc/supervisor/glmtts.conf").status("glmtts")
    assert (st.state, st.main_pid) == (state, pid), st
    [argv] = ran(host)
    assert argv[:3] == [sys.executable, "-m", SUP] and argv[3:] == ["-c", "/etc/supervisor/glmtts.conf", "status", "glmtts"]


RECORDED_SYSTEMD_JOURNAL = [
    "Dec 01 07:07:01 vm systemd[1]: Stopping glmtts.service - GLM-TTS text-to-speech service (UI + API)...",
    "Dec 01 07:07:02 vm systemd[1]: glmtts.service: Deactivated successfully.",
    "Dec 01 07:07:02 vm systemd[1]: Starting glmtts.service - GLM-TTS text-to-speech service (UI + API)...",
    "Dec 01 07:07:05 vm systemd[1]: Started glmtts.service - GLM-TTS text-to-speech service (UI + API).",
    "Dec 01 07:09:19 vm systemd[1]: glmtts.service: Main process exited, code=killed, status=9/KILL",
    "Dec 01 07:09:19 vm systemd[1]: glmtts.service: Failed with result 'signal'.",
    "Dec 01 07:09:20 vm systemd[1]: glmtts.service: Scheduled restart job, restart counter is at 1.",
    "Dec 01 07:09:20 vm systemd[1]: Starting glmtts.service - GLM-TTS text-to-speech service (UI + API)...",
    "Dec 01 07:09:24 vm systemd[1]: Started glmtts.service - GLM-TTS text-to-speech service (UI + API).",
    "Dec 01 07:10:00 vm systemd[1]: glmtts@1.service: Main process exited, code=killed, status=9/KILL",
]


def test_the_systemd_journal_tells_a_planned_restart_from_a_crash():
    events = M.SystemdManager(recorded_host({})).account(RECORDED_SYSTEMD_JOURNAL, "glmtts")
    kinds = [e.kind for e in events]
    assert kinds == [M.STOP_REQUESTED, M.STARTING, M.READY, M.EXITED, M.RESULT, M.AUTO_RESTART, M.STARTING, M.READY]
    assert events[3].detail == "code=killed, status=9/KILL" and events[5].detail == "1"
    assert all(e.unit == "glmtts" for e in events)  # glmtts@1 is another unit


RECORDED_SUPERVISORD_LOG = [
    "2026-12-01 07:07:01,120 INFO waiting for glmtts to stop",
    "2026-12-01 07:07:01,900 INFO stopped: glmtts (terminated by SIGTERM)",
    "2026-12-01 07:07:02,001 INFO spawned: 'glmtts' with pid 4300",
    "2026-12-01 07:07:03,010 INFO success: glmtts entered RUNNING state, process has stayed up for > than 1 seconds (startsecs)",
    "2026-12-01 07:09:19,500 WARN exited: glmtts (terminated by SIGKILL; not expected)",
    "2026-12-01 07:09:20,502 INFO spawned: 'glmtts' with pid 4400",
    "2026-12-01 07:12:00,000 INFO gave up: glmtts entered FATAL state, too many start retries too quickly",
]


def test_the_supervisord_log_tells_a_planned_restart_from_a_crash():
    events = M.SupervisorManager(recorded_host({}), "").account(RECORDED_SUPERVISORD_LOG, "glmtts")
    kinds = [e.kind for e in events]
    assert M.STOPPED_ON_REQUEST in kinds and M.EXITED in kinds and M.START_LIMIT in kinds, kinds
    stopped = kinds.index(M.STOPPED_ON_REQUEST)
    exited = kinds.index(M.EXITED)
    assert stopped < exited and "not expected" in events[exited].line
    assert events[exited].at is not None  # the line's own time, for fault_at


def test_systemd_restart_and_start_queue_the_job_and_wait_ready_waits_for_the_model():
    """A start job lasts until READY=1 (a GLM-TTS load takes minutes, after a drain of up to
    the stop budget): the watchdog queues it and its wait_ready step does the waiting."""
    host = recorded_host({"systemctl": (0, "", "")})
    sd = M.SystemdManager(host)
    sd.restart("glmtts")
    sd.start("glmtts")
    assert ["systemctl", "restart", "--no-block", "glmtts"] in ran(host)
    assert ran(host)[-2:] == [["systemctl", "reset-failed", "glmtts"], ["systemctl", "start", "--no-block", "glmtts"]]


def test_a_stop_may_take_the_stop_budget_of_the_configured_drain():
    from glmtts import config
    s = config.load(path="", env={"GLMTTS_SERVER_DRAIN_TIMEOUT_S": "300"})
    assert M.detect(s.replace(watchdog__manager="systemd"), recorded_host({})).stop_timeout_s == config.stop_grace_s(s) + 30 == 345
    assert M.SupervisorManager(recorded_host({}), "").stop_timeout_s == config.stop_grace_s() + 30
