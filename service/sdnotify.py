"""sd_notify(3) over $NOTIFY_SOCKET (path or abstract '@name'), without libsystemd.

EXTEND_TIMEOUT_USEC while the model loads, READY=1 once warm, WATCHDOG=1 heartbeats,
STOPPING=1 on shutdown. Without NOTIFY_SOCKET every call is a no-op, so the service
runs the same under supervisord or in a terminal."""

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, env=None):
        env = os.environ if env is None else env
        self.address = env.get("NOTIFY_SOCKET") or None
        if self.address and self.address.startswith("@"):
            self.address = "\0" + self.address[1:]  # Linux abstract namespace
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self.watchdog_usec = int(usec) if usec.isdigit() else 0
        if pid.isdigit() and int(pid) != os.getpid():
            self.watchdog_usec = 0  # meant for another process
        self.sent = []  # what we told the manager (for /healthz and tests' logs)

    @property
    def enabled(self):
        return self.address is not None

    @property
    def heartbeat_interval_s(self):
        """Half of WatchdogSec, as sd_watchdog_enabled(3) recommends; None if off."""
        return self.watchdog_usec / 2e6 if self.watchdog_usec else None

    def notify(self, message):
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.connect(self.address)
                s.sendall(message.encode())
            return True
        except OSError as e:
            log.warning("sd_notify %r to %s failed: %s", message.split("\n")[0], os.environ.get("NOTIFY_SOCKET"), e)
            return False

    def extend_timeout(self, seconds):
        return self.notify("EXTEND_TIMEOUT_USEC=%d" % int(seconds * 1e6))

    def status(self, text):
        return self.notify("STATUS=%s" % text.replace("\n", " "))

    def ready(self, status="ready"):
        return self.notify("READY=1\nSTATUS=%s\nMAINPID=%d" % (status, os.getpid()))

    def watchdog(self):
        return self.notify("WATCHDOG=1")

    def stopping(self):
        return self.notify("STOPPING=1")
