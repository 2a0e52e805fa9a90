"""The hub on real journals (memory, SQLite): replay then live on one path, encode once, bounded
outboxes that cut a slow subscriber instead of slowing the producer, resets, filters, shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest

from agentwire.client import SseMessage, SseParser
from agentwire.hub import REPLAY_PAGE, Hub
from agentwire.journal import Journal
from agentwire.journal.memory import MemoryJournal
from agentwire.journal.sqlite import SqliteJournal
from agentwire.metrics import Metrics
from agentwire.outbox import Flusher, Outbox
from agentwire.sse import SSE
from agentwire.types import Append, Event

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture(params=["memory", "sqlite"])
def make_journal(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    def make(retention: int = 0) -> Journal:
        if request.param == "memory":
            return MemoryJournal(retention=retention)
        return SqliteJournal(f"sqlite:///{tmp_path}/hub.db", retention=retention)

    return make


@asynccontextmanager
async def started(journal: Journal, **kwargs: Any) -> AsyncIterator[Hub]:
    await journal.start()
    hub = Hub(journal, Metrics(), **kwargs)
    try:
        yield hub
    finally:
        hub.close()
        await journal.close()


def items(count: int, stream: str = "s", start: int = 0) -> list[Append]:
    return [Append(stream, "e", {"n": n}) for n in range(start, start + count)]


class Reader:
    """Drains an outbox as a transport's writer would and parses what it wrote."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.parser = SseParser()
        self.messages: list[SseMessage] = []
        self.chunks: list[bytes] = []
        self.ended = False

    async def pump(self, timeout: float = 0.05) -> None:
        chunks = await self.outbox.take(timeout)
        if chunks is None:
            self.ended = True
            return
        self.chunks += chunks
        for chunk in chunks:
            self.messages += self.parser.feed(chunk)

    async def until_seq(self, seq: int, timeout: float = 30.0) -> None:
        async def wait() -> None:
            while not self.ended and seq not in self.seqs:
                await self.pump()

        await asyncio.wait_for(wait(), timeout)

    @property
    def seqs(self) -> list[int]:
        return [orjson.loads(m.data)["seq"] for m in self.messages if m.event not in ("stream.open", "stream.reset")]

    def controls(self) -> list[tuple[str, str | None, dict[str, Any]]]:
        """stream.open/stream.reset messages with the protocol's fields (a transport may add more)."""
        fields = {"stream.open": ("epoch", "head", "from"), "stream.reset": ("epoch", "head", "reason")}
        return [(m.event, m.id, {k: orjson.loads(m.data)["data"][k] for k in fields[m.event]})
                for m in self.messages if m.event in fields]


async def live(hub: Hub, outbox: Outbox, reader: Reader | None = None, timeout: float = 10.0) -> None:
    """Wait until the outbox's subscription has caught up and joined the live set."""
    async def wait() -> None:
        while not any(s.live for s in hub._subscriptions if s.outbox is outbox):
            if reader is not None:
                await reader.pump(0.01)
            else:
                await asyncio.sleep(0.005)

    await asyncio.wait_for(wait(), timeout)


@pytest.mark.parametrize("after", [None, 0, 1234, 2999])
def test_replay_then_live_with_nothing_skipped_or_repeated_at_the_seam(make_journal: Any, after: int | None) -> None:
    async def main() -> None:
        async with started(make_journal()) as hub:
            await hub.append_many(items(3000))

            async def produce() -> None:
                # Appends while the subscriber is still reading its backlog, and after it has caught up.
                for n in range(3000, 3600, 3):
                    await hub.append_many(items(3, start=n))
                    await asyncio.sleep(0)

            outbox = Outbox(1 << 20)
            hub.register(outbox)
            await hub.subscribe("s", outbox, SSE, after)
            reader = Reader(outbox)
            producer = asyncio.create_task(produce())
            await reader.until_seq(3600)
            await producer
            first = 1 if after is None else after + 1
            assert reader.seqs == list(range(first, 3601))
            assert [orjson.loads(m.data)["data"]["n"] for m in reader.messages[1:]] == list(range(first - 1, 3600))
            [(kind, id_, data)] = reader.controls()
            assert kind == "stream.open" and id_ is None
            assert data["head"] >= 3000 and data["from"] == first

    run(main())


