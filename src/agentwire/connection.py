"""One streaming connection's life, shared by SSE and WebSocket: its outbox reaching the client
raced against the client's side (a disconnect, or request frames).

Two ways to write. Where the server offers a `Sink` (agentwire's uvicorn protocols, `server.py`),
the outbox is attached to it and the hub's flusher writes it straight to the socket once per loop
tick: no writer task, no ASGI send chain per message. Elsewhere a writer task drains the outbox
through the ASGI `send`. Either way an abort (slow consumer, shutdown) ends the connection at once,
even when the writer is blocked on a client that stopped reading.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, cast

from agentwire.outbox import Flusher, Outbox, Sink

log = logging.getLogger("agentwire.connection")

T = TypeVar("T")
# The ASGI extension through which agentwire's uvicorn protocols offer a `Sink` (`server.py`):
# `scope["extensions"][SINK_EXTENSION]["sink"]()` answers one for the current response, or None.
SINK_EXTENSION = "agentwire.sink"


@dataclass(slots=True)
class Outcome(Generic[T]):
    """How the connection ended: the reader first (`read` holds its result), the outbox finished
    and written out (`finished`), or the outbox aborted (`reason`); `failed` if a side raised."""

    read: bool = False
    result: T | None = None
    finished: bool = False
    reason: str | None = None
    failed: bool = False


class BodySink(Sink, Protocol):
    """The sink of an HTTP response body, which can also outlive the app's call (SSE streams)."""

    def detach(self) -> None:
        """The app returns while the body goes on: the server neither ends the response nor reads
        another request from the connection; the app's `end` or `drop` closes it."""
        ...

    def end(self, grace: float) -> None:
        """End the body and close the connection; dropped if the client has not taken what is
        left within `grace` seconds (a client that stopped reading)."""
        ...

    def drop(self) -> None:
        """Close the connection at once, dropping what it still buffers."""
        ...


def sink_of(scope: Any) -> Sink | None:
    offer = scope.get("extensions", {}).get(SINK_EXTENSION)
    sink: Sink | None = offer["sink"]() if offer is not None else None
    return sink


def body_sink_of(scope: Any) -> BodySink | None:
    """An HTTP response's sink (agentwire's HTTP protocol offers `BodySink`s)."""
    return cast(BodySink | None, sink_of(scope))


async def serve(outbox: Outbox, flusher: Flusher, *, sink: Sink | None,
                write: Callable[[list[bytes]], Awaitable[None]],
                read: Coroutine[Any, Any, T] | None) -> Outcome[T]:
    """Run the connection until one side ends; the other is stopped before this returns.

    `read` (None: the sink reports the client leaving by aborting the outbox) runs as a task of its
    own; with a sink nothing else does, so an idle SSE stream holds no task but its request's.
    """
    outcome: Outcome[T] = Outcome()
    writer: asyncio.Task[None] | None = None
    reader = asyncio.create_task(read, name="connection reader") if read is not None else None
    try:
        if sink is not None:
            outbox.attach(sink, flusher)
            if reader is not None:
                reader.add_done_callback(lambda _: outbox.abort("read"))
            await outbox.ended()
        else:
            writer = drain = asyncio.create_task(_drain(outbox, write), name="connection writer")

            def stop_writer() -> None:
                drain.cancel()

            outbox.on_end = stop_writer
            if outbox.reason is not None:
                writer.cancel()
            await asyncio.wait({writer} if reader is None else {writer, reader},
                               return_when=asyncio.FIRST_COMPLETED)
        if reader is not None and reader.done():
            outcome.read = True
            if not reader.cancelled() and reader.exception() is None:
                outcome.result = reader.result()
        elif outbox.reason is not None:
            outcome.reason = outbox.reason
        elif writer is None or (writer.done() and not writer.cancelled() and writer.exception() is None):
            outcome.finished = True
    finally:
        # End the outbox before cancelling, so a writer that missed its cancel stops at its next take.
        outbox.abort("closed")
        tasks: list[asyncio.Task[Any]] = [task for task in (writer, reader) if task is not None]
        pending = [task for task in tasks if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        for task in tasks:
            if not task.cancelled() and (error := task.exception()) is not None:
                outcome.failed = True
                if not isinstance(error, OSError):  # OSError: the client is gone (uvicorn's ClientDisconnected)
                    log.error("%s failed", task.get_name(), exc_info=error)
    return outcome


async def _drain(outbox: Outbox, write: Callable[[list[bytes]], Awaitable[None]]) -> None:
    while (chunks := await outbox.take()) is not None:
        await write(chunks)
