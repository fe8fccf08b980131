"""Real logrotate (rename + SIGHUP, ops/logrotate.conf as installed) under a steady request
rate, and one instance per GPU (glmtts@N) side by side, both watched by the watchdog."""

import gzip
import re
import threading
import time

import pytest
import requests

from glmtts.watchdog import signatures

from conftest import TOOLS, free_port, record_recovery

pytestmark = [pytest.mark.system, pytest.mark.timeout(600)]


def is_oom_line(line):
    """A cuda_oom signature line as the watchdog counts lines: indented traceback frames are
    context, not lines of their own."""
    return not line[:1].isspace() and "cuda_oom" in signatures.classify(line)


def healthy_again(d):
    d.fault("")
    if d.unit()["ActiveState"] != "active":
        d.start()
    d.wait_healthy(120)


def all_lines(d, base):
    """Lines of the live file and every rotation (.1 plain, .N.gz compressed), oldest first."""
    files = sorted(d.file("/var/log/glmtts").glob(base + ".*"),
                   key=lambda p: -int(re.search(r"\.(\d+)(\.gz)?$", p.name).group(1)))
    out = []
    for f in files + [d.file("/var/log/glmtts/" + base)]:
        data = gzip.decompress(f.read_bytes()) if f.name.endswith(".gz") else f.read_bytes()
        out += data.decode("utf-8", "replace").splitlines()
    return out


def status_of(url):
    try:
        return requests.get(url, timeout=5).status_code
    except requests.RequestException:
        return None


def rotate(d):
    d.sd.run(["logrotate", "-f", "-s", "/var/lib/glmtts/logrotate.status", "/etc/logrotate.d/glmtts"])


def test_logrotate_under_load_loses_and_duplicates_no_line(deployed):
    d = deployed
    healthy_again(d)
    d.watchdog_check()  # baseline: the scanner has read everything so far
    before_livez = sum("GET /livez " in line for line in all_lines(d, "access.log"))
    before_oom = sum(is_oom_line(line) for line in all_lines(d, "error.log"))
    sent, errors, stop = [], [], threading.Event()

    def steady_load():
        session = requests.Session()
        while not stop.is_set() and len(sent) < 2000:
            try:
                r = session.get(d.url + "/livez", timeout=5)
                sent.append(r.status_code)
            except requests.RequestException as e:
                errors.append(str(e))
            stop.wait(0.02)

    t = threading.Thread(target=steady_load, daemon=True)
    incidents_before = len(d.incidents())
    t.start()
    try:
        for i in range(3):
            time.sleep(0.5)
            if i == 1:  # a signature line right before a rotation, and one right after
                d.fault("oom")
                assert d.speech().status_code == 503
                d.fault("")
            rotate(d)
            if i == 1:
                d.fault("oom")
                assert d.speech().status_code == 503
                d.fault("")
            # a cycle between rotations, as in production (cycles every 5 min, rotation daily;
            # delaycompress keeps the rotated file plain until the next rotation)
            d.watchdog_check()
        time.sleep(0.5)
    finally:
        stop.set()
        t.join(10)
    assert not errors and len(sent) > 20, (len(sent), errors[:3])
    d.sd.wait_for(lambda: sum("GET /livez " in l for l in all_lines(d, "access.log")) - before_livez >= len(sent), 10,
                  what="the last access lines")
    lines = all_lines(d, "access.log")
    assert sum("GET /livez " in line for line in lines) - before_livez == len(sent)  # each exactly once
    live = d.file("/var/log/glmtts/access.log").read_text()
    assert "GET /livez " in live, "the service stopped writing to the live file after rotation"
    assert d.file("/var/log/glmtts/access.log.2.gz").exists() and d.file("/var/log/glmtts/access.log.1").exists()

    written = sum(is_oom_line(line) for line in all_lines(d, "error.log")) - before_oom
    assert written >= 2
    report = ""
    seen = [e for inc in d.incidents()[incidents_before:] for e in inc["evidence"] if e["signature"] == "cuda_oom"]
    # every signature line written since the baseline, seen exactly once (none missed, none twice)
    assert len(seen) == written, (len(seen), written, [(e["path"], e["line"][:80]) for e in seen])
    files_with_oom = {e["path"] for e in seen}
    # the line before the rotation was finished in the renamed file (where the line after it
    # lands depends on when the service handled SIGHUP: either file is right)
    assert any(p.endswith("error.log.1") for p in files_with_oom), (report, seen)
    # the next cycle finds nothing new: no double count across cycles either
    before = len(d.incidents())
    d.watchdog_check()
    assert not [i for i in d.incidents()[before:] if "cuda_oom" in i["signatures"]]
    record_recovery("logrotate -f x3 under load", 0.0, "%d requests, %d lines, none lost or doubled" % (len(sent), len(sent)))


