"""A FAKE kubelet: the one part of a Kubernetes node these tests cannot run (no cluster,
no container runtime here). It drives a real process the way the kubelet drives a
container, with the kubelet's own rules, so a test can read probe settings from a
rendered manifest and see what a real node would do with them.

    kubelet = Kubelet(pod_spec, container_name, start=lambda: ServiceProcess(...),
                      port_map={7860: svc_port}, time_scale=0.04)
    kubelet.start(); ...; kubelet.stop()
    kubelet.events  # [(t_real, t_manifest, what, detail)]

What it copies from pkg/kubelet/prober (worker.go, prober.go, results) and the
container lifecycle (kuberuntime_container.go), and nothing more:

- One worker per probe (startup, liveness, readiness), each on its own ticker of
  periodSeconds. The first probe runs when the container runs (phase 0: the earliest, so
  the harshest, timing the kubelet can pick); after a probe that outlasts its period the
  next runs at once and the missed ticks are dropped (a Go ticker buffers one tick).
- No probe runs before initialDelaySeconds have passed since the container started.
- Liveness and readiness are disabled until the startup probe has succeeded; the
  startup probe stops once it has. Without a startup probe the container counts as
  started at once.
- An HTTP probe succeeds on a status in [200, 400); a connection error, another status,
  or no complete answer within timeoutSeconds is a failure.
- A result changes the probe's state only after failureThreshold consecutive failures or
  successThreshold consecutive successes. Readiness starts as failure (not ready),
  liveness as success.
- failureThreshold consecutive startup or liveness failures: the container is killed
  (preStop hook, SIGTERM, SIGKILL when terminationGracePeriodSeconds have passed since
  the kill began, the preStop time included) and, restartPolicy Always, started again
  (at once the first time, then after the crash-loop back-off: 10 s doubling up to
  300 s); the workers hold until
  the new container runs and then start from scratch.

Time scaling: a real model load takes minutes, so every duration the kubelet waits
(periodSeconds, initialDelaySeconds, the preStop sleep, the grace period, the back-off)
is multiplied by ``time_scale``; the test scales the service's own clocks (its load
time, limits.worker_stall_s, the drain) by the same factor. timeoutSeconds is NOT
scaled: it bounds how fast the service answers a probe, and the service does not answer
faster because the test compressed the clock. Every event is recorded with its real
time and its time in manifest seconds (real / time_scale), and verdicts are made in
manifest seconds.
"""

import http.client
import logging
import math
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time

log = logging.getLogger(__name__)

STARTUP, LIVENESS, READINESS = "startup", "liveness", "readiness"
SUCCESS, FAILURE = True, False
BACKOFF_S, BACKOFF_MAX_S = 10.0, 300.0
USER_AGENT = "kube-probe/1.30"


class ProbeSpec:
    """One probe of a container spec (the manifest's dict), its named port resolved."""

    def __init__(self, kind, spec, ports):
        self.kind = kind
        get = spec.get("httpGet")
        if get is None:
            raise ValueError("%s probe: only httpGet probes are modelled, got %s" % (kind, sorted(spec)))
        port = get["port"]
        if isinstance(port, str):
            if port not in ports:
                raise ValueError("%s probe: port %r is not a named port of the container (%s)"
                                 % (kind, port, ", ".join(sorted(ports)) or "none"))
            port = ports[port]
        self.path = get.get("path", "/")
        self.port = int(port)
        self.scheme = get.get("scheme", "HTTP")
        if self.scheme != "HTTP":
            raise ValueError("%s probe: only scheme HTTP is modelled" % kind)
        # The API server's defaults for fields left out.
        self.period_s = float(spec.get("periodSeconds", 10))
        self.timeout_s = float(spec.get("timeoutSeconds", 1))
        self.failure_threshold = int(spec.get("failureThreshold", 3))
        self.success_threshold = int(spec.get("successThreshold", 1))
        self.initial_delay_s = float(spec.get("initialDelaySeconds", 0))
        if kind in (STARTUP, LIVENESS) and self.success_threshold != 1:
            raise ValueError("%s probe: successThreshold must be 1 (the API server rejects anything else)" % kind)


def container_probes(container):
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    out = {}
    for kind, key in ((STARTUP, "startupProbe"), (LIVENESS, "livenessProbe"), (READINESS, "readinessProbe")):
        if key in container:
            out[kind] = ProbeSpec(kind, container[key], ports)
    return out


