"""Who the client is: the peer's address, or what a trusted proxy says it is.

The one place that decides. ``server.forwarded_allow_ips`` lists the proxies (addresses
or CIDRs) whose ``X-Forwarded-For`` / RFC 7239 ``Forwarded`` headers are believed; the
default, none, means the peer address is the client whatever the headers say. uvicorn's
own proxy handling is off (service/__main__.py: it trusts 127.0.0.1 by default, so any
local client could pick its own address). ForwardedMiddleware runs first and rewrites
``scope["client"]`` to the result, so the access log, the rate limit (API and UI alike)
and Gradio's ``gr.Request.client`` all see the same address; the connection's own peer
stays in ``scope["state"]["peer"]``.

Semantics (those of uvicorn's ProxyHeadersMiddleware and of a ProxyFix that trusts
networks rather than a hop count): only when the peer is trusted are the headers read;
every proxy appends the address it received the request from, so the chain is walked
from the right, skipping trusted hops, and the first untrusted address is the client.
Everything to its left was written by the client itself and is never believed. If every
hop is trusted, the leftmost is the client (it was one of our own machines). A hop that
is not an IP address (malformed, "unknown", an obfuscated RFC 7239 name) stops the walk:
the client is the last hop we could verify, so a proxy's garbled header can only put
clients into the proxy's bucket, never into a name of their choosing.

When a request carries both headers, X-Forwarded-For wins: it is what nginx, HAProxy and
the cloud load balancers set, and a proxy that sets one usually passes the other through
from the client untouched (the shipped ops/proxy configs drop the client's Forwarded
header). A proxy that speaks only RFC 7239 must delete the client's X-Forwarded-For.
"""

import ipaddress
import logging

from glmtts import config

log = logging.getLogger(__name__)

SCHEMES = {"http", "https"}


def parse_network(entry):
    """An ip_network for one forwarded_allow_ips entry (the setting's own validator says
    what is allowed and why "*" is not), IPv4-mapped IPv6 networks as IPv4."""
    return _unmapped_network(config.ip_network(entry))


def _unmapped_network(net):
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and net.network_address.ipv4_mapped:
        return ipaddress.ip_network("%s/%d" % (net.network_address.ipv4_mapped, net.prefixlen - 96))
    return net


def parse_ip(value):
    """An ip_address from one hop as proxies write it (1.2.3.4, 1.2.3.4:5678, 2001:db8::1,
    [2001:db8::1]:443, "[2001:db8::1]"), IPv4-mapped IPv6 as IPv4; None if it is not one."""
    value = value.strip().strip('"').strip()
    if not value or len(value) > 64:
        return None
    if value.startswith("["):
        end = value.find("]")
        if end == -1 or (value[end + 1:] and not _is_port(value[end + 1:])):
            return None
        value = value[1:end]
    elif value.count(":") == 1:  # IPv4 with a port; a bare IPv6 address has at least two colons
        value, port = value.split(":")
        if not _is_port(":" + port):
            return None
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return ip.ipv4_mapped
    return ip


def _is_port(suffix):
    return suffix.startswith(":") and suffix[1:].isdigit() and len(suffix) <= 6


class TrustedProxies:
    """The peers whose forwarding headers are believed (server.forwarded_allow_ips)."""

    def __init__(self, entries=()):
        self.networks = [parse_network(e) for e in entries]

    def __bool__(self):
        return bool(self.networks)

    def trusts(self, ip):
        return ip is not None and any(ip.version == net.version and ip in net for net in self.networks)

    def resolve(self, peer, headers):
        """(client address, scheme or None) for a request from ``peer`` (a string) with
        ``headers`` (a list of (name, value) str pairs, names lower-case)."""
        peer_ip = parse_ip(peer or "")
        if not self.networks or not self.trusts(peer_ip):
            return _text(peer_ip, peer), None
        xff = [v for k, v in headers if k == "x-forwarded-for"]
        fwd = [v for k, v in headers if k == "forwarded"]
        if xff:
            hops = [h for v in xff for h in v.split(",")]
            protos = [v for k, v in headers if k == "x-forwarded-proto"]
            proto = protos[-1].split(",")[-1].strip().lower() if protos else None
        elif fwd:
            elements = forwarded_elements(", ".join(fwd))
            hops = [e.get("for", "") for e in elements]
            proto = elements[-1].get("proto", "").lower() if elements else None
        else:
            return _text(peer_ip, peer), None
        client = self._walk(peer_ip, hops)
        return str(client), (proto if proto in SCHEMES else None)

    def _walk(self, peer_ip, hops):
        verified = peer_ip
        for hop in reversed(hops):
            ip = parse_ip(hop)
            if ip is None:
                return verified  # not an address: the last hop we could check is all we know
            if not self.trusts(ip):
                return ip
            verified = ip
        return verified  # every hop trusted: the leftmost was one of our own machines


def _text(ip, raw):
    return str(ip) if ip is not None else (raw or "-")


def forwarded_elements(value):
    """RFC 7239 ``Forwarded`` as a list of {param: value} dicts (names lower-case, quoted
    strings unquoted). A malformed element becomes {} (a hop that is not an address)."""
    elements, pairs, i, n = [], {}, 0, len(value)
    token, key, bad = [], None, False

    def end_pair():
        nonlocal token, key, bad
        text = "".join(token).strip()
        if key is None:
            bad = bad or bool(text)
        elif key:
            pairs[key] = text
        token, key = [], None

    while i < n:
        c = value[i]
        if c == '"':
            j, buf = i + 1, []
            while j < n and value[j] != '"':
                if value[j] == "\\" and j + 1 < n:
                    j += 1
                buf.append(value[j])
                j += 1
            if j >= n:
                bad = True  # unterminated quote
            token.append("".join(buf))
            i = j + 1
            continue
        if c == "=" and key is None:
            key = "".join(token).strip().lower()
            if not key:
                bad = True
            token = []
        elif c == ";":
            end_pair()
        elif c == ",":
            end_pair()
            elements.append({} if bad else pairs)
            pairs, bad = {}, False
        else:
            token.append(c)
        i += 1
    end_pair()
    elements.append({} if bad else pairs)
    return elements


class ForwardedMiddleware:
    """ASGI middleware, outermost: sets ``scope["client"]`` to the resolved client (and
    ``scope["scheme"]`` to the trusted proxy's X-Forwarded-Proto / proto=)."""

    def __init__(self, app, trusted):
        self.app = app
        self.trusted = trusted if isinstance(trusted, TrustedProxies) else TrustedProxies(trusted)
        if self.trusted:
            log.info("forwarded headers believed from %s (server.forwarded_allow_ips)",
                     ", ".join(str(n) for n in self.trusted.networks))

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            peer = scope.get("client")
            state = scope.setdefault("state", {})
            state["peer"] = peer[0] if peer else None
            headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope.get("headers", [])]
            client, scheme = self.trusted.resolve(peer[0] if peer else "", headers)
            if peer is None or client != peer[0]:
                scope["client"] = (client, 0)
            if scheme:
                scope["scheme"] = scheme if scope["type"] == "http" else scheme.replace("http", "ws")
        return await self.app(scope, receive, send)


def client_of(scope):
    """The resolved client address of a request scope (what the rate limit keys on)."""
    client = scope.get("client")
    return client[0] if client else "-"
