"""service/incident_metrics.py: the watchdog's incidents and escalations on /metrics,
read from a journal written by the watchdog's own code (IncidentLog + Lifecycle). Each
incident counts once however often it is scraped, re-recorded, rotated or rewritten; only
this instance's incidents count; a new process counts the whole history."""

import json
import os
import time

from prometheus_client import generate_latest

from glmtts import config
from glmtts.watchdog.incidents import Incident, IncidentLog, Lifecycle, fold, new_id
from glmtts.watchdog.states import IncidentState as S
from service.incident_metrics import OUTCOMES, WatchdogAccount
from service.metrics import Metrics

PORT, OTHER = 7861, 7862


def _settings(tmp_path, port=PORT):
    return config.load(path="", env={
        "GLMTTS_PATHS_STATE_DIR": str(tmp_path), "GLMTTS_SERVER_PORT": str(port),
        "GLMTTS_WATCHDOG_UNIT": "glmtts@1", "GLMTTS_WATCHDOG_URL": "http://127.0.0.1:%d" % port,
        "GLMTTS_WATCHDOG_INSTANCES": "glmtts@2=http://127.0.0.1:%d" % OTHER})


def _journal(tmp_path):
    return IncidentLog(os.path.join(str(tmp_path), "incidents.jsonl"))


def _incident(tmp_path, sigs, path, port=PORT, runbook=None, unit=None):
    """Journal one incident through ``path`` (states after opened), as the watchdog does."""
    unit = unit or ("glmtts@1" if port == PORT else "glmtts@2")
    now = time.time()
    inc = Incident(id=new_id(unit, now), unit=unit, url="http://127.0.0.1:%d" % port, detected_at=now,
                   signatures=list(sigs))
    inc.runbook = runbook
    life = Lifecycle(_journal(tmp_path))
    life.open(inc)
    for state in path:
        life.advance(inc, state, "test")
    return inc


def _counts(account):
    return {k: v for k, v in account.incidents.items() if v}, {k: v for k, v in account.escalations.items() if v}


def test_every_signature_and_outcome_starts_at_zero(tmp_path):
    acc = WatchdogAccount(_settings(tmp_path))
    acc.refresh()
    sigs = {k[0] for k in acc.incidents}
    assert {"segfault", "cuda_oom", "gpu_xid", "unhealthy", "crash_loop"} <= sigs
    assert {k[2] for k in acc.incidents} == set(OUTCOMES)
    assert acc.incidents[("segfault", "segfault", "recovered")] == 0
    assert acc.incidents[("enospc", "disk-full", "escalated")] == 0
    assert _counts(acc) == ({}, {})


def test_each_incident_counts_once_across_scrapes_and_records(tmp_path):
    acc = WatchdogAccount(_settings(tmp_path))
    acc.refresh()
    _incident(tmp_path, ["segfault"], [S.REMEDIATING, S.RECOVERED], runbook="segfault")
    # a step asked for a human: one incident, one escalation
    _incident(tmp_path, ["cuda_oom"], [S.REMEDIATING, S.ESCALATED], runbook="cuda-oom")
    _incident(tmp_path, ["cuda_oom"], [S.REMEDIATING, S.FAILED], runbook="cuda-oom")
    _incident(tmp_path, ["unhealthy", "cuda_fatal"], [S.REMEDIATING, S.RECOVERED], runbook="cuda-fatal")
    _incident(tmp_path, ["segfault"], [S.REMEDIATING], runbook="segfault")  # still open: not counted yet
    for _ in range(3):
        acc.refresh()
    want = ({("segfault", "segfault", "recovered"): 1, ("cuda_oom", "cuda-oom", "failed"): 1,
             ("cuda_oom", "cuda-oom", "escalated"): 1,
             ("cuda_fatal", "cuda-fatal", "recovered"): 1}, {("cuda_oom", "cuda-oom"): 1})
    assert _counts(acc) == want
    # the watchdog writes a closed incident again (the alert's result): still once
    _journal(tmp_path).append(_journal(tmp_path).read()[0])
    acc.refresh()
    assert _counts(acc) == want


def test_only_this_instances_incidents_count(tmp_path):
    acc = WatchdogAccount(_settings(tmp_path))
    _incident(tmp_path, ["segfault"], [S.REMEDIATING, S.RECOVERED], port=OTHER, runbook="segfault")
    _incident(tmp_path, ["enospc"], [S.REMEDIATING, S.RECOVERED], runbook="disk-full")
    acc.refresh()
    assert _counts(acc) == ({("enospc", "disk-full", "recovered"): 1}, {})
    other = WatchdogAccount(_settings(tmp_path, port=OTHER))
    other.refresh()
    assert _counts(other) == ({("segfault", "segfault", "recovered"): 1}, {})


def test_a_new_process_counts_the_whole_history(tmp_path):
    first = WatchdogAccount(_settings(tmp_path))
    _incident(tmp_path, ["segfault"], [S.REMEDIATING, S.RECOVERED], runbook="segfault")
    first.refresh()
    # the instance died; meanwhile the watchdog journaled the fault; a new process starts
    _incident(tmp_path, ["segfault"], [S.REMEDIATING, S.RECOVERED], runbook="segfault")
    second = WatchdogAccount(_settings(tmp_path))
    second.refresh()
    assert _counts(first)[0] == {("segfault", "segfault", "recovered"): 1}
    assert _counts(second)[0] == {("segfault", "segfault", "recovered"): 2}   # 1 -> 2: an increase, no reset


