"""install and uninstall: the plan, step by step, printed as it goes and applied unless
dry-run; the preflight runs the configured engine inside glmtts.service's own sandbox."""

import shlex
import sys
from pathlib import Path

from .. import preflight as preflight_mod
from .. import watchdog_token
from ..preflight import PreflightError
from .layout import (BASE_PORT, CONFIG_FILE, DROP_IN, ETC_DIR, GROUP, LOG_DIR, LOGROTATE_FILE, SERVICE_UNITS, STATE_DIR,
                     TIMER, TOKEN_FILE, UNIT_DIR, UNITS, USER, OpsError, home_paths)
from .units import drop_in_text, host_stop_grace, instance_env_text, render_unit


class Plan:
    """Prints each step as it goes; applies it unless dry-run."""

    def __init__(self, dry_run, out):
        self.dry_run, self.out, self.changes = dry_run, out, 0

    def do(self, message, fn, *args):
        self.out.write("%s%s\n" % ("would " if self.dry_run else "", message))
        self.changes += 1
        if not self.dry_run:
            fn(*args)

    def ok(self, message):
        self.out.write("ok      %s\n" % message)


def run_preflight(host, plan, texts, unit, *, enabled, out):
    """The engine loaded and heard once, the way ``unit`` will run it, before anything starts.
    ``texts``: the unit and its drop-ins as this install leaves them."""
    if not enabled:
        out.write("skip    preflight (--no-preflight): %s was not test-loaded; before starting it run "
                  "`glmtts engines check --unit %s`\n" % (unit, unit))
        return
    if host.offline:
        out.write("skip    preflight: --root %s is a directory tree, not this host's systemd; on the target host "
                  "run `glmtts engines check --unit %s` before starting it\n" % (host.root, unit))
        return
    assigned = preflight_mod.assignments(texts, unit)
    cmd, limit_s = preflight_mod.command(assigned, unit)
    where = "%s's sandbox: %s" % (unit, preflight_mod.sandbox_summary(assigned))
    message = "preflight: load the configured engine and synthesize once in %s (systemd-run, %d properties from the unit)" % (
        where, sum(a.startswith("--property=") for a in cmd))
    if plan.dry_run:
        out.write("would run     %s\n        %s\n" % (message, " ".join(shlex.quote(a) for a in cmd)))
        return
    out.write("run     %s\n" % message)
    out.flush()
    rc, stdout, stderr = host.run_preflight(cmd, None if limit_s is None else limit_s + 30)
    result = preflight_mod.read_result(rc, stdout, stderr, where, limit_s)
    if not result.ok:
        raise PreflightError(result.line + "; then run glmtts-system install again (or --no-preflight to install anyway)",
                             exit_code=result.exit_code)
    out.write("ok      %s\n" % result.line)