def test_live_events_are_encoded_once_and_shared_by_every_subscriber(make_journal: Any) -> None:
    async def main() -> None:
        async with started(make_journal()) as hub:
            readers = []
            for _ in range(3):
                outbox = Outbox()
                hub.register(outbox)
                await hub.subscribe("s", outbox, SSE, None)
                readers.append(Reader(outbox))
            for reader in readers:
                await live(hub, reader.outbox, reader)
                reader.chunks.clear()
            event = await hub.append(Append("s", "e", {"n": 1}))
            for reader in readers:
                await reader.until_seq(1)
            frames = [reader.chunks[-1] for reader in readers]
            assert frames[0] == b"id: 1\nevent: e\ndata: " + event.raw + b"\n\n"
            # The very same bytes object went to every subscriber: encoded once, not per subscriber.
            assert frames[0] is frames[1] is frames[2]
            assert hub.metrics.delivered("sse").value == 3

    run(main())


def test_a_slow_subscriber_is_cut_and_never_slows_the_producer(make_journal: Any) -> None:
    async def main() -> None:
        async with started(make_journal(), buffer_limit=4096) as hub:
            stalled = Outbox(hub.buffer_limit)
            healthy = Outbox(hub.buffer_limit)
            for outbox in (stalled, healthy):
                hub.register(outbox)
                await hub.subscribe("s", outbox, SSE, None)
            reader = Reader(healthy)
            await live(hub, stalled)
            await live(hub, healthy, reader)
            for n in range(200):  # nobody drains `stalled`; the appends must still go straight through
                await asyncio.wait_for(hub.append(Append("s", "e", {"n": n, "pad": "x" * 100})), 5)
                await reader.pump(0)
            await reader.until_seq(200)
            assert reader.seqs == list(range(1, 201))
            assert stalled.reason == "slow"
            assert stalled.size == 0  # what it held was dropped, not kept growing
            assert await stalled.take(0) is None
            await asyncio.wait_for(stalled.ended(), 1)
            hub.unregister(stalled)  # as its connection does when it ends: counted once there
            assert hub.metrics.slow_disconnects._value.get() == 1
            assert healthy.reason is None

    run(main())


def test_a_position_past_the_head_gets_a_reset_then_continues_after_the_head(make_journal: Any) -> None:
    async def main() -> None:
        async with started(make_journal()) as hub:
            await hub.append_many(items(5))
            epoch = (await hub.journal.position("s")).epoch
            outbox = Outbox()
            await hub.subscribe("s", outbox, SSE, 99)
            reader = Reader(outbox)
            await live(hub, outbox, reader)
            await hub.append(Append("s", "e", {"n": 5}))
            await reader.until_seq(6)
            assert reader.controls() == [
                ("stream.open", None, {"epoch": epoch, "head": 5, "from": 6}),  # where delivery starts
                ("stream.reset", "5", {"epoch": epoch, "head": 5, "reason": "ahead_of_head"}),
            ]
            assert reader.seqs == [6]

    run(main())


def test_a_trim_during_replay_is_a_reset_not_a_hole(make_journal: Any) -> None:
    async def main() -> None:
        async with started(make_journal(retention=10)) as hub:
            await hub.append_many(items(12))
            first = (await hub.journal.position("s")).first
            outbox = Outbox(1000)
            # An SSE comment fills the outbox over half, so the replay waits for the writer ...
            outbox.put(b": " + b"x" * 600 + b"\n\n")
            reader = Reader(outbox)
            await hub.subscribe("s", outbox, SSE, first - 1)  # servable now
            # ... and before it reads, the journal trims past it.
            await hub.append_many(items(40, start=12))
            position = await hub.journal.position("s")
            assert position.first > first
            await live(hub, outbox, reader)
            await hub.append(Append("s", "e", {"n": 52}))
            await reader.until_seq(53)
            controls = reader.controls()
            assert [c[0] for c in controls] == ["stream.open", "stream.reset"]
            assert controls[1][2]["reason"] == "trimmed" and controls[1][1] == str(controls[1][2]["head"])
            # Whatever it got is contiguous after the reset's head: no event from the trimmed range.
            head = controls[1][2]["head"]
            assert reader.seqs == list(range(head + 1, 54))

    run(main())


