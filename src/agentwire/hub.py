"""The in-process fan-out: journal → subscribers, encode once, never block the producer.

One listener on the journal receives every stored event and offers it to the subscriptions of its
stream. Each subscription frames it with its transport's `Framer` (once per event, shared by every
subscriber) into its connection's `Outbox`, a bounded byte queue drained by the transport's writer
or, on agentwire's own server protocols, written straight to the socket by the `Flusher` once per
loop tick for all connections; a subscriber whose outbox overflows is disconnected ("slow") and
resumes from its last seq. Replay and live delivery are one path: a subscription reads the journal from its
position until it has caught up with what the hub has passed on, then joins the live set, with no
await between the check and the join; any later jump in seq sends it back to the journal.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from agentwire.background import TaskSet
from agentwire.backoff import Backoff
from agentwire.journal import AppendsOne, Journal
from agentwire.metrics import Metrics
from agentwire.resume import resolve
from agentwire.types import JSON, Append, Event, Unavailable, starts_at_head

log = logging.getLogger("agentwire.hub")

REPLAY_PAGE = 1000
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


class Replay(Protocol):
    """A transform of the replayed range only (e.g. folding finished text blocks); live is untouched."""

    def page(self, events: list[Event]) -> list[Event]: ...

    def end(self) -> list[Event]: ...


EventTest = Callable[[Event], bool]


class Subscription:
    def __init__(self, hub: Hub, stream: str, outbox: Outbox, framer: Framer, after: int, *,
                 only: EventTest | None = None, until: EventTest | None = None,
                 replay: Replay | None = None) -> None:
        self.hub = hub
        self.stream = stream
        self.outbox = outbox
        self.framer = framer
        self.last_seq = after
        self.only = only
        self.until = until
        self.replay = replay
        self.live = False
        self.closed = False
        self._task: asyncio.Task[None] | None = None
        # A plain tally, looked up once: see metrics.Tally.
        self._delivered = hub.metrics.delivered(framer.transport)

    def start(self) -> None:
        self._read_journal(self.replay)

    def _read_journal(self, replay: Replay | None) -> None:
        """Catch up from the journal in a task that ends once the subscription is live again, so an
        idle subscriber costs no task of its own."""
        if self._task is None or self._task.done():
            self._task = self.hub.tasks.spawn(self._feed(replay), name=f"feed {self.stream}")

    def offer(self, event: Event) -> None:
        """A live event from the hub (synchronous: the producer never waits for a subscriber)."""
        if event.seq <= self.last_seq:
            return
        if event.seq != self.last_seq + 1:
            # The live path skipped something (a reader reconnected): the journal has it.
            self.hub.live.discard(self)
            self._read_journal(None)
            return
        self.last_seq = event.seq
        if self.only is None or self.only(event):
            self.outbox.put(self.framer.event(event))
            self._delivered.value += 1
        if self.until is not None and self.until(event):
            self.outbox.finish()
            self.close()

    async def _feed(self, replay: Replay | None) -> None:
        backoff = Backoff(cap=5.0)
        while not self.closed:
            try:
                await self._catch_up(replay)
                return
            except Unavailable:
                # The journal is away (Redis restarting): the stream stays open and reads again
                # from its last seq once the journal is back.
                await asyncio.sleep(backoff.next_delay())

    async def _catch_up(self, replay: Replay | None) -> None:
        journal = self.hub.journal
        while not self.closed:
            await self.outbox.wait_space()
            if self.closed:
                return
            page = await journal.read(self.stream, self.last_seq, REPLAY_PAGE)
            more = len(page) == REPLAY_PAGE
            if page and page[0].seq != self.last_seq + 1:
                # Retention trimmed what this subscriber still needed while it was reading.
                position = await journal.position(self.stream)
                self.outbox.put(self.framer.control(self.stream, "stream.reset", {
                    "epoch": position.epoch, "head": position.head, "reason": "trimmed"}, position.head))
                self.last_seq = position.head
                continue
            if page:
                self.last_seq = page[-1].seq
                if replay is not None:
                    page = replay.page(page)
                if not await self._deliver_paced(page):
                    return
            if not more and self.last_seq >= self.hub.dispatched.get(self.stream, 0):
                if replay is not None and not self._deliver(replay.end()):
                    return
                if not self.closed:
                    self.hub.live.add(self)
                return
            # Yield even when the page came from a cache: a loop that never awaits freezes the worker.
            await asyncio.sleep(0)

    async def _deliver_paced(self, events: Sequence[Event]) -> bool:
        """A replayed page, in slices of about half the outbox, waiting for the writer between them:
        a page may hold many times the limit (1000 big task cards), and one put of all of it would
        both hold it all in memory and look like a slow consumer."""
        start, size = 0, 0
        for index, event in enumerate(events):
            size += len(event.raw)
            if size >= self.outbox.limit // 2 and index + 1 < len(events):
                if not self._deliver(events[start : index + 1]):
                    return False
                start, size = index + 1, 0
                await self.outbox.wait_space()
                if self.closed:
                    return False
        return self._deliver(events[start:])

    def _deliver(self, events: Sequence[Event]) -> bool:
        if self.only is None and self.until is None:
            if events:
                self.outbox.put(self.framer.events(events), paced=True)
                self._delivered.value += len(events)
            return True
        chunks = []
        finished = False
        for event in events:
            if self.only is None or self.only(event):
                chunks.append(self.framer.event(event))
            if self.until is not None and self.until(event):
                finished = True
                break
        if chunks:
            self.outbox.put(b"".join(chunks), paced=True)
            self._delivered.value += len(chunks)
        if finished:
            self.outbox.finish()
            self.close()
            return False
        return True

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.hub.forget(self)
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()


class LiveSet:
    """The subscriptions that get each stream's events as they are passed on (caught up ones)."""

    def __init__(self) -> None:
        self.by_stream: dict[str, set[Subscription]] = {}

    def add(self, subscription: Subscription) -> None:
        subscription.live = True
        self.by_stream.setdefault(subscription.stream, set()).add(subscription)

    def discard(self, subscription: Subscription) -> None:
        subscription.live = False
        live = self.by_stream.get(subscription.stream)
        if live is not None:
            live.discard(subscription)
            if not live:
                del self.by_stream[subscription.stream]


