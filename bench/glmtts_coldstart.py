#!/usr/bin/env python3
"""Cold start of the glmtts engine: a fresh process from spawn to "loaded", first with an
empty WeTextProcessing FST cache (paths.state_dir), then again with the cache the first
start left. The difference is what the cache under state_dir saves every restart.

It runs the official GLM-TTS code on a copy of the checkout with tiny random weights
(tests/support/realrepo/), so the figures are the repository's own start-up work
(imports, front ends, FSTs, default voice) without the time to read real weights.

    .venv/bin/python bench/glmtts_coldstart.py --checkout /path/to/GLM-TTS \\
        [--python /path/to/venv-with-the-glmtts-extra/bin/python] [--repeat N] [--figures docs/figures.md]

Not in the `make bench` loop (it needs a GLM-TTS checkout); with --figures it writes its
section of the figures file (the checkout and interpreter paths shown as placeholders).

--checkout defaults to $GLMTTS_TEST_REAL_CHECKOUT, --python to $GLMTTS_TEST_REAL_PYTHON,
then to this interpreter; that interpreter needs ``pip install '.[glmtts]' onnx``.
"""

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.support import realrepo  # noqa: E402

import figures  # noqa: E402  (bench/figures.py, beside this script)


def start(python, home, state_dir, env):
    r = realrepo.run_child(python, ["engine", "--home", home, "--state-dir", state_dir], env)
    rebuilt = r["fst_after"] != r["fst_before"]
    return r["process_wall_s"], r["load_s"], rebuilt, r["fst_after"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkout", default=os.environ.get("GLMTTS_TEST_REAL_CHECKOUT", ""),
                        help="a checkout of github.com/zai-org/GLM-TTS (weights not needed)")
    parser.add_argument("--python", default=os.environ.get("GLMTTS_TEST_REAL_PYTHON") or sys.executable,
                        help="interpreter with the glmtts extra and onnx installed")
    parser.add_argument("--repeat", type=int, default=1, help="first/second pairs, each on a fresh state_dir")
    figures.add_argument(parser)
    args = parser.parse_args(argv)
    rows = []
    if not args.checkout:
        print("glmtts_coldstart: no checkout: pass --checkout /path/to/GLM-TTS or set GLMTTS_TEST_REAL_CHECKOUT "
              "(git clone https://github.com/zai-org/GLM-TTS; its weights are not needed)", file=sys.stderr)
        return 2
    if not os.path.isfile(os.path.join(args.checkout, "glmtts_inference.py")):
        print("glmtts_coldstart: %s is not a GLM-TTS checkout (no glmtts_inference.py)" % args.checkout,
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="glmtts-coldstart-") as work:
        env = realrepo.child_env(args.python, work)
        try:
            built = realrepo.run_child(args.python, ["build", args.checkout, os.path.join(work, "GLM-TTS")], env)
        except realrepo.ChildFailed as e:
            print("glmtts_coldstart: building the random-weight checkout failed: %s" % e, file=sys.stderr)
            return 1
        print("random-weight checkout of %s: %.1f MB of weights, built in %.1f s"
              % (args.checkout, built["weights_bytes"] / 1e6, built["build_s"]))
        head = "random-weight checkout: %.1f MB of weights, built in %.1f s" % (built["weights_bytes"] / 1e6,
                                                                                 built["build_s"])
        print("%-6s %-28s %10s %9s %s" % ("run", "start", "process_s", "load_s", "FSTs"))
        for run in range(1, args.repeat + 1):
            state_dir = os.path.join(work, "state-%d" % run)
            try:
                cold = start(args.python, built["dest"], state_dir, env)
                warm = start(args.python, built["dest"], state_dir, env)
            except realrepo.ChildFailed as e:
                print("glmtts_coldstart: the engine failed to start: %s" % e, file=sys.stderr)
                return 1
            built_s = next(iter(cold[3].values()), {}).get("built_s")
            for label, (wall, load, rebuilt, _) in (("first start, empty FST cache", cold),
                                                     ("second start, cache present", warm)):
                fsts = "built (%.1f s)" % built_s if rebuilt else "reused"
                print("%-6d %-28s %10.2f %9.2f %s" % (run, label, wall, load, fsts))
                rows.append((run, label, "%.2f" % wall, "%.2f" % load, fsts))
            print("%-6d %-28s %10.2f %9.2f" % (run, "ratio first / second", cold[0] / warm[0], cold[1] / warm[1]))
            rows.append((run, "**ratio first / second**", "%.2f" % (cold[0] / warm[0]), "%.2f" % (cold[1] / warm[1]),
                         ""))
    shown = ["--checkout", "/path/to/GLM-TTS"] + (["--repeat", str(args.repeat)] if args.repeat != 1 else [])
    figures.publish(args, "glmtts_coldstart", "Cold start of the glmtts engine on the official GLM-TTS code with "
                    "tiny random weights (so: the repository's own start-up work, not reading real weights): a "
                    "fresh process to loaded, first with an empty FST cache under paths.state_dir, then with the "
                    "cache the first start left; the ratio is what the cache saves every restart. Not run by "
                    "`make bench` (needs a checkout and the glmtts extra).",
                    head + "\n\n" + figures.table(("pair", "start", "process s", "load s", "FSTs"), rows, "llrrl"),
                    shown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
