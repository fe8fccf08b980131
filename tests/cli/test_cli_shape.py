"""One CLI shape for the three console scripts (glmtts, glmtts-watchdog, glmtts-system):
every subcommand, nested ones included, has a one-line description, and the global options
mean the same before or after the verb."""

import argparse

import pytest

from glmtts import cli
from glmtts.install import cli as install_cli
from glmtts.watchdog import cli as watchdog_cli

PARSERS = {"glmtts": cli.build_parser, "glmtts-watchdog": watchdog_cli.build_parser, "glmtts-system": install_cli.build_parser}
GLOBALS = {"glmtts": [("--config", "/etc/x.toml", "config")],
           "glmtts-watchdog": [("--config", "/etc/x.toml", "config")],
           "glmtts-system": [("--root", "/srv/tree", "root"), ("--dry-run", None, "dry_run")]}


def verbs(parser, path=()):
    """(path of verbs, parser, help line) for every subcommand, depth first."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {c.dest: c.help for c in action._choices_actions}
            for name, sub in action.choices.items():
                yield path + (name,), sub, helps.get(name)
                yield from verbs(sub, path + (name,))


def required_args(sub):
    """Placeholder values for a verb's required positionals (ids, files)."""
    out = []
    for a in sub._actions:
        if not a.option_strings and not isinstance(a, (argparse._SubParsersAction, argparse._HelpAction)) and a.nargs not in ("?", "*"):
            out.append(list(a.choices)[0] if a.choices else "x")
    return out


@pytest.mark.parametrize("script", PARSERS)
def test_every_subcommand_says_in_one_line_what_it_does(script):
    missing = [" ".join(path) for path, sub, help_ in verbs(PARSERS[script]()) if not help_ or "\n" in help_.strip()]
    assert not missing, "%s: subcommands without a one-line help: %s" % (script, missing)


@pytest.mark.parametrize("script", PARSERS)
def test_global_options_mean_the_same_before_and_after_every_verb(script):
    parser = PARSERS[script]()
    leaves = [(path, sub) for path, sub, _ in verbs(parser)
              if not any(isinstance(a, argparse._SubParsersAction) for a in sub._actions)]
    assert leaves
    for option, value, dest in GLOBALS[script]:
        given = [option] + ([value] if value else [])
        expect = value if value else True
        for path, sub in leaves:
            rest = required_args(sub)
            before = parser.parse_args(given + list(path) + rest)
            after = parser.parse_args(list(path) + rest + given)
            assert getattr(before, dest) == getattr(after, dest) == expect, (script, path, option)
