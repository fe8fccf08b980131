"""Files rendered from the code's own tables (docs/reference/, the runbooks' generated
steps section): print them, rewrite the stale ones atomically, or fail when one is
stale. One loop for every generator, so `--write` and `--check` mean the same in each."""

import os
import sys

from .fsutil import atomic_write


def sync(documents, *, write=False, check=False, dry_run=False, out=None, hint=""):
    """``documents``: (path, rendered text) pairs. Default: print each rendered text;
    ``write``: rewrite the stale files (``dry_run``: only say which); ``check``: print
    the stale ones and return 1. ``out``: where to print (the current sys.stdout when
    None, looked up at call time so a redirected stdout is honoured)."""
    out = out or sys.stdout
    stale = []
    for path, text in documents:
        try:
            with open(path, encoding="utf-8") as f:
                current = f.read()
        except FileNotFoundError:
            current = None
        if current != text:
            stale.append(path)
        if write and current != text and dry_run:
            print("would update %s" % path, file=out)
        elif write and current != text:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            atomic_write(path, text.encode("utf-8"))
            print("updated %s" % path, file=out)
        elif not write and not check:
            out.write(text)
    if check and stale:
        print("stale: %s%s" % (", ".join(stale), hint), file=out)
        return 1
    return 0