def test_rename_rotation_loses_and_doubles_nothing(tmp_path):
    acc = WatchdogAccount(_settings(tmp_path))
    _incident(tmp_path, ["segfault"], [S.REMEDIATING, S.RECOVERED], runbook="segfault")
    acc.refresh()
    _incident(tmp_path, ["enospc"], [S.REMEDIATING, S.RECOVERED], runbook="disk-full")  # unread at rotation
    path = _journal(tmp_path).path
    os.rename(path, path + ".1")
    _incident(tmp_path, ["gpu_xid"], [S.REMEDIATING, S.ESCALATED], runbook="gpu-xid")
    acc.refresh()
    acc.refresh()
    assert _counts(acc) == ({("segfault", "segfault", "recovered"): 1, ("enospc", "disk-full", "recovered"): 1,
                             ("gpu_xid", "gpu-xid", "escalated"): 1}, {("gpu_xid", "gpu-xid"): 1})


def test_a_rewritten_journal_counts_only_what_is_new(tmp_path):
    """A journal compacted in place (its folded records rewritten, same inode, shorter or
    not) or copytruncated: re-read from the start, nothing counted twice."""
    acc = WatchdogAccount(_settings(tmp_path))
    _incident(tmp_path, ["segfault"], [S.REMEDIATING, S.RECOVERED], runbook="segfault")
    _incident(tmp_path, ["enospc"], [S.REMEDIATING, S.RECOVERED], runbook="disk-full")
    acc.refresh()
    log = _journal(tmp_path)
    kept = fold(log.records())
    with open(log.path, "r+", encoding="utf-8") as f:  # same inode
        f.truncate(0)
        f.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
    _incident(tmp_path, ["segfault"], [S.REMEDIATING, S.RECOVERED], runbook="segfault")
    acc.refresh()
    assert _counts(acc)[0] == {("segfault", "segfault", "recovered"): 2, ("enospc", "disk-full", "recovered"): 1}
    with open(log.path, "r+", encoding="utf-8") as f:  # copytruncate: emptied, then written again...
        f.truncate(0)
    n = 0
    while n < 2 or os.path.getsize(log.path) <= acc.journal.offset:  # ...past the old offset before a scrape
        _incident(tmp_path, ["batch_input"], [S.WARNING])
        n += 1
    acc.refresh()
    assert _counts(acc)[0] == {("segfault", "segfault", "recovered"): 2, ("enospc", "disk-full", "recovered"): 1,
                               ("batch_input", "bad-batch", "warning"): n}


def test_a_half_written_record_waits_for_its_newline(tmp_path):
    acc = WatchdogAccount(_settings(tmp_path))
    acc.refresh()
    inc = Incident(id="x-1", unit="glmtts@1", url="http://127.0.0.1:%d" % PORT, detected_at=time.time(),
                   signatures=["segfault"], state=S.RECOVERED, runbook="segfault")
    line = json.dumps(inc.to_dict(), sort_keys=True)
    path = _journal(tmp_path).path
    with open(path, "a", encoding="utf-8") as f:
        f.write(line[:40])
    acc.refresh()
    assert _counts(acc)[0] == {}
    with open(path, "a", encoding="utf-8") as f:
        f.write(line[40:] + "\n")
    acc.refresh()
    assert _counts(acc)[0] == {("segfault", "segfault", "recovered"): 1}


def test_escalated_follows_this_instances_guard(tmp_path):
    acc = WatchdogAccount(_settings(tmp_path))
    state = os.path.join(str(tmp_path), "watchdog", "state.json")
    os.makedirs(os.path.dirname(state))

    def guards(**units):
        with open(state, "w", encoding="utf-8") as f:
            json.dump({"version": 1, "guards": {u.replace("_", "@"): {"state": s} for u, s in units.items()}}, f)

    acc.refresh()
    assert acc.escalated == 0
    guards(glmtts_2="escalated", glmtts_1="armed")
    acc.refresh()
    assert acc.escalated == 0   # another instance's guard
    guards(glmtts_1="escalated")
    acc.refresh()
    assert acc.escalated == 1
    guards(glmtts_1="armed")     # `glmtts-watchdog resume`
    acc.refresh()
    assert acc.escalated == 0


def test_the_families_render_on_the_service_registry(tmp_path):
    m = Metrics()
    m.watchdog = WatchdogAccount(_settings(tmp_path))
    m.registry.register(m.watchdog)
    _incident(tmp_path, ["segfault"], [S.REMEDIATING, S.ESCALATED], runbook="segfault")
    m.watchdog.refresh()
    text = generate_latest(m.registry).decode()
    assert 'glmtts_watchdog_incidents_total{outcome="escalated",runbook="segfault",signature="segfault"} 1.0' in text
    assert 'glmtts_watchdog_escalations_total{runbook="segfault",signature="segfault"} 1.0' in text
    assert "# TYPE glmtts_watchdog_escalated gauge" in text
