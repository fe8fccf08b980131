"""Incremental log reading keyed by (device, inode, offset).

Each cycle reads only the bytes appended since the last one, so its cost grows with new
bytes, not with the size of the file. Rotation is recognised and followed:

- rename rotation (logrotate's default, supervisord's own): the path now names a new
  inode. The old inode is found among the siblings (``name.1``, ``name-20240101``...)
  and read to its end before the new file is read from its start, so lines written just
  before the rotation are neither missed nor read twice.
- copytruncate: the same inode is now shorter than our offset, or the bytes just before
  our offset changed (it was truncated and has grown again). The copy is found among the
  siblings by those same bytes and read from our offset to its end, then the live file
  from 0.

A partial last line is not consumed (the writer is still writing it), except in a file
that has been rotated away, which will never be finished. A line longer than
``max_line`` is kept as a truncated head; bytes that are not UTF-8 are replaced.
Positions are plain dicts so the caller can store them with the rest of the state.
"""

import calendar
import logging
import os
import re
import time
from collections import deque
from dataclasses import dataclass, field

from . import signatures

log = logging.getLogger(__name__)

CHUNK = 1 << 20
FINGERPRINT = 64
MAX_EVIDENCE = 10          # evidence lines kept per signature per scan
MAX_EVIDENCE_CHARS = 2000
FIRST_SIGHT_TAIL = 1 << 20  # a never-seen file is read from at most this far before its end
COMPRESSED = (".gz", ".xz", ".bz2", ".zst", ".lz4", ".Z")

_TS = re.compile(r"^\[?(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}:\d{2})(?:[.,](\d+))?\s*(Z|[+-]\d{2}:?\d{2})?")


def line_time(text):
    """Epoch seconds of a leading timestamp (local time when it has no zone), or None."""
    m = _TS.match(text)
    if not m:
        return None
    date, hms, frac, zone = m.groups()
    try:
        parsed = time.strptime(date + " " + hms, "%Y-%m-%d %H:%M:%S")
        if zone:
            z = "+0000" if zone == "Z" else zone.replace(":", "")
            t = calendar.timegm(parsed) - (1 if z[0] == "+" else -1) * (int(z[1:3]) * 3600 + int(z[3:5]) * 60)
        else:
            t = time.mktime(parsed)
    except (ValueError, OverflowError):
        return None
    return t + (float("0." + frac) if frac else 0.0)


@dataclass
class Evidence:
    signature: str
    path: str
    line: str
    at: float = None        # timestamp of the line when it carries one

    def to_dict(self):
        return {"signature": self.signature, "path": self.path, "line": self.line, "at": self.at}


@dataclass
class ScanResult:
    path: str
    position: dict
    counts: dict = field(default_factory=dict)     # signature -> lines seen
    evidence: list = field(default_factory=list)   # Evidence, at most MAX_EVIDENCE per signature
    bytes_read: int = 0
    lines: int = 0
    notes: list = field(default_factory=list)      # rotation followed, gaps...
    kept: list = field(default_factory=list)       # lines the caller's ``keep`` regex matched (the manager's account)

    def signatures(self):
        return list(self.counts)


