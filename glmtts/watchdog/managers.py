"""Service managers behind one interface: systemd (systemctl/journalctl) or supervisord
(supervisorctl), chosen by watchdog.manager or detected. All commands go through Host."""

import configparser
import logging
import os
import re
import sys
from dataclasses import dataclass

from .host import Completed

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


class NoManager:
    name = "none"

    def __init__(self, host):
        self.host = host

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

    def command(self, verb, unit):
        return "(no service manager) %s %s" % (verb, unit)


class SystemdManager(NoManager):
    name = "systemd"

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

    def unit_pids(self, unit):
        st = self.status(unit)
        pids = set(self.host.cgroup_pids(st.detail))
        if st.main_pid:
            pids.add(st.main_pid)
            pids.update(self.host.descendants(st.main_pid))
        return sorted(pids)

    def restart(self, unit):
        return self.host.run(["systemctl", "restart", unit], timeout=120)

    def start(self, unit):
        # a crash-looping unit refuses to start until its failure counter is reset
        self.host.run(["systemctl", "reset-failed", unit], timeout=30)
        return self.host.run(["systemctl", "start", unit], timeout=120)

    def stop(self, unit):
        return self.host.run(["systemctl", "stop", unit], timeout=120)

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
    STATES = {"RUNNING": RUNNING, "STARTING": STARTING, "BACKOFF": STARTING, "STOPPING": STOPPING,
              "STOPPED": STOPPED, "EXITED": FAILED, "FATAL": CRASH_LOOP}

    def __init__(self, host, conf=""):
        super().__init__(host)
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

    def restart(self, unit):
        return self.ctl("restart", unit, timeout=180)

    def start(self, unit):
        return self.ctl("start", unit, timeout=180)

    def stop(self, unit):
        return self.ctl("stop", unit, timeout=180)

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


def detect(settings, host):
    """The manager named by watchdog.manager, or the one this host runs."""
    choice = settings.watchdog.manager
    conf = settings.watchdog.supervisor_conf
    if choice == "systemd":
        return SystemdManager(host)
    if choice == "supervisor":
        return SupervisorManager(host, conf)
    if os.path.isdir("/run/systemd/system") and host.which("systemctl"):
        st = SystemdManager(host).status(settings.watchdog.unit)
        if st.state != UNKNOWN:
            return SystemdManager(host)
    if conf or os.path.exists("/etc/supervisord.conf") or os.path.exists("/etc/supervisor/supervisord.conf"):
        return SupervisorManager(host, conf)
    return NoManager(host)
