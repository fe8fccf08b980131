"""Preflight: load the configured engine the way the unit will run it, synthesize once,
and say in one line whether the service can speak -- before `systemctl start`, not as a
crash loop at 2 a.m.

Two halves in one module:

- the caller's half (`glmtts-system install`, `glmtts engines check`) reads the installed unit
  and its drop-ins, turns every [Service] setting that shapes the process (user, sandbox,
  environment, working directory, limits) into a `systemd-run -p` property, and runs
  ``systemd-run --wait --pipe --collect --quiet -p ... <the unit's python> -m glmtts.preflight``.
  The properties come from the unit text itself, so the preflight cannot drift from it.
- the child's half (``python -m glmtts.preflight``) loads the configuration the unit uses
  ($GLMTTS_CONFIG), creates and loads the engine, synthesizes engine.warmup_text, checks
  that the audio is audible, prints one line marked ``glmtts-preflight:`` and exits 0, or
  with the error's exit code (78 configuration, 3 engine load, 1 anything else).
"""

import argparse
import contextlib
import errno
import os
import re
import shlex
import sys
import time
import traceback
from dataclasses import dataclass

from .errors import EXIT_CONFIG, EXIT_ENGINE_LOAD, EXIT_FAILURE, EXIT_USAGE, GlmttsError

MARK = "glmtts-preflight:"
# Where systemd looks for system units an admin or an installer writes (/usr/lib holds
# packaged units; glmtts never installs there). A same-named drop-in in /etc masks /run's.
UNIT_DIRS = ("/run/systemd/system", "/etc/systemd/system")
MIN_DBFS = -50.0  # the watchdog's smoke test uses the same floor
MIN_SECONDS = 0.2
DEFAULT_START_TIMEOUT_S = 90  # systemd's DefaultTimeoutStartSec

# [Service] settings the transient one-shot does NOT get, and why. Everything else is passed
# through as written, in order, so drop-in overrides and empty resets ("X=") keep their
# meaning. [Unit] (ordering, dependencies, start limits) is about boot and restarts, not
# about the process; [Install] is about enabling. Neither shapes what the process can do.
SKIPPED = {
    "Type": "the preflight exits after one synthesis and never sends READY=1; Type=notify "
            "would wait for it until the start timeout",
    "NotifyAccess": "only meaningful with Type=notify",
    "WatchdogSec": "the preflight sends no WATCHDOG=1; systemd would kill it in the middle of a slow load",
    "ExecStart": "replaced by the preflight command (run by the ExecStart's own interpreter)",
    "ExecStartPost": "runs against a started server, which a one-shot never is",
    "ExecReload": "nothing to reload in a one-shot",
    "ExecStop": "acts on a running server; the one-shot stops by exiting",
    "ExecStopPost": "acts on a running server; the one-shot stops by exiting",
    "Restart": "a preflight runs once and reports; it must never be retried",
    "RestartSec": "restart policy (see Restart)",
    "RestartSteps": "restart policy (see Restart)",
    "RestartMaxDelaySec": "restart policy (see Restart)",
    "RestartPreventExitStatus": "restart policy (see Restart)",
    "RestartForceExitStatus": "restart policy (see Restart)",
    "SuccessExitStatus": "the caller reads the exit status itself; a status the unit forgives is still a failed check",
    "TimeoutStartSec": "a one-shot has no start phase to time; the same budget becomes RuntimeMaxSec",
    "TimeoutSec": "see TimeoutStartSec",
    "RuntimeMaxSec": "replaced by the start budget (the service runs forever; the preflight must not)",
    "RemainAfterExit": "systemd-run --wait returns when the process exits",
    "StandardInput": "--pipe connects the one-shot to the caller",
    "StandardOutput": "--pipe brings the one-line result back to the caller; append: would also "
                      "write the preflight into the service's access.log",
    "StandardError": "--pipe brings errors back to the caller; append: would write into error.log",
    "PIDFile": "forking-service bookkeeping; the one-shot is its own main process",
    "BusName": "D-Bus activation, not used by a one-shot",
}

# systemd's own exit statuses (systemd.exec(5) "Process Exit Codes"): the sandbox could not
# be set up, so the engine never ran.
SYSTEMD_STATUS = {
    200: "WorkingDirectory= does not exist or is hidden in the sandbox (status 200/CHDIR)",
    203: "the unit's interpreter cannot be executed in the sandbox (status 203/EXEC): ProtectHome=/"
         "PrivateTmp= hide it, or it is missing; fix: glmtts-system install binds it back in 10-deploy-paths.conf",
    216: "the unit's Group= does not exist (status 216/GROUP); fix: glmtts-system install creates it",
    217: "the unit's User= does not exist (status 217/USER); fix: glmtts-system install creates it",
    226: "systemd could not set up the unit's mount namespace (status 226/NAMESPACE): a path in "
         "ReadWritePaths=/ReadOnlyPaths=/BindReadOnlyPaths= is missing; fix: create it or prefix it with -",
}


