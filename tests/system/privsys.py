"""A private systemd for system tests: PID 1 of new PID, mount and cgroup namespaces.

The recipe of shared/examples/private-systemd.sh (the workplace's shared folder), in Python, plus three things:

- /etc is an overlay whose writable layer is a tmpfs inside the namespace, so
  `glmtts-system install` can really create the glmtts user (useradd) without touching the
  machine's /etc/passwd; /etc/systemd/system and /etc/glmtts are private tmpfs on top.
- /tmp is a private tmpfs as well: nothing in the namespace can write to (or wipe) the
  machine's shared /tmp, and units' PrivateTmp= directories live and die in there.
- systemd's PID is found as the child of *our* unshare process, never by pgrep (which
  could find another test's systemd).

Like the recipe, /run, /var/log/glmtts and /var/lib/glmtts are private tmpfs and the
tmpfiles units are masked (a booting systemd otherwise cleans the machine's /tmp). The
namespace shares the host's network, so the test reaches the service on 127.0.0.1.
Everything is ended by PID: kill -9 of our PID 1 ends the whole PID namespace.

Files inside the namespace are reached from outside through /proc/<pid>/root.
"""

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

SYSTEMD = "/lib/systemd/systemd"
STATE_ROOT = Path("/var/tmp/glmtts-systemd-test")  # outside /tmp on purpose
PRIVATE_DIRS = ("/var/log/glmtts", "/var/lib/glmtts")  # mount points that must exist on the host
# tmpfiles would clean the machine's /tmp. The rest are pulled in by sysinit.target (any
# unit with default dependencies) and act on the whole machine, not the namespace: uevents
# to every device, kernel modules, sysctls, binfmt, utmp/wtmp, random seed, users.
MASKED = ("systemd-tmpfiles-setup.service", "systemd-tmpfiles-setup-dev.service",
          "systemd-tmpfiles-clean.timer", "systemd-tmpfiles-clean.service", "tmp.mount",
          "systemd-udevd.service", "systemd-udev-trigger.service", "systemd-udev-settle.service",
          "systemd-udevd-control.socket", "systemd-udevd-kernel.socket",
          "systemd-modules-load.service", "systemd-sysctl.service", "systemd-binfmt.service",
          "proc-sys-fs-binfmt_misc.automount", "proc-sys-fs-binfmt_misc.mount",
          "systemd-update-utmp.service", "systemd-update-utmp-runlevel.service",
          "systemd-random-seed.service", "systemd-sysusers.service", "systemd-firstboot.service",
          "systemd-machine-id-commit.service", "systemd-remount-fs.service", "systemd-pstore.service",
          "systemd-hwdb-update.service", "systemd-journal-catalog-update.service", "ldconfig.service",
          "systemd-update-done.service", "systemd-journal-flush.service", "systemd-boot-system-token.service",
          "sys-kernel-debug.mount", "sys-kernel-tracing.mount", "sys-kernel-config.mount",
          "sys-fs-fuse-connections.mount", "dev-hugepages.mount", "dev-mqueue.mount",
          "systemd-repart.service", "systemd-growfs-root.service", "systemd-fsck-root.service",
          "systemd-ask-password-console.path", "systemd-ask-password-wall.path", "cryptsetup.target",
          "veritysetup.target", "swap.target", "local-fs-pre.target")

BOOT = r"""
set -e
mount --make-rprivate /
mount -t tmpfs tmpfs /run
# a checkout that lives under /tmp (KEEP) stays visible through the private /tmp
mkdir -p "$S/keep"
[ -z "$KEEP" ] || mount --bind "$KEEP" "$S/keep"
mount -t tmpfs -o mode=1777 tmpfs /tmp
[ -z "$KEEP" ] || { mkdir -p "$KEEP"; mount --bind "$S/keep" "$KEEP"; }
mount -t tmpfs -o mode=0755 tmpfs "$S/etc-rw"
mkdir "$S/etc-rw/upper" "$S/etc-rw/work"
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$S/etc-rw/upper,workdir=$S/etc-rw/work" /etc
mkdir -p /etc/systemd/system /etc/glmtts
for d in /etc/systemd/system /etc/glmtts /var/log/glmtts /var/lib/glmtts; do mount -t tmpfs -o mode=0755 tmpfs $d; done
for u in $MASKED; do ln -s /dev/null /etc/systemd/system/$u; done
printf "[Unit]\nDescription=private test target\nDefaultDependencies=no\n" > /etc/systemd/system/private-test.target
# a journal in the private /run only (never the machine's /var/log/journal), no kernel log
mkdir -p /etc/systemd/journald.conf.d
printf "[Journal]\nStorage=volatile\nReadKMsg=no\nForwardToSyslog=no\nForwardToWall=no\n" > /etc/systemd/journald.conf.d/private-test.conf
exec {systemd} --system --unit=private-test.target --log-target=null
""".replace("{systemd}", SYSTEMD)


