"""A connection's way out: the bounded byte queue every transport writes through (`Outbox`), how a
transport frames events into it (`Framer`), and, on agentwire's own server protocols, the socket it
is written to directly (`Sink`) by one `Flusher` per loop tick for all connections (`server.py`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from agentwire.types import JSON, Event

log = logging.getLogger("agentwire.outbox")

DEFAULT_BUFFER = 1 << 20


class Sink(Protocol):
    """A connection the app may write to directly, without a writer task or the ASGI send chain
    (agentwire's own uvicorn protocols offer one: `server.py`)."""

    def write(self, data: bytes) -> None:
        """Queue `data` on the socket now (the transport sends what it can at once)."""
        ...

    def buffered(self) -> int:
        """Bytes the connection holds that the client has not taken yet."""
        ...

    async def drain(self) -> None:
        """Wait until the connection's buffer is below its low-water mark (or it is gone)."""
        ...

    def on_lost(self, callback: Callable[[], None]) -> None:
        """Call `callback` once when the client is gone (at once if it already is)."""
        ...


class Framer(Protocol):
    """How a transport frames what a subscription delivers; each transport owns its framing, and
    agentwire's own transports build an event's frame once and share it between subscribers."""

    transport: str  # the metrics label

    def event(self, event: Event) -> bytes: ...

    def events(self, events: Sequence[Event]) -> bytes:
        """A replayed page in one piece (read back from the journal, seen once: no caching needed)."""
        ...

    def control(self, stream: str, type: str, data: JSON, seq: int | None = None) -> bytes:
        """`stream.open`/`stream.reset`: not journaled, framed per subscription."""
        ...


class Flusher:
    """Writes every outbox that has a `Sink` once per loop tick: one callback for all of them, so
    a delivery to a thousand subscribers wakes no task at all (the events of a tick go out in one
    write per connection)."""

    def __init__(self) -> None:
        self._pending: list[Outbox] = []
        self._handle: asyncio.Handle | None = None

    def add(self, outbox: Outbox) -> None:
        self._pending.append(outbox)
        if self._handle is None:
            self._handle = asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._handle = None
        pending, self._pending = self._pending, []
        for outbox in pending:
            try:
                outbox.flush()
            except Exception:
                # One connection's failure must not leave the others of this tick unwritten.
                log.exception("writing to a connection failed")
                outbox.abort("error")


class Outbox:
    """A connection's outgoing bytes: a bounded queue, one way in (`put`), ended two ways.

    Drained either by the connection's writer (`take`), or, once a `Sink` is attached, by a
    `Flusher` that writes it straight to the socket at the end of the loop tick. `put` never waits:
    past the limit (bytes queued here plus bytes the sink still holds, see `put` for the one big
    message allowed over it) the outbox aborts with reason "slow" and drops what it held. `finish`
    ends it once what is queued has been written; `abort` ends it now. `on_end` is called once when
    it has ended: at once on an abort (a transport stops its writer there, which may be blocked
    sending to a client that stopped reading), or, with a sink, once finished and written out.
    """

    __slots__ = (
        "_chunks",
        "_ended",
        "_flusher",
        "_largest",
        "_sink",
        "_size",
        "_space",
        "_waiter",
        "active_at",
        "finished",
        "limit",
        "on_end",
        "reason",
    )

    def __init__(self, limit: int = DEFAULT_BUFFER) -> None:
        self.limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        self._largest = 0  # the largest message put since the backlog was last within the limit
        # Futures and Events made only when someone waits on them: thousands of idle connections
        # each hold an outbox, and an asyncio.Event carries a deque.
        self._waiter: asyncio.Future[None] | None = None
        self._space: asyncio.Event | None = None
        self._ended: asyncio.Future[None] | None = None
        self.reason: str | None = None
        self.finished = False
        self.on_end: Callable[[], None] | None = None
        self.active_at = time.monotonic()  # when something was last taken or written
        self._sink: Sink | None = None
        self._flusher: Flusher | None = None

    @property
    def closed(self) -> bool:
        return self.finished or self.reason is not None

    @property
    def size(self) -> int:
        return self._size

    def attach(self, sink: Sink, flusher: Flusher) -> None:
        """Write to `sink` from now on, once per tick through `flusher`, instead of through `take`."""
        self._sink = sink
        self._flusher = flusher
        if self._chunks:
            flusher.add(self)
        sink.on_lost(self._lost)

    def _lost(self) -> None:
        self.abort("closed")

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def put(self, data: bytes, *, paced: bool = False) -> bool:
        """Queue bytes. The subscriber is cut as slow when what was pending BEFORE this message
        (queued here plus held by the sink) is over the limit by more than the largest single
        message put since the backlog was last within the limit: a high-water mark, as common
        servers use. So one event bigger than the whole limit (a long turn's `text.done`) never
        cuts a reader that keeps up, even while the transport still holds it and more events
        follow, while a reader that stops reading is cut once its backlog passes the limit plus
        that one message (the memory bound). `paced` data (replay, which waits for room before each
        slice and is bounded that way) is never cut itself: counting it would cut every reader of a
        backlog bigger than the limit; its size still counts as a message, so the live event right
        after a replayed big one does not cut a resuming reader at the same place again."""
        if self.finished or self.reason is not None:
            return False
        sink = self._sink
        pending = self._size if sink is None else self._size + sink.buffered()
        if pending <= self.limit:
            self._largest = 0  # back within the limit: earlier big messages have gone out
        if not paced and pending > self.limit + self._largest:
            self.abort("slow")
            return False
        if len(data) > self._largest:
            self._largest = len(data)
        first = not self._chunks
        self._chunks.append(data)
        self._size += len(data)
        if sink is None:
            self._wake()
        elif first:
            assert self._flusher is not None
            self._flusher.add(self)
        return True

    def flush(self) -> None:
        """Write what is queued to the sink (the flusher calls this once per tick)."""
        sink = self._sink
        if sink is None or self.reason is not None:
            return
        chunks = self._chunks
        if chunks:
            self._chunks, self._size = [], 0
            sink.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))
            self.active_at = time.monotonic()
            if self._space is not None:
                self._space.set()
        if self.finished:
            self._end()

    async def wait_space(self) -> None:
        """For replay, which is pulled, not pushed: wait until at most half the limit is pending."""
        half = self.limit // 2
        while not self.closed:
            sink = self._sink
            if sink is None:
                if self._size <= half:
                    return
                if self._space is None:
                    self._space = asyncio.Event()
                self._space.clear()
                await self._space.wait()
            else:
                held = sink.buffered()
                if self._size + held <= half:
                    return
                if held > half:
                    await sink.drain()
                    # Below the transport's low-water mark yet maybe still over a small limit.
                    if sink.buffered() > half:
                        await asyncio.sleep(0.005)
                else:
                    await asyncio.sleep(0)  # the flusher writes the queue out this tick

    async def take(self, timeout: float | None = None) -> list[bytes] | None:
        """Everything queued; [] if `timeout` passed with nothing; None once the outbox has ended."""
        if not self._chunks and not self.closed:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                if timeout is None:
                    await self._waiter
                else:
                    try:
                        # asyncio.timeout arms one timer; wait_for would also make a task per call.
                        async with asyncio.timeout(timeout):
                            await self._waiter
                    except TimeoutError:
                        return []
            finally:
                self._waiter = None
        if self.reason is not None:
            return None
        chunks, self._chunks, self._size = self._chunks, [], 0
        self.active_at = time.monotonic()
        if self._space is not None:
            self._space.set()
        if not chunks and self.finished:
            return None
        return chunks

    async def ended(self) -> None:
        """Wait until the outbox is aborted, or finished and written out (for a sink's connection)."""
        if self.reason is not None or (self.finished and not self._chunks):
            return
        if self._ended is None:
            self._ended = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._ended)

    def _end(self) -> None:
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(None)
        on_end, self.on_end = self.on_end, None
        if on_end is not None:
            on_end()

    def finish(self) -> None:
        self.finished = True
        self._wake()
        if self._sink is not None:
            if self._chunks:
                assert self._flusher is not None
                self._flusher.add(self)  # flush ends it once the queue is written
            else:
                self._end()

    def abort(self, reason: str) -> None:
        first = self.reason is None
        if first:
            self.reason = reason
        self._chunks, self._size = [], 0
        self._wake()
        if self._space is not None:
            self._space.set()
        if first:
            self._end()
