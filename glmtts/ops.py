"""`glmtts-ops install|uninstall`: put glmtts on a systemd host (or take it off again).

install creates the glmtts system user and group, /etc/glmtts (config from the example,
never overwritten), /var/log/glmtts and /var/lib/glmtts with owners and modes, installs
the systemd units (with the deploy tree substituted for /opt/glmtts) and the logrotate
file, reloads systemd, runs the preflight (the configured engine loaded and heard once
inside glmtts.service's own sandbox, see glmtts/preflight.py) and enables the watchdog
timer. Every step is printed; running it twice changes nothing the second time.

All OS side effects go through one object, ``Host``: ``--dry-run`` prints the plan
without calling its mutating methods, ``--root DIR`` points every path (and useradd,
groupadd, systemctl) at a directory tree, and unit tests replace it with a fake.
"""

import argparse
import grp
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from . import config
from . import preflight as preflight_mod
from . import watchdog_token
from .preflight import PreflightError
from .errors import EXIT_FAILURE, GlmttsError

USER = GROUP = "glmtts"
PLACEHOLDER = "/opt/glmtts"  # deploy-tree path written in the ops/*.service templates
UNITS = ("glmtts.service", "glmtts@.service", "glmtts-watchdog.service", "glmtts-watchdog.timer")
SERVICE_UNITS = ("glmtts.service", "glmtts@.service", "glmtts-watchdog.service")
TIMER = "glmtts-watchdog.timer"
UNIT_DIR = "/etc/systemd/system"
LOGROTATE_FILE = "/etc/logrotate.d/glmtts"
ETC_DIR = "/etc/glmtts"
CONFIG_FILE = "/etc/glmtts/glmtts.toml"
TOKEN_FILE = "/etc/glmtts/" + watchdog_token.FILENAME  # beside CONFIG_FILE, where both sides look
LOG_DIR = "/var/log/glmtts"
STATE_DIR = "/var/lib/glmtts"
BASE_PORT = 7860
# ProtectHome= hides these from the units, PrivateTmp= hides TMP_DIRS; anything the
# service needs under them is bound back read-only by a drop-in (e.g. a pyenv interpreter
# under /root, or a checkout under /var/tmp).
HOME_DIRS = ("/home", "/root", "/run/user")
TMP_DIRS = ("/tmp", "/var/tmp")
DROP_IN = "10-deploy-paths.conf"


class OpsError(GlmttsError):
    code = "ops_error"


class Host:
    """The machine as install/uninstall see it. ``root`` prefixes every path; with a root
    other than "/", user tools get --prefix and systemctl --root (offline: no reload,
    no start)."""

    def __init__(self, root="/"):
        self.root = Path(root)
        self.offline = str(root) != "/"

    def path(self, p):
        return self.root / str(p).lstrip("/")

    # -- queries (safe in --dry-run) ------------------------------------------------
    def exists(self, p):
        return self.path(p).exists() or self.path(p).is_symlink()

    def read(self, p):
        return self.path(p).read_text()

    def _db(self, name):
        if not self.offline:
            return None
        f = self.path("/etc/%s" % name)
        return [line.split(":") for line in f.read_text().splitlines() if line] if f.exists() else []

    def user_id(self, name):
        db = self._db("passwd")
        if db is None:
            try:
                return pwd.getpwnam(name).pw_uid
            except KeyError:
                return None
        return next((int(r[2]) for r in db if r[0] == name), None)

    def group_id(self, name):
        db = self._db("group")
        if db is None:
            try:
                return grp.getgrnam(name).gr_gid
            except KeyError:
                return None
        return next((int(r[2]) for r in db if r[0] == name), None)

    def owner(self, p):
        st = self.path(p).stat()
        return st.st_uid, st.st_gid, st.st_mode & 0o7777

    def listdir(self, p):
        target = self.path(p)
        return sorted(os.listdir(target)) if target.is_dir() else []

    def run_preflight(self, cmd, timeout):
        """Run the preflight command: (exit status or None on timeout, stdout, stderr). A
        failure is an answer here, not an exception: the caller turns it into one line."""
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", errors="replace",
                                  timeout=timeout, stdin=subprocess.DEVNULL)
        except FileNotFoundError as e:
            return 127, "", "%s: not found (needs systemd)" % e.filename
        except subprocess.TimeoutExpired as e:
            # killing systemd-run leaves its transient unit running: stop it by name
            unit = next((a.split("=", 1)[1] for a in cmd if a.startswith("--unit=")), None)
            if unit:
                subprocess.run(["systemctl", "stop", unit], capture_output=True, timeout=60)
            as_text = lambda b: b.decode("utf-8", "replace") if isinstance(b, bytes) else (b or "")  # noqa: E731
            return None, as_text(e.stdout), as_text(e.stderr)
        return proc.returncode, proc.stdout, proc.stderr

    # -- changes ----------------------------------------------------------------------
    def run(self, cmd):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise OpsError("%s failed (exit %d): %s" % (" ".join(cmd), proc.returncode,
                                                        (proc.stderr or proc.stdout).strip()))

    def _prefix(self):
        return ["--prefix", str(self.root)] if self.offline else []

    def add_group(self, name):
        self.run(["groupadd", "--system"] + self._prefix() + [name])

    def add_user(self, name, group, home):
        self.run(["useradd", "--system", "--gid", group, "--home-dir", home, "--no-create-home",
                  "--shell", "/usr/sbin/nologin", "--comment", "GLM-TTS service"] + self._prefix() + [name])

    def del_user(self, name):
        self.run(["userdel"] + self._prefix() + [name])

    def del_group(self, name):
        self.run(["groupdel"] + self._prefix() + [name])

    def makedir(self, p, mode, uid, gid):
        target = self.path(p)
        target.mkdir(parents=True, exist_ok=True)
        os.chown(target, uid, gid)
        os.chmod(target, mode)

    def write(self, p, text, mode, uid=0, gid=0):
        """Atomic: temp file in the same directory, fsync, rename."""
        target = self.path(p)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".%s." % target.name)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chown(tmp, uid, gid)
            os.chmod(tmp, mode)
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def chown(self, p, mode, uid, gid):
        os.chown(self.path(p), uid, gid)
        os.chmod(self.path(p), mode)

    def remove(self, p):
        target = self.path(p)
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()

    def systemctl(self, *args):
        if self.offline:
            if args[0] in ("enable", "disable"):
                self.run(["systemctl", "--root", str(self.root)] + [a for a in args if a != "--now"])
            return  # daemon-reload / start / stop mean nothing for a directory tree
        self.run(["systemctl"] + list(args))