class BootError(RuntimeError):
    pass


def _children(pid):
    kids = []
    try:
        for tid in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/children" % (pid, tid)) as f:
                kids += [int(x) for x in f.read().split()]
    except (FileNotFoundError, ProcessLookupError):
        pass
    return kids


def _cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().split(b"\0")[0].decode()
    except OSError:
        return ""


class PrivateSystemd:
    def __init__(self, name):
        self.state = STATE_ROOT / ("%s-%d" % (name, os.getpid()))
        self.pid = None
        self._unshare = None
        self._made = []

    # -- lifecycle --------------------------------------------------------------------
    def start(self, timeout=30.0):
        if not shutil.which("unshare") or not os.path.exists(SYSTEMD):
            raise BootError("unshare or %s missing" % SYSTEMD)
        if os.geteuid() != 0:
            raise BootError("needs root (namespaces, mounts)")
        self.state.mkdir(parents=True, exist_ok=True)
        (self.state / "etc-rw").mkdir(exist_ok=True)
        for d in PRIVATE_DIRS:
            if not os.path.isdir(d):
                os.makedirs(d)
                self._made.append(d)
        repo = str(Path(__file__).resolve().parents[2])
        keep = repo if repo == "/tmp" or repo.startswith("/tmp/") else ""
        env = dict(os.environ, S=str(self.state), MASKED=" ".join(MASKED), KEEP=keep)
        log = open(self.state / "boot.log", "wb")
        self._unshare = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount", "--mount-proc", "--cgroup", "bash", "-c", BOOT],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.pid is None:
            for kid in _children(self._unshare.pid):
                if _cmdline(kid) == SYSTEMD:
                    self.pid = kid
            if self._unshare.poll() is not None:
                break
            time.sleep(0.1)
        if self.pid is None:
            self.stop()
            raise BootError("systemd did not start: %s" % (self.state / "boot.log").read_text()[-2000:])
        state = ""
        while time.monotonic() < deadline:
            state = self.run(["systemctl", "is-system-running"], check=False).stdout.strip()
            if state in ("running", "degraded"):
                # journald: `journalctl -u glmtts` and the watchdog's unit-log signatures need it
                self.run(["systemctl", "start", "systemd-journald.socket", "systemd-journald.service"],
                         check=False, timeout=30)
                # PID 1 booted with --log-target=null (nothing may reach the machine's console
                # or kernel log); now that the private journal exists, log there, as a real
                # host does ("Main process exited", "Watchdog timeout", "start-limit-hit").
                self.run(["systemd-analyze", "set-log-target", "journal"], check=False, timeout=30)
                return self
            time.sleep(0.2)
        self.stop()
        raise BootError("private systemd never reached running (last state %r)" % state)

    def stop(self):
        if self.pid:
            # stop our units first so their PrivateTmp dirs in the shared /var/tmp go away
            self.run(["systemctl", "stop", "glmtts.service", "glmtts@*.service", "glmtts-watchdog.service"],
                     check=False, timeout=60)
            try:
                os.kill(self.pid, signal.SIGKILL)  # PID 1 of the namespace: everything in it dies
            except ProcessLookupError:
                pass
            self.pid = None
        if self._unshare:
            try:
                self._unshare.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._unshare.kill()
                self._unshare.wait(timeout=10)
            self._unshare = None
        for d in reversed(self._made):
            try:
                os.rmdir(d)
            except OSError:
                pass
        self._made = []
        shutil.rmtree(self.state, ignore_errors=True)  # only empty mount points and boot.log

    # -- inside the namespace -----------------------------------------------------------
    def run(self, cmd, check=True, timeout=120, input=None):
        proc = subprocess.run(["nsenter", "-t", str(self.pid), "-p", "-m", "-C", "--"] + list(cmd),
                              capture_output=True, text=True, timeout=timeout, input=input)
        if check and proc.returncode != 0:
            raise AssertionError("%s -> %d\nstdout: %s\nstderr: %s" % (
                " ".join(cmd), proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:]))
        return proc

    def systemctl(self, *args, check=True, timeout=120):
        return self.run(["systemctl", "--no-pager"] + list(args), check=check, timeout=timeout)

    def path(self, p):
        """A path inside the namespace, as seen from the host."""
        return Path("/proc/%d/root" % self.pid) / str(p).lstrip("/")

    def show(self, unit, *props):
        out = self.systemctl("show", unit, "-p", ",".join(props), check=False).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def wait_for(self, predicate, timeout, interval=0.3, what="condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(interval)
        raise AssertionError("timed out after %.0fs waiting for %s" % (timeout, what))
