"""WebSocket (`GET /api/ws`, §6): one connection, many streams, on the same hub, journal and resume
rules as SSE, so a client may switch transports mid-stream and resume at its last seq.

Client → server, one JSON text frame each, answered in order by one `{"op": "ack", "ref", …}` or
`{"op": "error", "ref", "error": {"code", "message", "field"?, "errors"?}}` (`ref` echoed when the
request had one; a frame that does not fit its op is a `validation_error` naming the field, in the
shape a REST body gets; JSON is parsed as strictly as request bodies are):

- `{"op": "subscribe", "stream", "after"?: L, "from"?: N, "fold"?: bool}` — `after` (seq > L) wins
  over `from` (seq >= N); neither: the stream's default start (console from its first event,
  `tasks` from now). One subscription per stream per connection, `config.max_subscriptions` in all.
- `{"op": "unsubscribe", "stream"}`; `{"op": "send", "session", "message", "lane"?, "if_busy"?}`
  (ack: `turn`, `first_seq` of its first event); `{"op": "cancel", "session", "turn"?}`; `{"op": "ping"}`;
  `{"op": "decide", "session", "request_id", "decision": "allow"|"deny", "message"?, "remember"?}`
  answers a tool-permission request as `POST /api/konsole/{s}/permissions/{id}` does (ack: the
  `permission.decided` data with `first_seq`, its seq; 404/409 as errors).

Server → client, one text frame each: a journaled event is its envelope exactly as stored (it
carries `stream` and `seq`); per subscription `stream.open` and, when the position cannot be served,
`stream.reset`, shaped `{"stream", "type", "data"}` with no seq (after a reset the position is
`data.head`); `{"op": "ping"}` after about `config.heartbeat` seconds without a frame. A subscribe's
`stream.open` (and reset) comes before its ack, the ack before the subscription's first event.

A bad frame gets an error and the connection lives on. Close codes: 1003 binary frame, 1009 frame
over `config.max_body`, 1011 journal failure, 1012 server shutdown, 4008 slow consumer (the outbox
passed its limit). After any close the client resumes each stream after the last seq it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Annotated, Any, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.routing import WebSocketRoute
from starlette.types import Receive, Scope, Send

from agentwire.config import Config
from agentwire.connection import serve, sink_of
from agentwire.console import Console
from agentwire.console.lanes import Lane, TurnIn
from agentwire.console.permissions import DecisionIn
from agentwire.console.transcript import CatchUpFold
from agentwire.hub import Hub, Subscription
from agentwire.outbox import Outbox, Sink
from agentwire.resume import MAX_SEQ, after_position
from agentwire.types import (
    JSON,
    TASKS_STREAM,
    AgentwireError,
    Conflict,
    Event,
    ValidationFailed,
    control_envelope,
    loads_strict,
    stream_session,
)

log = logging.getLogger("agentwire.ws")

CLOSE_UNSUPPORTED = 1003
CLOSE_TOO_BIG = 1009
CLOSE_ERROR = 1011
CLOSE_SHUTDOWN = 1012
CLOSE_SLOW = 4008
# How long a closing frame may wait for a client that is not reading before the socket is dropped.
CLOSE_GRACE = 5.0
# The writer yields to the loop after this many frames: a long replay must not freeze the worker.
YIELD_EVERY = 64

T = TypeVar("T")


def ws_frame(event: Event) -> bytes:
    """The envelope and a newline, built the first time and kept on the event.

    The outbox holds bytes and a replay page arrives joined; compact JSON never holds a raw
    newline, so the writer cuts what it takes at newlines into one text frame per envelope.
    """
    return event.frame("ws", _line)


def _line(event: Event) -> bytes:
    return event.raw + b"\n"


def ws_control(stream: str, type: str, data: JSON, seq: int | None = None) -> bytes:
    """`stream.open`/`stream.reset`: the envelope shape without a seq, since they are not journaled.

    `seq` (the head, on a reset) is left out on purpose: a client that drops envelopes whose seq is
    not above its last one would drop a reset sent after a position from another epoch.
    """
    return control_envelope(stream, type, data) + b"\n"


def ws_wire(payload: bytes) -> bytes:
    """`payload` as one unmasked text frame, as a server sends it (RFC 6455 §5.2), for a `Sink`
    that writes straight to the socket."""
    size = len(payload)
    if size < 126:
        return b"\x81%c%b" % (size, payload)
    if size < 1 << 16:
        return b"\x81\x7e%b%b" % (size.to_bytes(2, "big"), payload)
    return b"\x81\x7f%b%b" % (size.to_bytes(8, "big"), payload)


def ws_wire_frame(event: Event) -> bytes:
    """The envelope as a complete WebSocket frame, built the first time and kept on the event."""
    return event.frame("ws-wire", _wire)


def _wire(event: Event) -> bytes:
    return ws_wire(event.raw)


class WsFramer:
    """agentwire's WebSocket framing for a writer that sends through ASGI: envelopes one a line
    (the writer cuts them into text frames); built once per event and shared by every subscriber."""

    transport = "ws"

    def event(self, event: Event) -> bytes:
        return ws_frame(event)

    def events(self, events: Sequence[Event]) -> bytes:
        return b"".join([event.raw + b"\n" for event in events])  # replayed: seen once, not cached

    def control(self, stream: str, type: str, data: JSON, seq: int | None = None) -> bytes:
        return ws_control(stream, type, data, seq)


class WsWireFramer:
    """agentwire's WebSocket framing for a `Sink`: complete frames, built once per event and shared."""

    transport = "ws"

    def event(self, event: Event) -> bytes:
        return ws_wire_frame(event)

    def events(self, events: Sequence[Event]) -> bytes:
        return b"".join([ws_wire(event.raw) for event in events])  # replayed: seen once, not cached

    def control(self, stream: str, type: str, data: JSON, seq: int | None = None) -> bytes:
        return ws_wire(control_envelope(stream, type, data))


