"""One shape for every state machine here: the arrows a thing may take, and what
entering a state does (supervisor's ``change_state`` + ``event_map`` habit).

A ``Machine`` is a table, declared once beside the states it names (the watchdog's
incidents and guard, batch jobs, the service's worker and UI gate). Its owner changes a
thing's state only through ``advance(thing, new, reason, effects)``, which

1. refuses an arrow the table does not have: ``InvalidTransition`` naming the kind, the
   thing's key and ``old -> new``, raised before anything changed;
2. sets the state, appends ``{"from", "to", "reason"}`` to ``thing.history`` where the
   thing has one, and logs the change by meaning (``levels``: WARNING for a failure,
   INFO otherwise, unless the owner says more);
3. runs the new state's entry effects, named in ``entry``, in their order. The names are
   the table's; the owner supplies the callables, ``effects[name](thing, old, new,
   reason)`` (a name without a callable is a bug: LookupError, before anything changed).

A transition to the current state is a no-op (nothing logged, nothing run) unless the
table declares that self-arrow, which is then a transition like any other (a batch job
resumed ``running -> running`` after the process running it died).

``change`` is steps 1-2 alone, for a thing whose table has no entry effects.
Dependency-free on purpose: every states module imports it.
"""

import logging


class InvalidTransition(Exception):
    """An arrow the table does not have; nothing was changed."""


def _get_state(thing):
    return thing.state


def _put_state(thing, new):
    thing.state = new


def _key(thing):
    return getattr(thing, "key", None)


class Machine:
    def __init__(self, kind, arrows, *, entry=None, levels=None, get=_get_state, put=_put_state, key=_key,
                 log=None):
        """``arrows``: state -> the states it may go to. ``entry``: state -> effect names.
        ``levels``: state -> log level of entering it. ``get``/``put`` read and write the
        thing's state (default: its ``.state``), ``key`` names it in logs and errors."""
        self.kind = kind
        self.arrows = {old: tuple(news) for old, news in arrows.items()}
        self.entry = {state: tuple(names) for state, names in (entry or {}).items()}
        self.levels = dict(levels or {})
        self.get, self.put, self.key = get, put, key
        self.log = log or logging.getLogger(__name__)
        known = set(self.arrows) | {n for news in self.arrows.values() for n in news}
        stray = (set(self.entry) | set(self.levels)) - known
        if stray:
            raise ValueError("%s machine: %s not in its arrows" % (kind, ", ".join(sorted(stray))))

    @property
    def pairs(self):
        """Every arrow as (old, new), in table order (what tests walk)."""
        return [(old, new) for old, news in self.arrows.items() for new in news]

    def allows(self, old, new):
        return new in self.arrows.get(old, ())

    def _name(self, thing):
        key = self.key(thing)
        return self.kind if key is None else "%s %s" % (self.kind, key)

    def _check(self, thing, new):
        """The current state, and whether ``new`` is a real transition from it."""
        old = self.get(thing)
        if self.allows(old, new):
            return old, True
        if old == new:
            return old, False
        raise InvalidTransition("%s: %s -> %s is not allowed (from %s: %s)" % (
            self._name(thing), old, new, old, ", ".join(self.arrows.get(old, ())) or "no arrow"))

    def _move(self, thing, old, new, reason):
        self.put(thing, new)
        history = getattr(thing, "history", None)
        if history is not None:
            history.append({"from": old, "to": new, "reason": reason})
        self.log.log(self.levels.get(new, logging.INFO), "%s: %s -> %s%s", self._name(thing), old, new,
                     " (%s)" % reason if reason else "")

    def change(self, thing, new, reason=None):
        """Validate, set, record, log; no entry effects. Returns the old state."""
        old, real = self._check(thing, new)
        if real:
            self._move(thing, old, new, reason)
        return old

    def advance(self, thing, new, reason=None, effects=None):
        """``change``, then the new state's entry effects in table order. Returns the old
        state. An effect that raises leaves the state changed and the rest not run: the
        owner decides what that means (a batch job's save hitting ENOSPC, say)."""
        old, real = self._check(thing, new)
        if not real:
            return old
        effects = effects or {}
        names = self.entry.get(new, ())
        missing = [n for n in names if n not in effects]
        if missing:
            raise LookupError("%s: entry effect(s) %s of %s have no callable" % (self._name(thing),
                                                                              ", ".join(missing), new))
        self._move(thing, old, new, reason)
        for name in names:
            effects[name](thing, old, new, reason)
        return old
