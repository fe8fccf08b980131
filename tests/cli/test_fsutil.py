"""The one durable write and the one append (glmtts/fsutil.py), with the failures a full
disk causes simulated at the os.write seam: nothing half-written is ever left behind."""

import errno
import json
import os

import pytest

from glmtts import fsutil


def test_atomic_write_replaces_whole_with_owner_and_mode_and_leaves_no_temp(tmp_path):
    p = tmp_path / "f.toml"
    p.write_text("old")
    fsutil.atomic_write(str(p), "new ✓", mode=0o640, owner=(os.getuid(), os.getgid()))
    assert p.read_text() == "new ✓" and (p.stat().st_mode & 0o777) == 0o640
    assert sorted(os.listdir(tmp_path)) == ["f.toml"]


def test_atomic_write_that_fails_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    p = tmp_path / "state.json"
    p.write_text("old")

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(fsutil.os, "write", full)
    with pytest.raises(OSError) as e:
        fsutil.atomic_write(str(p), b"new")
    assert fsutil.is_disk_full(e.value)
    assert p.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["state.json"]


def test_append_jsonl_lands_whole_lines_and_a_failed_append_is_cut_back(tmp_path, monkeypatch):
    p = tmp_path / "incidents.jsonl"
    fsutil.append_jsonl(str(p), {"id": 1, "text": "一"})
    fsutil.append_jsonl(str(p), {"id": 2})
    real_write = os.write

    def half_then_full(fd, data):  # a disk that fills mid-line
        real_write(fd, bytes(data[:5]))
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(fsutil.os, "write", half_then_full)
    with pytest.raises(OSError):
        fsutil.append_jsonl(str(p), {"id": 3})
    monkeypatch.undo()
    lines = p.read_text(encoding="utf-8").splitlines()
    assert [json.loads(l)["id"] for l in lines] == [1, 2]  # no half record left
    assert (p.stat().st_mode & 0o777) == 0o640
