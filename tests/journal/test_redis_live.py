"""What only the Redis journal has to prove, part two: retention and epochs of a wiped Redis, the live
XREAD reader, and surviving a Redis restart (or a frozen or unreachable one) without losing anything
acknowledged. Part one is tests/journal/test_redis.py; the shared contract is tests/journal/test_contract.py
(and _store)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from agentwire.journal.redis import BLOCK_MS, RedisJournal
from agentwire.resume import resolve
from agentwire.types import Append, Event, Unavailable
from tests.support.eventually import eventually_async
from tests.support.journal_backends import run
from tests.support.net import free_port
from tests.support.redis_server import RedisServer, items, started

pytestmark = [pytest.mark.redis]


# -- positions, retention, epochs ----------------------------------------------------------------------


def test_retention_trims_in_tenths_and_reports_first(redis_url: str) -> None:
    async def main() -> None:
        journal = await started(redis_url, retention=10)
        empty = await journal.position("s")
        assert (empty.first, empty.head) == (1, 0)
        for _ in range(11):
            await journal.append(Append("s", "e", {}))
        assert (await journal.position("s")).first == 1  # within retention plus a tenth
        await journal.append(Append("s", "e", {}))
        position = await journal.position("s")
        assert (position.first, position.head) == (3, 12)
        stored = await journal.read("s", 0, 100)
        assert [e.seq for e in stored] == list(range(3, 13))
        await journal.append_many(items("s", 100))
        position = await journal.position("s")
        assert (position.first, position.head) == (103, 112)
        assert [e.seq for e in await journal.read("s", 0, 100)] == list(range(103, 113))
        # What a resuming client is told: trimmed below first, ahead past head, served in between.
        assert resolve(position, 50, default_at_head=False).reset == "trimmed"
        assert resolve(position, 200, default_at_head=False).reset == "ahead_of_head"
        assert resolve(position, 102, default_at_head=False).reset is None
        assert resolve(position, None, default_at_head=False).after == 102
        # Another instance (another node) sees the same positions.
        other = await started(redis_url, retention=10)
        assert await other.position("s") == position
        await journal.close()
        await other.close()

    run(main())


def test_epoch_stable_across_reconnects_and_new_after_flushall(tmp_path: Path) -> None:
    async def main(server: RedisServer) -> None:
        journal = await started(server.url)
        empty = await journal.position("s")
        await journal.append_many(items("s", 3))
        position = await journal.position("s")
        assert position.epoch == empty.epoch  # a stream takes the journal's epoch: no change on creation
        assert (position.first, position.head) == (1, 3)
        await journal.close()

        again = await started(server.url)
        assert await again.position("s") == position
        assert (await again.position("other")).epoch == position.epoch
        await again.close()

        server.flushall()
        wiped = await started(server.url)
        fresh = await wiped.position("s")
        assert (fresh.first, fresh.head) == (1, 0)
        assert fresh.epoch != position.epoch
        assert (await wiped.append(Append("s", "e", {}))).seq == 1
        assert (await wiped.position("s")).epoch == fresh.epoch
        await wiped.close()

    with RedisServer(tmp_path / "redis") as server:
        run(main(server))


def test_live_reader_follows_a_stream_wiped_under_it(tmp_path: Path) -> None:
    async def main(server: RedisServer) -> None:
        writer, watcher = await started(server.url), await started(server.url)
        seen: list[Event] = []
        watcher.set_listener(seen.append)
        await watcher.watch("s")
        await writer.append_many(items("s", 5))
        await eventually_async(lambda: len(seen) == 5, what="first history")
        server.flushall()
        await writer.append_many(items("s", 2, after="wipe"))
        await eventually_async(lambda: len(seen) == 7, timeout=3 * BLOCK_MS / 1000, what="the new history")
        assert [e.seq for e in seen] == [1, 2, 3, 4, 5, 1, 2]
        assert seen[-1].data["after"] == "wipe"
        await writer.close()
        await watcher.close()

    with RedisServer(tmp_path / "redis") as server:
        run(main(server))


# -- live delivery ------------------------------------------------------------------------------------


def test_reader_delivers_what_another_instance_appends(redis_url: str) -> None:
    async def main() -> None:
        writer, watcher = await started(redis_url), await started(redis_url)
        seen: list[Event] = []
        watcher.set_listener(seen.append)
        assert await watcher.watch("a") == 0
        assert await watcher.watch("b") == 0
        for i in range(20):
            await writer.append(Append("a" if i % 3 else "b", "e", {"i": i}))
        await writer.append_many(items("a", 50))
        await eventually_async(lambda: len(seen) == 70, what="70 live events")
        for stream in ("a", "b"):
            mine = [e.seq for e in seen if e.stream == stream]
            assert mine == list(range(1, len(mine) + 1))
            assert [e.raw for e in seen if e.stream == stream] == [
                e.raw for e in await writer.read(stream, 0, 100)]
        await writer.close()
        await watcher.close()

    run(main())


def test_own_appends_reach_the_listener_once_and_before_append_returns(redis_url: str) -> None:
    async def main() -> None:
        journal = await started(redis_url)
        seen: list[Event] = []
        journal.set_listener(seen.append)
        await journal.watch("s")
        for i in range(30):
            event = await journal.append(Append("s", "e", {"i": i}))
            assert seen[-1].seq == event.seq
        await journal.append_many(items("s", 100))
        assert seen[-1].seq == 130
        await asyncio.sleep(0.3)  # the XREAD reader sees the same entries: they must not come again
        assert [e.seq for e in seen] == list(range(1, 131))
        # Unwatched streams are passed on too (as the other backends do), in order.
        await journal.append_many(items("unwatched", 3))
        assert [e.seq for e in seen if e.stream == "unwatched"] == [1, 2, 3]
        await journal.close()

    run(main())


def test_watch_starts_after_the_current_head(redis_url: str) -> None:
    async def main() -> None:
        writer, watcher = await started(redis_url), await started(redis_url)
        seen: list[Event] = []
        watcher.set_listener(seen.append)
        await writer.append_many(items("s", 3))
        assert await watcher.watch("s") == 3  # what the hub must read from the journal itself
        await writer.append_many(items("s", 2))
        await eventually_async(lambda: len(seen) == 2, what="events after the head")
        assert [e.seq for e in seen] == [4, 5]
        assert await watcher.watch("s") == 5  # watched already: what has been passed on
        await watcher.unwatch("s")
        await writer.append_many(items("s", 2))
        await asyncio.sleep(0.3)
        assert [e.seq for e in seen] == [4, 5]  # not watched: not followed
        assert await watcher.watch("s") == 7
        await writer.append(Append("s", "e", {}))
        await eventually_async(lambda: len(seen) == 3, what="event after re-watch")
        assert seen[-1].seq == 8
        await writer.close()
        await watcher.close()

    run(main())


def test_watching_a_new_stream_interrupts_the_blocked_reader(redis_url: str) -> None:
    async def main() -> None:
        writer, watcher = await started(redis_url), await started(redis_url)
        seen: list[Event] = []
        watcher.set_listener(seen.append)
        await watcher.watch("quiet")
        await asyncio.sleep(0.2)  # the reader is now blocked on "quiet" alone
        for n in range(5):
            stream = f"new{n}"
            await watcher.watch(stream)
            started_at = time.monotonic()
            await writer.append(Append(stream, "e", {}))
            await eventually_async(partial(lambda s: bool(seen) and seen[-1].stream == s, stream), what=stream)
            # Well under one BLOCK period: the reader did not wait for its XREAD to time out.
            assert time.monotonic() - started_at < BLOCK_MS / 1000 / 2
        await writer.close()
        await watcher.close()

    run(main())


def test_quiet_reader_outlives_several_block_periods(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        writer, watcher = await started(redis_url), await started(redis_url)
        seen: list[Event] = []
        watcher.set_listener(seen.append)
        await watcher.watch("s")
        await asyncio.sleep(1.5 * BLOCK_MS / 1000)
        await writer.append(Append("s", "e", {}))
        await eventually_async(lambda: len(seen) == 1, timeout=1, what="event after a quiet spell")
        await writer.close()
        await watcher.close()

    with caplog.at_level(logging.WARNING, logger="agentwire.journal.redis"):
        run(main())
    assert not [r for r in caplog.records if "lost its connection" in r.getMessage()]


# -- Redis going away -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kill", [True, False], ids=["kill", "shutdown"])
def test_restart_loses_nothing_acknowledged(tmp_path: Path, kill: bool) -> None:
    server = RedisServer(tmp_path / "redis", appendonly=True, appendfsync="always")

    async def main() -> None:
        writer, watcher = await started(server.url), await started(server.url)
        seen: list[Event] = []
        watcher.set_listener(seen.append)
        await watcher.watch("s")
        acknowledged: list[Event] = []
        failures = 0
        pumping = True

        async def pump() -> None:
            nonlocal failures
            i = 0
            while pumping:
                try:
                    acknowledged.extend(await writer.append_many(items("s", 1 + i % 3, i=i)))
                except Unavailable:
                    failures += 1
                    await asyncio.sleep(0.01)
                i += 1

        task = asyncio.create_task(pump())
        await eventually_async(lambda: len(acknowledged) > 200, what="appends before the stop")
        await asyncio.to_thread(server.stop, kill=kill)

        # Down: every call fails fast and clearly, none hangs.
        calls: list[Callable[[], Awaitable[Any]]] = [
            lambda: writer.append(Append("s", "e", {})), lambda: writer.read("s", 0, 10),
            lambda: writer.position("s"), writer.ping, lambda: watcher.watch("t")]
        for call in calls:
            began = time.monotonic()
            with pytest.raises(Unavailable, match="Redis journal unreachable"):
                await call()
            assert time.monotonic() - began < 3
        await eventually_async(lambda: failures > 3, what="failed appends while down")

        await asyncio.to_thread(server.start)
        count = len(acknowledged)
        await eventually_async(lambda: len(acknowledged) > count + 200, what="appends after the restart")
        pumping = False
        await task

        stored = await writer.read("s", 0, 1_000_000)
        assert [e.seq for e in stored] == list(range(1, len(stored) + 1))
        by_seq = {e.seq: e.raw for e in stored}
        assert all(by_seq.get(e.seq) == e.raw for e in acknowledged)  # nothing acknowledged lost
        # The reader came back and resumed where it was: every stored event, in order, once.
        await eventually_async(lambda: bool(seen) and seen[-1].seq == stored[-1].seq, what="reader catching up")
        assert [e.raw for e in seen] == [e.raw for e in stored]
        await writer.ping()
        await writer.close()
        await watcher.close()

    server.start()
    try:
        run(main())
    finally:
        server.stop()


def test_a_frozen_redis_times_out_instead_of_hanging(tmp_path: Path) -> None:
    async def main(server: RedisServer) -> None:
        assert server.process is not None
        journal = await started(f"{server.url}?socket_timeout=0.5")
        await journal.append(Append("s", "e", {}))
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            for call in (lambda: journal.append(Append("s", "e", {})), lambda: journal.read("s", 0, 10)):
                began = time.monotonic()
                with pytest.raises(Unavailable, match="Timeout"):
                    await call()
                assert time.monotonic() - began < 3
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        await journal.ping()
        assert (await journal.append(Append("s", "e", {}))).seq == 3  # the timed-out append did run
        await journal.close()

    with RedisServer(tmp_path / "redis") as server:
        run(main(server))


def test_unreachable_redis_is_unavailable_not_a_hang() -> None:
    async def main() -> None:
        journal = RedisJournal(f"redis://127.0.0.1:{free_port()}/0")
        began = time.monotonic()
        with pytest.raises(Unavailable):
            await journal.start()
        assert time.monotonic() - began < 3
        with pytest.raises(Unavailable):
            await journal.append(Append("s", "e", {}))

    run(main())


def test_closed_journal_refuses_appends(redis_url: str) -> None:
    async def main() -> None:
        journal = await started(redis_url)
        await journal.close()
        with pytest.raises(Unavailable, match="closed"):
            await journal.append(Append("s", "e", {}))

    run(main())
