"""Request bodies, checked whole before any route sees them: the size limit (413) and, for JSON
bodies, strict JSON (422): no NaN or ±Infinity, no number beyond a double, no integer outside
64 bits, nothing the journal could not store as sent. A route therefore never writes half of a
request that turns out to be unstorable."""

from __future__ import annotations

import json
from email.message import Message as MimeHeader

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentwire.types import AgentwireError, ValidationFailed, loads_strict


class BodyTooLarge(AgentwireError):
    status = 413
    code = "body_too_large"


def is_json(content_type: str | None) -> bool:
    """The bodies FastAPI parses as JSON: application/json and application/*+json."""
    if not content_type:
        return False
    header = MimeHeader()
    header["content-type"] = content_type
    subtype = header.get_content_subtype()
    return header.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


class RequestBody:
    """Refuse bodies over the limit (by Content-Length, or by counting what arrives) and JSON bodies
    that do not parse strictly; hand the route the body whole."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        content_type: str | None = None
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await self._refuse(BodyTooLarge(f"request body over {self.limit} bytes"), scope, receive, send)
                return
            if name == b"content-type":
                content_type = value.decode("latin-1")
        # The body is read here, up to the limit, and handed on whole: an error raised from inside
        # `receive` would reach the route as "could not parse the body" (400), not as what it is.
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            received += len(message.get("body", b""))
            if received > self.limit:
                await self._refuse(BodyTooLarge(f"request body over {self.limit} bytes"), scope, receive, send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                message = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
                break
        if message["type"] == "http.request" and message["body"] and is_json(content_type):
            try:
                loads_strict(message["body"])
            except json.JSONDecodeError as exc:  # malformed, or well-formed but not storable (BadJson)
                error = {"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error",
                         "ctx": {"error": exc.msg}}
                await self._refuse(ValidationFailed([error]), scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return message
            return await receive()  # after the body: the disconnect, as the route expects

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(error: AgentwireError, scope: Scope, receive: Receive, send: Send) -> None:
        await JSONResponse(error.body(), error.status)(scope, receive, send)