WS = WsFramer()
WS_WIRE = WsWireFramer()
PING = b'{"op":"ping"}'  # put by the hub's heartbeat into an outbox idle for that long


def close_for(reason: str | None) -> tuple[int, str]:
    if reason == "slow":
        return CLOSE_SLOW, "slow consumer"
    if reason == "shutdown":
        return CLOSE_SHUTDOWN, "server shutdown"
    return CLOSE_ERROR, (reason or "error")[:120]


class WebSocketEndpoint:
    """The ASGI app behind `/api/ws`: accepts the socket and runs one `_Connection` on it."""

    def __init__(self, hub: Hub, console: Console, config: Config) -> None:
        self.hub = hub
        self.console = console
        self.config = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        await _Connection(self, sink_of(scope)).run(receive, send)


def route(hub: Hub, console: Console, config: Config) -> WebSocketRoute:
    return WebSocketRoute("/api/ws", WebSocketEndpoint(hub, console, config), name="ws")


class _Connection:
    """The writer and the reader race (`connection.serve`): the writer drains the outbox, one
    frame per envelope (the hub's heartbeat puts a ping into an idle outbox); the reader handles
    requests one at a time, in order, and ends on a disconnect or a frame that closes the socket."""

    def __init__(self, endpoint: WebSocketEndpoint, sink: Sink | None) -> None:
        self.sink = sink
        # With a sink, whole frames go straight to the socket; otherwise envelope lines, framed by
        # the writer through ASGI.
        self.framer: WsFramer | WsWireFramer = WS if sink is None else WS_WIRE
        self.hub = endpoint.hub
        self.console = endpoint.console
        self.config = endpoint.config
        self.outbox = Outbox(self.hub.buffer_limit)
        self.subscriptions: dict[str, Subscription] = {}
        self.ops: dict[str, Callable[[JSON], Awaitable[JSON]]] = {
            "subscribe": self._subscribe, "unsubscribe": self._unsubscribe, "send": self._send,
            "cancel": self._cancel, "ping": self._ping, "decide": self._decide,
        }

    async def run(self, receive: Receive, send: Send) -> None:
        self.hub.register(self.outbox, self._text(PING))
        try:
            async def write(chunks: list[bytes]) -> None:
                sent = 0
                for chunk in chunks:
                    for text in chunk.decode().split("\n"):
                        if text:
                            await send({"type": "websocket.send", "text": text})
                            sent += 1
                            if sent % YIELD_EVERY == 0:
                                await asyncio.sleep(0)

            outcome = await serve(self.outbox, self.hub.flusher, sink=self.sink, write=write, read=self._read(receive))
            self._close()  # counted as ended (a slow cut, too) before the close frame may wait for the client
            code: int | None = None
            reason = ""
            if outcome.read:
                code = CLOSE_ERROR if outcome.failed else outcome.result
            elif outcome.reason is not None:
                code, reason = close_for(outcome.reason)
            elif outcome.finished:
                code = 1000
            if code is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(CLOSE_GRACE):
                        await send({"type": "websocket.close", "code": code, "reason": reason})
        finally:
            self._close()

    def _close(self) -> None:
        self.outbox.abort("closed")
        for subscription in self.subscriptions.values():
            subscription.close()
        self.subscriptions.clear()
        self.hub.unregister(self.outbox)

    async def _read(self, receive: Receive) -> int | None:
        """Handle frames until the client leaves (None) or a frame closes the socket (its code)."""
        limit = self.config.max_body
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.disconnect":
                return None
            if kind != "websocket.receive":
                continue
            text = message.get("text")
            if text is None:
                return CLOSE_UNSUPPORTED
            if len(text) > limit or (len(text) * 4 > limit and len(text.encode()) > limit):
                return CLOSE_TOO_BIG
            await self._handle(text)

    async def _handle(self, text: str) -> None:
        ref: Any = None
        try:
            try:
                request = loads_strict(text)
            except json.JSONDecodeError as exc:
                raise AgentwireError(f"frame is not JSON agentwire accepts: {exc.msg}", code="bad_json") from None
            if not isinstance(request, dict):
                raise AgentwireError("frame must be a JSON object with an 'op'", code="bad_frame")
            ref = request.get("ref")
            op = request.get("op")
            if op is None:
                raise ValidationFailed([{"loc": ("op",), "msg": "Field required"}])
            handler = self.ops.get(op) if isinstance(op, str) else None
            if handler is None:
                raise AgentwireError(f"unknown op {str(op)[:40]!r}: use one of {', '.join(self.ops)}",
                                     code="unknown_op", field="op")
            result = await handler(request)
        except AgentwireError as exc:
            self._reply(_with_ref({"op": "error"}, ref) | exc.body())
            return
        except Exception:
            log.exception("websocket request failed")
            self._reply(_with_ref({"op": "error"}, ref) | {"error": {
                "code": "internal_error", "message": "the server could not handle this request"}})
            return
        self._reply(_with_ref({"op": "ack"}, ref) | result)

    def _text(self, payload: bytes) -> bytes:
        return payload + b"\n" if self.sink is None else ws_wire(payload)

    def _reply(self, message: JSON) -> None:
        self.outbox.put(self._text(orjson.dumps(message)))

    # ops

    async def _subscribe(self, request: JSON) -> JSON:
        frame = _parse(SubscribeFrame, request)
        stream = frame.stream
        if stream in self.subscriptions:
            raise Conflict(f"already subscribed to {stream!r} on this connection: unsubscribe first",
                           code="already_subscribed", field="stream")
        if len(self.subscriptions) >= self.config.max_subscriptions:
            raise AgentwireError(f"at most {self.config.max_subscriptions} subscriptions per connection",
                                 code="too_many_subscriptions", status=429, field="stream")
        after = after_position(frame.after, frame.from_)
        session = stream_session(stream)
        if session is not None:
            await self.console.session(session)
        elif stream != TASKS_STREAM:
            raise AgentwireError(f"unknown stream {stream[:80]!r}: use 'tasks' or 'konsole/<session>'",
                                 code="bad_stream", field="stream")
        self.subscriptions[stream] = await self.hub.subscribe(
            stream, self.outbox, self.framer, after,
            replay=CatchUpFold() if frame.fold else None)
        return {"stream": stream}

    async def _unsubscribe(self, request: JSON) -> JSON:
        stream = _parse(UnsubscribeFrame, request).stream
        subscription = self.subscriptions.pop(stream, None)
        if subscription is None:
            raise AgentwireError(f"not subscribed to {stream[:80]!r}", code="not_subscribed", status=404,
                                 field="stream")
        subscription.close()
        return {"stream": stream}

    async def _send(self, request: JSON) -> JSON:
        frame = _parse(SendFrame, request)
        turn = await self._finish(self.console.submit(frame.session, frame.message, frame.lane, frame.if_busy),
                                  "ws send")
        assert turn.first_event is not None
        # `first_seq`, not `seq`: an ack must never look like an event to a client that checks for a seq.
        return {"turn": turn.id, "session": frame.session, "lane": frame.lane, "first_seq": turn.first_event.seq}

    async def _cancel(self, request: JSON) -> JSON:
        frame = _parse(CancelFrame, request)
        return await self._finish(self.console.cancel(frame.session, frame.turn), "ws cancel")

    async def _decide(self, request: JSON) -> JSON:
        frame = _parse(DecideFrame, request)
        decided = await self._finish(self.console.decide(frame.session, frame.request_id, frame.decision,
                                                         frame.message, frame.remember), "ws decide")
        decided["first_seq"] = decided.pop("seq")  # an ack must never look like an event (see _send)
        return decided

    async def _ping(self, request: JSON) -> JSON:
        _parse(_Frame, request)
        return {}

    async def _finish(self, work: Coroutine[Any, Any, T], name: str) -> T:
        """Run a request that changes state to its end even if the socket goes away meanwhile, so a
        turn is never left half started (as an HTTP request whose client leaves is not); the console
        owns the task, so server shutdown still ends it."""
        return await asyncio.shield(self.console.tasks.spawn(work, name=name))


