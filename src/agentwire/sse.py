"""Server-sent events: framing (once per event, shared by all subscribers) and the streaming response."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from agentwire.connection import BodySink, body_sink_of, serve, sink_of
from agentwire.hub import EventTest, Hub, Replay
from agentwire.outbox import Flusher, Framer, Outbox
from agentwire.resume import requested_after
from agentwire.types import JSON, Event, control_envelope

PING = b": ping\n\n"
# The ASGI extension through which a response drops its connection at once (agentwire's uvicorn
# protocol, `server.HttpProtocol`, offers it): {"abort": callable}. Without it the server closes the
# connection its own way once the response returns unfinished.
ABORT_EXTENSION = "agentwire.abort"
# How long an aborted stream (server shutdown) may take to end its body before the connection is dropped.
END_GRACE = 0.2
HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def _sse_bytes(event: Event) -> bytes:
    """`id: <seq>\\nevent: <type>\\ndata: <envelope>\\n\\n`. The envelope is compact JSON, which never
    holds a raw newline, so one `data:` line is enough."""
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event.seq, event.type.encode(), event.raw)


def sse_frame(event: Event) -> bytes:
    """An event's SSE frame, built the first time and kept on the event."""
    return event.frame("sse", _sse_bytes)


def sse_control(stream: str, type: str, data: JSON, seq: int | None = None) -> bytes:
    """A message that is not journaled (`stream.open`, `stream.reset`): same envelope shape, no seq.

    A reset carries `id: <head>`, so the browser's own Last-Event-ID moves past what was lost and
    the next automatic reconnect does not ask for the lost range again.
    """
    body = control_envelope(stream, type, data)
    head = b"" if seq is None else b"id: %d\n" % seq
    return b"%sevent: %s\ndata: %s\n\n" % (head, type.encode(), body)


class SseFramer:
    """agentwire's own SSE framing: an event's frame built once and shared by every subscriber."""

    transport = "sse"

    def event(self, event: Event) -> bytes:
        return sse_frame(event)

    def events(self, events: Sequence[Event]) -> bytes:
        return b"".join([_sse_bytes(event) for event in events])  # replayed: seen once, not cached

    def control(self, stream: str, type: str, data: JSON, seq: int | None = None) -> bytes:
        return sse_control(stream, type, data, seq)


SSE = SseFramer()


class EventStreamResponse(Response):
    """Writes an outbox as an SSE response until the outbox ends or the client leaves
    (`connection.serve`: straight to the socket where the server allows it, else by a writer task).

    A client cut as slow cannot take the end of the body, nor can one that stops reading during
    a shutdown: its connection is dropped at once (`ABORT_EXTENSION`) instead of lingering until
    it reads again.
    """

    media_type = "text/event-stream"

    def __init__(self, outbox: Outbox, flusher: Flusher, *, retry_ms: int, on_close: Callable[[], None],
                 open_ended: bool = True) -> None:
        super().__init__(status_code=200, media_type=self.media_type)
        self.outbox = outbox
        self.flusher = flusher
        self.retry_ms = retry_ms
        self.on_close = on_close
        # A stream that ends only when the client leaves or the server cuts it may outlive the
        # app's call on a `BodySink`: nothing but its outbox and subscription stay while it idles.
        self.open_ended = open_ended

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Headers a route set on this response (e.g. x-agentwire-turn) go out too; content-type is ours.
        extra = [(name, value) for name, value in self.raw_headers if name not in (b"content-type", b"content-length")]
        detached = False
        try:
            await send({"type": "http.response.start", "status": 200, "headers": HEADERS + extra})
            await send({"type": "http.response.body", "body": b"retry: %d\n\n" % self.retry_ms,
                        "more_body": True})

            async def write(chunks: list[bytes]) -> None:
                await send({"type": "http.response.body", "body": chunks[0] if len(chunks) == 1 else b"".join(chunks),
                            "more_body": True})

            if self.open_ended and (body := body_sink_of(scope)) is not None:
                detached = True
                self._detach(body)
                return
            sink = sink_of(scope)
            # With a sink, the server aborts the outbox when the client leaves: nothing needs to listen.
            outcome = await serve(self.outbox, self.flusher, sink=sink, write=write,
                                  read=None if sink is not None else _disconnected(receive))
            self.outbox.abort("closed")
            self.on_close()  # counted as ended (a slow cut, too) before the end of the body may wait
            if outcome.read or outcome.reason == "closed":
                return  # the client left
            if outcome.finished and not outcome.failed:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            elif outcome.reason == "slow" or not await _end_within(send, END_GRACE):
                await _drop_connection(scope, receive)
        finally:
            if not detached:
                self.outbox.abort("closed")
                self.on_close()

    def _detach(self, sink: BodySink) -> None:
        """Hand the stream to the sink and the hub's flusher: no task or coroutine stays with it."""
        outbox = self.outbox

        def ended() -> None:
            self.on_close()
            if outbox.reason == "shutdown":
                sink.end(END_GRACE)
            else:  # "slow" (a client that stopped reading), or "closed": the client has gone
                sink.drop()

        if outbox.reason is not None:
            ended()
            return
        outbox.on_end = ended
        outbox.attach(sink, self.flusher)
        sink.detach()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _end_within(send: Send, seconds: float) -> bool:
    """End the body, unless the client is not reading (the send waits for room that never comes)."""
    try:
        async with asyncio.timeout(seconds):
            await send({"type": "http.response.body", "body": b"", "more_body": False})
    except TimeoutError:
        return False
    except OSError:  # the client is gone: nothing left to end
        pass
    return True


async def _drop_connection(scope: Scope, receive: Receive) -> None:
    """Close the connection now, dropping what the server still buffers for it; then wait for the
    server to notice (so it does not take the unfinished response for an application error)."""
    extension = scope.get("extensions", {}).get(ABORT_EXTENSION)
    if extension is None:
        return
    extension["abort"]()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(1.0):
            await _disconnected(receive)


async def stream_response(request: Request, hub: Hub, stream: str, *, retry_ms: int,
                          after: int | None = None,
                          only: EventTest | None = None, until: EventTest | None = None,
                          replay: Replay | None = None, framer: Framer = SSE) -> EventStreamResponse:
    """Subscribe `stream` at the position the request asks for (§3 resume rules) and stream it.

    `after` overrides the request's position (a turn's own POST response starts at its first event);
    `framer` frames the events another way (a protocol view) instead of as agentwire's own SSE.
    """
    if after is None:
        after = requested_after(request.headers.get("last-event-id"), request.query_params.get("from"))
    outbox = Outbox(hub.buffer_limit)
    hub.register(outbox, PING)
    try:
        subscription = await hub.subscribe(stream, outbox, framer, after,
                                           only=only, until=until, replay=replay)
    except BaseException:
        hub.unregister(outbox)
        raise

    def closed() -> None:
        subscription.close()
        hub.unregister(outbox)

    return EventStreamResponse(outbox, hub.flusher, retry_ms=retry_ms, on_close=closed, open_ended=until is None)
