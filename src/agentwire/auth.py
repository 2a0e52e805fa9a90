"""Token auth (§9): `Authorization: Bearer`, or the cookie set by opening the printed `/?token=` link,
so that EventSource and WebSocket, which cannot set headers, carry it too."""

from __future__ import annotations

import hmac
from http.cookies import SimpleCookie
from urllib.parse import parse_qs

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

COOKIE = "agentwire_token"
OPEN_PATHS = {"/healthz"}


class TokenAuth:
    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.token is None or scope["type"] not in ("http", "websocket") or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        link_token = query.get("token", [None])[0]
        if scope["type"] == "http" and scope["path"] == "/" and link_token is not None:
            await self._login(link_token, send)
            return
        if self._allowed(scope, link_token):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": "missing or wrong token"})
            return
        body = orjson.dumps({"error": {"code": "unauthorized", "message":
                             "missing or wrong token: send 'Authorization: Bearer <token>' or open the "
                             "link agentwire serve printed"}})
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": body})

    def _matches(self, candidate: str | None) -> bool:
        assert self.token is not None
        return candidate is not None and hmac.compare_digest(candidate.encode(), self.token.encode())

    def _allowed(self, scope: Scope, link_token: str | None) -> bool:
        cookie_header = ""
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, credential = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and self._matches(credential.strip()):
                    return True
            elif name == b"cookie":
                cookie_header = value.decode("latin-1")
        if cookie_header:
            cookie = SimpleCookie()
            cookie.load(cookie_header)
            if COOKIE in cookie and self._matches(cookie[COOKIE].value):
                return True
        # A WebSocket client outside a browser may pass the token in the URL, as the link does.
        return scope["type"] == "websocket" and self._matches(link_token)

    async def _login(self, token: str, send: Send) -> None:
        if not self._matches(token):
            await send({"type": "http.response.start", "status": 401,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
            await send({"type": "http.response.body", "body": b"wrong token: open the link agentwire serve printed"})
            return
        assert self.token is not None
        cookie = f"{COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
        await send({"type": "http.response.start", "status": 303,
                    "headers": [(b"location", b"/"), (b"set-cookie", cookie.encode())]})
        await send({"type": "http.response.body", "body": b""})