class PreflightError(GlmttsError):
    code = "preflight_failed"

    def __init__(self, message, *, exit_code=EXIT_FAILURE):
        super().__init__(message)
        self.exit_code = exit_code  # the check's own code: 78 configuration, 3 engine load, 1 other


@dataclass
class Result:
    ok: bool
    line: str  # the one line a human reads
    exit_code: int


# -- the caller's half: the unit as systemd reads it ---------------------------------------------

def unit_names(unit):
    """(file holding the unit, drop-in dirs in the order systemd applies them, instance)."""
    name = unit if "." in unit else unit + ".service"
    stem, suffix = name.rsplit(".", 1)
    if "@" in stem:
        prefix, instance = stem.split("@", 1)
        template = "%s@.%s" % (prefix, suffix)
        return template, [template + ".d", name + ".d"], instance
    return name, [name + ".d"], ""


def unit_texts(host, unit, replace=None):
    """The unit file and its drop-ins (*.conf, by file name), as texts in the order systemd
    applies them. ``replace`` maps a path to the text it is about to hold (None: about to be
    removed), so the installer can preflight what it writes even in --dry-run."""
    replace = replace or {}

    def text(path):
        if path in replace:
            return replace[path]
        return host.read(path) if host.exists(path) else None

    file_name, dirs, _ = unit_names(unit)
    main = next((t for t in (text("%s/%s" % (d, file_name)) for d in reversed(UNIT_DIRS)) if t is not None), None)
    if main is None:
        raise PreflightError("%s is not installed (no %s in %s); run glmtts-system install"
                             % (unit, file_name, " or ".join(UNIT_DIRS)))
    dropins = {}
    for sub in dirs:
        for base in UNIT_DIRS:
            d = "%s/%s" % (base, sub)
            names = set(host.listdir(d)) | {p.rsplit("/", 1)[1] for p in replace if p.rsplit("/", 1)[0] == d}
            for n in sorted(names):
                if n.endswith(".conf"):
                    dropins[n] = "%s/%s" % (d, n)
    texts = [main]
    for n in sorted(dropins):
        t = text(dropins[n])
        if t is not None:
            texts.append(t)
    return texts


def parse_section(text, section="Service"):
    """(key, value) assignments of one section, in file order; continuation lines joined."""
    out, current, pending = [], None, ""
    for raw in text.splitlines():
        line = raw.strip()
        if pending:
            line = pending + " " + line
            pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1].rstrip()
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
        elif current == section and "=" in line:
            key, value = line.split("=", 1)
            out.append((key.strip(), value.strip()))
    return out


def expand_specifiers(value, unit, instance):
    """%i %I %n %N %p %P %%: systemd-run passes values as written, so a template's
    specifiers are resolved here for the instance being checked."""
    name = unit if "." in unit else unit + ".service"
    stem = name.rsplit(".", 1)[0]
    prefix = stem.split("@", 1)[0]
    table = {"i": instance, "I": instance, "n": name, "N": stem, "p": prefix, "P": prefix, "%": "%"}
    return re.sub(r"%(.)", lambda m: table.get(m.group(1), m.group(0)), value)


def assignments(texts, unit):
    _, _, instance = unit_names(unit)
    return [(k, expand_specifiers(v, unit, instance)) for text in texts for k, v in parse_section(text)]


def last(assigned, key, default=None):
    values = [v for k, v in assigned if k == key]
    return values[-1] if values else default


def list_value(assigned, key):
    """A list setting after appends and empty resets, prefixes (-, +) dropped."""
    items = []
    for k, v in assigned:
        if k == key:
            items = [] if not v else items + [w.lstrip("-+") for w in shlex.split(v)]
    return items


def properties(assigned):
    return ["%s=%s" % (k, v) for k, v in assigned if k not in SKIPPED]


def seconds(span):
    """A systemd time span ("15min", "90", "1h 30s", "infinity") in seconds; None = no limit."""
    span = span.strip()
    if span in ("infinity", ""):
        return None
    units = {"us": 1e-6, "ms": 1e-3, "s": 1, "sec": 1, "second": 1, "seconds": 1, "m": 60, "min": 60,
             "minute": 60, "minutes": 60, "h": 3600, "hr": 3600, "hour": 3600, "hours": 3600, "d": 86400,
             "day": 86400, "days": 86400}
    if re.fullmatch(r"\d+(\.\d+)?", span):
        return float(span)
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]+)", span):
        if unit not in units:
            raise ValueError("cannot read time span %r" % span)
        total += float(number) * units[unit]
    return total