def default_deploy_dir():
    """The tree this module runs from, when it is a checkout (editable install)."""
    here = Path(__file__).resolve().parents[1]
    return here if (here / "service").is_dir() and (here / "ops").is_dir() else None


def _under(path, dirs):
    return any(str(path) == d or str(path).startswith(d + "/") for d in dirs)


def home_paths(deploy_dir):
    """Paths under a home or tmp directory the units need: the deploy tree itself and the
    real prefix of the venv's interpreter (a venv's python is a symlink to its base)."""
    needed = []
    python = Path(deploy_dir) / ".venv" / "bin" / "python"
    base = Path(os.path.realpath(python)).parent.parent
    for p in (Path(deploy_dir), base):
        if _under(p, HOME_DIRS + TMP_DIRS) and str(p) not in needed:
            needed.append(str(p))
    return needed


def render_unit(text, deploy_dir, stop_grace=None):
    """The unit for this host: the deploy tree for /opt/glmtts and, when given, the stop
    budget (config.stop_grace_s of this host's config) for the shipped TimeoutStopSec=."""
    text = text.replace(PLACEHOLDER, str(deploy_dir))
    if stop_grace is not None:
        text = re.sub(r"(?m)^TimeoutStopSec=\d+$", "TimeoutStopSec=%d" % stop_grace, text)
    return text


ENV_FILE = "/etc/glmtts/glmtts.env"


def host_stop_grace(host):
    """(seconds, note): config.stop_grace_s() of the config the units will run with
    (glmtts.toml, and GLMTTS_* lines of glmtts.env, which the unit reads too). Defaults
    when there is no file yet; defaults and a note when it does not load."""
    env = {}
    if host.exists(ENV_FILE):
        for line in host.read(ENV_FILE).splitlines():
            key, sep, value = line.strip().partition("=")
            if sep and key.startswith("GLMTTS_SERVER_DRAIN_"):
                env[key] = value.strip().strip('"').strip("'")
    if not host.exists(CONFIG_FILE) and not env:
        return config.stop_grace_s(), "defaults"
    try:
        settings = config.load(str(host.path(CONFIG_FILE)) if host.exists(CONFIG_FILE) else "", env=env)
    except GlmttsError as e:
        return config.stop_grace_s(), "defaults (%s does not load: %s)" % (CONFIG_FILE, e)
    return config.stop_grace_s(settings), "server.drain_delay_s %g + drain_timeout_s %g + %d" % (
        settings.server.drain_delay_s, settings.server.drain_timeout_s, config.STOP_MARGIN_S)


