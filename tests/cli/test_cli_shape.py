"""One CLI shape for the three console scripts (glmtts, glmtts-watchdog, glmtts-system):
every subcommand, nested ones included, has a one-line description, and the global options
mean the same before or after the verb."""

import argparse
import importlib
import os
import subprocess
import sys

import pytest

from glmtts import cli
from glmtts.cli.program import Program
from glmtts.cli import system as system_cli, watchdog as watchdog_cli

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PARSERS = {"glmtts": cli.build_parser, "glmtts-watchdog": watchdog_cli.build_parser, "glmtts-system": system_cli.build_parser}
GLOBALS = {"glmtts": [("--config", "/etc/x.toml", "config")],
           "glmtts-watchdog": [("--config", "/etc/x.toml", "config"), ("--dry-run", None, "dry_run")],
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


def console_scripts():
    """name -> "module:function" from setup.cfg, as pip installs them."""
    import configparser
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(REPO, "setup.cfg"))
    lines = [l.strip() for l in cfg["options.entry_points"]["console_scripts"].splitlines() if l.strip()]
    return dict(tuple(part.strip() for part in l.split("=", 1)) for l in lines)


def test_every_console_script_is_a_program_whose_verbs_are_add_parser_run_modules():
    scripts = console_scripts()
    assert set(scripts) == set(PARSERS), "a console script without a shape test (or a test without a script)"
    for name, target in scripts.items():
        module, func = target.split(":")
        mod = importlib.import_module(module)
        program = getattr(mod, "PROGRAM", None)
        assert isinstance(program, Program) and getattr(mod, func) == program.main, name
        for verb, verb_module in program.commands.items():
            vm = importlib.import_module(verb_module)
            assert callable(getattr(vm, "add_parser", None)), (name, verb)
            args = program.build_parser().parse_args([verb] + required_args(
                next(sub for path, sub, _ in verbs(program.build_parser()) if path == (verb,))))
            assert args.func is not None, (name, verb, "sets no func")


def test_the_old_watchdog_module_path_still_runs_the_watchdog():
    """supervisord.conf files written before the CLI moved name `-m glmtts.watchdog.cli`."""
    r = subprocess.run([sys.executable, "-m", "glmtts.watchdog.cli", "--help"], capture_output=True, text=True,
                       cwd=REPO, timeout=60)
    assert r.returncode == 0 and "usage: glmtts-watchdog" in r.stdout, r.stderr