class _Reader:
    """Splits bytes into lines, classifies them and keeps evidence."""

    def __init__(self, result, max_line, carry=None, keep=None):
        self.result = result
        self.max_line = max_line
        self.keep = keep
        self.long_head = carry  # text of a long line whose end has not been seen yet
        self.traceback = deque(maxlen=200)
        self.in_traceback = False
        # The last bytes consumed: the fingerprint stored with the offset. Taken from what
        # was read, never re-read from the file, which may be truncated under us.
        self.tail = b""

    def emit(self, raw, path, truncated=False):
        text = raw[:self.max_line].decode("utf-8", "replace").rstrip("\r")
        if truncated or len(raw) > self.max_line:
            text += " [...truncated]"
        self.line(text, path)

    def line(self, text, path):
        res = self.result
        res.lines += 1
        if self.keep is not None and self.keep.search(text):
            res.kept.append(text)
        context = ()
        if text.startswith("Traceback (most recent call last)"):
            self.traceback.clear()
            self.traceback.append(text)
            self.in_traceback = True
            return
        if self.in_traceback:
            if text[:1] in (" ", "\t") or not text.strip():
                self.traceback.append(text)
                return
            context = tuple(self.traceback)
            self.in_traceback = False
        for name in signatures.classify(text, context):
            n = res.counts.get(name, 0)
            res.counts[name] = n + 1
            if n < MAX_EVIDENCE:
                ev = text if len(text) <= MAX_EVIDENCE_CHARS else text[:MAX_EVIDENCE_CHARS] + " [...truncated]"
                res.evidence.append(Evidence(name, path, ev, line_time(text)))

    def read(self, f, path, start, final):
        """Read f from start to its end; return the offset up to which bytes are consumed."""
        f.seek(start)
        consumed = start
        pending = b""
        while True:
            chunk = f.read(CHUNK)
            if not chunk:
                break
            self.result.bytes_read += len(chunk)
            data = pending + chunk if pending else chunk
            parts = data.split(b"\n")
            pending = parts.pop()
            for raw in parts:
                if self.long_head is not None:
                    self.line(self.long_head + " [...truncated]", path)
                    self.long_head = None
                else:
                    self.emit(raw, path)
            cut = len(data) - len(pending)
            consumed += cut
            self.tail = (self.tail + data[max(0, cut - FINGERPRINT):cut])[-FINGERPRINT:]
            if len(pending) > self.max_line:
                # A runaway line: keep its head, drop the rest until its newline comes.
                if self.long_head is None:
                    self.long_head = pending[:self.max_line].decode("utf-8", "replace")
                consumed += len(pending)
                self.tail = (self.tail + pending[-FINGERPRINT:])[-FINGERPRINT:]
                pending = b""
        if final:
            if self.long_head is not None:
                self.line(self.long_head + " [...truncated]", path)
                self.long_head = None
            elif pending:
                self.emit(pending, path)
            consumed += len(pending)
            self.tail = (self.tail + pending[-FINGERPRINT:])[-FINGERPRINT:]
        return consumed


def _fingerprint_bytes(f, offset):
    lo = max(0, offset - FINGERPRINT)
    f.seek(lo)
    return f.read(offset - lo)


def _fingerprint(f, offset):
    return _fingerprint_bytes(f, offset).hex()


def siblings(path):
    """Rotated copies of path (name.1, name-20240101, ...), newest first; compressed ones
    are skipped (delaycompress keeps the newest plain)."""
    d, base = os.path.split(path)
    out = []
    try:
        names = os.listdir(d or ".")
    except OSError:
        return []
    for n in names:
        if n != base and (n.startswith(base + ".") or n.startswith(base + "-")) and not n.endswith(COMPRESSED):
            p = os.path.join(d, n)
            try:
                out.append((os.stat(p).st_mtime, p))
            except OSError:
                continue
    return [p for _, p in sorted(out, reverse=True)]


def classify_lines(lines, label, max_line=8192):
    """Evidence from lines that are not in a file (journalctl output)."""
    res = ScanResult(label, {})
    reader = _Reader(res, max_line)
    for line in lines:
        reader.line(line, label)
    return res.evidence