def http_probe(host, port, path, timeout_s):
    """(ok, status or None, latency_s, error or None) as the kubelet's HTTP prober judges it."""
    t0 = time.monotonic()
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        conn.request("GET", path, headers={"User-Agent": USER_AGENT, "Accept": "*/*"})
        resp = conn.getresponse()
        resp.read(10 * 1024)  # the kubelet reads at most 10 KiB of the body
        status = resp.status
    except (OSError, http.client.HTTPException) as e:
        return FAILURE, None, time.monotonic() - t0, "%s: %s" % (type(e).__name__, e)
    finally:
        conn.close()
    latency = time.monotonic() - t0
    if latency > timeout_s:  # the socket timeout is per operation; the kubelet's is per probe
        return FAILURE, status, latency, "no answer within timeoutSeconds %g" % timeout_s
    return (200 <= status < 400), status, latency, None


class _Container:
    """The running instance: one process, its start time and the probe state."""

    def __init__(self, number, handle, started_at):
        self.number = number
        self.handle = handle        # what start() returned (a ServiceProcess)
        self.proc = handle.proc     # its subprocess.Popen
        self.started_at = started_at
        self.started = False     # the startup probe succeeded (status.containerStatuses[].started)
        self.ready = False       # the readiness result (endpoint in the Service)
        self.killing = False     # a kill is under way: every worker holds


