"""Service managers behind one interface: systemd (systemctl/journalctl) or supervisord
(supervisorctl), chosen by watchdog.manager or detected. All commands go through Host."""

import configparser
import logging
import os
import re
import sys
from dataclasses import dataclass

from ..config import stop_grace_s
from ..host import Completed

log = logging.getLogger(__name__)

RUNNING, STARTING, STOPPING, STOPPED, FAILED, CRASH_LOOP, UNKNOWN = (
    "running", "starting", "stopping", "stopped", "failed", "crash_loop", "unknown")


@dataclass
class UnitStatus:
    unit: str
    manager: str
    state: str               # one of the constants above
    raw: str = ""            # the manager's own words
    main_pid: int = None
    restarts: int = None     # systemd NRestarts; None where the manager does not count
    detail: str = ""

    def to_dict(self):
        return dict(self.__dict__)

    def summary(self):
        s = "%s %s (%s)" % (self.manager, self.state, self.raw)
        if self.main_pid:
            s += " pid %d" % self.main_pid
        if self.restarts is not None:
            s += " restarts %d" % self.restarts
        return s


# What a manager says happened to a unit (its own log / journal lines), in its own words.
STOP_REQUESTED = "stop_requested"   # an operator (or a deploy) asked it to stop or restart the unit
STOPPED_ON_REQUEST = "stopped"      # ... and the process ended because of that request
RELOAD = "reload"                   # systemctl reload (SIGHUP: reopen logs), the process stays
EXITED = "exited"                   # the process ended
AUTO_RESTART = "auto_restart"       # the manager restarts it by itself (Restart=always)
STARTING = "starting"               # a new process is being started
READY = "ready"                     # it reached ready (systemd Type=notify READY=1; supervisord RUNNING)
START_LIMIT = "start_limit"         # the manager gave up starting it
WATCHDOG = "watchdog"               # systemd's WatchdogSec fired (a hang)
RESULT = "result"                   # systemd: "Failed with result 'X'"


@dataclass
class ManagerEvent:
    kind: str
    unit: str
    line: str
    at: float = None
    detail: str = ""                # the exit as the manager words it: "killed 9/KILL", "exit status 75; not expected"

    def to_dict(self):
        return dict(self.__dict__)


_U = r"(?P<unit>[\w@.:-]+?)(?:\.service)?"


class NoManager:
    name = "none"
    EVENTS = ()                     # (kind, regex with a `unit` group [, detail group]) in the manager's words

    def __init__(self, host, stop_timeout_s=None):
        self.host = host
        # how long a stop may take: the service drains first (config.stop_grace_s), plus slack
        self.stop_timeout_s = stop_timeout_s or stop_grace_s() + 30

    def status(self, unit):
        return UnitStatus(unit, self.name, UNKNOWN, "no service manager found (set watchdog.manager)")

    def _unsupported(self, unit):
        return Completed(["(none)"], 1, "", "no service manager found: cannot control %s (set watchdog.manager)" % unit)

    restart = start = stop = _unsupported

    def unit_pids(self, unit):
        st = self.status(unit)
        return [st.main_pid] if st.main_pid else []

    def manager_logs(self):
        return []

    def program_logs(self, unit):
        return {}

    def times(self, unit):
        """The manager's own timestamps (epoch s) for incident times: main_exited_at
        (the last main process's exit), active_since (ready, for the current main
        process only). {} where the manager keeps none."""
        return {}

    def command(self, verb, unit):
        return "(no service manager) %s %s" % (verb, unit)

    def account(self, lines, unit):
        """ManagerEvents about unit in lines (the manager's log or journal), in order."""
        from .scanner import line_time  # scanner imports nothing from here; keep it that way
        out = []
        for line in lines:
            for kind, rx in self._events():
                m = rx.search(line)
                if m and m.group("unit").split(":")[-1] == unit:
                    detail = m.groupdict().get("detail") or ""
                    out.append(ManagerEvent(kind, unit, line, line_time(line), detail.strip()))
                    break
        return out

    @classmethod
    def _events(cls):
        if "_compiled" not in cls.__dict__:
            cls._compiled = tuple((k, re.compile(p)) for k, p in cls.EVENTS)
        return cls._compiled

    @classmethod
    def account_filter(cls):
        """One regex that any line worth passing to account() matches."""
        if "_prefilter" not in cls.__dict__:
            alts = [re.sub(r"\(\?P<\w+>", "(?:", p) for _, p in cls.EVENTS]
            cls._prefilter = re.compile("|".join("(?:%s)" % p for p in alts) or r"(?!x)x")
        return cls._prefilter


