"""The client's WebSocket transport (`/api/ws`): one socket for many streams, each resubscribed after
its last seq when the socket is cut; and the errors both transports raise (`client.py` is the SSE one
and the `Client` that picks between them)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import orjson
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from agentwire.backoff import Backoff
from agentwire.console.transcript import TERMINAL
from agentwire.types import JSON, session_stream, stream_session

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection


class StreamFailed(Exception):
    """A stream or request the client gave up on (either transport): refused, or out of attempts."""


def stream_path(stream: str) -> str:
    """The SSE path of a stream name (`tasks`, `konsole/<session>`); ValueError for any other name."""
    if stream == "tasks":
        return "/api/stream/tasks"
    session = stream_session(stream)
    if session is not None:
        return f"/api/konsole/{session}/events"
    raise ValueError(f"unknown stream {stream!r}: use tasks or konsole/<session>")


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
