"""glmtts/machine.py, the one shape of every state machine: an arrow outside the table is
refused before anything changes, a real arrow is set, recorded, logged by meaning and runs
its entry effects in table order, a transition to the current state is a no-op unless the
table declares it, and a missing effect is a bug caught before anything changes."""

import logging

import pytest

from glmtts.machine import InvalidTransition, Machine

DOOR = Machine("door", {
    "closed": ("open", "broken"),
    "open": ("closed", "open"),   # a self-arrow: re-opening an open door counts
}, entry={"open": ("count", "ring"), "broken": ("ring",)}, levels={"broken": logging.WARNING},
    log=logging.getLogger("tests.door"))


class Door:
    def __init__(self, state="closed"):
        self.key = "front"
        self.state = state
        self.history = []
        self.opened = 0
        self.rang = []


def effects(calls):
    def count(door, old, new, reason):
        calls.append(("count", old, new, reason, door.state))
        door.opened += 1

    def ring(door, old, new, reason):
        calls.append(("ring", old, new, reason, door.state))
    return {"count": count, "ring": ring}


def test_an_arrow_runs_its_entry_effects_in_table_order_after_the_state_is_set(caplog):
    door, calls = Door(), []
    caplog.set_level(logging.INFO, "tests.door")
    assert DOOR.advance(door, "open", "a knock", effects(calls)) == "closed"
    assert door.state == "open" and door.opened == 1
    assert calls == [("count", "closed", "open", "a knock", "open"), ("ring", "closed", "open", "a knock", "open")]
    assert door.history == [{"from": "closed", "to": "open", "reason": "a knock"}]
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [(logging.INFO, "door front: closed -> open (a knock)")]


def test_a_failure_state_is_logged_as_a_warning(caplog):
    caplog.set_level(logging.INFO, "tests.door")
    DOOR.advance(Door(), "broken", "kicked", effects([]))
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [(logging.WARNING, "door front: closed -> broken (kicked)")]


def test_an_arrow_outside_the_table_raises_and_changes_nothing(caplog):
    door, calls = Door("open"), []
    with pytest.raises(InvalidTransition, match=r"door front: open -> broken is not allowed \(from open: closed, open\)"):
        DOOR.advance(door, "broken", "kicked", effects(calls))
    assert (door.state, door.history, calls, caplog.records) == ("open", [], [], [])
    with pytest.raises(InvalidTransition, match="from nowhere: no arrow"):
        DOOR.change(Door("nowhere"), "open")


def test_the_current_state_is_a_no_op_unless_the_table_declares_the_self_arrow():
    door, calls = Door("closed"), []
    assert DOOR.advance(door, "closed", "again", effects(calls)) == "closed"
    assert (door.history, calls) == ([], [])
    door = Door("open")
    DOOR.advance(door, "open", "again", effects(calls))  # open -> open is in the table
    assert door.opened == 1 and door.history == [{"from": "open", "to": "open", "reason": "again"}]


def test_a_missing_effect_is_refused_before_anything_changes():
    door = Door()
    with pytest.raises(LookupError, match="ring"):
        DOOR.advance(door, "open", "x", {"count": lambda *a: None})
    assert door.state == "closed" and door.history == []


def test_change_sets_and_records_without_effects_and_the_table_is_checked_when_built():
    door = Door()
    DOOR.change(door, "open", "by hand")
    assert door.state == "open" and door.opened == 0 and door.history[-1]["to"] == "open"
    with pytest.raises(ValueError, match="ajar"):
        Machine("door", {"closed": ("open",)}, entry={"ajar": ("ring",)})
    assert DOOR.pairs == [("closed", "open"), ("closed", "broken"), ("open", "closed"), ("open", "open")]


def test_state_held_elsewhere_is_read_and_written_through_get_and_put():
    m = Machine("job", {"queued": ("running",)}, get=lambda j: j["status"], put=lambda j, s: j.update(status=s),
                key=lambda j: j["id"])
    job = {"id": "j1", "status": "queued"}
    m.change(job, "running")
    assert job == {"id": "j1", "status": "running"}
    with pytest.raises(InvalidTransition, match="job j1: running -> queued"):
        m.change(job, "queued")
