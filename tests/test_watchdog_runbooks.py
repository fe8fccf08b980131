"""Runbook lint: every runbook parses, names only existing actions and parameters, every
signature the watchdog can raise has a runbook, and the prose gives people what they need."""

import pytest

from glmtts.watchdog import signatures
from glmtts.watchdog.actions import ACTIONS
from glmtts.watchdog.runbook import RunbookError, default_dir, for_signature, load_all, parse

RUNBOOKS = load_all(default_dir())
EXPECTED = {"service-down", "cuda-oom", "cuda-fatal", "segfault", "disk-full", "port-in-use", "bad-batch", "crash-loop", "gpu-xid"}


def test_every_runbook_parses_and_the_set_is_complete():
    assert EXPECTED <= set(RUNBOOKS)


@pytest.mark.parametrize("name", signatures.NAMES)
def test_every_signature_has_a_runbook(name):
    assert for_signature(RUNBOOKS, name) is not None, "no runbook triggers on %s" % name


@pytest.mark.parametrize("rb_id", sorted(EXPECTED))
def test_runbook_names_real_actions_and_has_prose(rb_id):
    rb = RUNBOOKS[rb_id]
    for step in rb.steps + rb.on_failure:
        assert step.action in ACTIONS
    body = rb.body
    for section in ("## Symptoms", "## What the automation does", "## Manual commands", "## Verify", "## Escalate when"):
        assert section in body, "%s lacks %s" % (rb.path, section)
    assert rb.escalate


def test_gpu_xid_runbook_follows_nvidias_table():
    rb = RUNBOOKS["gpu-xid"]
    by_action = {}
    for s in rb.steps:
        by_action.setdefault(s.action, set()).update(s.params.get("if_xid", []))
    assert by_action["escalate"] == {79}
    assert by_action["gpu_reset"] == {64, 95, 119, 120}
    assert by_action["restart"] == {13, 31, 94, 64, 95, 119, 120}
    assert not ({43, 63} & set().union(*by_action.values()))


GOOD = """---
id: x
title: X
severity: critical
triggers: [segfault]
steps:
  - capture_diagnostics
  - kill_unit_processes: {grace_s: 3}
---
prose
"""


@pytest.mark.parametrize("text, message", [
    ("no front matter", "no YAML front matter"),
    (GOOD.replace("severity: critical\n", ""), "missing severity"),
    (GOOD.replace("[segfault]", "[segfalt]"), "unknown trigger 'segfalt'"),
    (GOOD.replace("capture_diagnostics", "reboot_everything"), "unknown action 'reboot_everything'"),
    (GOOD.replace("grace_s: 3", "grace: 3"), "has no parameter 'grace'"),
    (GOOD.replace("grace_s: 3", "grace_s: soon"), "grace_s must be float"),
    (GOOD.replace("grace_s: 3", "when: sometimes"), "when must be always | unhealthy"),
    (GOOD.replace("title: X\n", "title: X\nowner: bob\n"), "unknown key(s) owner"),
    (GOOD.replace("triggers: [segfault]", "triggers: [segfault"), "not valid YAML"),
])
def test_bad_runbooks_are_rejected_with_a_clear_message(text, message):
    with pytest.raises(RunbookError) as e:
        parse(text, "runbooks/x.md")
    assert message in str(e.value)
    assert "runbooks/x.md" in str(e.value)


def test_good_runbook_parses():
    rb = parse(GOOD, "x.md")
    assert [s.action for s in rb.steps] == ["capture_diagnostics", "kill_unit_processes"]
    assert rb.steps[1].params == {"grace_s": 3}
