"""Helpers for the trust-boundary and proxy tests: HTTP from a chosen loopback source
address (Linux routes all of 127.0.0.0/8 to lo, so 127.0.0.2 is a second "machine"
that needs no setup), the access-log clients of a service, the Gradio UI's own HTTP
API, a self-signed certificate, and rendering the shipped proxy configs."""

import json
import os
import re
import signal
import socket
import subprocess
import time

import requests
from requests.adapters import HTTPAdapter

from tests.support.fleet import tool

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROXY_DIR = os.path.join(REPO, "ops", "proxy")


class SourceAddressAdapter(HTTPAdapter):
    """Connections from ``source`` (an address of this machine) instead of the default."""

    def __init__(self, source, **kw):
        self.source = source
        super().__init__(**kw)

    def init_poolmanager(self, *args, **kw):
        kw["source_address"] = (self.source, 0)
        return super().init_poolmanager(*args, **kw)


def session_from(source):
    s = requests.Session()
    # Loopback only: no proxy from the environment, and a REQUESTS_CA_BUNDLE there must not
    # replace the test certificate a caller sets as session.verify.
    s.trust_env = False
    s.mount("http://", SourceAddressAdapter(source))
    s.mount("https://", SourceAddressAdapter(source))
    return s


_ACCESS = re.compile(r"^\S+ (?P<client>\S+) (?P<method>[A-Z]+) (?P<path>\S+) (?P<status>\d{3}) ")


def access_entries(svc, path=None):
    """[(client, method, path, status)] from the service's access log (service/logs.py's line)."""
    out = []
    for line in svc.stdout().splitlines():
        m = _ACCESS.match(line)
        if m and (path is None or m.group("path") == path):
            out.append((m.group("client"), m.group("method"), m.group("path"), int(m.group("status"))))
    return out


def ui_call(session, base, api_name, data, headers=None, timeout=60):
    """Run one event of the Gradio UI through its HTTP API (POST /gradio_api/call/<name>,
    then read the event's result stream): the same queue and handler the page's button
    uses. Returns the output values, or raises AssertionError with the stream."""
    r = session.post("%s/gradio_api/call/%s" % (base, api_name), json={"data": data}, headers=headers or {},
                     timeout=timeout)
    assert r.status_code == 200, (r.status_code, r.text[:500])
    event = r.json()["event_id"]
    r = session.get("%s/gradio_api/call/%s/%s" % (base, api_name, event), headers=headers or {}, timeout=timeout)
    kind = None
    for line in r.text.splitlines():
        if line.startswith("event:"):
            kind = line.split(":", 1)[1].strip()
        elif line.startswith("data:") and kind == "complete":
            return json.loads(line.split(":", 1)[1])
    raise AssertionError("UI event %s did not complete: %s" % (api_name, r.text[:1000]))


def self_signed_cert(directory, name="glmtts"):
    """(cert path, key path) of a fresh self-signed certificate for localhost/127.0.0.1."""
    openssl = tool("openssl")
    cert, key = os.path.join(directory, name + ".crt"), os.path.join(directory, name + ".key")
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", key, "-out", cert],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def free_port(host="127.0.0.1"):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30, host="127.0.0.1", proc=None, log=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError("exited with %s before listening on %d:\n%s"
                                 % (proc.returncode, port, log() if log else ""))
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("nothing listening on %s:%d after %ss:\n%s" % (host, port, timeout, log() if log else ""))


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def shipped(name):
    return read(os.path.join(PROXY_DIR, name))


# The only things a test changes in a shipped config: where the instances are (the lines
# between "# instances: begin" and "# instances: end"), the ports the proxy listens on
# (listen/bind lines) and the certificate paths. changed_lines() lets a test prove it.
_ADDR = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}:\d+\b")


def render(text, *, servers, ports, certs):
    """The shipped config with each instance block holding one line per address in
    ``servers`` (["127.0.0.1:8001", ...]), written like the block's first line (its
    address replaced, and a server name ending in 0 numbered); each listen/bind token in
    ``ports`` ({"443": "127.0.0.1:8443", ...}) replaced; each certificate path in
    ``certs`` ({shipped path: test path}) replaced."""
    out, block = [], None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped == "# instances: begin":
            out.append(line)
            block = []
            continue
        if stripped == "# instances: end":
            template = block[0]
            name = re.search(r"\bserver ([A-Za-z][\w-]*?)0\b", template)
            for i, addr in enumerate(servers):
                new = _ADDR.sub(addr, template, count=1)
                if name and name.group(1):
                    new = re.sub(r"\b%s0\b" % re.escape(name.group(1)), "%s%d" % (name.group(1), i), new)
                out.append(new)
            block = None
        elif block is not None:
            block.append(line)
            continue
        if stripped.startswith(("listen ", "bind ")):
            indent = line[:len(line) - len(line.lstrip())]
            tokens = []
            for token in stripped.split():
                core, semi = (token[:-1], ";") if token.endswith(";") else (token, "")
                tokens.append(ports.get(core, core) + semi)
            line = indent + " ".join(tokens)
        for old, new in certs.items():
            line = line.replace(old, new)
        out.append(line)
    return "\n".join(out) + "\n"


def changed_lines(original, rendered):
    """(removed, added) lines between the shipped and the rendered config."""
    import difflib

    diff = list(difflib.unified_diff(original.splitlines(), rendered.splitlines(), lineterm="", n=0))
    removed = [l[1:] for l in diff if l.startswith("-") and not l.startswith("---")]
    added = [l[1:] for l in diff if l.startswith("+") and not l.startswith("+++")]
    return removed, added