def test_a_missed_live_event_sends_the_subscriber_back_to_the_journal() -> None:
    """The listener may miss events (a Redis reader reconnecting); a subscriber that sees a jump in
    seq reads the gap from the journal instead of skipping it."""

    async def main() -> None:
        journal = MemoryJournal()
        async with started(journal) as hub:
            outbox = Outbox()
            reader = Reader(outbox)
            await hub.subscribe("s", outbox, SSE, None)
            await live(hub, outbox, reader)
            await hub.append(Append("s", "e", {"n": 0}))
            journal.set_listener(lambda event: None)  # the live path loses the next three
            await journal.append_many(items(3, start=1))
            journal.set_listener(hub._on_event)
            await hub.append(Append("s", "e", {"n": 4}))
            await reader.until_seq(5)
            assert reader.seqs == [1, 2, 3, 4, 5]
            assert [orjson.loads(m.data)["data"]["n"] for m in reader.messages[1:]] == [0, 1, 2, 3, 4]

    run(main())


def test_without_a_position_a_subscriber_starts_at_first_or_at_head(make_journal: Any) -> None:
    async def main() -> None:
        async with started(make_journal()) as hub:
            await hub.append_many(items(4))
            from_first, at_head = Outbox(), Outbox()
            await hub.subscribe("s", from_first, SSE, None)
            await hub.subscribe("s", at_head, SSE, None, default_at_head=True)
            readers = [Reader(from_first), Reader(at_head)]
            for reader in readers:
                await live(hub, reader.outbox, reader)
            await hub.append(Append("s", "e", {"n": 4}))
            for reader in readers:
                await reader.until_seq(5)
            assert readers[0].seqs == [1, 2, 3, 4, 5]
            assert readers[1].seqs == [5]
            assert readers[1].controls()[0][2]["from"] == 5

    run(main())


def test_only_filters_and_until_ends_the_subscription(make_journal: Any) -> None:
    def mine(event: Event) -> bool:
        return event.data.get("turn") == "a"

    def last(event: Event) -> bool:
        return mine(event) and event.type == "end"

    async def main() -> None:
        async with started(make_journal()) as hub:
            await hub.append_many([Append("s", "e", {"turn": "b"}), Append("s", "e", {"turn": "a"})])
            outbox = Outbox()
            reader = Reader(outbox)
            subscription = await hub.subscribe("s", outbox, SSE, 0, only=mine, until=last)
            await live(hub, outbox, reader)
            await hub.append_many([Append("s", "e", {"turn": "b"}), Append("s", "e", {"turn": "a"}),
                                   Append("s", "end", {"turn": "a"}), Append("s", "e", {"turn": "a"})])
            while not reader.ended:
                await reader.pump()
            assert reader.seqs == [2, 4, 5]
            assert outbox.finished and outbox.reason is None
            assert subscription.closed and hub.subscription_count == 0

    run(main())


def test_replay_of_a_long_backlog_yields_to_the_event_loop() -> None:
    async def main() -> None:
        async with started(MemoryJournal()) as hub:
            await hub.append_many(items(REPLAY_PAGE * 20))
            ticks: list[int] = []
            done = asyncio.Event()

            async def ticker() -> None:
                while not done.is_set():
                    ticks.append(len(reader.messages))
                    await asyncio.sleep(0)

            outbox = Outbox(1 << 30)
            reader = Reader(outbox)
            await hub.subscribe("s", outbox, SSE, 0)
            task = asyncio.create_task(ticker())
            await reader.until_seq(REPLAY_PAGE * 20)
            done.set()
            await task
            # Other tasks ran while the backlog was being read, not only before or after it.
            assert len(set(ticks)) > 5

    run(main())


