"""The watchdog's account on /metrics: this instance's incidents and escalations, read
incrementally from ``paths.state_dir``/incidents.jsonl, and whether the watchdog has
stopped acting on it (its guard in ``watchdog/state.json`` is escalated).

    glmtts_watchdog_incidents_total{signature, runbook, outcome}
        each incident once, when its first terminal record is read (outcome: recovered,
        warning, failed, escalated, interrupted; planned stops are not incidents)
    glmtts_watchdog_escalations_total{signature, runbook}
        each incident that reached ``escalated``, once (also one journaled as ``failed``
        first, which older watchdogs did)
    glmtts_watchdog_escalated
        1 while the watchdog waits for `glmtts-watchdog resume` on this instance

Whose incidents: the journal is shared by every instance on a host (glmtts@0, glmtts@1
write one state_dir), so each instance exports only the incidents whose watchdog URL has
its own ``server.port``; summed over instances nothing is counted twice. ``signature`` is
the signature whose runbook the incident ran (the first, in the watchdog's precedence,
that the runbook triggers on), else its first signature.

Counting survives everything a scrape can see: the journal is folded in memory, so a
record read again (several records per incident, a rotated or rewritten journal) never
counts twice; a rename rotation is followed (the rest of the old file is read from its
sibling first), a truncation is seen as a shrunk file or changed bytes before the
offset. A new process reads the whole journal, so an incident the watchdog recorded
while this instance was down (a segfault, a crash) shows up as an increase after the
restart instead of being lost in the reset. Every (signature, default runbook, outcome)
starts at 0 so the first incident of a kind is an increase that ``increase()`` sees.
"""

import collections
import json
import logging
import os
import threading
from urllib.parse import urlparse

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from glmtts.watchdog import signatures
from glmtts.watchdog.states import GuardState, IncidentState

log = logging.getLogger(__name__)

OUTCOMES = (IncidentState.RECOVERED, IncidentState.WARNING, IncidentState.FAILED, IncidentState.ESCALATED,
            IncidentState.INTERRUPTED)
CHUNK = 1 << 20
FINGERPRINT = 64
REMEMBER_IDS = 100000   # incidents remembered for de-duplication; far more than a journal holds
# A record written while the incident is still open carries "outcome": null (to_dict() with
# sort_keys); skipping those without parsing keeps a long journal cheap to read at start-up.
OPEN_RECORD = b'"outcome": null'


