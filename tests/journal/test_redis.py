"""What only the Redis journal has to prove, part one: its envelope bytes, documents and batches, key
prefixes, Lua scripts, leases, and many writers on one stream (instances and processes). The rest
(epochs, the live XREAD reader, surviving a Redis restart) is in tests/journal/test_redis_live.py.
The shared journal contract runs against Redis in tests/journal/test_contract.py (and _store)."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import textwrap

import orjson
import pytest

from agentwire.journal import Journal, open_journal
from agentwire.journal.redis import RedisJournal
from agentwire.types import Append, Doc, Event
from tests.support.eventually import eventually_async
from tests.support.journal_backends import run
from tests.support.redis_server import RedisServer, items, started

pytestmark = [pytest.mark.redis]


# -- storing and reading ------------------------------------------------------------------------------


def test_envelope_bytes_are_the_same_everywhere(redis_url: str) -> None:
    async def main() -> None:
        writer, other = await started(redis_url), await started(redis_url)
        seen: list[Event] = []
        other.set_listener(seen.append)
        await other.watch("konsole/a")
        appended = await writer.append_many([
            Append("konsole/a", "text.delta", {"block": 0, "text": "héllo \"x\"\n"}, turn="t_1", lane="main"),
            Append("konsole/a", "turn.completed", {"stop_reason": "end_turn"}, turn="t_1"),
            Append("konsole/a", "state", {"agent_state": "idle"}),
        ])
        for event in appended:
            built = Event.build(event.seq, event.stream, event.type, event.data, ts=event.ts,
                                turn=event.turn, lane=event.lane)
            assert event.raw == built.raw
            assert event.envelope == orjson.loads(event.raw)
        await eventually_async(lambda: len(seen) == 3, what="live events")
        stored = await other.read("konsole/a", 0, 10)
        assert [e.raw for e in stored] == [e.raw for e in seen] == [e.raw for e in appended]
        assert [(e.seq, e.stream, e.type) for e in stored] == [(1, "konsole/a", "text.delta"),
                                                             (2, "konsole/a", "turn.completed"),
                                                             (3, "konsole/a", "state")]
        assert [e.seq for e in await other.read("konsole/a", 1, 1)] == [2]
        assert await other.read("konsole/a", 3, 10) == []
        assert await other.read("nothing", 0, 10) == []
        await writer.close()
        await other.close()

    run(main())


def test_docs_streams_and_batches_over_many_streams(redis_url: str) -> None:
    async def main() -> None:
        journal = await started(redis_url)
        events = await journal.append_many([
            Append("tasks", "task.created", {"n": 1}, doc=Doc("task", "b", {"id": "b", "n": 1})),
            Append("konsole/x", "turn.started", {}, doc=Doc("session", "x", {"name": "x"})),
            Append("tasks", "task.created", {"n": 2}, doc=Doc("task", "a", {"id": "a", "n": 2})),
            Append("konsole/y", "turn.started", {}),
            Append("tasks", "task.updated", {"n": 3}, doc=Doc("task", "b", {"id": "b", "n": 3})),
        ])
        assert [(e.stream, e.seq) for e in events] == [
            ("tasks", 1), ("konsole/x", 1), ("tasks", 2), ("konsole/y", 1), ("tasks", 3)]
        assert await journal.get_doc("task", "b") == {"id": "b", "n": 3}
        assert await journal.list_docs("task") == [{"id": "a", "n": 2}, {"id": "b", "n": 3}]
        assert await journal.list_docs("session") == [{"name": "x"}]
        await journal.append(Append("tasks", "task.deleted", {"id": "b"}, doc=Doc("task", "b", None)))
        assert await journal.get_doc("task", "b") is None
        assert await journal.get_doc("nothing", "b") is None
        assert await journal.list_docs("task") == [{"id": "a", "n": 2}]
        assert await journal.streams("konsole/") == ["konsole/x", "konsole/y"]
        assert await journal.streams("") == ["konsole/x", "konsole/y", "tasks"]
        # One call bigger than a script's share still lands as one contiguous run.
        big = await journal.append_many(items("big", 2500))
        assert [e.seq for e in big] == list(range(1, 2501))
        assert [e.seq for e in await journal.read("big", 0, 5000)] == list(range(1, 2501))
        await journal.close()

    run(main())


def test_key_prefix_keeps_journals_apart(redis_server: RedisServer) -> None:
    async def main() -> None:
        one = await started(f"{redis_server.url}?prefix=one:")
        two = open_journal(f"{redis_server.url}?prefix=two:")
        assert isinstance(two, RedisJournal)
        await two.start()
        await one.append_many(items("s", 3))
        await two.append(Append("s", "e", {}))
        assert (await one.position("s")).head == 3
        assert (await two.position("s")).head == 1
        await one.close()
        await two.close()

    run(main())


def test_group_commit_keeps_submission_order(redis_url: str) -> None:
    async def main() -> None:
        journal = await started(redis_url)
        results = await asyncio.gather(*(journal.append(Append("s", "e", {"i": i})) for i in range(300)))
        assert [e.seq for e in results] == list(range(1, 301))
        assert [e.data["i"] for e in await journal.read("s", 0, 1000)] == list(range(300))
        await journal.close()

    run(main())


def test_script_reloaded_after_script_flush(redis_server: RedisServer, redis_url: str) -> None:
    async def main() -> None:
        journal = await started(redis_url)
        await journal.append(Append("s", "e", {}))
        assert redis_server.command("SCRIPT", "FLUSH") == b"+OK"
        assert (await journal.append(Append("s", "e", {}))).seq == 2
        await journal.close()

    run(main())


def test_redis_journal_has_every_method_of_the_protocol(redis_url: str) -> None:
    journal: Journal = RedisJournal(redis_url)  # and mypy checks the signatures
    missing = [name for name, value in vars(Journal).items()
               if callable(value) and not name.startswith("_") and not callable(getattr(journal, name, None))]
    assert missing == []


def test_leases_are_exclusive_across_instances_and_expire(redis_url: str) -> None:
    async def main() -> None:
        nodes = [await started(redis_url) for _ in range(6)]
        a, b = nodes[:2]
        won = await asyncio.gather(*(node.lease("turn:race", f"node-{n}", 5) for n, node in enumerate(nodes)))
        assert won.count(True) == 1
        assert await a.lease("turn:1", "node-a", 5)
        assert not await b.lease("turn:1", "node-b", 5)
        assert await a.lease("turn:1", "node-a", 5)  # the owner renews
        await b.release("turn:1", "node-b")  # not the owner: nothing happens
        assert not await b.lease("turn:1", "node-b", 5)
        await a.release("turn:1", "node-a")
        assert await b.lease("turn:1", "node-b", 0.2)
        assert not await a.lease("turn:1", "node-a", 5)
        await asyncio.sleep(0.3)
        assert await a.lease("turn:1", "node-a", 5)  # b's lease expired by itself
        for node in nodes:
            await node.close()

    run(main())


# -- many writers ---------------------------------------------------------------------------------------


def test_concurrent_instances_never_share_or_skip_a_seq(redis_url: str) -> None:
    async def main() -> None:
        nodes = [await started(redis_url) for _ in range(4)]

        async def write(node: int, journal: RedisJournal) -> list[Event]:
            done: list[Event] = []
            for i in range(60):
                batch = [Append("shared", "e", {"node": node, "i": len(done) + k}) for k in range(1 + i % 4)]
                done += await journal.append_many(batch) if len(batch) > 1 else [await journal.append(batch[0])]
            return done

        results = await asyncio.gather(*(write(n, journal) for n, journal in enumerate(nodes)))
        total = sum(len(r) for r in results)
        stored = await nodes[0].read("shared", 0, 10_000)
        assert [e.seq for e in stored] == list(range(1, total + 1))
        assert sorted(e.seq for r in results for e in r) == list(range(1, total + 1))
        for node, appended in enumerate(results):
            mine = [e.data["i"] for e in stored if e.data["node"] == node]
            assert mine == list(range(len(appended)))  # one caller's appends keep their order
        by_seq = {e.seq: e.raw for e in stored}
        assert all(by_seq[e.seq] == e.raw for r in results for e in r)
        assert (await nodes[3].position("shared")).head == total
        for journal in nodes:
            await journal.close()

    run(main())


_WRITER = textwrap.dedent("""
    import asyncio, sys
    from agentwire.journal.redis import RedisJournal
    from agentwire.types import Append

    async def main(url, worker, n):
        journal = RedisJournal(url)
        await journal.start()
        done = 0
        while done < n:
            size = min(1 + done % 7, n - done)
            await journal.append_many(
                [Append("shared", "e", {"worker": worker, "i": done + k}) for k in range(size)])
            done += size
        await journal.close()

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
""")


def test_concurrent_processes_never_share_or_skip_a_seq(redis_url: str) -> None:
    workers, per_worker = 4, 1500
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, redis_url, str(w), str(per_worker)])
             for w in range(workers)]
    assert [proc.wait(120) for proc in procs] == [0] * workers

    async def main() -> None:
        journal = await started(redis_url)
        stored = await journal.read("shared", 0, 100_000)
        assert [e.seq for e in stored] == list(range(1, workers * per_worker + 1))
        for w in range(workers):
            assert [e.data["i"] for e in stored if e.data["worker"] == w] == list(range(per_worker))
        # The writers interleaved (they ran at the same time), or this test proved little.
        runs = sum(1 for a, b in itertools.pairwise(stored) if a.data["worker"] != b.data["worker"])
        assert runs > workers
        await journal.close()

    run(main())
