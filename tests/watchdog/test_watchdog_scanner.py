"""The log scanner: only new bytes, rotation of both kinds between and during cycles
with no miss and no double count, partial lines, long lines, garbage bytes."""

import os
import shutil
import threading
import time
import types

from glmtts.watchdog import signatures
from glmtts.watchdog.scanner import LogScanner

OOM_TRACEBACK = """\
2025-01-01 03:12:44,101 ERROR glmtts_service.worker: synthesis failed
Traceback (most recent call last):
  File "/opt/glmtts/service/worker.py", line 88, in _run
    result = self.engine.synthesize(request)
  File "/opt/glmtts/glmtts/engines/glmtts_adapter.py", line 140, in synthesize
    wav = self._generate(text)
  File "/opt/glmtts/.venv/lib/python3.11/site-packages/torch/nn/modules/module.py", line 1736, in _call_impl
    return forward_call(*args, **kwargs)
torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 23.65 GiB of which 1.06 GiB is free.
"""
FATAL = "RuntimeError: CUDA error: an illegal memory access was encountered\n"
SEGV = "Fatal Python error: Segmentation fault\n"
NOISE = "2025-01-01 03:12:45,000 INFO glmtts_service.access: 127.0.0.1 POST /v1/audio/speech 200 0.41s\n"


def scan_all(scanner, path, pos):
    res = scanner.scan(path, pos)
    return res, res.position


def append(path, text):
    with open(path, "ab") as f:
        f.write(text.encode() if isinstance(text, str) else text)


def test_real_traceback_is_classified_with_evidence(tmp_path):
    log = tmp_path / "error.log"
    append(log, NOISE * 5 + OOM_TRACEBACK + NOISE + FATAL + SEGV)
    res = LogScanner().scan(str(log))
    assert res.counts == {"cuda_oom": 1, "cuda_fatal": 1, "segfault": 1}
    oom = [e for e in res.evidence if e.signature == "cuda_oom"][0]
    assert oom.line.startswith("torch.OutOfMemoryError: CUDA out of memory")
    assert oom.path == str(log)


def test_reads_only_new_bytes_and_never_twice(tmp_path):
    log = tmp_path / "error.log"
    append(log, NOISE * 1000)
    sc = LogScanner()
    res, pos = scan_all(sc, str(log), None)
    assert res.counts == {}
    added = OOM_TRACEBACK + NOISE
    append(log, added)
    res, pos = scan_all(sc, str(log), pos)
    assert res.counts == {"cuda_oom": 1}
    assert res.bytes_read == len(added.encode())  # cost = new bytes, not file size
    res, pos = scan_all(sc, str(log), pos)
    assert res.counts == {} and res.bytes_read == 0


def test_partial_last_line_is_not_consumed(tmp_path):
    log = tmp_path / "error.log"
    append(log, NOISE + "torch.OutOfMemoryError: CUDA out of mem")
    sc = LogScanner()
    res, pos = scan_all(sc, str(log), None)
    assert res.counts == {}
    append(log, "ory. Tried to allocate 20 MiB\n")
    res, pos = scan_all(sc, str(log), pos)
    assert res.counts == {"cuda_oom": 1}
    assert "CUDA out of memory" in res.evidence[0].line


def test_rename_rotation_between_cycles(tmp_path):
    log = tmp_path / "error.log"
    append(log, NOISE)
    sc = LogScanner()
    _, pos = scan_all(sc, str(log), None)
    append(log, FATAL)                  # written just before the rotation: only in .1
    os.rename(log, str(log) + ".1")
    append(log, SEGV)                   # the fresh file
    res, pos = scan_all(sc, str(log), pos)
    assert res.counts == {"cuda_fatal": 1, "segfault": 1}
    assert any("rotated" in n for n in res.notes)
    res, pos = scan_all(sc, str(log), pos)
    assert res.counts == {}


def test_rename_rotation_with_dateext_and_unterminated_tail(tmp_path):
    log = tmp_path / "error.log"
    append(log, NOISE)
    sc = LogScanner()
    _, pos = scan_all(sc, str(log), None)
    append(log, "Segmentation fault (core dumped)")  # the process died mid-line
    os.rename(log, str(log) + "-20250101")
    append(log, NOISE)
    res, _ = scan_all(sc, str(log), pos)
    assert res.counts == {"segfault": 1}


def test_copytruncate_between_cycles(tmp_path):
    log = tmp_path / "error.log"
    append(log, NOISE * 3)
    sc = LogScanner()
    _, pos = scan_all(sc, str(log), None)
    append(log, FATAL)                   # after our last read, before the copy
    shutil.copyfile(log, str(log) + ".1")
    os.truncate(log, 0)
    append(log, SEGV + NOISE * 10)       # grows past the old offset again
    res, pos = scan_all(sc, str(log), pos)
    assert res.counts == {"cuda_fatal": 1, "segfault": 1}
    res, pos = scan_all(sc, str(log), pos)
    assert res.counts == {}


def test_garbage_bytes_do_not_stop_the_scan(tmp_path):
    log = tmp_path / "error.log"
    append(log, b"\xff\xfe\x00 binary junk \x80\x81\n" + b"\xc3\x28 CUDA out of memory \xe2\x28\xa1\n" + NOISE.encode())
    res = LogScanner().scan(str(log))
    assert res.counts == {"cuda_oom": 1}
    assert "\ufffd" in res.evidence[0].line


