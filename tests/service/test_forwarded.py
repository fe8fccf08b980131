"""service/forwarded.py: whose X-Forwarded-For / Forwarded is believed, and the client
address that results, as a table; the setting's validator; the ASGI middleware."""

import asyncio

import pytest

from glmtts import config
from glmtts.errors import ConfigError
from service.forwarded import ForwardedMiddleware, TrustedProxies, forwarded_elements, parse_ip

PROXY = ["127.0.0.1", "10.0.0.0/8", "fd00::/8"]

# (trusted, peer, headers, expected client, expected scheme)
CASES = [
    # nothing trusted (the default): the headers never matter
    ([], "127.0.0.1", [("x-forwarded-for", "6.6.6.6")], "127.0.0.1", None),
    ([], "127.0.0.1", [("forwarded", "for=6.6.6.6")], "127.0.0.1", None),
    ([], "::ffff:127.0.0.1", [], "127.0.0.1", None),  # a dual-stack socket's IPv4 peer, normalised
    # an untrusted peer: its headers are ignored, spoofed chains included
    (PROXY, "203.0.113.9", [("x-forwarded-for", "6.6.6.6")], "203.0.113.9", None),
    (PROXY, "203.0.113.9", [("x-forwarded-for", "6.6.6.6, 10.0.0.2")], "203.0.113.9", None),
    (PROXY, "203.0.113.9", [("x-forwarded-proto", "https"), ("x-forwarded-for", "1.1.1.1")], "203.0.113.9", None),
    # a trusted proxy: the rightmost untrusted hop is the client
    (PROXY, "127.0.0.1", [("x-forwarded-for", "198.51.100.7")], "198.51.100.7", None),
    (PROXY, "127.0.0.1", [("x-forwarded-for", "198.51.100.7:51234")], "198.51.100.7", None),
    (PROXY, "127.0.0.1", [("x-forwarded-for", "198.51.100.7, 10.1.2.3")], "198.51.100.7", None),
    # the client wrote its own header and the proxy appended the real address: the
    # client's part is left of the real address and never believed
    (PROXY, "127.0.0.1", [("x-forwarded-for", "6.6.6.6, 198.51.100.7")], "198.51.100.7", None),
    (PROXY, "127.0.0.1", [("x-forwarded-for", "6.6.6.6"), ("x-forwarded-for", "198.51.100.7")],
     "198.51.100.7", None),  # two header lines are one comma list, in order
    # every hop trusted: the leftmost (one of our own machines) is the client
    (PROXY, "127.0.0.1", [("x-forwarded-for", "10.0.0.5, 10.0.0.6")], "10.0.0.5", None),
    # empty or garbage hops stop the walk at the last address we could verify
    (PROXY, "127.0.0.1", [("x-forwarded-for", "")], "127.0.0.1", None),
    (PROXY, "127.0.0.1", [("x-forwarded-for", "not-an-ip")], "127.0.0.1", None),
    (PROXY, "127.0.0.1", [("x-forwarded-for", "6.6.6.6, evil host, 10.0.0.7")], "10.0.0.7", None),
    (PROXY, "127.0.0.1", [("x-forwarded-for", "1.2.3.4:notaport")], "127.0.0.1", None),
    (PROXY, "127.0.0.1", [("x-forwarded-for", "999.1.1.1")], "127.0.0.1", None),
    (PROXY, "127.0.0.1", [("x-forwarded-for", "[2001:db8::1")], "127.0.0.1", None),
    (PROXY, "127.0.0.1", [("x-forwarded-for", "x" * 5000)], "127.0.0.1", None),
    # IPv6 hops, bare, bracketed, with a port, and IPv4-mapped
    (PROXY, "::1", [("x-forwarded-for", "2001:db8::7")], "::1", None),  # ::1 is not in PROXY
    (PROXY, "fd00::1", [("x-forwarded-for", "2001:db8::7")], "2001:db8::7", None),
    (PROXY, "fd00::1", [("x-forwarded-for", "[2001:db8::7]:443")], "2001:db8::7", None),
    (PROXY, "fd00::1", [("x-forwarded-for", "::ffff:198.51.100.7")], "198.51.100.7", None),
    (PROXY, "::ffff:127.0.0.1", [("x-forwarded-for", "198.51.100.7")], "198.51.100.7", None),
    (PROXY, "127.0.0.1", [("x-forwarded-for", "2001:DB8:0:0::7, fd00::2")], "2001:db8::7", None),
    # RFC 7239 Forwarded, used only when there is no X-Forwarded-For
    (PROXY, "127.0.0.1", [("forwarded", "for=198.51.100.7;proto=https;by=10.0.0.1")], "198.51.100.7", "https"),
    (PROXY, "127.0.0.1", [("forwarded", 'for="[2001:db8:cafe::17]:4711"')], "2001:db8:cafe::17", None),
    (PROXY, "127.0.0.1", [("forwarded", "for=6.6.6.6, for=198.51.100.7, for=10.0.0.3")], "198.51.100.7", None),
    (PROXY, "127.0.0.1", [("forwarded", "For=198.51.100.7")], "198.51.100.7", None),  # names are case-insensitive
    (PROXY, "127.0.0.1", [("forwarded", "for=unknown")], "127.0.0.1", None),
    (PROXY, "127.0.0.1", [("forwarded", "for=_hidden, for=10.0.0.3")], "10.0.0.3", None),
    (PROXY, "127.0.0.1", [("forwarded", 'for="198.51.100.7')], "127.0.0.1", None),  # unterminated quote
    (PROXY, "127.0.0.1", [("forwarded", "198.51.100.7")], "127.0.0.1", None),  # no for=
    (PROXY, "127.0.0.1", [("forwarded", "proto=https")], "127.0.0.1", "https"),
    # both headers: X-Forwarded-For wins (a client-supplied Forwarded passed through is ignored)
    (PROXY, "127.0.0.1", [("forwarded", "for=6.6.6.6"), ("x-forwarded-for", "198.51.100.7")], "198.51.100.7", None),
    # the scheme: only http/https, only from a trusted proxy
    (PROXY, "127.0.0.1", [("x-forwarded-for", "198.51.100.7"), ("x-forwarded-proto", "https")], "198.51.100.7",
     "https"),
    (PROXY, "127.0.0.1", [("x-forwarded-for", "198.51.100.7"), ("x-forwarded-proto", "gopher")], "198.51.100.7",
     None),
    # a trusted peer without any forwarding header is itself the client
    (PROXY, "10.9.9.9", [("user-agent", "x")], "10.9.9.9", None),
]