def only_substituted_fields_differ(original, rendered, cert_paths):
    """AssertionError unless every changed line is an instance line, a listen/bind line or
    a certificate line."""
    removed, added = changed_lines(original, rendered)
    for line in removed + added:
        s = line.strip()
        ok = (s.startswith("server ") or s.startswith(("listen ", "bind "))
              or any(p in s for p in cert_paths) or s.startswith("ssl_certificate"))
        assert ok, "rendering changed a line it must not touch: %r" % line
    return removed, added


class Instances:
    """N real glmtts instances (ServiceProcess) started together and stopped at exit."""

    def __init__(self, tmp_path, n, env=None, per_instance=None, **kw):
        from tests.support.service import ServiceProcess

        extra = per_instance or [{}] * n
        self.procs = [ServiceProcess(tmp_path, dict(env or {}, **extra[i]), name="inst%d" % i, **kw) for i in range(n)]

    def __enter__(self):
        try:
            for p in self.procs:
                p.start(wait=False)
            for p in self.procs:
                p.wait_healthy(timeout=120)
        except BaseException:
            self.__exit__()
            raise
        return self.procs

    def __exit__(self, *exc):
        for p in self.procs:  # all drains at once, then wait for each
            if p.proc is not None and p.proc.poll() is None:
                p.proc.send_signal(signal.SIGTERM)
        for p in self.procs:
            p.stop(timeout=30)


NGINX_CERTS = ("/etc/nginx/tls/glmtts.crt", "/etc/nginx/tls/glmtts.key")
HAPROXY_PEM = "/etc/haproxy/certs/glmtts.pem"

# Stands in for the distribution's /etc/nginx/nginx.conf, which reads the shipped file
# inside its http {} block: only what a private, unprivileged run needs (temporary
# directories and logs in the test's directory instead of /var/lib/nginx, /var/log/nginx).
NGINX_MAIN = """worker_processes 1;
error_log {root}/error.log info;
events {{ worker_connections 512; }}
http {{
    client_body_temp_path {root}/tmp/body;
    proxy_temp_path {root}/tmp/proxy;
    fastcgi_temp_path {root}/tmp/fastcgi;
    uwsgi_temp_path {root}/tmp/uwsgi;
    scgi_temp_path {root}/tmp/scgi;
    include {root}/glmtts.conf;
    access_log {root}/access.log glmtts;
}}
"""


class ProxyProcess:
    """A real nginx or HAProxy running the shipped config, rendered for ``servers``, on
    free loopback ports; stopped by its PID."""

    def __init__(self, kind, root, servers):
        self.kind, self.root, self.servers = kind, str(root), list(servers)
        os.makedirs(os.path.join(self.root, "tmp"), exist_ok=True)
        self.https_port, self.http_port, self.stats_port = free_port(), free_port(), free_port()
        self.url = "https://127.0.0.1:%d" % self.https_port
        self.cert, self.key = self_signed_cert(self.root)
        self.proc = None
        self.stdout_path = os.path.join(self.root, "%s.out" % kind)
        if kind == "nginx":
            self.shipped = shipped("nginx.conf")
            self.rendered = render(self.shipped, servers=self.servers,
                                   ports={"443": "127.0.0.1:%d" % self.https_port,
                                          "80": "127.0.0.1:%d" % self.http_port},
                                   certs={NGINX_CERTS[0]: self.cert, NGINX_CERTS[1]: self.key})
            self.conf = os.path.join(self.root, "glmtts.conf")
            self.main = os.path.join(self.root, "nginx.conf")
            with open(self.main, "w") as f:
                f.write(NGINX_MAIN.format(root=self.root))
            self.cert_paths = [self.cert, self.key]
        else:
            self.pem = os.path.join(self.root, "glmtts.pem")
            with open(self.pem, "w") as f:
                f.write(read(self.cert) + read(self.key))
            self.shipped = shipped("haproxy.cfg")
            self.rendered = render(self.shipped, servers=self.servers,
                                   ports={"*:443": "127.0.0.1:%d" % self.https_port,
                                          "*:80": "127.0.0.1:%d" % self.http_port,
                                          "127.0.0.1:8404": "127.0.0.1:%d" % self.stats_port},
                                   certs={HAPROXY_PEM: self.pem})
            self.conf = self.main = os.path.join(self.root, "haproxy.cfg")
            self.cert_paths = [self.pem]
        with open(self.conf, "w") as f:
            f.write(self.rendered)

    def command(self, check=False):
        if self.kind == "nginx":
            cmd = [tool("nginx"), "-p", self.root, "-c", self.main,
                   "-g", "daemon off; pid %s/nginx.pid;" % self.root]
            return cmd + ["-t"] if check else cmd
        return [tool("haproxy"), "-c" if check else "-db", "-f", self.conf]

    def check(self):
        """The program's own config check (nginx -t, haproxy -c): (ok, output)."""
        r = subprocess.run(self.command(check=True), capture_output=True, text=True, timeout=60)
        return r.returncode == 0, r.stdout + r.stderr

    def start(self):
        with open(self.stdout_path, "ab") as out:
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        wait_port(self.https_port, proc=self.proc, log=self.log)
        return self

    def log(self):
        text = read(self.stdout_path) if os.path.exists(self.stdout_path) else ""
        err = os.path.join(self.root, "error.log")
        return text + (read(err) if os.path.exists(err) else "")

    def access_log(self):
        path = os.path.join(self.root, "access.log")
        return read(path) if os.path.exists(path) else ""

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # by the PID we started: nginx and HAProxy stop at once on SIGTERM
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