class Hub(AppendsOne):
    def __init__(self, journal: Journal, metrics: Metrics | None = None, *,
                 buffer_limit: int = DEFAULT_BUFFER, heartbeat: float = 15.0) -> None:
        self.journal = journal
        self.heartbeat = heartbeat
        # Called with every event passed on (after the live subscribers), e.g. to keep folds current.
        self.observers: list[Callable[[Event], None]] = []
        self.metrics = metrics or Metrics()
        self.buffer_limit = buffer_limit
        # The last seq passed on per stream: a subscription may join live only once it has read
        # the journal at least this far, so nothing passed on before it joined can be missing.
        self.dispatched: dict[str, int] = {}
        self.live = LiveSet()
        self._live = self.live.by_stream  # read per event by `_on_event`
        self._subscriptions: set[Subscription] = set()
        # Registered connections' outboxes, with what the heartbeat puts into them when idle.
        self._outboxes: dict[Outbox, bytes | None] = {}
        # Writes every outbox that has a sink, once per loop tick.
        self.flusher = Flusher()
        self._watching: dict[str, int] = {}
        # Every task the hub starts (catch-ups, the heartbeat, unwatching): `aclose` ends them all.
        self.tasks = TaskSet()
        self._pinger: asyncio.Task[None] | None = None
        journal.set_listener(self._on_event)

    def _on_event(self, event: Event) -> None:
        self.dispatched[event.stream] = event.seq
        live = self._live.get(event.stream)
        if live:
            for subscription in tuple(live):
                subscription.offer(event)
        for observer in self.observers:
            observer(event)

    async def append_many(self, items: Sequence[Append]) -> list[Event]:
        started = time.perf_counter()
        try:
            events = await self.journal.append_many(items)
        except Exception:
            self.metrics.append_errors.inc()
            raise
        self.metrics.append_latency.observe(time.perf_counter() - started)
        self.metrics.events_appended.inc(len(events))
        return events

    def register(self, outbox: Outbox, ping: bytes | None = None) -> None:
        """Track a connection's outbox so shutdown can end it and, with `ping` (the transport's
        keep-alive message), the heartbeat reaches it."""
        self._outboxes[outbox] = ping
        if ping is not None and (self._pinger is None or self._pinger.done()):
            self._pinger = self.tasks.spawn(self._heartbeat(), name="heartbeat")

    async def _heartbeat(self) -> None:
        """One task pings every outbox idle for a heartbeat interval: no timer per connection or per
        wake-up of its writer, which matters at thousands of connections."""
        while self._outboxes:
            await asyncio.sleep(self.heartbeat / 4)
            idle_since = time.monotonic() - self.heartbeat
            for outbox, ping in tuple(self._outboxes.items()):
                if ping is not None and outbox.active_at <= idle_since and not outbox.size:
                    outbox.put(ping)
                    outbox.active_at = time.monotonic()

    def unregister(self, outbox: Outbox) -> None:
        """The connection has ended; a cut for being slow is counted here, once per connection."""
        if self._outboxes.pop(outbox, False) is not False and outbox.reason == "slow":
            self.metrics.slow_disconnects.inc()

    async def subscribe(self, stream: str, outbox: Outbox, framer: Framer, after: int | None, *,
                        default_at_head: bool | None = None, only: EventTest | None = None,
                        until: EventTest | None = None, replay: Replay | None = None) -> Subscription:
        """Open a subscription: `stream.open` (and `stream.reset` if the position cannot be served),
        then replay from the journal, then live. With no position, the stream's own default start
        (`types.starts_at_head`) unless `default_at_head` says otherwise."""
        self._watching[stream] = self._watching.get(stream, 0) + 1
        try:
            watched = await self.journal.watch(stream)
            position = await self.journal.position(stream)
        except BaseException:
            self._unwatched(stream)
            raise
        if watched > self.dispatched.get(stream, 0):
            self.dispatched[stream] = watched
        at_head = starts_at_head(stream) if default_at_head is None else default_at_head
        start = resolve(position, after, default_at_head=at_head)
        outbox.put(framer.control(stream, "stream.open", {
            "epoch": position.epoch, "head": position.head, "from": start.after + 1,
            "heartbeat_ms": round(self.heartbeat * 1000)}))
        if start.reset is not None:
            outbox.put(framer.control(stream, "stream.reset", {
                "epoch": position.epoch, "head": position.head, "reason": start.reset}, position.head))
        subscription = Subscription(self, stream, outbox, framer, start.after, only=only, until=until,
                                    replay=replay)
        self._subscriptions.add(subscription)
        self.metrics.open_streams.labels(framer.transport).inc()
        subscription.start()
        return subscription

    def forget(self, subscription: Subscription) -> None:
        """A subscription has closed: out of the live set, and its stream unwatched if it was the last."""
        self.live.discard(subscription)
        if subscription in self._subscriptions:
            self._subscriptions.discard(subscription)
            self.metrics.open_streams.labels(subscription.framer.transport).dec()
            self._unwatched(subscription.stream)

    def _unwatched(self, stream: str) -> None:
        count = self._watching.get(stream, 1) - 1
        if count > 0:
            self._watching[stream] = count
            return
        self._watching.pop(stream, None)
        self.tasks.spawn(self._unwatch_if_idle(stream), name=f"unwatch {stream}")

    async def _unwatch_if_idle(self, stream: str) -> None:
        if stream not in self._watching:  # nobody subscribed again meanwhile
            await self.journal.unwatch(stream)

    @property
    def subscription_count(self) -> int:
        return len(self._subscriptions)

    def close(self) -> None:
        """End every open stream now (server shutdown): writers stop, clients resume elsewhere."""
        if self._pinger is not None:
            self._pinger.cancel()
        for outbox in tuple(self._outboxes):
            outbox.abort("shutdown")
        for subscription in tuple(self._subscriptions):
            subscription.close()

    async def aclose(self) -> None:
        """`close`, then wait until every task the hub started has ended."""
        self.close()
        await self.tasks.close(timeout=5)
