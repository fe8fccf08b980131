"""`glmtts engines`: the registry, and which engine the configuration selects.
`glmtts engines check`: can that engine load and speak the way the service will run it?"""

import os
import shutil

from .. import config
from ..engines import BUILTIN
from ..errors import GlmttsError

DESCRIPTIONS = {
    "espeak": "embedded default: espeak-ng from a PyPI wheel, Mandarin + English, CPU, no download; "
              "zero-shot = prosody matching (pitch median/range, speaking rate)",
    "glmtts": "official GLM-TTS checkout (engine.glmtts_home with ckpt/): timbre cloning, GPU",
}
SYSTEMD_BOOTED = "/run/systemd/system"  # sd_booted(3): exists only when systemd is PID 1


def add_parser(sub):
    p = sub.add_parser("engines", help="list the available engines; `engines check` loads the configured one and speaks once",
                       description="Without a verb: list the engines and mark the configured one.")
    p.set_defaults(func=run)
    verbs = p.add_subparsers(dest="engines_command", metavar="VERB")
    c = verbs.add_parser(
        "check", help="load the configured engine and synthesize once, inside the installed unit's sandbox when there "
                      "is one; one line, exit 0 only if it spoke",
        description="With systemd as PID 1 and the unit installed: runs the check through systemd-run with the "
                    "unit's own user, sandbox and environment (as glmtts-system install does; needs root). Otherwise, "
                    "or with --in-process, runs it here and says that it ran without the unit's sandbox. "
                    "Exit 0 = it spoke; 78 configuration error; 3 the engine could not load; 1 anything else.")
    c.add_argument("--unit", default="glmtts.service", metavar="UNIT",
                   help="whose sandbox to use (default glmtts.service; glmtts@0.service for an instance)")
    c.add_argument("--in-process", action="store_true",
                   help="run in this process as this user, without the unit's sandbox")
    c.add_argument("--text", help="text to synthesize (default: engine.warmup_text)")
    c.set_defaults(func=run_check)


def run(args):
    settings = config.load(args.config)
    active = settings.engine.name
    for name, target in BUILTIN.items():
        mark = "*" if name == active else " "
        print("%s %-8s %s" % (mark, name, DESCRIPTIONS.get(name, target)))
    if active not in BUILTIN:
        print("* %s (plug-in)" % active)
    print("plug-ins: engine.name = \"package.module:Class\"")
    return 0


def why_no_sandbox(unit, booted=SYSTEMD_BOOTED):
    """None when the unit's sandbox can be used here, else why not (said in the result line)."""
    from .. import preflight

    if not os.path.isdir(booted):
        return "systemd is not PID 1 here"
    if not shutil.which("systemd-run"):
        return "systemd-run is not installed"
    file_name = preflight.unit_names(unit)[0]
    if not any(os.path.exists("%s/%s" % (d, file_name)) for d in preflight.UNIT_DIRS):
        return "%s is not installed" % unit
    return None


def run_check(args, host=None):
    from .. import install, preflight

    reason = "--in-process" if args.in_process else why_no_sandbox(args.unit)
    if reason:
        result = preflight.in_process(args.config, args.text, reason)
    else:
        if os.geteuid() != 0:
            raise GlmttsError("the check in %s's sandbox runs as its User= through systemd-run, which needs root: "
                              "sudo glmtts engines check (or --in-process, without the sandbox)" % args.unit)
        host = host or install.Host("/")
        assigned = preflight.assignments(preflight.unit_texts(host, args.unit), args.unit)
        cmd, limit_s = preflight.command(assigned, args.unit, text=args.text,
                                         config=os.path.abspath(args.config) if args.config else None)
        where = "%s's sandbox: %s" % (args.unit, preflight.sandbox_summary(assigned))
        rc, stdout, stderr = host.run_preflight(cmd, None if limit_s is None else limit_s + 30)
        result = preflight.read_result(rc, stdout, stderr, where, limit_s)
    print(result.line)
    return result.exit_code