class JournalTail:
    """The complete lines appended to one file since the last read, keyed by (device,
    inode, offset) with the bytes just before the offset as a fingerprint."""

    def __init__(self, path):
        self.path = path
        self.dev_ino = None
        self.offset = 0
        self.tail = b""      # the last bytes consumed (the fingerprint)

    def read(self):
        """Complete lines (bytes, without the newline) since the last call."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return []
        lines = []
        ident = (st.st_dev, st.st_ino)
        if self.dev_ino is not None and ident != self.dev_ino:
            # rename rotation: finish the old inode (now a sibling) before the new file
            old = self._sibling_with(self.dev_ino)
            if old is not None:
                lines += self._read_from(old, self.offset, final=True)
            self.offset, self.tail = 0, b""
        self.dev_ino = ident
        with open(self.path, "rb") as f:
            if st.st_size < self.offset or (self.offset and _bytes_before(f, self.offset) != self.tail):
                # truncated (copytruncate, or rewritten in place): read it again from the start;
                # the fold keeps a record already counted from counting twice
                log.info("incident journal %s was truncated or rewritten; reading it from the start", self.path)
                self.offset, self.tail = 0, b""
            lines += self._read_open(f, final=False)
        return lines

    def _sibling_with(self, ident):
        from glmtts.watchdog.scanner import siblings

        for p in siblings(self.path):
            try:
                st = os.stat(p)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == ident:
                return p
        return None

    def _read_from(self, path, offset, final):
        try:
            with open(path, "rb") as f:
                self.offset = offset
                return self._read_open(f, final)
        except OSError:
            return []

    def _read_open(self, f, final):
        f.seek(self.offset)
        lines, pending = [], b""
        while True:
            chunk = f.read(CHUNK)
            if not chunk:
                break
            data = pending + chunk
            parts = data.split(b"\n")
            pending = parts.pop()
            lines += parts
            cut = len(data) - len(pending)
            self.offset += cut
            self.tail = (self.tail + data[max(0, cut - FINGERPRINT):cut])[-FINGERPRINT:]
        if final and pending:  # a rotated-away file is never finished: take its last line
            lines.append(pending)
        return lines


def _bytes_before(f, offset):
    lo = max(0, offset - FINGERPRINT)
    f.seek(lo)
    return f.read(offset - lo)


def _port(url):
    try:
        u = urlparse(url)
        return u.port or (443 if u.scheme == "https" else 80)
    except (ValueError, TypeError):
        return None


def primary_signature(sigs, runbook_triggers=()):
    """The signature an incident is counted under (see the module docstring)."""
    known = sorted((s for s in sigs if s in signatures.PRECEDENCE), key=signatures.PRECEDENCE.get)
    for s in known:
        if s in runbook_triggers:
            return s
    if known:
        return known[0]
    return "other" if sigs else "none"


class WatchdogAccount:
    """A prometheus_client collector; ``refresh()`` (off the event loop) reads what is new."""

    def __init__(self, settings, runbooks=None):
        from glmtts.watchdog.incidents import incidents_path
        from glmtts.watchdog.state import watchdog_dir

        self.settings = settings
        self.port = settings.server.port
        self.journal = JournalTail(incidents_path(settings))
        self.state_path = os.path.join(watchdog_dir(settings), "state.json")
        self._runbooks = runbooks       # id -> Runbook; loaded on the first refresh when None
        self.units = set(self._configured_units())
        self.incidents = collections.Counter()    # (signature, runbook, outcome) -> n
        self.escalations = collections.Counter()  # (signature, runbook) -> n
        self.escalated = 0
        self._counted = collections.OrderedDict()  # incident id -> {"outcome", "escalated"} already counted
        self._lock = threading.Lock()
        self._started = False
        self._state_warned = False

    def _configured_units(self):
        from glmtts.watchdog.instances import configured

        try:
            return [i.unit for i in configured(self.settings) if _port(i.url) == self.port]
        except Exception as e:  # a bad watchdog.instances is the watchdog's error to report, not /metrics'
            log.warning("watchdog account: watchdog.instances unusable (%s); units are learnt from the journal", e)
            return []

    def _load_runbooks(self):
        from glmtts.watchdog.runbook import default_dir, load_all

        try:
            return load_all(default_dir(self.settings))
        except Exception as e:  # without runbooks the counters still work, labelled runbook="none"
            log.warning("watchdog account: runbooks not readable (%s); runbook labels default to none", e)
            return {}

    def _default_runbook(self, signature):
        from glmtts.watchdog.runbook import for_signature

        rb = for_signature(self._runbooks, signature)
        return rb.id if rb else "none"

    def refresh(self):
        with self._lock:
            if not self._started:
                if self._runbooks is None:
                    self._runbooks = self._load_runbooks()
                for sig in signatures.NAMES:
                    rb = self._default_runbook(sig)
                    self.escalations[(sig, rb)] += 0
                    for outcome in OUTCOMES:
                        self.incidents[(sig, rb, outcome)] += 0
                self._started = True
            for raw in self.journal.read():
                self._record(raw)
            self.escalated = self._read_escalated()

    def _record(self, raw):
        if not raw.strip() or OPEN_RECORD in raw:
            return
        try:
            rec = json.loads(raw)
        except ValueError:
            return  # a half-written line of a disk that filled; the journal's readers skip it too
        if not isinstance(rec, dict) or rec.get("state") not in OUTCOMES or _port(rec.get("url")) != self.port:
            return
        key = rec.get("id")
        if rec.get("unit"):
            self.units.add(rec["unit"])
        done = self._counted.get(key)
        if done is None:
            done = self._counted[key] = set()
            if len(self._counted) > REMEMBER_IDS:
                self._counted.popitem(last=False)
        runbook = rec.get("runbook")
        triggers = getattr(self._runbooks.get(runbook), "triggers", ()) if runbook else ()
        sig = primary_signature(list(rec.get("signatures") or []), triggers)
        runbook = runbook or self._default_runbook(sig)
        if "outcome" not in done:
            done.add("outcome")
            self.incidents[(sig, runbook, rec["state"])] += 1
        if rec["state"] == IncidentState.ESCALATED and "escalated" not in done:
            done.add("escalated")
            self.escalations[(sig, runbook)] += 1

    def _read_escalated(self):
        try:
            with open(self.state_path, "rb") as f:
                guards = json.loads(f.read().decode("utf-8")).get("guards", {})
        except FileNotFoundError:
            return 0
        except (OSError, ValueError, UnicodeDecodeError, AttributeError) as e:
            # the watchdog replaces the file atomically, so this is a real problem: say it once
            if not self._state_warned:
                log.warning("watchdog account: %s unreadable (%s); keeping the last escalation state",
                            self.state_path, e)
                self._state_warned = True
            return self.escalated
        return 1 if any(isinstance(g, dict) and g.get("state") == GuardState.ESCALATED
                        for unit, g in guards.items() if unit in self.units) else 0

    # -- prometheus_client collector ---------------------------------------------------

    def describe(self):
        return self._families(empty=True)

    def collect(self):
        with self._lock:
            return self._families()

    def _families(self, empty=False):
        inc = CounterMetricFamily("glmtts_watchdog_incidents", "Watchdog incidents of this instance, each counted once "
                                  "at its first outcome, by signature, runbook and outcome.",
                                  labels=["signature", "runbook", "outcome"])
        esc = CounterMetricFamily("glmtts_watchdog_escalations", "Watchdog incidents of this instance that escalated "
                                  "to a human, by signature and runbook.", labels=["signature", "runbook"])
        now = GaugeMetricFamily("glmtts_watchdog_escalated", "1 while the watchdog has stopped acting on this instance "
                                "and waits for `glmtts-watchdog resume`.")
        if not empty:
            for (sig, rb, outcome), n in sorted(self.incidents.items()):
                inc.add_metric([sig, rb, outcome], n)
            for (sig, rb), n in sorted(self.escalations.items()):
                esc.add_metric([sig, rb], n)
            now.add_metric([], self.escalated)
        return [inc, esc, now]
