"""The in-process fan-out: journal → subscribers, encode once, never block the producer.

One listener on the journal receives every stored event and offers it to the subscriptions of its
stream. Each subscription frames it with its transport's `Framer` (once per event, shared by every
subscriber) into its connection's `Outbox` (`outbox.py`), a bounded byte queue drained by the transport's writer
or, on agentwire's own server protocols, written straight to the socket by the `Flusher` once per
loop tick for all connections; a subscriber whose outbox overflows is disconnected ("slow") and
resumes from its last seq. Replay and live delivery are one path: a subscription reads the journal from its
position until it has caught up with what the hub has passed on, then joins the live set, with no
await between the check and the join; any later jump in seq sends it back to the journal.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from agentwire.background import TaskSet
from agentwire.backoff import Backoff
from agentwire.journal import AppendsOne, Journal
from agentwire.metrics import Metrics
from agentwire.outbox import DEFAULT_BUFFER, Flusher, Framer, Outbox
from agentwire.resume import resolve
from agentwire.types import Append, Event, Unavailable, starts_at_head

REPLAY_PAGE = 1000


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