class SystemdManager(NoManager):
    name = "systemd"
    # systemd 252's unit messages (journalctl -u UNIT). A stop or restart job logs
    # "Stopping"; an automatic restart after a crash never does: it logs "Scheduled
    # restart job" and counts NRestarts instead.
    EVENTS = (
        (STOP_REQUESTED, r"\bStopping " + _U + r"(?: - |\.\.\.|$)"),
        (RELOAD, r"\bReloading " + _U + r"(?: - |\.\.\.|$)"),
        (EXITED, _U + r": Main process exited, (?P<detail>code=\w+, status=\S+)"),
        (AUTO_RESTART, _U + r": Scheduled restart job, restart counter is at (?P<detail>\d+)"),
        (START_LIMIT, _U + r": Start request repeated too quickly"),
        (WATCHDOG, _U + r": Watchdog timeout"),
        (RESULT, _U + r": Failed with result '(?P<detail>[\w-]+)'"),
        (STARTING, r"\bStarting " + _U + r"(?: - |\.\.\.|$)"),
        (READY, r"\bStarted " + _U + r"(?: - |\.$|$)"),
    )

    def status(self, unit):
        r = self.host.run(["systemctl", "show", unit, "--property=LoadState,ActiveState,SubState,Result,MainPID,NRestarts,ControlGroup"], timeout=30)
        props = dict(line.split("=", 1) for line in r.out.splitlines() if "=" in line)
        if r.rc != 0 or props.get("LoadState") in (None, "not-found"):
            return UnitStatus(unit, self.name, UNKNOWN, (r.err or props.get("LoadState") or "").strip()[:200])
        active, sub, result = props.get("ActiveState"), props.get("SubState"), props.get("Result", "")
        state = {"active": RUNNING, "activating": STARTING, "deactivating": STOPPING, "reloading": RUNNING}.get(active)
        if state is None:
            if result == "start-limit-hit":
                state = CRASH_LOOP
            elif active == "failed" or (active == "inactive" and result not in ("success", "")):
                state = FAILED
            else:
                state = STOPPED
        pid = int(props.get("MainPID") or 0) or None
        restarts = int(props["NRestarts"]) if props.get("NRestarts", "").isdigit() else None
        return UnitStatus(unit, self.name, state, "%s/%s result=%s" % (active, sub, result), pid, restarts,
                          props.get("ControlGroup", ""))

    def times(self, unit):
        props = ("ExecMainStartTimestampMonotonic", "ExecMainExitTimestampMonotonic",
                 "ActiveEnterTimestampMonotonic", "ActiveExitTimestampMonotonic", "ActiveState")
        r = self.host.run(["systemctl", "show", unit] + ["--property=%s" % p for p in props], timeout=30)
        if r.rc != 0:
            return {}
        raw = dict(line.split("=", 1) for line in r.out.splitlines() if "=" in line)
        # CLOCK_MONOTONIC microseconds, converted here: the wall-clock forms are
        # formatted in the manager's locale and time zone.
        clock = self.host.clock
        offset = clock.now() - clock.monotonic()

        def wall(name):
            v = raw.get(name, "0")
            return offset + int(v) / 1e6 if v.isdigit() and int(v) > 0 else None
        started, exited = wall("ExecMainStartTimestampMonotonic"), wall("ExecMainExitTimestampMonotonic")
        entered, left = wall("ActiveEnterTimestampMonotonic"), wall("ActiveExitTimestampMonotonic")
        out = {}
        # A new main process resets ExecMainExitTimestamp; leaving "active" is then the
        # manager's record of the exit (Restart= goes active -> activating).
        if exited or left:
            out["main_exited_at"] = exited or left
        if raw.get("ActiveState") == "active" and entered and (started is None or entered >= started):
            out["active_since"] = entered  # Type=notify: READY=1 of the current main process
        return out

    def unit_pids(self, unit):
        st = self.status(unit)
        pids = set(self.host.cgroup_pids(st.detail))
        if st.main_pid:
            pids.add(st.main_pid)
            pids.update(self.host.descendants(st.main_pid))
        return sorted(pids)

    # restart/start only queue the job (--no-block): a start job lasts until READY=1, which
    # for GLM-TTS is a model load of minutes (TimeoutStartSec=15min), after a stop that may
    # drain for the stop budget. The runbook's next step, wait_ready, waits for it with
    # watchdog.ready_timeout_s; an unknown or masked unit still fails here at once.
    def restart(self, unit):
        return self.host.run(["systemctl", "restart", "--no-block", unit], timeout=60)

    def start(self, unit):
        # a crash-looping unit refuses to start until its failure counter is reset
        self.host.run(["systemctl", "reset-failed", unit], timeout=30)
        return self.host.run(["systemctl", "start", "--no-block", unit], timeout=60)

    def stop(self, unit):
        # a stop waits for the drain: up to the unit's TimeoutStopSec (the stop budget)
        return self.host.run(["systemctl", "stop", unit], timeout=self.stop_timeout_s)

    def journal(self, unit, cursor=None, since="-15min"):
        """(lines, new_cursor): the manager's own messages about unit since cursor."""
        argv = ["journalctl", "-u", unit, "-o", "short-iso-precise", "--no-pager", "--show-cursor", "-n", "2000"]
        argv += ["--after-cursor=%s" % cursor] if cursor else ["--since=%s" % since]
        r = self.host.run(argv, timeout=30)
        lines, new = [], cursor
        for line in r.out.splitlines():
            if line.startswith("-- cursor: "):
                new = line[len("-- cursor: "):].strip()
            elif not line.startswith("-- "):
                lines.append(line)
        return lines, new

    def command(self, verb, unit):
        return "systemctl %s %s" % (verb, unit)


