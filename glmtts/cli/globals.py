"""Global options accepted before or after the verb, for every console script
(`glmtts --config X synth …` and `glmtts synth --config X …` mean the same)."""

import argparse


def _subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            # one parser object may be registered under several names (aliases)
            yield from {id(p): p for p in action.choices.values()}.values()


def anywhere(parser, *dests):
    """Copy the top-level options named by ``dests`` into every (nested) subparser. Their
    default there is SUPPRESS, so a verb that does not repeat an option never resets the
    value given before it."""
    globals_ = [a for a in parser._actions if a.dest in dests and a.option_strings]

    def add(p):
        known = {s for a in p._actions for s in a.option_strings}
        for a in globals_:
            if not known.intersection(a.option_strings):
                kw = dict(dest=a.dest, help=a.help, default=argparse.SUPPRESS)
                if isinstance(a, argparse._StoreTrueAction):
                    kw["action"] = "store_true"
                elif isinstance(a, argparse._CountAction):
                    kw["action"] = "count"
                else:
                    kw["metavar"] = a.metavar
                p.add_argument(*a.option_strings, **kw)
        for child in _subparsers(p):
            add(child)

    for child in _subparsers(parser):
        add(child)
    return parser
