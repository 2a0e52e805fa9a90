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
import itertools
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
import orjson
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from agentwire.backoff import Backoff as Backoff  # the client's API, with its policy
from agentwire.console.transcript import TERMINAL
from agentwire.sse_parser import SseMessage as SseMessage  # the client's API, with its parser
from agentwire.sse_parser import SseParser as SseParser
from agentwire.types import JSON, session_stream, stream_session

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection


class StreamFailed(Exception):
    pass


def stream_path(stream: str) -> str:
    if stream == "tasks":
        return "/api/stream/tasks"
    session = stream_session(stream)
    if session is not None:
        return f"/api/konsole/{session}/events"
    raise ValueError(f"unknown stream {stream!r}: use tasks or konsole/<session>")


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


# --------------------------------------------------------------------------- WebSocket


class RequestFailed(StreamFailed):
    """The server answered a WebSocket request with an error frame; `code` is its error code."""

    def __init__(self, op: str, error: JSON) -> None:
        self.error = error
        self.code = str(error.get("code", "error"))
        super().__init__(f"{op}: {self.code}: {error.get('message', '')}")


class ConnectionLost(StreamFailed):
    """The socket ended before the server answered a request (which may or may not have taken effect)."""


def ws_url(url: str) -> str:
    base = url.rstrip("/")
    for http, ws in (("https://", "wss://"), ("http://", "ws://")):
        if base.startswith(http):
            base = ws + base[len(http):]
    return base + "/api/ws"


class _Follow:
    """A stream followed over a `WsClient`: its position and what the socket delivered for it.

    Until the server acknowledges its subscribe on the current socket, a follow keeps only its
    `stream.open`/`stream.reset` (they come just before the ack) and drops events: those belong to an
    earlier subscription of the same stream that an unsubscribe had not yet ended.
    """

    def __init__(self, stream: str, after: int | None, fold: bool) -> None:
        self.stream = stream
        self.last = after
        self.fold = fold
        self.queue: asyncio.Queue[JSON | BaseException] = asyncio.Queue()
        self.connection = 0  # the socket its subscribe went out on
        self.ready = False
        self.held: list[JSON] = []

    def frame(self, ref: str) -> JSON:
        frame: JSON = {"op": "subscribe", "stream": self.stream, "ref": ref}
        if self.last is not None:
            frame["after"] = self.last
        if self.fold:
            frame["fold"] = True
        return frame

    def receive(self, envelope: JSON) -> None:
        if self.ready:
            self._deliver(envelope)
        elif envelope.get("type") == "stream.open":
            self.held = [envelope]
        elif envelope.get("type") == "stream.reset" and self.held:
            self.held.append(envelope)

    def acknowledged(self) -> None:
        self.ready = True
        held, self.held = self.held, []
        for envelope in held:
            self._deliver(envelope)

    def _deliver(self, envelope: JSON) -> None:
        kind = envelope.get("type")
        if kind == "stream.open":
            if self.last is None:
                self.last = int(envelope["data"]["from"]) - 1
        elif kind == "stream.reset":
            self.last = int(envelope["data"]["head"])
        else:
            seq = envelope.get("seq")
            if isinstance(seq, int):
                if self.last is not None and seq <= self.last:
                    return
                self.last = seq
        self.queue.put_nowait(envelope)