def _with_ref(message: JSON, ref: Any) -> JSON:
    if ref is not None:
        message["ref"] = ref
    return message


# Client frames, checked as REST bodies are (strict types: "5" is no seq, true is no number), and
# refused in the same shape: {"code": "validation_error", "message", "field", "errors"}.
Name = Annotated[str, Field(max_length=200)]
Position = Annotated[int, Field(ge=0, le=MAX_SEQ)]


class _Frame(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)
    op: str
    ref: Any = None


class SubscribeFrame(_Frame):
    stream: Name
    after: Position | None = None
    from_: Position | None = Field(default=None, alias="from")
    fold: bool = False


class UnsubscribeFrame(_Frame):
    stream: Name


class SendFrame(_Frame, TurnIn):  # the REST body's fields, checked as strictly as every frame
    session: Name
    lane: Lane = "main"


class CancelFrame(_Frame):
    session: Name
    turn: Name | None = None


class DecideFrame(_Frame, DecisionIn):  # the REST body's fields, checked as strictly as every frame
    session: Name
    request_id: Name


Frame = TypeVar("Frame", bound=_Frame)


def _parse(model: type[Frame], request: JSON) -> Frame:
    try:
        return model.model_validate(request)
    except ValidationError as exc:
        raise ValidationFailed(exc.errors()) from None
