"""Alerts through apprise (mail, WeCom bot, Slack, a JSON webhook...).

Alerting never stalls or crashes a cycle: each delivery runs in a worker thread bounded
by alerts.timeout_s; an alert that cannot be delivered is spooled under the state dir
and retried at the start of the next cycle. One alert per incident state change
(dedupe by key), a severity filter, and URLs only ever logged with their secrets masked.
"""

import hashlib
import json
import logging
import os
import threading
import time

from .signatures import severity_rank
from .state import atomic_write

log = logging.getLogger(__name__)

MAX_SPOOL = 500
SENT_TTL_S = 14 * 86400


def mask(url):
    """An apprise URL with its secrets masked, for logs."""
    try:
        import apprise
        plugin = apprise.Apprise.instantiate(url)
        if plugin:
            return plugin.url(privacy=True)
    except Exception:
        pass
    return url.split("://", 1)[0] + "://****"


class Alerter:
    def __init__(self, urls, min_severity="warning", timeout_s=10.0, spool_dir=None, sent=None, clock=time.time):
        self.urls = list(urls)
        self.min_severity = min_severity
        self.timeout_s = timeout_s
        self.spool_dir = spool_dir
        self.sent = sent if sent is not None else {}   # dedupe key -> time sent (persisted by the caller)
        self.clock = clock

    @classmethod
    def from_settings(cls, settings, sent=None, clock=time.time):
        a = settings.alerts
        return cls(a.urls, a.min_severity, a.timeout_s,
                   os.path.join(settings.paths.state_dir, "watchdog", "alert-spool"), sent, clock)

    # -- delivery ---------------------------------------------------------------------
    def _deliver(self, severity, title, body):
        """True when every URL accepted the alert within the timeout."""
        import apprise
        from apprise import NotifyType
        result = {"ok": False}

        def work():
            a = apprise.Apprise()
            for url in self.urls:
                plugin = apprise.Apprise.instantiate(url)
                if not plugin:
                    log.warning("alerts.urls: cannot use %s (unknown scheme or bad URL)", mask(url))
                    continue
                plugin.socket_connect_timeout = min(self.timeout_s, 4.0)
                plugin.socket_read_timeout = self.timeout_s
                a.add(plugin)
            if len(a) == 0:
                return
            kind = {"critical": NotifyType.FAILURE, "warning": NotifyType.WARNING}.get(severity, NotifyType.INFO)
            result["ok"] = bool(a.notify(title=title, body=body, notify_type=kind))

        t = threading.Thread(target=work, name="alert", daemon=True)
        t.start()
        t.join(self.timeout_s * 2 + 1)
        if t.is_alive():
            log.warning("alert delivery still running after %.0f s; spooling it", self.timeout_s * 2 + 1)
            return False
        return result["ok"]

    def send(self, key, severity, title, body):
        """Send once per key. Returns sent | spooled | filtered | duplicate | no channel."""
        if key in self.sent:
            return "duplicate"
        if severity_rank(severity) < severity_rank(self.min_severity):
            return "filtered"
        if not self.urls:
            return "no channel"
        self.sent[key] = self.clock()
        if self._deliver(severity, title, body):
            log.info("alert sent (%s): %s", severity, title)
            return "sent"
        log.warning("alert not delivered to %s; spooled for the next cycle: %s",
                    ", ".join(mask(u) for u in self.urls), title)
        self._spool({"key": key, "severity": severity, "title": title, "body": body, "first_at": self.clock(), "attempts": 1})
        return "spooled"

    # -- spool ------------------------------------------------------------------------
    def _spool(self, item):
        if not self.spool_dir:
            return
        os.makedirs(self.spool_dir, exist_ok=True)
        # Named by the real time of spooling so the spool replays in order.
        name = "%020d-%s.json" % (time.time_ns(), hashlib.sha1(item["key"].encode()).hexdigest()[:10])
        atomic_write(os.path.join(self.spool_dir, name), json.dumps(item, ensure_ascii=False).encode("utf-8"))
        files = self.spooled()
        for old in files[:-MAX_SPOOL]:
            log.error("alert spool over %d entries: dropping %s", MAX_SPOOL, old)
            os.unlink(old)

    def spooled(self):
        if not self.spool_dir or not os.path.isdir(self.spool_dir):
            return []
        return sorted(os.path.join(self.spool_dir, n) for n in os.listdir(self.spool_dir) if n.endswith(".json"))

    def flush_spool(self):
        """Retry spooled alerts, oldest first; stop at the first failure (the channel is
        still down). Returns (delivered, still_spooled)."""
        delivered = 0
        files = self.spooled()
        if files and not self.urls:
            return 0, len(files)
        for i, path in enumerate(files):
            try:
                with open(path, encoding="utf-8") as f:
                    item = json.load(f)
            except (OSError, ValueError):
                os.unlink(path)
                continue
            if not self._deliver(item["severity"], item["title"], item["body"]):
                item["attempts"] = item.get("attempts", 1) + 1
                atomic_write(path, json.dumps(item, ensure_ascii=False).encode("utf-8"))
                return delivered, len(files) - i
            os.unlink(path)
            delivered += 1
            log.info("spooled alert delivered after %d attempt(s): %s", item.get("attempts", 1) + 1, item["title"])
        return delivered, 0

    def prune_sent(self):
        cutoff = self.clock() - SENT_TTL_S
        for k in [k for k, t in self.sent.items() if t < cutoff]:
            del self.sent[k]