class WsClient:
    """One WebSocket (`/api/ws`) carrying many streams, with resume built in.

    The socket opens on first use and, when it is cut, reopens with backoff (~250 ms ×2 to 15 s,
    ±20 %, reset on open) and subscribes every followed stream again after the last seq it delivered;
    events are deduplicated by seq. A stream can be followed once at a time per `WsClient`. Each
    follow's events wait in a queue of their own until read, so a follow that is not read holds
    memory, not the other streams.

        async with WsClient("http://127.0.0.1:8765", token) as ws:
            async for event in ws.follow("konsole/dashboard", after=0):
                ...
    """

    def __init__(self, url: str, token: str | None = None, *, max_attempts: int | None = None,
                 open_timeout: float = 10.0, idle_timeout: float | None = 45.0) -> None:
        self.url = ws_url(url)
        self.headers = {"authorization": f"Bearer {token}"} if token else {}
        self.max_attempts = max_attempts
        self.open_timeout = open_timeout
        # Reconnect when nothing, not even the server's ping (every 15 s by default), came for this long.
        self.idle_timeout = idle_timeout
        self.on_status: Callable[[str, int, float], object] | None = None
        self._follows: dict[str, _Follow] = {}
        self._waiting: dict[str, _Follow | asyncio.Future[JSON]] = {}  # by request ref
        self._refs = itertools.count(1)
        self._socket: ClientConnection | None = None
        self._connection = 0
        self._connected = asyncio.Event()
        self._failure: StreamFailed | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> WsClient:
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self.close()

    def following(self, stream: str) -> bool:
        return stream in self._follows

    @property
    def failed(self) -> bool:
        """Closed, or gave up reconnecting: every follow and request now raises."""
        return self._failure is not None

    async def close(self) -> None:
        self._fail(StreamFailed("the client was closed"))
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})

    async def follow(self, stream: str, after: int | None = None, *, params: JSON | None = None,
                     stop: Callable[[JSON], bool] | None = None, fold: bool = False) -> AsyncIterator[JSON]:
        """As `Client.follow`: every event of `stream` after `after`, exactly once and in order, with
        `stream.open`/`stream.reset` yielded too. `fold` (or `params={"fold": 1}`) as `?fold=1`."""
        stream_path(stream)
        if stream in self._follows:
            raise ValueError(f"{stream} is already followed on this socket: use another WsClient")
        if self._failure is not None:
            raise self._failure
        follow = _Follow(stream, after, fold or bool(params and params.get("fold")))
        self._follows[stream] = follow
        try:
            self._start()
            await self._subscribe(follow)
            while True:
                item = await follow.queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if stop is not None and stop(item):
                    return
        finally:
            if self._follows.get(stream) is follow:
                del self._follows[stream]
                await self._unsubscribe(follow)

    async def turn(self, session: str, message: str, *, lane: str = "main",
                   if_busy: str = "queue") -> AsyncIterator[JSON]:
        """As `Client.turn`: start a turn with a `send` request, then yield its events, from its first
        to its terminal one, from the session stream (resumed like any follow)."""
        stream = session_stream(session)
        if stream in self._follows:
            raise ValueError(f"{stream} is already followed on this socket: use another WsClient")
        ack = await self.request("send", session=session, message=message, lane=lane, if_busy=if_busy)
        turn_id = ack["turn"]

        def last(envelope: JSON) -> bool:
            return envelope.get("turn") == turn_id and envelope["type"] in TERMINAL

        async for envelope in self.follow(stream, int(ack["first_seq"]) - 1, stop=last):
            if envelope.get("turn") == turn_id:
                yield envelope

    async def request(self, op: str, **fields: Any) -> JSON:
        """Send one request (`send`, `cancel`, `ping`, …) and return its ack; an error frame raises
        `RequestFailed`, a cut before the answer `ConnectionLost` (requests are not retried)."""
        self._start()
        while self._socket is None:
            if self._failure is not None:
                raise self._failure
            await self._connected.wait()
        socket = self._socket
        ref = f"r{next(self._refs)}"
        answer: asyncio.Future[JSON] = asyncio.get_running_loop().create_future()
        self._waiting[ref] = answer
        try:
            await socket.send(orjson.dumps({**fields, "op": op, "ref": ref}).decode())
            reply = await answer
        except (ConnectionClosed, OSError) as exc:
            raise ConnectionLost(f"{op}: the socket ended before the server answered") from exc
        finally:
            self._waiting.pop(ref, None)
        if reply.get("op") == "error":
            raise RequestFailed(op, reply.get("error") or {})
        return reply

    # the socket

    def _start(self) -> None:
        if self._task is None and self._failure is None:
            self._task = asyncio.create_task(self._run(), name=f"ws {self.url}")

    async def _run(self) -> None:
        try:
            await self._connect_forever()
        except Exception as exc:  # a bug or a garbled frame must end the follows, not leave them waiting
            self._fail(StreamFailed(f"the WebSocket client failed: {exc!r}"))

    async def _connect_forever(self) -> None:
        from websockets.asyncio.client import connect

        backoff = Backoff()
        while True:
            try:
                async with connect(self.url, additional_headers=self.headers, open_timeout=self.open_timeout,
                                   max_size=None, compression=None, close_timeout=2) as socket:
                    self._connection += 1
                    self._socket = socket
                    backoff.reset()
                    self._status("connected", 0, 0.0)
                    for follow in list(self._follows.values()):
                        await self._subscribe(follow)
                    self._connected.set()
                    while True:
                        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel (close())
                        # that comes as a message arrives, and the loop would never end.
                        async with asyncio.timeout(self.idle_timeout):
                            message = await socket.recv()
                        self._dispatch(message)
            except InvalidStatus as exc:
                status = exc.response.status_code
                if 400 <= status < 500 and status not in (408, 429):
                    self._fail(StreamFailed(f"GET /api/ws: {status} {exc.response.body or b''!r}"[:300]))
                    return
            except (OSError, TimeoutError, ConnectionClosed, InvalidHandshake):
                pass
            finally:
                self._socket = None
                self._connected.clear()
                for follow in self._follows.values():
                    follow.ready, follow.held = False, []
                waiting, self._waiting = self._waiting, {}
                for target in waiting.values():
                    if isinstance(target, asyncio.Future) and not target.done():
                        target.set_exception(ConnectionLost("the socket ended before the server answered"))
            if self._failure is not None:  # closed meanwhile
                return
            if self.max_attempts is not None and backoff.attempt >= self.max_attempts:
                self._fail(StreamFailed(f"gave up on {self.url} after {backoff.attempt} attempts"))
                return
            delay = backoff.next_delay()
            self._status("reconnecting", backoff.attempt, delay)
            await asyncio.sleep(delay)

    def _dispatch(self, text: str | bytes) -> None:
        message: JSON = orjson.loads(text)
        op = message.get("op")
        if op is None:
            follow = self._follows.get(message.get("stream", ""))
            if follow is not None:
                follow.receive(message)
            return
        if op not in ("ack", "error"):
            return  # the server's ping: it only keeps the idle timeout from firing
        target = self._waiting.pop(str(message.get("ref")), None)
        if isinstance(target, _Follow):
            if self._follows.get(target.stream) is not target:
                return
            if op == "ack":
                target.acknowledged()
            else:
                del self._follows[target.stream]
                target.queue.put_nowait(RequestFailed("subscribe", message.get("error") or {}))
        elif target is not None and not target.done():
            target.set_result(message)

    async def _subscribe(self, follow: _Follow) -> None:
        socket = self._socket
        if socket is None or follow.connection == self._connection:
            return  # not connected (the next socket subscribes it), or already sent on this one
        follow.connection, follow.ready, follow.held = self._connection, False, []
        ref = f"s{next(self._refs)}"
        self._waiting[ref] = follow
        with contextlib.suppress(ConnectionClosed, OSError):
            await socket.send(orjson.dumps(follow.frame(ref)).decode())

    async def _unsubscribe(self, follow: _Follow) -> None:
        socket = self._socket
        if socket is not None and follow.connection == self._connection:
            with contextlib.suppress(ConnectionClosed, OSError):
                await socket.send(orjson.dumps({"op": "unsubscribe", "stream": follow.stream}).decode())

    def _fail(self, failure: StreamFailed) -> None:
        self._failure = failure
        for follow in self._follows.values():
            follow.queue.put_nowait(failure)
        self._follows.clear()
        self._connected.set()

    def _status(self, status: str, attempt: int, delay: float) -> None:
        if self.on_status is not None:
            self.on_status(status, attempt, delay)
