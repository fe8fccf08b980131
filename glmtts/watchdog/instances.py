"""The service instances the watchdog looks after: watchdog.unit at watchdog.url, plus
each "UNIT=URL" of watchdog.instances (e.g. one glmtts@N per GPU).

Log files per instance: the program's own stdout/stderr files when the service manager
names them (supervisord), otherwise the convention shared with ops/: the main unit writes
``access.log``/``error.log`` in paths.log_dir, an instance ``NAME@I`` writes
``access@I.log``/``error@I.log``.
"""

from dataclasses import dataclass, field
from urllib.parse import urlparse

from ..errors import ConfigError


@dataclass
class Instance:
    unit: str
    url: str
    logs: dict = field(default_factory=dict)   # {"error": path, "access": path}

    @property
    def port(self):
        u = urlparse(self.url)
        return u.port or (443 if u.scheme == "https" else 80)

    def to_dict(self):
        return {"unit": self.unit, "url": self.url, "logs": self.logs}


def default_logs(log_dir, unit):
    suffix = "@" + unit.split("@", 1)[1] if "@" in unit else ""
    return {"access": "%s/access%s.log" % (log_dir, suffix), "error": "%s/error%s.log" % (log_dir, suffix)}


def configured(settings, manager=None):
    """Instances from settings, in order, without duplicates."""
    wd = settings.watchdog
    pairs = [(wd.unit, wd.url)]
    for spec in wd.instances:
        unit, sep, url = spec.partition("=")
        if not sep or not unit.strip() or not url.strip().startswith(("http://", "https://")):
            raise ConfigError("watchdog.instances: %r is not \"UNIT=URL\" (e.g. \"glmtts@0=http://127.0.0.1:7860\")" % spec)
        pairs.append((unit.strip(), url.strip().rstrip("/")))
    out, seen = [], set()
    for unit, url in pairs:
        if unit in seen:
            continue
        seen.add(unit)
        logs = default_logs(settings.paths.log_dir, unit)
        if manager is not None:
            logs.update(manager.program_logs(unit))
        out.append(Instance(unit, url, logs))
    return out


def find(instances, unit):
    for inst in instances:
        if inst.unit == unit:
            return inst
    raise ConfigError("unknown instance %r; configured: %s" % (unit, ", ".join(i.unit for i in instances)))