def test_close_ends_every_stream_and_the_metrics_follow(make_journal: Any) -> None:
    async def main() -> None:
        journal = make_journal()
        await journal.start()
        hub = Hub(journal, Metrics())
        outboxes = [Outbox() for _ in range(3)]
        for outbox in outboxes:
            hub.register(outbox)
            await hub.subscribe("s", outbox, SSE, None)
        gauge = hub.metrics.open_streams.labels("sse")
        assert gauge._value.get() == 3 and hub.subscription_count == 3
        events = await hub.append_many(items(4))
        assert hub.metrics.events_appended._value.get() == 4
        assert hub.metrics.append_latency._sum.get() > 0
        assert [e.seq for e in events] == [1, 2, 3, 4]
        hub.close()
        assert all(outbox.reason == "shutdown" for outbox in outboxes)
        assert hub.subscription_count == 0 and gauge._value.get() == 0
        await asyncio.sleep(0.01)
        await journal.close()

    run(main())


# the outbox itself


def test_outbox_bounds_bytes_and_ends_two_ways() -> None:
    async def main() -> None:
        aborts: list[int] = []
        outbox = Outbox(100)
        outbox.on_end = lambda: aborts.append(1)
        assert await outbox.take(0.01) == []  # nothing yet
        assert outbox.put(b"a" * 40) and outbox.put(b"b" * 40)
        replay = asyncio.ensure_future(outbox.wait_space())
        await asyncio.sleep(0.01)
        assert not replay.done()  # over half: replay waits for the writer
        assert await outbox.take(0) == [b"a" * 40, b"b" * 40]
        await asyncio.wait_for(replay, 1)
        assert outbox.size == 0
        assert outbox.put(b"c" * 100) and outbox.put(b"d")  # pending before "d": 100, within the limit
        # Over the limit by one message, then no more: the backlog before "f" (101) is past the limit
        # plus the largest message put since it was within it (the 1 byte of "d").
        assert outbox.put(b"e")
        assert not outbox.put(b"f")
        assert outbox.reason == "slow" and aborts == [1] and outbox.size == 0
        assert await outbox.take(0) is None
        assert not outbox.put(b"e")

        finishing = Outbox(100)
        finishing.put(b"last")
        finishing.finish()
        assert not finishing.put(b"more")
        assert await finishing.take(0) == [b"last"]  # what was queued is still written
        assert await finishing.take(0) is None

    run(main())


def test_a_backlog_bigger_than_the_buffer_is_paced_not_taken_for_a_slow_consumer(make_journal: Any) -> None:
    """Replay is pulled: a reader that keeps up gets a backlog of many times its buffer limit (and
    pages of many times the limit) without being cut as slow."""

    async def main() -> None:
        async with started(make_journal(), buffer_limit=16 * 1024) as hub:
            await hub.append_many([Append("s", "e", {"n": n, "pad": "y" * 500}) for n in range(3000)])
            outbox = Outbox(hub.buffer_limit)
            hub.register(outbox)
            await hub.subscribe("s", outbox, SSE, 0)
            reader = Reader(outbox)
            await reader.until_seq(3000)
            assert reader.seqs == list(range(1, 3001))
            assert outbox.reason is None and hub.metrics.slow_disconnects._value.get() == 0

    run(main())


def test_one_event_bigger_than_the_buffer_still_reaches_a_reader_that_keeps_up(make_journal: Any) -> None:
    async def main() -> None:
        async with started(make_journal(), buffer_limit=4096) as hub:
            outbox = Outbox(hub.buffer_limit)
            hub.register(outbox)
            await hub.subscribe("s", outbox, SSE, None)
            reader = Reader(outbox)
            await live(hub, outbox, reader)
            await reader.pump(0)
            await hub.append(Append("s", "big", {"pad": "z" * 20_000}))  # five times the limit
            await reader.until_seq(1)
            await hub.append(Append("s", "e", {"n": 1}))
            await reader.until_seq(2)
            assert reader.seqs == [1, 2] and outbox.reason is None
            # Replayed, too (a reconnecting client must not be cut on the same event forever).
            again = Outbox(hub.buffer_limit)
            await hub.subscribe("s", again, SSE, 0)
            replayed = Reader(again)
            await replayed.until_seq(2)
            assert replayed.seqs == [1, 2] and again.reason is None

    run(main())