class LogScanner:
    def __init__(self, max_line=8192, first_sight_tail=FIRST_SIGHT_TAIL):
        self.max_line = max_line
        self.first_sight_tail = first_sight_tail

    def scan(self, path, position=None, keep=None):
        """Read what was appended to path since position; returns a ScanResult whose
        ``position`` is what to pass next time. Lines matching ``keep`` (a compiled regex)
        are returned whole in ``kept``, whatever their signature."""
        position = dict(position or {})
        result = ScanResult(path, position)
        reader = _Reader(result, self.max_line, position.get("carry"), keep)
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            # Renamed away and not yet recreated: finish the old inode, then wait.
            if position.get("inode") is not None:
                old = self._find_inode(path, position)
                if old:
                    reader.tail = bytes.fromhex(position.get("fingerprint", ""))
                    end = self._read_path(reader, old, position["offset"], path_label=old, final=False)
                    position.update(offset=end, carry=reader.long_head, fingerprint=reader.tail.hex())
                    result.notes.append("%s missing; read rotated %s" % (path, old))
            result.position = position
            return result
        except OSError as e:
            result.notes.append("cannot read %s: %s" % (path, e))
            return result
        with f:
            st = os.fstat(f.fileno())
            same = (st.st_ino, st.st_dev) == (position.get("inode"), position.get("dev"))
            if position.get("inode") is None:
                start = self._first_sight_start(f, st.st_size)
            elif same:
                offset = position.get("offset", 0)
                if st.st_size < offset or _fingerprint(f, offset) != position.get("fingerprint", ""):
                    copy = self._find_copy(path, position)
                    if copy:
                        self._read_path(reader, copy, offset, path_label=copy, final=True)
                        result.notes.append("copytruncate: read %s from %d" % (copy, offset))
                    else:
                        result.notes.append("%s was truncated and no copy was found: lines before the truncation may be missed" % path)
                        log.warning("%s was truncated and no rotated copy was found", path)
                    reader.long_head = None
                    start = 0
                else:
                    start = offset
            else:
                old = self._find_inode(path, position)
                if old:
                    self._read_path(reader, old, position.get("offset", 0), path_label=old, final=True)
                    result.notes.append("rotated: read %s to its end" % old)
                    # Rotated more than once since the last cycle: the generations in
                    # between were written after the old file, and are read whole.
                    for mid in self._newer_siblings(path, old, st):
                        self._read_path(reader, mid, 0, path_label=mid, final=True)
                        result.notes.append("rotated again: read %s whole" % mid)
                else:
                    result.notes.append("%s was replaced and the old file was not found: lines may be missed" % path)
                    log.warning("%s was rotated and the old file is gone", path)
                reader.long_head = None
                start = 0
            reader.tail = bytes.fromhex(position.get("fingerprint", "")) if start and start == position.get("offset") \
                else _fingerprint_bytes(f, start)
            end = reader.read(f, path, start, final=False)
            result.position = {"inode": st.st_ino, "dev": st.st_dev, "offset": end,
                               "fingerprint": reader.tail.hex(), "carry": reader.long_head}
        return result

    def _first_sight_start(self, f, size):
        if size <= self.first_sight_tail:
            return 0
        f.seek(size - self.first_sight_tail)
        f.readline()  # start at a line boundary
        return f.tell()

    def _read_path(self, reader, path, offset, path_label, final):
        try:
            with open(path, "rb") as f:
                return reader.read(f, path_label, offset, final)
        except OSError as e:
            reader.result.notes.append("cannot read %s: %s" % (path, e))
            return offset

    def _find_inode(self, path, position):
        for p in siblings(path):
            try:
                st = os.stat(p)
            except OSError:
                continue
            if (st.st_ino, st.st_dev) == (position.get("inode"), position.get("dev")):
                return p
        return None

    def _newer_siblings(self, path, old, current):
        try:
            old_mtime = os.stat(old).st_mtime_ns
        except OSError:
            return []
        out = []
        for p in siblings(path):
            try:
                st = os.stat(p)
            except OSError:
                continue
            if p != old and st.st_mtime_ns > old_mtime and (st.st_ino, st.st_dev) != (current.st_ino, current.st_dev):
                out.append((st.st_mtime_ns, p))
        return [p for _, p in sorted(out)]

    def _find_copy(self, path, position):
        offset = position.get("offset", 0)
        for p in siblings(path):
            try:
                with open(p, "rb") as f:
                    if os.fstat(f.fileno()).st_size >= offset and _fingerprint(f, offset) == position.get("fingerprint", ""):
                        return p
            except OSError:
                continue
        return None