def install(host, deploy_dir, *, instances=(), start=True, dry_run=False, preflight=True, out=sys.stdout):
    deploy_dir = Path(deploy_dir).resolve()
    ops_dir = deploy_dir / "ops"
    for needed in (ops_dir / "glmtts.service", deploy_dir / "service", deploy_dir / ".venv" / "bin" / "python"):
        if not needed.exists():
            raise OpsError("deploy dir %s lacks %s: point --deploy-dir at a checkout with "
                           "service/, ops/ and a .venv (make install)" % (deploy_dir, needed.relative_to(deploy_dir)))
    plan = Plan(dry_run, out)

    # user and group: system accounts, no login, home = the state dir
    if host.group_id(GROUP) is None:
        plan.do("create  group %s (system)" % GROUP, host.add_group, GROUP)
    else:
        plan.ok("group %s exists" % GROUP)
    if host.user_id(USER) is None:
        plan.do("create  user %s (system, home %s, no login)" % (USER, STATE_DIR), host.add_user, USER, GROUP, STATE_DIR)
    else:
        plan.ok("user %s exists" % USER)
    user_missing = host.user_id(USER) is None or host.group_id(GROUP) is None

    def owned(path, mode, is_dir):
        """Directory or file owned by glmtts; created if missing, owner/mode fixed if wrong."""
        if not host.exists(path):
            what = "dir " if is_dir else "file"
            if is_dir:
                plan.do("create  %s %s (%s:%s %04o)" % (what, path, USER, GROUP, mode),
                        lambda: host.makedir(path, mode, resolve_uid(), resolve_gid()))
            else:
                plan.do("create  %s %s (%s:%s %04o)" % (what, path, USER, GROUP, mode),
                        lambda: host.atomic_write(path, "", mode=mode, owner=(resolve_uid(), resolve_gid())))
        elif dry_run and user_missing:
            plan.ok("%s exists" % path)
        elif host.owner(path) != (resolve_uid(), resolve_gid(), mode):
            plan.do("fix     %s -> %s:%s %04o" % (path, USER, GROUP, mode),
                    lambda: host.chown(path, mode, resolve_uid(), resolve_gid()))
        else:
            plan.ok("%s" % path)

    # resolved late: in a real run the user exists by the time these are called
    def resolve_uid():
        return host.user_id(USER)

    def resolve_gid():
        return host.group_id(GROUP)

    # /etc/glmtts: root writes, the service only reads (api keys may live here)
    if not host.exists(ETC_DIR):
        plan.do("create  dir  %s (root:%s 0750)" % (ETC_DIR, GROUP), lambda: host.makedir(ETC_DIR, 0o750, 0, resolve_gid()))
    else:
        plan.ok(ETC_DIR)
    if host.exists(CONFIG_FILE):
        plan.ok("%s exists (kept: never overwritten)" % CONFIG_FILE)
    else:
        example = (ops_dir / "glmtts.toml.example").read_text()
        if instances:
            watched = ", ".join('"glmtts@%d=http://127.0.0.1:%d"' % (n, BASE_PORT + n) for n in instances)
            example = example.replace("instances = []", "instances = [%s]" % watched, 1)
        plan.do("create  %s from ops/glmtts.toml.example (root:%s 0640)" % (CONFIG_FILE, GROUP),
                lambda: host.atomic_write(CONFIG_FILE, example, mode=0o640, owner=(0, resolve_gid())))
    # the watchdog's identity towards the service (glmtts/watchdog_token.py): readable by
    # root (the watchdog) and the glmtts group (the service) only; kept across installs
    if host.exists(TOKEN_FILE):
        if not dry_run and host.owner(TOKEN_FILE) != (0, resolve_gid(), 0o640):
            plan.do("fix     %s -> root:%s 0640" % (TOKEN_FILE, GROUP),
                    lambda: host.chown(TOKEN_FILE, 0o640, 0, resolve_gid()))
        else:
            plan.ok("%s exists (kept)" % TOKEN_FILE)
    else:
        plan.do("create  %s (root:%s 0640, the watchdog's identity)" % (TOKEN_FILE, GROUP),
                lambda: host.atomic_write(TOKEN_FILE, watchdog_token.new_token() + "\n", mode=0o640,
                                          owner=(0, resolve_gid())))
    for n in instances:
        env = "%s/instance-%d.env" % (ETC_DIR, n)
        if host.exists(env):
            plan.ok("%s exists (kept)" % env)
        else:
            plan.do("create  %s (port %d)" % (env, BASE_PORT + n),
                    lambda env=env, n=n: host.atomic_write(env, instance_env_text(n), mode=0o640,
                                                                   owner=(0, resolve_gid())))

    for d in (LOG_DIR, STATE_DIR, STATE_DIR + "/prompts", STATE_DIR + "/outputs"):
        owned(d, 0o750, True)
    # systemd opens these as root (append:); created here so they belong to glmtts and the
    # service can reopen them itself on SIGHUP.
    logs = ["access.log", "error.log"] + ["%s@%d.log" % (k, n) for n in instances for k in ("access", "error")]
    for name in logs:
        owned("%s/%s" % (LOG_DIR, name), 0o640, False)

    # units, drop-ins, logrotate: ours, so replaced when they differ (local changes: drop-ins)
    def ours(path, text, mode=0o644):
        if host.exists(path) and host.read(path) == text:
            plan.ok(path)
        else:
            plan.do("%s %s" % ("update " if host.exists(path) else "install", path),
                    lambda path=path, text=text, mode=mode: host.atomic_write(path, text, mode=mode, owner=(0, 0)))

    written = {}  # path -> the text this install leaves there (None: removed); the preflight reads it
    # the drain's budget: a manager that kills sooner would cut queued requests off
    grace, grace_from = host_stop_grace(host)
    plan.ok("stop budget TimeoutStopSec=%d (config.stop_grace_s: %s)" % (grace, grace_from))
    for unit in UNITS:
        written["%s/%s" % (UNIT_DIR, unit)] = render_unit((ops_dir / unit).read_text(), deploy_dir,
                                                          grace if unit in ("glmtts.service", "glmtts@.service") else None)
        ours("%s/%s" % (UNIT_DIR, unit), written["%s/%s" % (UNIT_DIR, unit)])
    hidden = home_paths(deploy_dir)
    for unit in SERVICE_UNITS:
        drop_in = "%s/%s.d/%s" % (UNIT_DIR, unit, DROP_IN)
        written[drop_in] = drop_in_text(hidden) if hidden else None
        if hidden:
            ours(drop_in, written[drop_in])
        elif host.exists(drop_in):
            plan.do("remove  %s (no longer needed)" % drop_in, host.remove, drop_in)
    ours(LOGROTATE_FILE, (ops_dir / "logrotate.conf").read_text())

    plan.do("run     systemctl daemon-reload", host.systemctl, "daemon-reload")
    # one instance stands for all: the same code, weights and sandbox; only the GPU differs
    checked = "glmtts@%d.service" % instances[0] if instances else "glmtts.service"
    run_preflight(host, plan, preflight_mod.unit_texts(host, checked, written), checked, enabled=preflight, out=out)
    plan.do("run     systemctl enable %s%s" % ("--now " if start else "", TIMER),
            host.systemctl, *(["enable", "--now", TIMER] if start else ["enable", TIMER]))
    out.write("\nnext: systemctl enable --now glmtts   (or glmtts@0 glmtts@1 ... one per GPU)\n"
              "      config %s, logs %s, state %s\n" % (CONFIG_FILE, LOG_DIR, STATE_DIR))
    return plan.changes