def interpreter(assigned, unit):
    exec_start = last(assigned, "ExecStart")
    if not exec_start:
        raise PreflightError("%s has no ExecStart=: cannot tell which interpreter the service runs" % unit)
    return shlex.split(exec_start.lstrip("@-:+!"))[0]


def sandbox_summary(assigned):
    user = last(assigned, "User", "root")
    return "user %s, ProtectSystem=%s" % (user, last(assigned, "ProtectSystem", "no"))


def command(assigned, unit, *, text=None, config=None):
    """(argv, time limit in seconds) of the sandboxed preflight of ``unit``."""
    budget = last(assigned, "TimeoutStartSec") or last(assigned, "TimeoutSec")
    start_s = seconds(budget) if budget else DEFAULT_START_TIMEOUT_S
    cmd = ["systemd-run", "--wait", "--pipe", "--collect", "--quiet",
           "--unit=glmtts-preflight-%d" % os.getpid(), "--description=glmtts preflight of %s" % unit]
    if start_s:
        cmd.append("--property=RuntimeMaxSec=%d" % max(1, int(start_s)))
    cmd += ["--property=%s" % p for p in properties(assigned)]
    if config:  # last, so it wins over the unit's Environment=GLMTTS_CONFIG=...
        cmd.append("--property=Environment=GLMTTS_CONFIG=%s" % config)
    cmd += [interpreter(assigned, unit), "-m", "glmtts.preflight", "--as", unit]
    for path in list_value(assigned, "ReadWritePaths"):
        cmd += ["--writable", path]
    if text:
        cmd += ["--text", text]
    return cmd, start_s


def read_result(rc, stdout, stderr, where, limit_s=None):
    """The one line from what the sandboxed child left on stdout/stderr."""
    marked = [line[len(MARK):].strip() for line in (stdout or "").splitlines() if line.startswith(MARK)]
    if marked:
        detail = marked[-1]
    elif rc is None:
        detail = "FAILED: no answer within %s s; the engine neither loaded nor spoke in the unit's start budget" % limit_s
    elif "Failed to connect to bus" in (stderr or ""):
        detail = ("FAILED: systemd-run --wait needs the D-Bus system bus, which is not running; fix: "
                  "systemctl start dbus.socket (package dbus), or skip the check: glmtts-system install --no-preflight")
    elif rc in SYSTEMD_STATUS:
        detail = "FAILED: " + SYSTEMD_STATUS[rc]
    else:
        tail = [line.strip() for line in ((stderr or "") + "\n" + (stdout or "")).splitlines() if line.strip()]
        why = tail[-1] if tail else "no output"
        if limit_s and rc != 0 and "timeout" in why.lower():
            why += " (RuntimeMaxSec=%d from the unit's TimeoutStartSec)" % limit_s
        detail = "FAILED: the preflight did not report (exit %s): %s" % (rc, _one_line(why))
    ok = rc == 0 and detail.startswith("ok")
    word, _, rest = detail.partition(" ")
    code = 0 if ok else (rc if rc in (EXIT_FAILURE, EXIT_USAGE, EXIT_ENGINE_LOAD, EXIT_CONFIG) else EXIT_FAILURE)
    return Result(ok, "preflight %s (%s): %s" % ("ok" if ok else "FAILED", where, rest if word in ("ok", "FAILED:") else detail), code)


# -- the child's half: load, speak once, judge ---------------------------------------------------

def _one_line(text, limit=600):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _chain(exc):
    """The exception and everything it was raised from or during (even `from None`)."""
    seen = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def _user():
    try:
        import pwd
        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return "uid %d" % os.getuid()


