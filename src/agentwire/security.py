"""Who may reach the server, and what its pages may do (§9).

- Host (every request, HTTP and WebSocket, with or without a token): the name a request is addressed
  to must be a loopback name (127.0.0.1, localhost, [::1]; any port), the address the server was
  told to listen on, or an `--allowed-host`. A page that rebinds its own DNS name to 127.0.0.1 is
  refused before it reaches anything, even on a `--no-auth` server.
- Origin (WebSocket handshakes and POST/PUT/PATCH/DELETE): a browser names the page that made the
  request; it must be the server's own origin (the scheme, host and port the request reached, or
  what the reverse proxy says it reached when `--trust-forwarded` is set) or an `--allowed-origin`.
  Without an Origin header (curl, the Python client, agents) a request is not a browser's and passes.
- Headers: `nosniff` on every response; the dashboard's pages also get a CSP that allows only their
  own scripts, styles, images and connections, and no framing by other sites.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from urllib.parse import urlsplit

import orjson
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("agentwire.security")

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_WEB_SCHEMES = {"ws": "http", "wss": "https"}

# The dashboard ships its scripts and styles from /static; what an agent writes is shown in sandboxed
# frames whose documents inherit this policy (and carry a stricter one of their own): no remote image,
# font or script can load, nothing can frame the dashboard but itself.
DASHBOARD_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "font-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'self'"
)


def host_name(host: str) -> str | None:
    """The name in a Host header or an --allowed-host value, lowercased, without port or brackets
    (`[::1]:8765` → `::1`); None if it is not a host name at all."""
    host = host.strip().lower()
    if host.startswith("["):
        name, bracket, rest = host[1:].partition("]")
        if not bracket or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        try:
            return str(ipaddress.IPv6Address(name))
        except ValueError:
            return None
    name, colon, port = host.partition(":")
    if colon and not port.isdigit():
        return None
    if not name or any(not (c.isalnum() or c in "-._") for c in name):
        return None
    return name.rstrip(".")


def host_pattern(value: str) -> str:
    """An --allowed-host value as matched: a name (any port), `*.example.com` (its subdomains) or `*`."""
    if value.strip() == "*":
        return "*"
    wildcard = value.strip().startswith("*.")
    name = host_name(value.strip()[2:] if wildcard else value)
    if name is None:
        raise ValueError(f"not a host name: {value!r} (use a name, *.domain or *)")
    return f"*.{name}" if wildcard else name


def normalize_origin(origin: str) -> str:
    """`HTTPS://Example.com:443/` → `https://example.com`: the form a browser's Origin header has.
    Raises ValueError for anything that is not scheme://host[:port]."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        raise ValueError(f"not an origin: {origin!r}") from None
    scheme = _WEB_SCHEMES.get(parts.scheme.lower(), parts.scheme.lower())
    if scheme not in _DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/") or parts.query \
            or parts.fragment or parts.username or parts.password:
        raise ValueError(f"not an origin (scheme://host[:port]): {origin!r}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        host += f":{port}"
    return f"{scheme}://{host}"


def _name_allowed(name: str, patterns: Iterable[str]) -> bool:
    for pattern in patterns:
        if pattern == "*" or name == pattern:
            return True
        if pattern.startswith("*.") and name.endswith(pattern[1:]):
            return True
    return False


class SiteGuard:
    """Refuse (403, JSON, logged) a request to a foreign Host, and a browser's WebSocket handshake or
    state-changing request from a foreign Origin; before auth, so neither a token nor `--no-auth`
    changes the answer."""

    def __init__(self, app: ASGIApp, *, listen_host: str, allowed_hosts: Iterable[str] = (),
                 allowed_origins: Iterable[str] = (), trust_forwarded: bool = False) -> None:
        self.app = app
        hosts = set(LOOPBACK_NAMES) | {host_pattern(host) for host in allowed_hosts}
        listen = host_name(f"[{listen_host}]" if ":" in listen_host else listen_host)
        if listen is not None and listen not in ("0.0.0.0", "::"):  # a wildcard address is no name
            hosts.add(listen)
        self.hosts = frozenset(hosts)
        self.origins = frozenset(normalize_origin(origin) for origin in allowed_origins)
        self.trust_forwarded = trust_forwarded

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        forwarded = headers.get("x-forwarded-host", "").split(",")[0].strip() if self.trust_forwarded else ""
        for named in (host, forwarded) if forwarded else (host,):
            name = host_name(named)
            if name is None or not _name_allowed(name, self.hosts):
                await self._refuse(scope, receive, send, "host_not_allowed",
                                   f"host {named[:100]!r} is not served here: the server answers to its loopback "
                                   "names and to the names given with --allowed-host")
                return
        origin = headers.get("origin")
        if origin is not None and (scope["type"] == "websocket" or scope["method"] in STATE_CHANGING):
            own = self._own_origin(scope, headers, forwarded or host)
            try:
                allowed = normalize_origin(origin) in self.origins | {own}
            except ValueError:
                allowed = False
            if not allowed:
                await self._refuse(scope, receive, send, "origin_not_allowed",
                                   f"requests from the page at {origin[:100]!r} are not allowed: only this "
                                   "server's own pages and the origins given with --allowed-origin may "
                                   "change state or open a WebSocket")
                return
        await self.app(scope, receive, send)

    def _own_origin(self, scope: Scope, headers: Headers, host: str) -> str:
        scheme = str(scope.get("scheme", "http"))
        if self.trust_forwarded and (proto := headers.get("x-forwarded-proto", "").split(",")[0].strip()):
            scheme = proto
        try:
            return normalize_origin(f"{scheme}://{host}")
        except ValueError:
            return ""

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, code: str, message: str) -> None:
        client = scope.get("client")
        log.warning("refused %s %s from %s: %s", scope["type"], scope.get("path"),
                    f"{client[0]}:{client[1]}" if client else "?", message)
        body = orjson.dumps({"error": {"code": code, "message": message}})
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 403, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        if (await receive())["type"] != "websocket.connect":
            return
        if "websocket.http.response" in scope.get("extensions", {}):  # a JSON answer, not just a status
            await send({"type": "websocket.http.response.start", "status": 403, "headers": headers})
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": 1008, "reason": code})


class SecurityHeaders:
    """`X-Content-Type-Options: nosniff` on every response; the dashboard's pages (`/`, `/static/…`)
    also get their CSP and a same-origin-only frame rule for browsers older than `frame-ancestors`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        dashboard = path == "/" or path.startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["x-content-type-options"] = "nosniff"
                if dashboard:
                    headers["content-security-policy"] = DASHBOARD_CSP
                    headers["x-frame-options"] = "SAMEORIGIN"
                    headers["referrer-policy"] = "no-referrer"
            await send(message)

        await self.app(scope, receive, send_with_headers)
