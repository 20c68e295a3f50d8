"""Which web pages may call `pecrs serve` from a browser (CORS): the origins named at start-up,
checked as a browser writes its Origin header, since Starlette's CORSMiddleware compares them as
strings and a misspelt origin would be accepted, match no page, and fail only in the browser.
"""
from __future__ import annotations

import ipaddress
import re

_HOST_PORT = re.compile(r"(?P<host>\[[^\]]*\]|[^:]*)(:(?P<port>[0-9]+))?")
_DOMAIN = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*\.?")
DEFAULT_PORTS = {"http": 80, "https": 443}


def check_cors_origin(origin: str) -> str:
    """`origin` when a browser can send it as its Origin header, or "*"; else ValueError saying what
    to change. CORSMiddleware compares origins as strings, so "https://app.example.com/" would be
    accepted, match no page and fail only in the browser."""
    problem = _origin_problem(origin)
    if problem:
        raise ValueError(f"{origin!r}: {problem} (expected * or scheme://host[:port] with scheme http or https "
                         "and no path, e.g. https://app.example.com)")
    return origin


def _origin_problem(origin: str) -> str | None:
    if origin == "*":
        return None
    if origin == "null":
        return "'null' is what sandboxed pages and file:// send; serve the page over http(s) and name that origin"
    scheme, sep, rest = origin.partition("://")
    if not sep:
        return "not an origin"
    if scheme.lower() not in DEFAULT_PORTS:
        return f"the scheme is {scheme or 'missing'}, not http or https"
    if rest.endswith("/") and not any(c in rest[:-1] for c in "/?#"):
        return "drop the trailing slash"
    if any(c in rest for c in "/?#"):
        return "drop the path, query or fragment: an origin is where a page comes from, not the page"
    if not rest.isascii():
        host = rest.rsplit(":", 1)[0] if rest.count(":") == 1 else rest
        try:
            return f"browsers send a non-ASCII name in its punycode form: {host.encode('idna').decode()}"
        except UnicodeError:
            return "not a host name browsers can send"
    if origin != origin.lower():
        return "write it in lower case, as browsers send it"
    match = _HOST_PORT.fullmatch(rest)
    host, port = match["host"], match["port"]
    problem = _host_problem(host)
    if problem:
        return problem
    if port is not None and not (0 < int(port) < 65536 and str(int(port)) == port):
        return f"port {port} is not a port from 1 to 65535"
    if port is not None and int(port) == DEFAULT_PORTS[scheme]:
        return f"drop :{port}, {scheme}'s default port, which browsers leave out"
    return None


def _host_problem(host: str) -> str | None:
    """Why browsers never send `host` as written, or None. IP addresses must be in the form a
    browser writes them (127.0.0.1, [::1]: not 127.1, 0x7f.0.0.1 or [::ffff:127.0.0.1])."""
    if host.startswith("["):
        try:
            address = ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return f"{host} is not an IPv6 address"
        written = address.ipv4_mapped or f"[{address.compressed}]"
        return None if str(written) == host else f"browsers write this address as {written}"
    if re.fullmatch(r"[0-9]+|0x[0-9a-f]*", host.rstrip(".").rsplit(".", 1)[-1]):   # an IPv4 address, to a browser
        try:
            canonical = str(ipaddress.IPv4Address(host))
        except ValueError:
            return f"{host} is not an IPv4 address as browsers write it (four decimal numbers: 127.0.0.1)"
        return None if canonical == host else f"browsers write this address as {canonical}"
    if not _DOMAIN.fullmatch(host):
        return "not a host[:port]"
    return None
