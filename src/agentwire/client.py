"""Python client: follow streams and run turns with resume built in (backoff, Last-Event-ID, dedup by seq).

    async with Client("http://127.0.0.1:8765", token) as client:
        async for event in client.turn("dashboard", "hello"):
            print(event["type"], event["data"])

`Client(url, token, transport="ws")` does the same over the WebSocket; `WsClient` is that transport
on its own: one socket for many streams, each resubscribed after its last seq when the socket is cut.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx
import orjson

# The client's API is these too: its backoff policy, its SSE parser, the WebSocket transport and errors.
from agentwire.backoff import Backoff as Backoff
from agentwire.client_ws import ConnectionLost as ConnectionLost
from agentwire.client_ws import RequestFailed as RequestFailed
from agentwire.client_ws import StreamFailed as StreamFailed
from agentwire.client_ws import WsClient as WsClient
from agentwire.client_ws import stream_path as stream_path
from agentwire.client_ws import ws_url as ws_url
from agentwire.console.transcript import TERMINAL
from agentwire.sse_parser import SseMessage as SseMessage
from agentwire.sse_parser import SseParser as SseParser
from agentwire.types import JSON, session_stream


class Client:
    def __init__(self, url: str, token: str | None = None, *, max_attempts: int | None = None,
                 timeout: float = 30.0, transport: str = "sse") -> None:
        if transport not in ("sse", "ws"):
            raise ValueError(f"transport must be 'sse' or 'ws', got {transport!r}")
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.AsyncClient(base_url=url.rstrip("/"), headers=headers,
                                      timeout=httpx.Timeout(timeout, read=None))
        self.url, self.token, self.timeout, self.transport = url, token, timeout, transport
        self.max_attempts = max_attempts
        self.on_status: Any = None  # called with ("connected"|"reconnecting", attempt, delay)
        self._ws: WsClient | None = None  # transport="ws": the socket shared by follow() and turn()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self._ws is not None:
            await self._ws.close()
        await self.http.aclose()

    @contextlib.asynccontextmanager
    async def _ws_for(self, stream: str) -> AsyncIterator[WsClient]:
        """The shared socket, or one of its own for a stream the shared one already follows."""
        if self._ws is None or self._ws.failed:
            self._ws = self._new_ws()
        if not self._ws.following(stream):
            yield self._ws
            return
        own = self._new_ws()
        try:
            yield own
        finally:
            await own.close()

    def _new_ws(self) -> WsClient:
        ws = WsClient(self.url, self.token, max_attempts=self.max_attempts, open_timeout=self.timeout)
        ws.on_status = self._status
        return ws

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise StreamFailed(f"{method} {path}: {response.status_code} {response.text[:300]}")
        return response.json() if response.content else None

    async def decide(self, session: str, request_id: str, decision: str, *, message: str = "",
                     remember: bool = False) -> JSON:
        """Answer a permission request the session's agent made (`permission.requested`): "allow" or
        "deny"; `remember` allows that tool (a Bash command: its prefix) for the rest of the session.
        Returns the `permission.decided` data with its seq; StreamFailed on 404/409."""
        body: JSON = {"decision": decision, "message": message, "remember": remember}
        decided: JSON = await self.request("POST", f"/api/konsole/{quote(session, safe='')}/permissions/"
                                           f"{quote(request_id, safe='')}", json=body)
        return decided

    async def _sse(self, method: str, path: str, *, after: int | None, json: JSON | None = None,
                   params: JSON | None = None) -> AsyncIterator[JSON]:
        headers = {"last-event-id": str(after)} if after is not None else {}
        async with self.http.stream(method, path, headers=headers, json=json, params=params) as response:
            if response.status_code >= 400:
                body = await response.aread()
                raise StreamFailed(f"{method} {path}: {response.status_code} {body[:300].decode(errors='replace')}")
            parser = SseParser()
            async for chunk in response.aiter_raw():
                for message in parser.feed(chunk):
                    envelope = orjson.loads(message.data)
                    yield envelope

    async def follow(self, stream: str, after: int | None = None, *, params: JSON | None = None,
                     stop: Any = None) -> AsyncIterator[JSON]:
        """Every event of `stream` after `after`, exactly once and in order, across reconnects.
        Control messages (`stream.open`, `stream.reset`) are yielded too; they carry no seq."""
        if self.transport == "ws":
            async with self._ws_for(stream) as ws:
                async for envelope in ws.follow(stream, after, params=params, stop=stop):
                    yield envelope
            return
        backoff = Backoff()
        last = after
        path = stream_path(stream)
        while True:
            try:
                async for envelope in self._sse("GET", path, after=last, params=params):
                    if envelope["type"] == "stream.open":
                        backoff.reset()
                        self._status("connected", 0, 0.0)
                    if envelope["type"] == "stream.reset":
                        last = envelope["data"]["head"]
                        yield envelope
                        continue
                    seq = envelope.get("seq")
                    if seq is not None:
                        if last is not None and seq <= last:
                            continue
                        last = seq
                    yield envelope
                    if stop is not None and stop(envelope):
                        return
            except (httpx.TransportError, httpx.RemoteProtocolError):
                pass
            except StreamFailed:
                raise
            if self.max_attempts is not None and backoff.attempt >= self.max_attempts:
                raise StreamFailed(f"gave up on {stream} after {backoff.attempt} attempts")
            delay = backoff.next_delay()
            self._status("reconnecting", backoff.attempt, delay)
            await asyncio.sleep(delay)

    def _status(self, status: str, attempt: int, delay: float) -> None:
        if self.on_status is not None:
            self.on_status(status, attempt, delay)

    async def turn(self, session: str, message: str, *, lane: str = "main",
                   if_busy: str = "queue") -> AsyncIterator[JSON]:
        """Run a turn and yield its events until its terminal one. If the POST response is cut, the
        rest comes from `GET …/events` with Last-Event-ID: the turn's events, none twice."""
        if self.transport == "ws":
            async with self._ws_for(session_stream(session)) as ws:
                async for envelope in ws.turn(session, message, lane=lane, if_busy=if_busy):
                    yield envelope
            return
        path = f"/api/konsole/{session}/{'quick' if lane == 'quick' else 'stream'}"
        turn_id: str | None = None
        last: int | None = None
        try:
            async for envelope in self._sse("POST", path, after=None, json={"message": message},
                                            params={"if_busy": if_busy} if lane == "main" else None):
                if envelope.get("seq") is None:
                    continue
                turn_id = turn_id or envelope.get("turn")
                last = envelope["seq"]
                yield envelope
                if envelope["type"] in TERMINAL:
                    return
        except (httpx.TransportError, httpx.RemoteProtocolError):
            pass
        if turn_id is None:
            raise StreamFailed("the turn's stream ended before its first event")
        self._status("reconnecting", 1, 0.0)
        async for envelope in self.follow(session_stream(session), last,
                                          stop=lambda e: e.get("turn") == turn_id and e["type"] in TERMINAL):
            if envelope.get("turn") == turn_id:
                yield envelope