def drop_in_text(paths):
    text = ("# Written by glmtts-ops install: the deploy tree or its Python lives under a home or\n"
            "# tmp directory, which ProtectHome=/PrivateTmp= hide. Bind back only these, read-only.\n"
            "[Service]\n")
    if any(_under(p, HOME_DIRS) for p in paths):
        text += "ProtectHome=tmpfs\n"  # empty homes instead of none, so the binds have a place
    return text + "BindReadOnlyPaths=%s\n" % " ".join(paths)


def instance_env_text(n):
    return ("# glmtts@%d: its own port (7860 + GPU index); CUDA_VISIBLE_DEVICES=%d is set by the unit.\n"
            "GLMTTS_SERVER_PORT=%d\n" % (n, n, BASE_PORT + n))


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
        raise PreflightError(result.line + "; then run glmtts-ops install again (or --no-preflight to install anyway)",
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
                        lambda: host.write(path, "", mode, resolve_uid(), resolve_gid()))
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
                lambda: host.write(CONFIG_FILE, example, 0o640, 0, resolve_gid()))
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
                lambda: host.write(TOKEN_FILE, watchdog_token.new_token() + "\n", 0o640, 0, resolve_gid()))
    for n in instances:
        env = "%s/instance-%d.env" % (ETC_DIR, n)
        if host.exists(env):
            plan.ok("%s exists (kept)" % env)
        else:
            plan.do("create  %s (port %d)" % (env, BASE_PORT + n),
                    lambda env=env, n=n: host.write(env, instance_env_text(n), 0o640, 0, resolve_gid()))

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
            plan.do("%s %s" % ("update " if host.exists(path) else "install", path), host.write, path, text, mode)

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


def parse_instances(text):
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError("--instances takes GPU indexes such as 0,1") from None
    if any(v < 0 or v > 63 for v in values):
        raise argparse.ArgumentTypeError("--instances: GPU indexes are 0..63")
    return values


def build_parser():
    p = argparse.ArgumentParser(prog="glmtts-ops", description=(
        "Install glmtts as systemd units on this host (user, dirs, config, units, logrotate, a "
        "preflight of the engine in the unit's own sandbox, watchdog timer), or remove it. Every step is printed; install is idempotent and never "
        "overwrites an existing /etc/glmtts/glmtts.toml."))
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    i = sub.add_parser("install", help="create user, dirs, config; install units and logrotate; preflight the "
                       "engine in the unit's sandbox; enable the timer")
    i.add_argument("--deploy-dir", metavar="DIR", help="checkout with service/, ops/ and .venv/ "
                   "(default: the tree this command runs from); written into the units for /opt/glmtts")
    i.add_argument("--instances", type=parse_instances, default=[], metavar="0,1",
                   help="also prepare glmtts@N per GPU: /etc/glmtts/instance-N.env (port 7860+N) and its log files")
    i.add_argument("--no-start", dest="start", action="store_false",
                   help="enable the watchdog timer without starting it now")
    i.add_argument("--no-preflight", dest="preflight", action="store_false",
                   help="skip loading the engine once in the unit's sandbox before enabling anything "
                        "(e.g. weights not downloaded yet; run `glmtts engines check` later)")
    u = sub.add_parser("uninstall", help="stop and remove units and the logrotate file (keeps config, data, logs)")
    u.add_argument("--purge", action="store_true", help="also remove /etc/glmtts, /var/lib/glmtts, /var/log/glmtts and the user")
    for s in (i, u):
        s.add_argument("--dry-run", action="store_true", help="print what would be done; change nothing")
        s.add_argument("--root", default="/", metavar="DIR", help="operate on a directory tree instead of / (tests, images)")
    return p


def main(argv=None, host=None, out=sys.stdout):
    args = build_parser().parse_args(argv)
    this_machine = host is None and args.root == "/"  # a host passed in (tests) brings its own rights
    host = host or Host(args.root)
    try:
        if os.geteuid() != 0 and not args.dry_run and this_machine:
            raise OpsError("needs root (sudo glmtts-ops %s), or --dry-run to see the plan" % args.command)
        if args.command == "install":
            deploy = args.deploy_dir or default_deploy_dir()
            if deploy is None:
                raise OpsError("cannot tell the deploy tree: pass --deploy-dir DIR (a checkout with service/, ops/, .venv/)")
            install(host, deploy, instances=args.instances, start=args.start, dry_run=args.dry_run,
                    preflight=args.preflight, out=out)
        else:
            uninstall(host, purge=args.purge, dry_run=args.dry_run, out=out)
    except GlmttsError as e:
        print("glmtts-ops %s: error: %s" % (args.command, e), file=sys.stderr)
        return e.exit_code
    except OSError as e:
        print("glmtts-ops %s: error: %s" % (args.command, e), file=sys.stderr)
        return EXIT_FAILURE
    return 0


if __name__ == "__main__":
    sys.exit(main())
