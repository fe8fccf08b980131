"""Print requirements declared in setup.cfg, one a line, for the image's dependency layers.

    python3 requirements.py setup.cfg core          install_requires without torch
    python3 requirements.py setup.cfg extra glmtts  one extra of [options.extras_require]

The image installs its dependencies before the application (so editing the code rebuilds
one small layer, and both variants share the big one) and torch by itself (from the build
context or the variant's index), hence "without torch". Standard library only: it runs on
the base image's python3, before the venv exists.
"""

import configparser
import re
import sys


def requirements(text):
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def name(requirement):
    return re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0].lower()


def main(argv):
    if len(argv) < 2 or argv[1] not in ("core", "extra") or (argv[1] == "extra") != (len(argv) == 3):
        print("usage: requirements.py SETUP_CFG core | extra NAME", file=sys.stderr)
        return 2
    cfg = configparser.ConfigParser(interpolation=None)
    if not cfg.read(argv[0]):
        print("requirements.py: cannot read %s" % argv[0], file=sys.stderr)
        return 2
    if argv[1] == "core":
        wanted = [r for r in requirements(cfg.get("options", "install_requires")) if name(r) != "torch"]
    else:
        extras = cfg["options.extras_require"] if cfg.has_section("options.extras_require") else {}
        if argv[2] not in extras:
            print("requirements.py: setup.cfg has no extra %r; extras: %s" % (argv[2], ", ".join(extras) or "none"),
                  file=sys.stderr)
            return 2
        wanted = requirements(extras[argv[2]])
    print("\n".join(wanted))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
