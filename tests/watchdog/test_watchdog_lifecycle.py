"""The incident lifecycle (glmtts/watchdog/incidents.py Lifecycle, running states.INCIDENT,
a glmtts/machine.py Machine) walked arrow by arrow: every arrow of the table journals the
record, runs exactly the entry effects of its target state (closing hooks, guard, alert),
and every arrow outside the table is refused. And no module but the lifecycle changes an
incident's state."""

import ast
import logging
import pathlib

import pytest

from glmtts.watchdog.incidents import Incident, Lifecycle
from glmtts.watchdog.states import INCIDENT, INCIDENT_TERMINAL, INCIDENT_TRANSITIONS, IncidentState, InvalidTransition

ROOT = pathlib.Path(__file__).resolve().parents[2]
ARROWS = [(old, new) for old, targets in INCIDENT_TRANSITIONS.items() for new in targets]
STATES = [v for k, v in vars(IncidentState).items() if k.isupper()]


class Journal:
    def __init__(self):
        self.records = []

    def append(self, inc):
        self.records.append(inc.to_dict())


class Alerter:
    def __init__(self):
        self.sent = []

    def send(self, key, severity, title, body):
        self.sent.append((key, severity, title))
        return "sent"


class Guard:
    def __init__(self):
        self.calls = []

    def escalate(self, unit, reason, incident_id, now):
        self.calls.append(("escalate", unit, incident_id))

    def verified(self, unit, runbook_id):
        self.calls.append(("verified", unit, runbook_id))


def path_to(state):
    """The arrows from opened to ``state`` (breadth first through the table)."""
    paths = {IncidentState.OPENED: []}
    frontier = [IncidentState.OPENED]
    while frontier:
        nxt = []
        for s in frontier:
            for t in INCIDENT_TRANSITIONS.get(s, ()):
                if t not in paths:
                    paths[t] = paths[s] + [t]
                    nxt.append(t)
        frontier = nxt
    return paths[state]


def rig():
    journal, alerter, guard = Journal(), Alerter(), Guard()
    lc = Lifecycle(journal, alerter, clock=lambda: 1_800_000_000.0, guard=guard)
    inc = Incident("inc-1", "glmtts", "http://127.0.0.1:9", 1_800_000_000.0, ["unhealthy"], runbook="service-down")
    return lc, inc, journal, alerter, guard


@pytest.mark.parametrize("old, new", ARROWS, ids=["%s->%s" % a for a in ARROWS])
def test_every_arrow_journals_and_runs_exactly_its_entry_effects(old, new):
    lc, inc, journal, alerter, guard = rig()
    for s in path_to(old):
        lc.advance(inc, s, "on the way")
    closed = []
    lc.closing.append(lambda i: closed.append((i.state, len(journal.records))))
    n_records, n_sent, n_guard = len(journal.records), len(alerter.sent), len(guard.calls)

    lc.advance(inc, new, "because")

    assert inc.state == new
    assert journal.records[n_records]["state"] == new  # journaled first, whatever follows
    assert inc.history[-1] == {"from": old, "to": new, "reason": "because"}
    sent = alerter.sent[n_sent:]
    expected_alert = Lifecycle.ALERT_AS.get(new) if "alert" in Lifecycle.ENTRY[new] else None
    assert [k.split(":", 1)[1] for k, _, _ in sent] == ([expected_alert] if expected_alert else [])
    calls = guard.calls[n_guard:]
    assert calls == {IncidentState.ESCALATED: [("escalate", "glmtts", "inc-1")],
                     IncidentState.RECOVERED: [("verified", "glmtts", "service-down")]}.get(new, [])
    if new in INCIDENT_TERMINAL:
        # the closing hooks ran once, before the terminal record was journaled (it carries what they noted)
        assert closed == [(new, n_records)] and inc.ended_at is not None and inc.current_step is None
        assert lc.closing == []  # once
    else:
        assert closed == []


def reachable():
    return [s for s in STATES if s == IncidentState.OPENED or any(s == n for _, n in ARROWS)]


