#!/usr/bin/env python3
"""Print the time to recover per fault scenario, as measured by the system tests under a
real systemd (tests/system/, written to artifacts/recovery.json).

    .venv/bin/python -m pytest -m system tests/system   # produces the figures
    .venv/bin/python bench/recovery.py [--json PATH] [--markdown]

Time to recover = from the fault (kill, SIGSTOP, fault word written, disk filled) to the
service answering /healthz 200 again with a passing smoke test where the scenario has one.
"""

import argparse
import json
import sys
from pathlib import Path

DEFAULT = Path(__file__).resolve().parents[1] / "artifacts" / "recovery.json"


def rows(data):
    for scenario in sorted(data):
        entry = data[scenario]
        seconds = entry.get("seconds")
        yield scenario, "-" if seconds is None else "%.1f" % seconds, entry.get("detail", ""), entry.get("recorded_at", "")


def render(data, markdown=False):
    table = list(rows(data))
    head = ("scenario", "recover s", "how", "measured")
    if markdown:
        out = ["| %s |" % " | ".join(head), "|---|---:|---|---|"]
        out += ["| %s |" % " | ".join(r) for r in table]
        return "\n".join(out)
    widths = [max(len(str(r[i])) for r in table + [head]) for i in range(4)]
    fmt = "  ".join("%%-%ds" % w if i != 1 else "%%%ds" % w for i, w in enumerate(widths))
    return "\n".join([fmt % head, fmt % tuple("-" * w for w in widths)] + [fmt % r for r in table])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", default=str(DEFAULT), help="results file (default: %(default)s)")
    p.add_argument("--markdown", action="store_true", help="a Markdown table (for the README)")
    args = p.parse_args(argv)
    try:
        data = json.loads(Path(args.json).read_text())
    except FileNotFoundError:
        print("no results at %s: run the system tests first (pytest -m system tests/system)" % args.json,
              file=sys.stderr)
        return 1
    except ValueError as e:
        print("%s is not valid JSON: %s" % (args.json, e), file=sys.stderr)
        return 1
    if not data:
        print("%s holds no scenario yet" % args.json, file=sys.stderr)
        return 1
    print(render(data, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