class SupervisorManager(NoManager):
    name = "supervisor"
    # supervisord's log: `stopped:` only follows a stop it was asked for (supervisorctl
    # stop/restart, update, shutdown); a death it did not ask for is `exited:`.
    EVENTS = (
        (STOP_REQUESTED, r"\bwaiting for " + _U + r" to stop"),
        (STOPPED_ON_REQUEST, r"\bstopped: " + _U + r" \((?P<detail>[^)]*)\)"),
        (EXITED, r"\bexited: " + _U + r" \((?P<detail>[^)]*)\)"),
        (START_LIMIT, r"\bgave up: " + _U + r" entered FATAL state"),
        (STARTING, r"\bspawned: '" + _U + r"' with pid"),
        (READY, r"\bsuccess: " + _U + r" entered RUNNING state"),
    )
    STATES = {"RUNNING": RUNNING, "STARTING": STARTING, "BACKOFF": STARTING, "STOPPING": STOPPING,
              "STOPPED": STOPPED, "EXITED": FAILED, "FATAL": CRASH_LOOP}

    def __init__(self, host, conf="", stop_timeout_s=None):
        super().__init__(host, stop_timeout_s)
        self.conf = conf

    def ctl(self, *args, timeout=60):
        argv = [sys.executable, "-m", "supervisor.supervisorctl"]
        if self.conf:
            argv += ["-c", self.conf]
        return self.host.run(argv + list(args), timeout=timeout)

    def status(self, unit):
        r = self.ctl("status", unit, timeout=30)
        m = re.match(r"^(\S+)\s+([A-Z]+)\s*(.*)$", (r.out or "").strip().splitlines()[0] if r.out.strip() else "")
        if not m or m.group(1) != unit and not m.group(1).endswith(":" + unit):
            return UnitStatus(unit, self.name, UNKNOWN, (r.out + r.err).strip()[:200])
        raw, rest = m.group(2), m.group(3)
        pid = re.search(r"pid (\d+)", rest)
        return UnitStatus(unit, self.name, self.STATES.get(raw, UNKNOWN), raw + (" " + rest if rest else ""),
                          int(pid.group(1)) if pid else None, None, rest)

    def unit_pids(self, unit):
        st = self.status(unit)
        if not st.main_pid:
            return []
        return [st.main_pid] + self.host.descendants(st.main_pid)

    # supervisorctl waits stopwaitsecs (the stop budget) for a stop and startsecs for a
    # start, not for the model load: ready is wait_ready's to wait for.
    def restart(self, unit):
        return self.ctl("restart", unit, timeout=self.stop_timeout_s + 60)

    def start(self, unit):
        return self.ctl("start", unit, timeout=180)

    def stop(self, unit):
        return self.ctl("stop", unit, timeout=self.stop_timeout_s)

    def _config(self):
        cp = configparser.RawConfigParser(strict=False)
        try:
            cp.read(self.conf)
        except configparser.Error as e:
            log.warning("cannot parse %s: %s", self.conf, e)
        return cp

    def _path(self, value):
        """A log path from the conf, with supervisord's %(here)s and %(ENV_X)s expanded."""
        if not value or value in ("NONE", "AUTO", "syslog") or value.startswith("/dev/"):
            return None
        here = os.path.dirname(os.path.abspath(self.conf))
        missing = []

        def env(m):
            if m.group(1) not in os.environ:
                missing.append(m.group(1))
            return os.environ.get(m.group(1), "")
        value = re.sub(r"%\(ENV_(\w+)\)s", env, value.replace("%(here)s", here))
        if missing:
            log.warning("%s: cannot resolve %s without environment %s", self.conf, value, ", ".join(missing))
            return None
        return os.path.join(here, value)

    def manager_logs(self):
        """supervisord's own log: it says `exited: X (terminated by SIGSEGV; not expected)`."""
        if not self.conf:
            return []
        p = self._path(self._config().get("supervisord", "logfile", fallback=None))
        return [p] if p else []

    def program_logs(self, unit):
        if not self.conf:
            return {}
        cp = self._config()
        sec = "program:%s" % unit
        out = {}
        for key, name in (("stdout_logfile", "access"), ("stderr_logfile", "error")):
            p = self._path(cp.get(sec, key, fallback=None)) if cp.has_section(sec) else None
            if p:
                out[name] = p
        return out

    def command(self, verb, unit):
        return "supervisorctl%s %s %s" % (" -c " + self.conf if self.conf else "", verb, unit)


MANAGERS = {"none": NoManager, "systemd": SystemdManager, "supervisor": SupervisorManager}


def detect(settings, host):
    """The manager named by watchdog.manager, or the one this host runs."""
    choice = settings.watchdog.manager
    conf = settings.watchdog.supervisor_conf
    stop_s = stop_grace_s(settings) + 30
    if choice == "systemd":
        return SystemdManager(host, stop_s)
    if choice == "supervisor":
        return SupervisorManager(host, conf, stop_s)
    if os.path.isdir("/run/systemd/system") and host.which("systemctl"):
        st = SystemdManager(host, stop_s).status(settings.watchdog.unit)
        if st.state != UNKNOWN:
            return SystemdManager(host, stop_s)
    if conf or os.path.exists("/etc/supervisord.conf") or os.path.exists("/etc/supervisor/supervisord.conf"):
        return SupervisorManager(host, conf, stop_s)
    return NoManager(host, stop_s)