def explain(exc, phase, engine_name, unit=None, writable=()):
    """(exit code, one line naming what failed and what to fix) for an exception."""
    what = "engine %s %s" % (engine_name, phase) if engine_name else phase
    chain = _chain(exc)
    for e in chain:
        if isinstance(e, OSError) and e.errno == errno.EROFS:
            path = e.filename or "a file"
            where = os.path.dirname(str(path)) or str(path)
            if unit:
                return EXIT_ENGINE_LOAD, (
                    "%s cannot write %s: read-only file system (ProtectSystem=strict in %s leaves only %s writable); "
                    "fix: make the engine write under %s, or let it write there with a drop-in "
                    "`ReadWritePaths=%s` (systemctl edit %s)"
                    % (what, path, unit, " ".join(writable) or "nothing", writable[0] if writable else "a state dir",
                       where, unit))
            return EXIT_ENGINE_LOAD, "%s cannot write %s: read-only file system; fix: make it writable or write elsewhere" % (what, path)
    for e in chain:
        if isinstance(e, PermissionError):
            return EXIT_ENGINE_LOAD, ("%s: permission denied on %s as user %s; fix: let that user read it "
                                      "(e.g. chgrp -R glmtts PATH && chmod -R g+rX PATH)" % (what, e.filename or "a file", _user()))
    for e in chain:
        if isinstance(e, ModuleNotFoundError) and e.name and not (engine_name or "").startswith(e.name):
            return EXIT_ENGINE_LOAD, ("%s: missing dependency: no module named %r in %s; fix: %s -m pip install %s "
                                      "(engine glmtts: pip install '.[glmtts]')"
                                      % (what, e.name, sys.prefix, sys.executable, e.name.split(".")[0]))
    if isinstance(exc, GlmttsError):
        # these messages already name the engine and the fix (config keys, weight files)
        return exc.exit_code, "%s: %s" % (what if engine_name and engine_name not in str(exc) else phase, exc)
    frames = traceback.extract_tb(exc.__traceback__)
    at = " (at %s:%d)" % (frames[-1].filename, frames[-1].lineno) if frames else ""
    return (EXIT_ENGINE_LOAD if phase == "load()" else EXIT_FAILURE), "%s: %s: %s%s" % (what, type(exc).__name__, exc, at)


@contextlib.contextmanager
def _stdout_to_stderr():
    """Engines print (the official GLM-TTS repository print()s during synthesis): keep
    stdout for the one result line by pointing fd 1 at stderr meanwhile."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield saved
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def check(config_path=None, text=None, unit=None, writable=(), trace=True):
    """Load the configured engine and synthesize once: (exit code, "ok ..." or "FAILED: ...")."""
    from . import config

    engine_name, phase = None, "configuration"
    try:
        settings = config.load(config_path)
        engine_name, phase = settings.engine.name, "import"
        from .engines import SynthesisRequest, create
        engine = create(settings)
        phase = "load()"
        t0 = time.monotonic()
        engine.load()
        loaded_s = time.monotonic() - t0
        phase = "synthesize()"
        text = text or settings.engine.warmup_text
        result = engine.synthesize(SynthesisRequest(text=text, sample_rate=settings.engine.sample_rate,
                                                    seed=settings.engine.seed))
    except Exception as e:  # every failure becomes the one line; the traceback goes to stderr
        if trace:  # the sandboxed caller keeps only the line; `python -m glmtts.preflight` shows both
            traceback.print_exc(file=sys.stderr)
        code, line = explain(e, phase, engine_name, unit, writable)
        return code, "FAILED: " + _one_line(line)
    from .audio import loudness_dbfs
    duration = len(result.audio) / float(result.sample_rate) if result.sample_rate else 0.0
    level = loudness_dbfs(result.audio)
    said = "%r -> %.2f s of audio at %d Hz, %s dBFS" % (text, duration, result.sample_rate,
                                                        "-inf" if level == float("-inf") else "%.1f" % level)
    if duration < MIN_SECONDS or level < MIN_DBFS:
        return EXIT_FAILURE, _one_line("FAILED: engine %s synthesize() gave silence or next to nothing: %s "
                                       "(needs >= %.1f s above %.0f dBFS); fix: check the engine's weights and voice"
                                       % (engine_name, said, MIN_SECONDS, MIN_DBFS))
    return 0, _one_line("ok engine %s loaded in %.2f s; %s" % (engine_name, loaded_s, said))


def in_process(config_path=None, text=None, reason=""):
    """The check in this process, as this user: no unit sandbox (said in the line)."""
    with _stdout_to_stderr():
        code, detail = check(config_path, text, trace=False)
    where = "WITHOUT the unit's sandbox: in-process as %s%s" % (_user(), ", %s" % reason if reason else "")
    return read_result(code, MARK + " " + detail, "", where)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m glmtts.preflight", description=(
        "Load the configured engine ($GLMTTS_CONFIG), synthesize once, print one line "
        "(marked %s) and exit 0 when the audio is audible. Started by glmtts-system install and "
        "glmtts engines check inside the unit's sandbox (systemd-run)." % MARK))
    p.add_argument("--as", dest="unit", metavar="UNIT", help="the unit whose sandbox this runs in (for the fix hints)")
    p.add_argument("--writable", action="append", default=[], metavar="DIR", help="a ReadWritePaths= entry of that unit")
    p.add_argument("--text", help="text to synthesize (default: engine.warmup_text)")
    p.add_argument("--config", metavar="PATH", help="config file (default: $GLMTTS_CONFIG)")
    args = p.parse_args(argv)
    with _stdout_to_stderr() as stdout:
        code, detail = check(args.config, args.text, args.unit, args.writable)
        os.write(stdout, ("%s %s\n" % (MARK, detail)).encode("utf-8"))
    return code


if __name__ == "__main__":
    sys.exit(main())