class Kubelet:
    """Runs one container of a pod spec: starts it with ``start()`` (a callable returning an
    object whose ``.proc`` is the subprocess.Popen it started), probes it on
    127.0.0.1 through ``port_map`` (container port -> the port the process really
    listens on), kills and restarts it like the kubelet."""

    def __init__(self, pod_spec, container_name, start, *, port_map=None, time_scale=1.0,
                 host="127.0.0.1", restart=True, clock=time.monotonic):
        container = next((c for c in pod_spec["containers"] if c["name"] == container_name), None)
        if container is None:
            raise ValueError("pod spec has no container %r" % container_name)
        self.probes = container_probes(container)
        self.grace_s = float(pod_spec.get("terminationGracePeriodSeconds", 30))
        pre_stop = container.get("lifecycle", {}).get("preStop", {})
        if pre_stop and "sleep" not in pre_stop:
            raise ValueError("preStop: only the sleep action is modelled, got %s" % sorted(pre_stop))
        self.pre_stop_s = float(pre_stop.get("sleep", {}).get("seconds", 0))
        self.restart_policy = pod_spec.get("restartPolicy", "Always")
        self.start_fn = start
        self.port_map = port_map or {}
        self.scale = float(time_scale)
        self.host = host
        self.restart = restart
        self.clock = clock
        self.events = []
        self.probe_log = []   # (t_real, kind, container number, ok, status, latency, error)
        self.container = None
        self.containers = []
        self.restarts = 0
        self._t0 = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = []
        self._helpers = []    # kills and restarts in progress

    # -- time ------------------------------------------------------------------------

    def now(self):
        return self.clock() - self._t0

    def manifest_s(self, t_real):
        """A real duration of this run in the manifest's seconds."""
        return t_real / self.scale

    def _wait(self, manifest_seconds):
        """Sleep a manifest duration (scaled); True when the kubelet is being stopped."""
        return self._stop.wait(manifest_seconds * self.scale)

    def record(self, what, detail=""):
        t = self.now()
        with self._lock:
            self.events.append((t, self.manifest_s(t), what, detail))
        log.info("kubelet %.2fs (%.1f manifest s): %s %s", t, self.manifest_s(t), what, detail)

    def first(self, what, container=None):
        """The first event called ``what`` (optionally of container number N), or None."""
        with self._lock:
            for ev in self.events:
                if ev[2] == what and (container is None or ev[3].startswith("container %d" % container)):
                    return ev
        return None

    def failures(self, kind, container=None):
        with self._lock:
            return [p for p in self.probe_log if p[1] == kind and not p[3] and (container is None or p[2] == container)]

    # -- life cycle ------------------------------------------------------------------

    def start(self):
        self._t0 = self.clock()
        self._run_container(0)
        for kind in self.probes:
            t = threading.Thread(target=self._worker, args=(self.probes[kind],), name="kubelet-%s" % kind,
                                 daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self):
        """Stop probing and stop every container still running (the pod is deleted)."""
        self._stop.set()
        for t in self._threads + self._helpers:
            t.join(self.grace_s * self.scale + 30)
        for c in self.containers:
            if c.proc.poll() is None:
                self._kill(c, "pod deleted")

    def _run_container(self, number):
        handle = self.start_fn()
        c = _Container(number, handle, self.now())
        if STARTUP not in self.probes:
            c.started = True
        self.containers.append(c)
        self.container = c
        self.record("container started", "container %d pid %d" % (number, c.proc.pid))

    def _kill(self, c, reason):
        """The kubelet's killContainer: preStop, SIGTERM, SIGKILL at the end of the grace period."""
        c.killing = True
        c.ready = False
        t_kill = self.now()
        self.record("kill", "container %d: %s" % (c.number, reason))
        if self.pre_stop_s:
            time.sleep(self.pre_stop_s * self.scale)
        p = c.proc
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            self.record("SIGTERM", "container %d" % c.number)
        left = self.grace_s * self.scale - (self.now() - t_kill)
        try:
            code = p.wait(max(left, 0.0))
            self.record("exited", "container %d code %s" % (c.number, code))
        except subprocess.TimeoutExpired:  # the grace period is over
            p.kill()
            code = p.wait(30)
            self.record("SIGKILL", "container %d after the grace period (code %s)" % (c.number, code))
        return code

    def _backoff(self):
        """The crash-loop back-off before the next start: none before the first restart,
        then 10 s doubling up to 300 s (the kubelet's container back-off)."""
        if self.restarts == 0:
            return 0.0
        return min(BACKOFF_S * (2 ** (self.restarts - 1)), BACKOFF_MAX_S)

    def _fail_container(self, c, kind, spec):
        reason = "%s probe failed %d times in a row" % (kind, spec.failure_threshold)
        self._kill(c, reason)
        if not self.restart or self.restart_policy == "Never" or self._stop.is_set():
            return
        backoff = self._backoff()
        self.record("back-off", "container %d: %g manifest s before restart" % (c.number, backoff))
        if self._wait(backoff):
            return
        self.restarts += 1
        self._run_container(c.number + 1)

    # -- one probe worker --------------------------------------------------------------

    def _worker(self, spec):
        period = spec.period_s * self.scale
        current = None
        last_result, run = None, 0
        tick0 = None
        k = 0
        while not self._stop.is_set():
            c = self.container
            if c is not current:  # a new container: start from scratch, first probe at once
                current, last_result, run = c, None, 0
                tick0, k = self.clock(), 0
            elif tick0 is not None:
                k += 1
                due = tick0 + k * period
                now = self.clock()
                if now < due:
                    if self._stop.wait(due - now):
                        return
                else:  # the probe outlasted its period: one buffered tick, the rest dropped
                    k = int(math.floor((now - tick0) / period))
            c = self.container
            if c is not current or c.killing or c.proc.poll() is not None:
                if c is not current:
                    continue
                if c.proc.poll() is not None and not c.killing:
                    self._exited_by_itself(c)
                continue
            if self.now() - c.started_at < spec.initial_delay_s * self.scale:
                continue
            if spec.kind == STARTUP and c.started:
                continue
            if spec.kind != STARTUP and not c.started:
                continue
            port = self.port_map.get(spec.port, spec.port)
            ok, status, latency, error = http_probe(self.host, port, spec.path, spec.timeout_s)
            with self._lock:
                self.probe_log.append((self.now(), spec.kind, c.number, ok, status, latency, error))
            if c.killing:
                continue
            if ok == last_result:
                run += 1
            else:
                last_result, run = ok, 1
            if (not ok and run < spec.failure_threshold) or (ok and run < spec.success_threshold):
                continue
            self._set_result(c, spec, ok, status, error)

    def _set_result(self, c, spec, ok, status, error):
        if spec.kind == STARTUP:
            if ok and not c.started:
                c.started = True
                self.record("started", "container %d" % c.number)
            elif not ok:
                self._hold_and_fail(c, spec, status, error)
        elif spec.kind == LIVENESS and not ok:
            self._hold_and_fail(c, spec, status, error)
        elif spec.kind == READINESS and ok != c.ready:
            c.ready = ok
            self.record("ready" if ok else "unready", "container %d (/readyz %s%s)"
                        % (c.number, status, ", " + error if error else ""))

    def _hold_and_fail(self, c, spec, status, error):
        with self._lock:
            if c.killing:
                return
            c.killing = True
        self.record("%s failure" % spec.kind, "container %d (%s %s%s)"
                    % (c.number, spec.path, status, ", " + error if error else ""))
        # The kill and the restart run beside the workers (the kubelet's pod worker), so
        # every probe worker keeps its own ticker meanwhile.
        self._helper(self._fail_container, c, spec.kind, spec)

    def _exited_by_itself(self, c):
        with self._lock:
            if c.killing:
                return
            c.killing = True
        self.record("exited", "container %d code %s (by itself)" % (c.number, c.proc.returncode))
        if self.restart and self.restart_policy == "Always" and not self._stop.is_set():
            def again():
                if not self._wait(self._backoff()):
                    self.restarts += 1
                    self._run_container(c.number + 1)
            self._helper(again)

    def _helper(self, fn, *args):
        t = threading.Thread(target=fn, args=args, daemon=True, name="kubelet-pod-worker")
        self._helpers.append(t)
        t.start()

    # -- for tests ---------------------------------------------------------------------

    def wait_for(self, what, timeout, container=None):
        """Wait (real seconds) for an event; returns it or None."""
        deadline = self.clock() + timeout
        while self.clock() < deadline:
            ev = self.first(what, container)
            if ev is not None:
                return ev
            time.sleep(0.02)
        return None


