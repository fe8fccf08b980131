"""`python -m service` (and `glmtts serve`): the service process.

Order: validate config -> bind the port (fail fast) -> start serving /healthz (503
"loading") -> load the engine and warm it up -> READY. Exit codes tell a supervisor
whether retrying can help: 78 configuration error (it cannot, until a human edits the
config), 3 engine load failure, 4 port in use, 75 CUDA context lost (a fatal CUDA error at
run time: a fresh process recovers, so the manager must restart it).

SIGTERM and SIGINT drain (service/drain.py): /readyz 503 "draining" at once, the listener
open server.drain_delay_s, in-flight and queued work finished within server.drain_timeout_s
(what is left gets 503), then exit 0. A manager must allow config.stop_grace_s() for it.
"""

import argparse
import errno
import faulthandler
import logging
import os
import socket
import sys
import threading
import time

from glmtts.errors import EXIT_CONFIG, EXIT_PORT_IN_USE  # glmtts.errors is dependency-free: cheap at start

log = logging.getLogger("glmtts_service")

# After a lost CUDA context, the in-flight responses are written within milliseconds;
# a connection still open after this long (a stuck stream, an idle UI socket) is not
# worth keeping a dead process up for the whole graceful-shutdown timeout.
CUDA_LOST_DEADLINE_S = 2.0


def _exit_now(code):
    """Leave without interpreter finalization: atexit handlers (torch's, the thread pool's
    joins) may touch the lost CUDA context or wait on a thread stuck in it."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m service",
        description="Run the glmtts service in the foreground: HTTP API + Gradio UI on one port "
                    "(server.host:server.port, default 127.0.0.1:7860). Access lines go to stdout, "
                    "errors to stderr; SIGHUP reopens both log files; SIGTERM/SIGINT drain (server.drain_delay_s, "
                    "server.drain_timeout_s), then exit 0. Exit codes: 78 config error, "
                    "3 engine load failure, 4 port in use, 75 CUDA context lost (restart it).")
    p.add_argument("--config", metavar="PATH", help="config file (default: $GLMTTS_CONFIG, else /etc/glmtts/glmtts.toml, else ./run/glmtts.toml)")
    return p


def bind_socket(host, port):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6 and host == "::":
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    try:
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def serve(config_path=None):
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from glmtts import config, engines
    from glmtts.errors import EXIT_CUDA_LOST, ConfigError, GlmttsError

    from . import logs

    logs.setup()
    # A segfault in native code (CUDA, espeak) leaves "Fatal Python error: Segmentation
    # fault" and the Python stack on stderr: the watchdog's segfault signature and a clue.
    faulthandler.enable(file=sys.stderr)
    reopener = logs.LogReopener()
    reopener.install()
    try:
        settings = config.load(config_path)
        engine = engines.create(settings)
    except ConfigError as e:
        log.error("configuration error: %s", e)
        return EXIT_CONFIG
    try:
        sock = bind_socket(settings.server.host, settings.server.port)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            log.error("port %d on %s is already in use (Address already in use; server.port): find its owner "
                      "with `ss -ltnp 'sport = :%d'` or `glmtts-watchdog diagnose`, then stop it or set "
                      "GLMTTS_SERVER_PORT to a free port", settings.server.port, settings.server.host,
                      settings.server.port)
            return EXIT_PORT_IN_USE
        log.error("cannot bind %s:%d: %s", settings.server.host, settings.server.port, e)
        return EXIT_CONFIG

    import uvicorn

    from .app import create_app
    from .drain import CONNECTION_GRACE_S, DrainingServer

    try:
        app = create_app(settings, engine, reopener=reopener)
    except GlmttsError as e:  # e.g. an unreadable blocklist file
        log.error("configuration error: %s", e)
        return EXIT_CONFIG
    runtime = app.state.runtime
    # DrainingServer: uvicorn whose SIGTERM/SIGINT start the drain; the graceful-shutdown
    # timeout here is only what follows it (or an exit 3/75), the drain has its own budget.
    server = DrainingServer(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on",
                                           timeout_graceful_shutdown=CONNECTION_GRACE_S, server_header=False,
                                           # uvicorn would believe X-Forwarded-For from 127.0.0.1: our own
                                           # service/forwarded.py decides (server.forwarded_allow_ips)
                                           proxy_headers=False), runtime)

    def request_exit(code):
        server.should_exit = True
        if code == EXIT_CUDA_LOST:
            deadline = threading.Timer(CUDA_LOST_DEADLINE_S, _exit_now, (code,))
            deadline.daemon = True
            deadline.start()

    runtime.request_exit = request_exit
    log.info("glmtts %s listening on http://%s:%d (engine %s loading)", runtime.version, settings.server.host,
             settings.server.port, settings.engine.name)
    server.run(sockets=[sock])
    if runtime.exit_code == EXIT_CUDA_LOST:
        _exit_now(EXIT_CUDA_LOST)
    return runtime.exit_code or 0


# supervisord counts a program that exits within `startsecs` as a failed start and
# retries it (BACKOFF, then FATAL) whatever its exit code: only a program that lived
# startsecs has its `exitcodes` honoured. So an exit that retrying cannot fix (78, 4)
# waits out GLMTTS_STARTSECS, which ops/supervisord.conf sets to its startsecs; under
# systemd (RestartPreventExitStatus=78 4) it is unset and nothing waits.
UNRETRYABLE_EXITS = (EXIT_CONFIG, EXIT_PORT_IN_USE)
STARTED_MONO = time.monotonic()


def hold_unretryable_exit(code, env=os.environ, sleep=time.sleep, now=time.monotonic):
    if code not in UNRETRYABLE_EXITS or not env.get("GLMTTS_STARTSECS"):
        return 0.0
    try:
        left = float(env["GLMTTS_STARTSECS"]) + 1.0 - (now() - STARTED_MONO)
    except ValueError:
        return 0.0
    if left > 0:
        sleep(left)
    return max(left, 0.0)


def main(argv=None):
    args = build_parser().parse_args(argv)
    code = serve(args.config)
    hold_unretryable_exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