def uninstall(host, *, purge=False, dry_run=False, out=sys.stdout):
    """Stop and remove units and the logrotate file; keep config, data, logs and the user
    unless purge (then they go too)."""
    plan = Plan(dry_run, out)
    plan.do("run     systemctl disable --now %s glmtts.service" % TIMER,
            host.systemctl, "disable", "--now", TIMER, "glmtts.service")
    plan.do("run     systemctl stop glmtts@*.service", host.systemctl, "stop", "glmtts@*.service")
    paths = ["%s/%s" % (UNIT_DIR, u) for u in UNITS] + ["%s/%s.d/%s" % (UNIT_DIR, u, DROP_IN) for u in SERVICE_UNITS]
    for path in paths + [LOGROTATE_FILE]:
        if host.exists(path):
            plan.do("remove  %s" % path, host.remove, path)
    plan.do("run     systemctl daemon-reload", host.systemctl, "daemon-reload")
    kept = (ETC_DIR, STATE_DIR, LOG_DIR)
    if not purge:
        out.write("kept    %s and user %s (uninstall --purge removes them)\n" % (", ".join(kept), USER))
        return plan.changes
    for path in kept:
        if host.exists(path):
            plan.do("remove  %s" % path, host.remove, path)
    if host.user_id(USER) is not None:
        plan.do("remove  user %s" % USER, host.del_user, USER)
    if host.group_id(GROUP) is not None:
        plan.do("remove  group %s" % GROUP, host.del_group, GROUP)
    return plan.changes