# -- the container the kubelet starts: the manifest's env, mounts and security context --

# Settings that name a path; the ones under a mount are moved with it (PodLayout).
PATH_SETTINGS = ("paths.state_dir", "paths.log_dir", "paths.prompt_root", "paths.output_dir",
                 "engine.glmtts_home", "engine.g2p_dict", "server.blocklist_file")


class PodLayout:
    """The container's file system on this machine. A kubelet mounts each volume at its
    mountPath; a test cannot create /var/lib/glmtts or /models here, so each volume is a
    directory under ``root`` and every container path the service is given (its
    environment, the path settings of the mounted glmtts.toml) is rebased onto it by
    ``host_path``. ConfigMap volumes get the ConfigMap's files, ``sources`` fills a
    volume from a directory (e.g. the weights volume from a fixture checkout)."""

    def __init__(self, root, deployment, configmaps, container_name="glmtts", sources=None):
        self.root = str(root)
        pod = deployment["spec"]["template"]["spec"]
        self.pod = pod
        self.container = next(c for c in pod["containers"] if c["name"] == container_name)
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        by_name = {c["metadata"]["name"]: c for c in configmaps}
        self.mounts = []  # (mountPath, host dir, read-only)
        for m in self.container.get("volumeMounts", []):
            vol = volumes[m["name"]]
            host = os.path.join(self.root, "volumes", m["name"])
            os.makedirs(host, exist_ok=True)
            read_only = bool(m.get("readOnly"))
            if "configMap" in vol:
                cm = by_name[vol["configMap"]["name"]]
                items = vol["configMap"].get("items") or [{"key": k, "path": k} for k in cm["data"]]
                for item in items:
                    with open(os.path.join(host, item["path"]), "w", encoding="utf-8") as f:
                        f.write(cm["data"][item["key"]])
                read_only = True  # the kubelet mounts ConfigMaps read-only whatever the mount says
            elif "persistentVolumeClaim" in vol:
                read_only = read_only or bool(vol["persistentVolumeClaim"].get("readOnly"))
            elif "emptyDir" not in vol:
                raise ValueError("volume %s: only configMap, persistentVolumeClaim and emptyDir are modelled"
                                 % m["name"])
            if sources and m["name"] in sources:
                shutil.copytree(sources[m["name"]], host, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__"))
            self.mounts.append((m["mountPath"].rstrip("/") or "/", host, read_only))

    def host_path(self, path):
        """This machine's path for a container path under a mount (None if under none)."""
        best = None
        for mount_path, host, _ in self.mounts:
            if path == mount_path or path.startswith(mount_path + "/"):
                if best is None or len(mount_path) > len(best[0]):
                    best = (mount_path, host)
        if best is None:
            return None
        return best[1] + path[len(best[0]):]

    def writable(self):
        return [host for _, host, ro in self.mounts if not ro]

    def read_only(self):
        return [host for _, host, ro in self.mounts if ro]

    def env(self, secrets):
        """The container's environment, secretKeyRef values taken from ``secrets``
        ({(secret, key): value}), absolute paths under a mount rebased."""
        out = {}
        for e in self.container.get("env", []):
            if "value" in e:
                value = e["value"]
            else:
                ref = e["valueFrom"]["secretKeyRef"]
                value = secrets[(ref["name"], ref["key"])]
            if value.startswith("/") and self.host_path(value):
                value = self.host_path(value)
            out[e["name"]] = value
        return out

    def service_env(self, secrets, settings_loader):
        """Environment for a ServiceProcess started as this container: the container's own
        env, GLMTTS_CONFIG pointing at the mounted glmtts.toml, and every path setting of
        the effective config that lies under a mount rebased onto its volume.
        ``settings_loader(path, env)`` is glmtts.config.load."""
        container_env = {e["name"]: e.get("value", "") for e in self.container.get("env", [])}
        for e in self.container.get("env", []):
            if "valueFrom" in e:
                ref = e["valueFrom"]["secretKeyRef"]
                container_env[e["name"]] = secrets[(ref["name"], ref["key"])]
        config_path = container_env.get("GLMTTS_CONFIG", "/etc/glmtts/glmtts.toml")
        host_config = self.host_path(config_path)
        if host_config is None:
            raise ValueError("GLMTTS_CONFIG %s is not on a mounted volume" % config_path)
        effective = settings_loader(host_config, container_env)
        env = self.env(secrets)
        env["GLMTTS_CONFIG"] = host_config
        for name in PATH_SETTINGS:
            value = effective.get(name)
            env[_env_name(name)] = (self.host_path(value) or value) if value else value
        # ServiceProcess presets these for its own tests; here they are the manifest's.
        # Only server.host and server.port stay the test's: the "pod network" is loopback.
        for name in ("server.ui", "engine.name", "limits.rate_limit_per_minute"):
            value = effective.get(name)
            env[_env_name(name)] = ("true" if value else "false") if isinstance(value, bool) else str(value)
        return env, effective


def _env_name(setting):
    return "GLMTTS_" + setting.replace(".", "_").upper()


def sandbox_argv(argv, layout, *, extra_writable=()):
    """``argv`` run as the container runtime runs the container's securityContext:
    in a private mount namespace with the whole root read-only (readOnlyRootFilesystem)
    except the writable volumes, read-only volumes bound read-only, as runAsUser /
    runAsGroup with fsGroup as a supplementary group, no_new_privs
    (allowPrivilegeEscalation: false) and an empty capability bounding set (drop ALL).
    Needs root (mount namespaces, setpriv) on this machine, never in the pod."""
    pod_sc = layout.pod.get("securityContext", {})
    sc = layout.container.get("securityContext", {})
    user = sc.get("runAsUser", pod_sc.get("runAsUser"))
    group = sc.get("runAsGroup", pod_sc.get("runAsGroup"))
    fs_group = pod_sc.get("fsGroup")
    if user is None or group is None:
        raise ValueError("the pod names no numeric runAsUser/runAsGroup to run as")
    writable = list(layout.writable()) + list(extra_writable)
    for host in writable:  # what fsGroup does to a volume: group-owned, group-writable, setgid
        for dirpath, dirs, files in os.walk(host):
            for p in [dirpath] + [os.path.join(dirpath, f) for f in files]:
                os.chown(p, -1, fs_group if fs_group is not None else group)
                os.chmod(p, (os.stat(p).st_mode | 0o070 | (0o2000 if p == dirpath else 0)) & 0o7777)
    q = shlex.quote
    lines = ["set -e"]
    for host in writable:
        lines.append("mount --bind %s %s" % (q(host), q(host)))
    for host in layout.read_only():
        lines.append("mount --bind %s %s && mount -o remount,bind,ro %s" % (q(host), q(host), q(host)))
    lines.append("mount -o remount,bind,ro /")
    for target in _other_writable_mounts(set(writable) | set(layout.read_only())):
        lines.append("mount -o remount,bind,ro %s" % q(target))
    caps = ["--no-new-privs", "--bounding-set=-all", "--inh-caps=-all"] if _drops_all(sc) else []
    if not sc.get("allowPrivilegeEscalation", True) and "--no-new-privs" not in caps:
        caps.insert(0, "--no-new-privs")
    groups = ["--groups=%d" % fs_group] if fs_group is not None else ["--clear-groups"]
    lines.append('exec setpriv --reuid=%d --regid=%d %s %s -- "$@"'
                 % (user, group, " ".join(groups), " ".join(caps)))
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", "\n".join(lines), "sh"] + list(argv)


def _drops_all(sc):
    return "ALL" in sc.get("capabilities", {}).get("drop", [])


def _other_writable_mounts(ours):
    """Mount points besides / that a process could write to (not the kernel's pseudo file
    systems under /proc, /sys, /dev: a pod has its own of those, /dev/shm included)."""
    out = []
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            target = fields[1].replace("\\040", " ")
            options = fields[3].split(",")
            if target == "/" or target in ours or "ro" in options:
                continue
            if any(target == p or target.startswith(p + "/") for p in ("/proc", "/sys", "/dev")):
                continue
            out.append(target)
    return out


# -- a rendered pod for the probe-contract tests and bench/probe_contract.py -------------

# The Secret the manifests reference (never committed; a test value here).
TEST_SECRETS = {("glmtts-api-keys", "api-keys"): "k8s-test-key", ("glmtts-api-keys", "metrics-key"): "k8s-test-key"}


def render(overlay, kubectl, repo):
    """`kubectl kustomize ops/kubernetes/<overlay>` as a list of objects."""
    import subprocess

    import yaml

    out = subprocess.run([kubectl, "kustomize", os.path.join(repo, "ops", "kubernetes", overlay)],
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError("kubectl kustomize %s failed: %s" % (overlay, out.stderr.strip()))
    return [d for d in yaml.safe_load_all(out.stdout) if d]


class ScaledPod:
    """The rendered Deployment's container as the factory a Kubelet starts: each start is
    a real ServiceProcess with the container's env and ConfigMap, on one port (the pod
    keeps its address across restarts), and the service's own clocks scaled like the
    kubelet's: limits.worker_stall_s, server.drain_delay_s and server.drain_timeout_s
    (at least 1 s, its lower bound) times ``time_scale``. ``engine`` substitutes a plug-in
    engine (a slow or faulty stand-in for the real model)."""

    def __init__(self, root, docs, time_scale, *, engine=None, env=None, container_name="glmtts"):
        from glmtts import config

        from .service import free_port

        self.root = str(root)
        self.deployment = next(d for d in docs if d["kind"] == "Deployment")
        self.pod_spec = self.deployment["spec"]["template"]["spec"]
        self.container_name = container_name
        self.layout = PodLayout(os.path.join(self.root, "pod"), self.deployment,
                                [d for d in docs if d["kind"] == "ConfigMap"], container_name)
        base_env, self.settings = self.layout.service_env(TEST_SECRETS, lambda path, e: config.load(path, env=e))
        self.scale = float(time_scale)
        s = self.settings
        self.env = dict(base_env)
        self.env.update({
            "GLMTTS_LIMITS_WORKER_STALL_S": repr(s.limits.worker_stall_s * self.scale),
            "GLMTTS_SERVER_DRAIN_DELAY_S": repr(s.server.drain_delay_s * self.scale),
            "GLMTTS_SERVER_DRAIN_TIMEOUT_S": repr(max(1.0, s.server.drain_timeout_s * self.scale)),
        })
        if engine:  # the stand-in replaces the model: no weights to find on the (empty) volume
            self.env["GLMTTS_ENGINE_GLMTTS_HOME"] = ""
            self.env["GLMTTS_ENGINE_NAME"] = engine
        self.env.update(env or {})
        self.engine = engine or s.engine.name
        self.port = free_port()
        self.api_key = TEST_SECRETS[("glmtts-api-keys", "api-keys")]
        self.url = "http://127.0.0.1:%d" % self.port
        self.started = []

    def start(self):
        from .service import ServiceProcess

        svc = ServiceProcess(self.root, self.env, engine=self.engine, port=self.port,
                             name="container%d" % len(self.started))
        self.started.append(svc)
        return svc.start(wait=False)

    def kubelet(self, **kw):
        container = next(c for c in self.pod_spec["containers"] if c["name"] == self.container_name)
        port_map = {p["containerPort"]: self.port for p in container.get("ports", [])}
        return Kubelet(self.pod_spec, self.container_name, self.start, port_map=port_map,
                       time_scale=self.scale, **kw)

    def cleanup(self):
        for svc in self.started:
            svc.stop(timeout=5)
