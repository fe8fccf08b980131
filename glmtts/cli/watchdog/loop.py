"""`glmtts-watchdog run`: a cycle every watchdog.interval_s until SIGTERM (hosts without
systemd's timer, e.g. under supervisord)."""

import logging
import signal
import threading

from .common import watchdog_for

log = logging.getLogger("glmtts.watchdog")


def add_parser(sub):
    p = sub.add_parser("run", help="cycle every watchdog.interval_s until SIGTERM (hosts without systemd)")
    p.set_defaults(func=run)


def run(args):
    stop = threading.Event()

    def on_signal(signum, frame):  # record only; the loop below acts on it
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    wd = watchdog_for(args)
    log.info("watchdog running: every %d s, instances %s", wd.settings.watchdog.interval_s, [i.unit for i in wd.instances])
    while not stop.is_set():
        try:
            log.info("%s", wd.check().summary())
        except Exception:  # one bad cycle must not end the loop that heals the service
            log.exception("watchdog cycle failed")
        stop.wait(wd.settings.watchdog.interval_s)
    log.info("watchdog stopping")
    return 0