def test_one_instance_per_gpu_side_by_side_watched_by_the_watchdog(deployed):
    d = deployed
    healthy_again(d)
    ports = {0: free_port(), 1: free_port()}
    assert ports[0] != ports[1]
    for i, port in ports.items():  # kept by install (never overwritten): free ports on this machine
        d.write("/etc/glmtts/instance-%d.env" % i, "GLMTTS_SERVER_PORT=%d\n" % port, 0o640)
    out = d.sd.run([str(TOOLS / "glmtts-system"), "install", "--no-start", "--instances", "0,1"]).stdout
    assert "instance-0.env exists (kept)" in out and "create  file /var/log/glmtts/access@1.log" in out
    cfg = d.file("/etc/glmtts/glmtts.toml").read_text()
    watched = 'instances = ["glmtts@0=http://127.0.0.1:%d", "glmtts@1=http://127.0.0.1:%d"]' % (ports[0], ports[1])
    d.write("/etc/glmtts/glmtts.toml", re.sub(r"instances = \[.*\]", watched, cfg), 0o640)
    try:
        d.sd.systemctl("start", "glmtts@0.service", "glmtts@1.service", timeout=240)
        for i, port in ports.items():
            status = d.sd.systemctl("status", "glmtts@%d.service" % i, check=False).stdout
            assert "Active: active (running)" in status, (status, d.log_text("error@%d.log" % i)[-2000:])
            r = requests.get("http://127.0.0.1:%d/healthz" % port, timeout=5)
            assert r.status_code == 200
            pid = int(d.sd.show("glmtts@%d.service" % i, "MainPID")["MainPID"])
            environ = d.sd.run(["cat", "/proc/%d/environ" % pid]).stdout.split("\0")
            assert "CUDA_VISIBLE_DEVICES=%d" % i in environ
            assert d.log_text("error@%d.log" % i).count("listening on http://127.0.0.1:%d" % port) >= 1
        rc, report, _ = d.watchdog_check()
        assert rc == 0, report
        assert "glmtts@0" in report and "glmtts@1" in report, report

        pid1 = int(d.sd.show("glmtts@1.service", "MainPID")["MainPID"])
        t0 = time.monotonic()
        d.sd.run(["kill", "-9", str(pid1)])
        d.sd.wait_for(lambda: int(d.sd.show("glmtts@1.service", "MainPID")["MainPID"]) not in (0, pid1), 60)
        d.sd.wait_for(lambda: status_of("http://127.0.0.1:%d/healthz" % ports[1]) == 200, 120, what="glmtts@1 healthy")
        record_recovery("kill -9 of glmtts@1 (per-GPU instance)", time.monotonic() - t0, "systemd restarts only that instance")
        before = len(d.incidents())
        d.watchdog_check()
        units = {i["unit"] for i in d.incidents()[before:]}
        assert units == {"glmtts@1"}, units
    finally:
        d.sd.systemctl("stop", "glmtts@0.service", "glmtts@1.service", check=False)
        d.write("/etc/glmtts/glmtts.toml", cfg, 0o640)