class ListSink:
    """A connection that keeps what is written to it (or fails, as a socket can)."""

    def __init__(self, fail: bool = False) -> None:
        self.written: list[bytes] = []
        self.held = 0
        self.fail = fail
        self.lost: Any = None

    def write(self, data: bytes) -> None:
        if self.fail:
            raise RuntimeError("the transport is closed")
        self.written.append(data)

    def buffered(self) -> int:
        return self.held

    async def drain(self) -> None:
        await asyncio.sleep(0)

    def on_lost(self, callback: Any) -> None:
        self.lost = callback


def test_an_event_bigger_than_the_limit_never_cuts_a_reader_that_keeps_up_but_a_stalled_one_is_cut() -> None:
    """The slow-cut rule is a high-water mark on what was pending before each message: one message
    over the whole limit (a long turn's `text.done`) passes even with other messages queued before it
    and while the transport still holds it; a reader that stops reading is cut at the limit plus it."""

    async def main() -> None:
        flusher = Flusher()
        outbox, sink = Outbox(1000), ListSink()
        outbox.attach(sink, flusher)
        big = b"B" * 5000
        assert outbox.put(b"s" * 100) and outbox.put(b"t" * 100)  # deltas not written yet this tick
        assert outbox.put(big)  # five times the limit, with 200 bytes queued before it
        assert outbox.put(b"u" * 100)
        await asyncio.sleep(0)
        assert sink.written == [b"s" * 100 + b"t" * 100 + big + b"u" * 100]
        sink.held = 5400  # the socket could not send it yet: the transport holds it all
        # The next events come while the big one is still in the transport: no cut.
        for _ in range(5):
            assert outbox.put(b"v" * 100)
            await asyncio.sleep(0)
            sink.held += 100 - 300  # the reader keeps up: it takes more than arrives
        assert outbox.reason is None and sink.held == 4400
        # Now the reader stops: the backlog grows until it passes the limit plus that one big message.
        puts = 0
        while outbox.put(b"w" * 100):
            puts += 1
            await asyncio.sleep(0)
            sink.held += 100
        assert outbox.reason == "slow"
        assert 1000 + len(big) < sink.held <= 1000 + len(big) + 100
        assert puts == (1000 + len(big) - 4400) // 100 + 1

        # Replayed (paced), the big event counts as the one message over the limit too: the live
        # event right after it does not cut a resuming reader at the same place again.
        resumed, sink = Outbox(1000), ListSink()
        resumed.attach(sink, flusher)
        assert resumed.put(big, paced=True)
        await asyncio.sleep(0)
        sink.held = len(big)
        assert resumed.put(b"x" * 100) and resumed.reason is None

    run(main())


def test_a_flusher_writes_each_sink_once_per_tick_and_one_failing_spares_the_rest() -> None:
    async def main() -> None:
        flusher = Flusher()
        failing, good = Outbox(1000), Outbox(1000)
        failing_sink, good_sink = ListSink(fail=True), ListSink()
        failing.attach(failing_sink, flusher)
        good.attach(good_sink, flusher)
        for outbox in (failing, good):
            assert outbox.put(b"a") and outbox.put(b"b")
        assert good_sink.written == []  # nothing before the end of the tick
        await asyncio.sleep(0)
        assert good_sink.written == [b"ab"]  # one write for everything of the tick
        assert failing.reason == "error" and good.reason is None
        # What the connection still holds counts toward the limit: a reader that stopped is cut.
        good_sink.held = 1100
        assert not good.put(b"x" * 200)
        assert good.reason == "slow"
        # The client leaving ends the outbox, with no task waiting for it.
        left, sink = Outbox(), ListSink()
        left.attach(sink, flusher)
        sink.lost()
        assert left.reason == "closed"
        await asyncio.wait_for(left.ended(), 1)

    run(main())