@pytest.mark.parametrize("old", reachable())
def test_every_arrow_outside_the_table_is_refused(old):
    for new in STATES:
        if new == old or (old, new) in ARROWS:
            continue
        lc, inc, journal, alerter, guard = rig()
        for s in path_to(old):
            lc.advance(inc, s, "on the way")
        before = (len(journal.records), len(alerter.sent), len(guard.calls))
        with pytest.raises(InvalidTransition):
            lc.advance(inc, new, "not allowed")
        assert inc.state == old and (len(journal.records), len(alerter.sent), len(guard.calls)) == before


def test_the_table_has_no_dead_states_and_every_target_has_entry_effects():
    targets = {n for _, n in ARROWS}
    assert targets == set(Lifecycle.ENTRY), (targets ^ set(Lifecycle.ENTRY))
    # terminal states have no way out; every non-terminal state is reachable and has one
    for s in INCIDENT_TRANSITIONS:
        assert s not in INCIDENT_TERMINAL
    assert IncidentState.PLANNED in INCIDENT_TERMINAL  # a planned record is written whole, never advanced


def test_the_lifecycle_runs_the_machines_one_table_and_logs_failures_as_warnings(caplog):
    assert Lifecycle.ENTRY is INCIDENT.entry and INCIDENT_TRANSITIONS == INCIDENT.arrows
    lc, inc, journal, alerter, guard = rig()
    assert {n for names in INCIDENT.entry.values() for n in names} == set(lc.effects)  # one callable per name
    caplog.set_level(logging.INFO, "glmtts.watchdog.states")
    lc.advance(inc, IncidentState.REMEDIATING, "runbook service-down")
    lc.advance(inc, IncidentState.FAILED, "smoke test failed")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "incident inc-1: opened -> remediating (runbook service-down)"),
        ("WARNING", "incident inc-1: remediating -> failed (smoke test failed)")]


def test_a_dry_run_lifecycle_journals_guards_and_alerts_nothing():
    journal, alerter, guard = Journal(), Alerter(), Guard()
    lc = Lifecycle(journal, alerter, dry_run=True, guard=guard)
    inc = Incident("inc-2", "glmtts", "u", 0.0, ["unhealthy"], runbook="service-down")
    lc.advance(inc, IncidentState.REMEDIATING, "r")
    lc.advance(inc, IncidentState.DRY_RUN, "d")
    assert journal.records == [] and alerter.sent == [] and guard.calls == []


def _modules():
    for path in sorted((ROOT / "glmtts").rglob("*.py")):
        yield path, ast.parse(path.read_text(encoding="utf-8"), str(path))


def test_no_module_but_the_lifecycle_changes_an_incidents_state():
    """Only Lifecycle (incidents.py) runs the incident's machine (INCIDENT.advance); nothing
    calls incident_transition (the bare arrow, without effects); the executor asks nobody to advance (it only
    runs steps); nothing in the watchdog assigns a ``state`` by hand (the machine does)."""
    offenders = []
    for path, tree in _modules():
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                owner = getattr(node.func, "value", None)
                owner = getattr(owner, "id", None) or getattr(owner, "attr", None)
                if name == "incident_transition":  # the bare arrow (tests only): skips every effect
                    offenders.append("%s:%d calls incident_transition" % (rel, node.lineno))
                if owner == "INCIDENT" and name in ("advance", "change") and rel not in (
                        "glmtts/watchdog/incidents.py", "glmtts/watchdog/states.py"):
                    offenders.append("%s:%d runs the incident's machine" % (rel, node.lineno))
                if name == "advance" and rel == "glmtts/watchdog/executor.py":
                    offenders.append("%s:%d advances an incident" % (rel, node.lineno))
            if isinstance(node, ast.Assign) and rel.startswith("glmtts/watchdog/"):
                for t in node.targets:
                    if isinstance(t, ast.Attribute) and t.attr == "state":
                        offenders.append("%s:%d assigns .state" % (rel, node.lineno))
    assert not offenders, offenders