def test_very_long_line_is_bounded_and_truncated(tmp_path):
    log = tmp_path / "error.log"
    sc = LogScanner(max_line=4096)
    append(log, NOISE)
    _, pos = scan_all(sc, str(log), None)
    append(log, "RuntimeError: CUDA error: an illegal memory access was encountered " + "x" * (3 << 20))
    res, pos = scan_all(sc, str(log), pos)        # unterminated 3 MB line: kept as a bounded head
    assert res.counts == {}
    append(log, "y" * (1 << 20) + "\n" + SEGV)
    res, pos = scan_all(sc, str(log), pos)
    assert res.counts == {"cuda_fatal": 1, "segfault": 1}
    ev = [e for e in res.evidence if e.signature == "cuda_fatal"][0]
    assert ev.line.endswith("[...truncated]") and len(ev.line) < 5000


def test_first_sight_of_a_big_file_reads_only_its_tail(tmp_path):
    log = tmp_path / "error.log"
    append(log, FATAL + NOISE * 30000 + SEGV)   # ~2.6 MB, the old fatal line is far back
    res = LogScanner(first_sight_tail=1 << 20).scan(str(log))
    assert res.counts == {"segfault": 1}
    assert res.bytes_read <= (1 << 20)


def test_batch_errors_need_batch_context():
    batch_tb = ["Traceback (most recent call last):", '  File "/opt/glmtts/glmtts/batch/runner.py", line 70, in run_task',
                "    audio = load(task.prompt_audio)"]
    assert signatures.classify("FileNotFoundError: [Errno 2] No such file or directory: 'a.wav'", batch_tb) == ["batch_input"]
    assert signatures.classify("FileNotFoundError: [Errno 2] No such file or directory: 'a.wav'", ()) == []
    assert signatures.classify("json.decoder.JSONDecodeError: Expecting value: line 1 column 1 (char 0) in batch abc", ()) == ["batch_input"]


def test_xid_lines_map_to_nvidia_actions():
    line = "Jan  1 03:00:00 gpu1 kernel: NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, GPU has fallen off the bus."
    assert signatures.classify(line) == ["gpu_xid"]
    assert signatures.xid_of(line) == ("0000:3b:00", 79)
    assert signatures.XID_ACTIONS[79] == "reboot" and signatures.XID_ACTIONS[43] == "ignore"


def _writer(path, n, rotate_every, mode, lock, stop_at, scans):
    """Write n signature lines, rotating every rotate_every lines. The rotation itself is
    atomic w.r.t. the writer (as logrotate + SIGHUP reopen are), never w.r.t. the scanner.
    After each rotation the writer waits for a scan that started after it (``scans``, a
    counter): on a server logrotate runs daily and the scanner every few minutes, so a log
    never regrows to its pre-rotation size (copytruncate) or rotates twice (rename) between
    two scans. Without the wait a loaded machine lets this writer outrun the scanner, and
    a copytruncated file of identical lines regrown past the old offset is
    indistinguishable from the same file grown (same inode, same bytes before it)."""
    f = open(path, "ab", buffering=0)
    gen = 0
    for i in range(n):
        # the line number last: within the scanner's FINGERPRINT bytes, as a real log's
        # varying timestamps and request ids are (identical lines would make the bytes
        # before an offset the same in every rotated copy)
        f.write(("2025-01-01 00:00:00,000 ERROR RuntimeError: CUDA error: an illegal memory access was encountered (line %d)\n" % i).encode())
        if i and i % rotate_every == 0:
            with lock:
                gen += 1
                if mode == "rename":
                    os.rename(path, "%s.%d" % (path, gen))
                    f.write(("2025-01-01 00:00:00,000 late line into the renamed file: Segmentation fault\n").encode())
                    f.close()
                    f = open(path, "ab", buffering=0)
                else:
                    shutil.copyfile(path, "%s.%d" % (path, gen))
                    os.truncate(path, 0)
            seen = scans.value
            deadline = time.monotonic() + 60
            while scans.value < seen + 2:  # the scan under way may predate the rotation
                assert time.monotonic() < deadline, "the scanner stopped scanning"
                time.sleep(0.001)
        if i % 50 == 0:
            time.sleep(0.001)
    f.close()
    stop_at.set()


def _race(tmp_path, mode):
    log = str(tmp_path / "error.log")
    open(log, "wb").close()
    sc = LogScanner()
    pos = sc.scan(log, None).position
    lock, done, scans = threading.Lock(), threading.Event(), types.SimpleNamespace(value=0)
    n, every = 3000, 400
    t = threading.Thread(target=_writer, args=(log, n, every, mode, lock, done, scans))
    t.start()
    fatal = segv = 0
    while True:
        finished = done.is_set()
        res = sc.scan(log, pos)
        scans.value += 1
        pos = res.position
        fatal += res.counts.get("cuda_fatal", 0)
        segv += res.counts.get("segfault", 0)
        if finished:
            break
        time.sleep(0.003)
    t.join()
    return fatal, segv, n, len([i for i in range(1, n) if i % every == 0])


def test_rename_rotation_during_cycles_no_miss_no_double(tmp_path, monkeypatch):
    monkeypatch.setattr("glmtts.watchdog.scanner.MAX_EVIDENCE", 10**6)
    fatal, segv, n, rotations = _race(tmp_path, "rename")
    assert (fatal, segv) == (n, rotations)


def test_copytruncate_during_cycles_no_miss_no_double(tmp_path, monkeypatch):
    monkeypatch.setattr("glmtts.watchdog.scanner.MAX_EVIDENCE", 10**6)
    fatal, segv, n, rotations = _race(tmp_path, "copytruncate")
    assert (fatal, segv) == (n, 0)
