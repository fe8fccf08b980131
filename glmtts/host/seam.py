"""How each method of the host declares what it does to the machine, so ``ReadOnlyHost``
(what ``--dry-run`` runs on) and the recording fake in tests decide from one table, and a
method added without a decision is caught by tests/cli/test_host.py.

``@reads``: looks only (safe in a dry run). ``@changes(kind)``: changes the machine; kind
is one of KINDS. ``run`` and ``request`` are ``@changes`` too: ReadOnlyHost lets their
reading forms through (a ``systemctl show``, a GET) and refuses the rest."""

KINDS = ("files", "accounts", "processes", "services", "http")


def reads(fn):
    fn.host_effect = None
    return fn


def changes(kind):
    if kind not in KINDS:
        raise ValueError("unknown side-effect kind %r (one of %s)" % (kind, ", ".join(KINDS)))

    def mark(fn):
        fn.host_effect = kind
        return fn
    return mark


def declared(cls):
    """{public method name: None (reads) or kind (changes) or "undeclared"} of cls."""
    out = {}
    for name in dir(cls):
        if name.startswith("_"):
            continue
        fn = getattr(cls, name)
        if callable(fn):
            out[name] = getattr(fn, "host_effect", "undeclared")
    return out
