"""A private Docker daemon for the container tests: the real `dockerd`, started by the test
and stopped by its PID, touching nothing of the machine's own Docker (if any).

    with PrivateDocker() as docker:
        docker.run("build", "-t", "x", ".")
        docker.published_port(container, 7860)

Everything lives under one temporary directory: the API socket, data root, exec root, pid
file, an empty daemon.json (so /etc/docker/daemon.json is not read) and the client's
DOCKER_CONFIG (so no credential helper of the machine is called). Networking: a bridge
of the test's own (a unique name, a free private /24) that dockerd attaches containers to,
so `docker run -p 127.0.0.1:PORT:7860` publishes a real port through docker-proxy; with
--iptables=false --ip-masq=false --ip-forward=false the daemon changes no firewall rule and
no sysctl of the machine, so containers have no way out: builds use `--network host`
instead (pip and apt reach their indexes from the host's network). stop() removes every
container, stops dockerd (then its containerd, if still there) by PID, unmounts what is
left under the directory, deletes the bridge and the directory.
"""

import ipaddress
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time

from tests.support.fleet import tool


class DockerError(AssertionError):
    pass


class PrivateDocker:
    def __init__(self, prefix="glmtts-docker-"):
        self.dockerd = tool("dockerd")
        self.docker = tool("docker")
        self.ip = tool("ip")
        self.prefix = prefix
        self.root = None
        self.proc = None
        self.bridge = None
        self.env = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout=90.0):
        # A short path: containerd's sockets live under the exec root, and a unix socket's
        # path is limited to 108 bytes.
        self.root = tempfile.mkdtemp(prefix=self.prefix)
        for d in ("data", "exec", "client"):
            os.makedirs(os.path.join(self.root, d))
        with open(os.path.join(self.root, "daemon.json"), "w") as f:
            f.write("{}\n")
        with open(os.path.join(self.root, "client", "config.json"), "w") as f:
            f.write("{}\n")
        self.socket = os.path.join(self.root, "docker.sock")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        self.env.update(DOCKER_HOST="unix://" + self.socket, DOCKER_CONFIG=os.path.join(self.root, "client"),
                        # The classic builder: Debian's client and a client without the buildx
                        # plugin both have it; the Dockerfile is written for either builder.
                        DOCKER_BUILDKIT="0")
        self._make_bridge()
        self.log_path = os.path.join(self.root, "dockerd.log")
        ns = "glmtts-test-%d" % os.getpid()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.dockerd, "--host", "unix://" + self.socket,
                 "--config-file", os.path.join(self.root, "daemon.json"),
                 "--data-root", os.path.join(self.root, "data"),
                 "--exec-root", os.path.join(self.root, "exec"),
                 "--pidfile", os.path.join(self.root, "docker.pid"),
                 "--bridge", self.bridge, "--iptables=false", "--ip-masq=false", "--ip-forward=false",
                 "--containerd-namespace", ns, "--containerd-plugins-namespace", ns + "-plugins",
                 "--log-level", "warn"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DockerError("dockerd exited with %s before answering; its log:\n%s"
                                  % (self.proc.returncode, self.log_tail()))
            if os.path.exists(self.socket) and self.run("version", check=False, timeout=10).returncode == 0:
                return self
            time.sleep(0.3)
        raise DockerError("dockerd did not answer within %ss; its log:\n%s" % (timeout, self.log_tail()))

    def stop(self):
        started = time.monotonic()
        if self.proc is not None and self.proc.poll() is None:
            ids = self.run("ps", "-aq", check=False, timeout=30).stdout.split()
            if ids:
                self.run("rm", "-f", "-v", *ids, check=False, timeout=120)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # the PID we started
                self.proc.wait(30)
        self.stopped_s = time.monotonic() - started
        if self.root:
            self._stop_containerd()
            self._unmount_below(self.root)
        if self.bridge:
            subprocess.run([self.ip, "link", "delete", self.bridge], capture_output=True, timeout=30)
            self.bridge = None
        if self.root:
            shutil.rmtree(self.root, ignore_errors=True)  # images: the bulk of the time
            self.root = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- the client ----------------------------------------------------------------------------

    def run(self, *args, check=True, timeout=120, stdin=None):
        """`docker ARGS` against this daemon; check: a non-zero exit raises with its output.
        stdin: a file to read (e.g. the tarball of `docker import -`)."""
        cp = subprocess.run([self.docker] + list(args), env=self.env, capture_output=True, text=True,
                            timeout=timeout, stdin=stdin if stdin is not None else subprocess.DEVNULL)
        if check and cp.returncode != 0:
            raise DockerError("docker %s exited %d:\n%s\n%s" % (" ".join(args[:6]), cp.returncode,
                                                               cp.stdout[-3000:], cp.stderr[-3000:]))
        return cp

    def popen(self, *args, **kw):
        return subprocess.Popen([self.docker] + list(args), env=self.env, **kw)

    def inspect(self, fmt, name):
        return self.run("inspect", "--format", fmt, name).stdout.strip()

    def published_port(self, container, port, proto="tcp"):
        """The host port `docker run -p 127.0.0.1::PORT` was given."""
        out = self.run("port", container, "%d/%s" % (port, proto)).stdout.split()
        return int(out[0].rsplit(":", 1)[1])

    def log_tail(self, n=4000):
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()[-n:]
        except (OSError, AttributeError):
            return ""

    # -- the machine ---------------------------------------------------------------------------

    def _make_bridge(self):
        """A bridge named for this process on a /24 that no address or route of the machine
        overlaps, so nothing else's traffic is redirected."""
        used = []
        for cmd in (["-4", "-o", "addr", "show"], ["-4", "route", "show", "table", "all"]):
            out = subprocess.run([self.ip] + cmd, capture_output=True, text=True, timeout=30).stdout
            for word in out.split():
                try:
                    used.append(ipaddress.ip_network(word, strict=False))
                except ValueError:
                    pass
        rng = random.Random(os.getpid())
        for _ in range(200):
            net = ipaddress.ip_network("10.%d.%d.0/24" % (rng.randint(200, 254), rng.randint(0, 255)))
            if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
                break
        else:
            raise DockerError("no free 10.x.y.0/24 for a private bridge")
        name = "gt%d" % (os.getpid() % 10**10)  # an interface name has at most 15 bytes
        gateway = "%s/%d" % (next(net.hosts()), net.prefixlen)
        for cmd in (["link", "add", name, "type", "bridge"], ["addr", "add", gateway, "dev", name],
                    ["link", "set", name, "up"]):
            cp = subprocess.run([self.ip] + cmd, capture_output=True, text=True, timeout=30)
            if cp.returncode != 0:
                subprocess.run([self.ip, "link", "delete", name], capture_output=True, timeout=30)
                raise DockerError("ip %s: %s" % (" ".join(cmd), cp.stderr.strip()))
            self.bridge = name
        self.subnet = net

    def _stop_containerd(self):
        """dockerd starts a containerd of its own under the exec root and stops it when it
        stops; one left behind (dockerd killed) is stopped here, by its pid file."""
        pidfile = os.path.join(self.root, "exec", "containerd", "containerd.pid")
        try:
            pid = int(open(pidfile).read().strip())
        except (OSError, ValueError):
            return
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                if b"containerd" not in f.read():
                    return  # the pid was reused by something else
            os.kill(pid, signal.SIGTERM)
        except (OSError, ProcessLookupError):
            return
        for _ in range(100):
            if not os.path.exists("/proc/%d" % pid):
                return
            time.sleep(0.1)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    @staticmethod
    def _unmount_below(root):
        """Overlay and netns mounts dockerd leaves when it is killed: deepest first."""
        with open("/proc/self/mounts") as f:
            points = [line.split()[1] for line in f]
        for p in sorted((p for p in points if p == root or p.startswith(root + "/")), key=len, reverse=True):
            subprocess.run(["umount", "-l", p], capture_output=True, timeout=30)
