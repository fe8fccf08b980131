"""Every failure signature against a table of real-looking log lines: each pattern has a
line it must match, and near misses it must not (the negative look-aheads, the batch
context, success codes). A pattern added to glmtts/watchdog/signatures.py without a
positive row here fails `test_every_pattern_has_a_positive_line`."""

import re

import pytest

from glmtts.watchdog import signatures as S

# (line, context lines, the signatures classify() must return: exactly these)
POSITIVE = [
    ("NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, GPU has fallen off the bus.", (), {"gpu_xid"}),
    ("RuntimeError: CUDA error: an illegal memory access was encountered", (), {"cuda_fatal"}),
    ("torch.AcceleratorError: CUDA error: device-side assert triggered", (), {"cuda_fatal"}),
    ("RuntimeError: CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm( handle, opa, opb, m, n, k, ...)`",
     (), {"cuda_fatal"}),
    ("RuntimeError: CUDNN_STATUS_INTERNAL_ERROR", (), {"cuda_fatal"}),
    ("RuntimeError: cuDNN error: CUDNN_STATUS_MAPPING_ERROR", (), {"cuda_fatal"}),
    ("RuntimeError: CUDA error: unspecified launch failure", (), {"cuda_fatal"}),
    ("RuntimeError: CUDA error: misaligned address", (), {"cuda_fatal"}),
    ("ERROR:    [Errno 98] error while attempting to bind on address ('127.0.0.1', 7860): address already in use",
     (), {"port_in_use"}),
    ("OSError: [Errno 98] Address already in use", (), {"port_in_use"}),
    ("listen tcp 127.0.0.1:7860: bind: EADDRINUSE", (), {"port_in_use"}),
    ("OSError: [Errno 28] No space left on device: '/var/lib/glmtts/outputs/x.wav'", (), {"enospc"}),
    ("write failed: ENOSPC", (), {"enospc"}),
    ("glmtts.service: Start request repeated too quickly.", (), {"crash_loop"}),
    ("glmtts.service: Failed with result 'start-limit-hit'.", (), {"crash_loop"}),
    ("INFO gave up: glmtts entered FATAL state, too many start retries too quickly", (), {"crash_loop"}),
    ("Fatal Python error: Segmentation fault", (), {"segfault"}),
    ("glmtts.service: Main process exited, code=dumped, status=11/SEGV", (), {"segfault", "unexpected_exit"}),
    ("WARN exited: glmtts (terminated by SIGSEGV (core dumped); not expected)", (), {"segfault", "unexpected_exit"}),
    ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", (), {"cuda_oom"}),
    ("RuntimeError: CUDA error: out of memory", (), {"cuda_oom"}),
    ("WARN exited: glmtts (exit status 75; not expected)", (), {"unexpected_exit"}),
    ("glmtts.service: Main process exited, code=killed, status=9/KILL", (), {"unexpected_exit"}),
    ("glmtts.service: Watchdog timeout (limit 10s)!", (), {"unexpected_exit"}),
    ("batch 7f3a: task 12 failed: FileNotFoundError: [Errno 2] No such file: 'prompts/a.wav'", (), {"batch_input"}),
    ("json.decoder.JSONDecodeError: Expecting value: line 1 column 1 (char 0)",
     ("ERROR glmtts.batch.runner: batch 7f3a: bad line",), {"batch_input"}),
]

NEGATIVE = [
    # the service's own words that look alike but are not faults
    "INFO glmtts_service: glmtts 0.9 listening on http://127.0.0.1:7860 (engine espeak loading)",
    "cublas: CUBLAS_STATUS_SUCCESS", "cudnn: CUDNN_STATUS_SUCCESS",
    "RuntimeError: CUDA error: out of memory",  # an OOM, not a lost context (checked below as exactly cuda_oom)
    "WARN exited: glmtts (exit status 0; expected)",
    "INFO stopped: glmtts (terminated by SIGTERM)",
    "glmtts.service: Main process exited, code=exited, status=0/SUCCESS",
    "glmtts.service: Deactivated successfully.",
    "glmtts.service: Scheduled restart job, restart counter is at 2.",
    "INFO success: glmtts entered RUNNING state, process has stayed up for > than 1 seconds (startsecs)",
    "FileNotFoundError: [Errno 2] No such file or directory: '/etc/glmtts/glmtts.toml'",  # not a batch task
    "JSONDecodeError in a request body from 127.0.0.1",  # no batch context
    "GET /healthz 200 0.8ms", "POST /v1/audio/speech 429 rate_limit_exceeded",
    "NVRM: loading NVIDIA UNIX x86_64 Kernel Module 550.54.15",
    "segmentation of the text into 3 chunks",
]


@pytest.mark.parametrize("line, context, expected", POSITIVE, ids=[p[0][:50] for p in POSITIVE])
def test_positive_lines_carry_exactly_their_signatures(line, context, expected):
    assert set(S.classify(line, context)) == expected


@pytest.mark.parametrize("line", NEGATIVE, ids=[n[:50] for n in NEGATIVE])
def test_near_misses_carry_no_wrong_signature(line):
    got = set(S.classify(line))
    if line == "RuntimeError: CUDA error: out of memory":
        assert got == {"cuda_oom"}  # the negative look-ahead keeps it out of cuda_fatal
    else:
        assert got == set(), (line, got)


def test_every_pattern_has_a_positive_line():
    lines = [p[0] for p in POSITIVE]
    missing = [(s.name, rx) for s in S.LOG_SIGNATURES for rx in s.patterns
               if not any(re.search(rx, l) for l in lines)]
    assert not missing, "add a POSITIVE row for: %s" % missing


def test_every_log_signature_has_a_positive_and_a_near_miss_row():
    covered = set().union(*(p[2] for p in POSITIVE))
    assert {s.name for s in S.LOG_SIGNATURES} <= covered


def test_the_prefilter_never_hides_a_match():
    for line, context, expected in POSITIVE:
        assert S.PREFILTER.search(line), line


@pytest.mark.parametrize("line, xid", [
    ("NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, GPU has fallen off the bus.", ("0000:3b:00", 79)),
    ("kernel: [ 12.3] NVRM: Xid (PCI:0000:af:00.0): 13, Graphics Exception", ("0000:af:00.0", 13)),
    ("NVRM: Xid 79", None), ("no xid here", None),
])
def test_xid_lines_are_parsed(line, xid):
    assert S.xid_of(line) == xid
