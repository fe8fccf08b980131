"""Runbook lint: every runbook parses, names only existing actions and parameters, every
signature the watchdog can raise has a runbook, the prose gives people what they need, and its
"What the automation does" carries the steps as generated from the front matter."""

import os

import pytest

from glmtts.watchdog import signatures
from glmtts.watchdog.runbook import RunbookError, default_dir, for_signature, load, load_all, parse, rendered, steps_markdown

RUNBOOKS = load_all(default_dir())
EXPECTED = {"service-down", "cuda-oom", "cuda-fatal", "segfault", "disk-full", "port-in-use", "bad-batch", "crash-loop", "gpu-xid"}


def test_every_runbook_file_parses_on_its_own_and_the_set_is_complete():
    files = sorted(n for n in os.listdir(default_dir()) if n.endswith(".md") and n != "README.md")
    for name in files:  # each file by itself: one broken file cannot hide behind load_all
        rb = load(os.path.join(default_dir(), name))
        assert rb.id == name[:-3] and rb.triggers and rb.steps and rb.title and rb.escalate, name
    assert {n[:-3] for n in files} == set(RUNBOOKS) and EXPECTED <= set(RUNBOOKS)


@pytest.mark.parametrize("rb_id", sorted(RUNBOOKS))
def test_what_the_automation_does_is_generated_from_the_steps(rb_id):
    """The prose section carries the steps as generated from the front matter: edit a step
    without `glmtts-watchdog runbook render --write` and this fails."""
    rb = RUNBOOKS[rb_id]
    with open(rb.path, encoding="utf-8") as f:
        text = f.read()
    assert rendered(text, rb) == text, "%s: stale steps section; run `glmtts-watchdog runbook render --write`" % rb.path


def test_a_changed_step_makes_the_generated_section_stale():
    rb = RUNBOOKS["service-down"]
    with open(rb.path, encoding="utf-8") as f:
        text = f.read()
    edited = text.replace("kill_unit_processes: {when: unhealthy, grace_s: 10}", "kill_unit_processes: {when: unhealthy, grace_s: 30}", 1)
    assert edited != text
    changed = parse(edited, rb.path)
    assert rendered(edited, changed) != edited and "grace_s=30" in steps_markdown(changed)


@pytest.mark.parametrize("name", signatures.NAMES)
def test_every_signature_has_a_runbook(name):
    assert for_signature(RUNBOOKS, name) is not None, "no runbook triggers on %s" % name


@pytest.mark.parametrize("rb_id", sorted(EXPECTED))
def test_runbook_has_the_prose_a_person_needs(rb_id):
    rb = RUNBOOKS[rb_id]
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
