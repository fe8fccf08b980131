"""The watchdog's persisted state: scanner positions, probe failure counts, remediation
guards and sent alerts. Written atomically (temp file in the same directory, fsync,
rename) so a watchdog killed mid-cycle leaves either the old state or the new one."""

import json
import logging
import os

from .. import fsutil

log = logging.getLogger(__name__)

VERSION = 1


def atomic_write(path, data):
    """Replace path with data (bytes) atomically and durably; creates the directory."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fsutil.atomic_write(path, data, mode=0o640)


def watchdog_dir(settings):
    return os.path.join(settings.paths.state_dir, "watchdog")


class WatchdogState:
    """A dict with named sections, loaded from and saved to ``path``."""

    SECTIONS = ("scanner", "instances", "guards", "alerts_sent")

    def __init__(self, path, data=None, read_only=False):
        self.path = path
        self.read_only = read_only  # a dry run: decided on, never saved
        self.data = data or {}
        self.data.setdefault("version", VERSION)
        for s in self.SECTIONS:
            self.data.setdefault(s, {})

    @classmethod
    def load(cls, path, read_only=False):
        try:
            with open(path, "rb") as f:
                data = json.loads(f.read().decode("utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not an object")
        except FileNotFoundError:
            data = {}
        except (ValueError, UnicodeDecodeError) as e:
            # Unreadable state must not stop the watchdog: keep the file for a human
            # and start afresh (scanner positions restart at the end of each log).
            bad = path + ".corrupt"
            if read_only:
                log.error("watchdog state %s is unreadable (%s); a dry run starts afresh and leaves it", path, e)
            else:
                log.error("watchdog state %s is unreadable (%s); moved to %s, starting afresh", path, e, bad)
                os.replace(path, bad)
            data = {}
        return cls(path, data, read_only)

    def save(self):
        if self.read_only:
            return
        atomic_write(self.path, json.dumps(self.data, indent=1, sort_keys=True).encode("utf-8"))

    def section(self, name):
        return self.data.setdefault(name, {})

    def instance(self, unit):
        return self.section("instances").setdefault(unit, {})