@pytest.mark.parametrize("trusted,peer,headers,client,scheme", CASES)
def test_resolve_table(trusted, peer, headers, client, scheme):
    assert TrustedProxies(trusted).resolve(peer, headers) == (client, scheme)


@pytest.mark.parametrize("value,expected", [
    ("1.2.3.4", "1.2.3.4"), (" 1.2.3.4 ", "1.2.3.4"), ("1.2.3.4:80", "1.2.3.4"), ("::1", "::1"),
    ("[::1]", "::1"), ("[::1]:8443", "::1"), ('"[::1]:8443"', "::1"), ("::ffff:10.0.0.1", "10.0.0.1"),
    ("fe80::1%eth0", "fe80::1%eth0"),
    ("", None), ("unknown", None), ("_hidden", None), ("1.2.3", None), ("[::1]x", None), ("1.2.3.4:", None),
    ("1.2.3.4:1234567", None), ("host.example", None),
])
def test_parse_ip(value, expected):
    ip = parse_ip(value)
    assert (str(ip) if ip is not None else None) == expected


def test_forwarded_elements_quoted_commas_and_semicolons():
    assert forwarded_elements('for="a,b;c";proto=http, for=1.2.3.4') == [{"for": "a,b;c", "proto": "http"},
                                                                         {"for": "1.2.3.4"}]
    assert forwarded_elements("=x") == [{}]


@pytest.mark.parametrize("entry,message", [
    ("*", "'*' is not accepted"),
    ("10.0.0.1/8", "did you mean 10.0.0.0/8"),
    ("proxy.example", "is not an IP address or CIDR"),
    ("10.0.0.0/33", "is not an IP address or CIDR"),
    (" ", "an empty entry"),
])
def test_setting_rejects_what_is_not_an_address(entry, message):
    with pytest.raises(ConfigError) as e:
        config.load(path="", env={"GLMTTS_SERVER_FORWARDED_ALLOW_IPS": '["127.0.0.1", "%s"]' % entry})
    assert "server.forwarded_allow_ips" in str(e.value)
    assert message in str(e.value)


def test_setting_accepts_addresses_and_networks():
    s = config.load(path="", env={"GLMTTS_SERVER_FORWARDED_ALLOW_IPS": "127.0.0.1, ::1, 10.0.0.0/8, fd00::/8"})
    assert s.server.forwarded_allow_ips == ["127.0.0.1", "::1", "10.0.0.0/8", "fd00::/8"]
    assert config.load(path="", env={}).server.forwarded_allow_ips == []


def test_mapped_network_entry_trusts_the_ipv4_peer():
    assert TrustedProxies(["::ffff:127.0.0.1"]).resolve("127.0.0.1", [("x-forwarded-for", "1.1.1.1")])[0] == "1.1.1.1"


def _run(trusted, peer, headers):
    seen = {}

    async def app(scope, receive, send):
        seen.update(client=scope["client"], scheme=scope["scheme"], peer=scope["state"]["peer"])

    scope = {"type": "http", "scheme": "http", "client": peer,
             "headers": [(k.encode(), v.encode()) for k, v in headers]}
    asyncio.run(ForwardedMiddleware(app, trusted)(scope, None, None))
    return seen


def test_middleware_rewrites_client_and_keeps_the_peer():
    seen = _run(["127.0.0.1"], ("127.0.0.1", 5555), [("X-Forwarded-For", "198.51.100.7"),
                                                      ("X-Forwarded-Proto", "https")])
    assert seen == {"client": ("198.51.100.7", 0), "scheme": "https", "peer": "127.0.0.1"}


def test_middleware_leaves_an_untrusted_peer_alone():
    seen = _run([], ("127.0.0.1", 5555), [("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-Proto", "https")])
    assert seen == {"client": ("127.0.0.1", 5555), "scheme": "http", "peer": "127.0.0.1"}
