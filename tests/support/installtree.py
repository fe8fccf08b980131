"""A directory tree standing in for / for `glmtts-system install --root`: the account
databases that useradd/groupadd --prefix edit, and the marker for tests that need them."""

import os
import shutil

import pytest

needs_root_tools = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("useradd", "groupadd", "systemctl")),
    reason="needs root and useradd/groupadd/systemctl (shadow tools with --prefix)")


def make_tree(root):
    """A minimal / with the account databases useradd --prefix edits."""
    etc = root / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text("root:x:0:\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (etc / "gshadow").write_text("root:*::\n")
    for f in ("shadow", "gshadow"):
        os.chmod(etc / f, 0o600)
    return root
