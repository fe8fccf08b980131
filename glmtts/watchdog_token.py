"""The watchdog's identity towards the service it guards: a per-host secret in a file
beside the configuration file (`/etc/glmtts/watchdog.token`, root:glmtts 0640, written by
`glmtts-system install`; `run/watchdog.token`, 0600, written by `make run`).

Only root (the watchdog) and the service's group can read it. The watchdog sends it in
the ``X-Glmtts-Watchdog`` header; the service compares it in constant time and gives a
match the watchdog lane: exempt from the per-client rate limit and from
``limits.max_queue``, ahead of interactive work (service/limits.py, service/worker.py).
A wrong token is treated exactly like no token, and its value is never logged.

Why a file and not a loopback-only route: behind a reverse proxy on the same host every
client is 127.0.0.1, so the address proves nothing; a file the operating system guards does."""

import logging
import os
import secrets

log = logging.getLogger(__name__)

HEADER = "X-Glmtts-Watchdog"
FILENAME = "watchdog.token"
MIN_LENGTH = 32


def path_for(settings):
    """The token file of this configuration: beside the config file; "" with no config file."""
    if not settings.config_path:
        return ""
    return os.path.join(os.path.dirname(os.path.abspath(settings.config_path)), FILENAME)


def read(path):
    """The token in ``path``, or "" when there is none we can use (missing, unreadable,
    too short). Never raises: without a token the watchdog is an ordinary client."""
    if not path:
        return ""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            token = f.read().strip()
    except FileNotFoundError:
        return ""
    except OSError as e:
        log.warning("watchdog token %s is not readable (%s): the watchdog lane is off", path, e.strerror)
        return ""
    if len(token) < MIN_LENGTH:
        log.warning("watchdog token %s is shorter than %d characters: ignored", path, MIN_LENGTH)
        return ""
    return token


def for_settings(settings):
    return read(path_for(settings))


def new_token():
    return secrets.token_urlsafe(32)


def headers(settings):
    """The header a watchdog request carries ({} without a token)."""
    token = for_settings(settings)
    return {HEADER: token} if token else {}
