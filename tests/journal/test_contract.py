"""The journal contract (journal/__init__.py), run against every backend: seqs and the listener.

Each backend is one entry in BACKENDS (tests/support/journal_backends.py): how to open a journal at a
place (a test's tmp_path; the same place opens the same store again) and how to look into its store
synchronously, bypassing the journal's own API, so the tests can tell "stored" from "passed to the
listener".
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import orjson
import pytest

from agentwire.journal import Journal
from agentwire.types import Append, Doc, Event, now_ms
from tests.support.journal_backends import Backend, item, run

# seqs


def test_seqs_rise_by_one_from_one_without_gaps(journal_at: Any) -> None:
    async def main() -> None:
        async with journal_at() as journal:
            before = now_ms()
            singles = [await journal.append(item(n=n)) for n in range(5)]
            many = await journal.append_many([item(n=n) for n in range(5, 25)])
            concurrent = await asyncio.gather(*(journal.append(item(n=n)) for n in range(25, 60)))
            events = [*singles, *many, *concurrent]
            assert sorted(event.seq for event in events) == list(range(1, 61))
            stored = await journal.read("s", 0, 1000)
            assert [event.seq for event in stored] == list(range(1, 61))
            by_seq = {event.seq: event for event in events}
            for event in stored:
                envelope = orjson.loads(event.raw)
                # What append returned is what read gives back, byte for byte.
                assert event.raw == by_seq[event.seq].raw
                assert envelope["seq"] == event.seq and envelope["stream"] == "s"
                assert envelope["type"] == event.type == "test.event"
                assert before - 1000 <= envelope["ts"] <= now_ms() + 1000
            # One caller's appends keep their order.
            assert [event.data["n"] for event in singles] == list(range(5))
            assert [event.data["n"] for event in many] == list(range(5, 25))
            assert [event.seq for event in many] == list(range(many[0].seq, many[0].seq + 20))
            assert (await journal.position("s")).head == 60

    run(main())


def test_concurrent_appends_never_share_or_skip_a_seq(journal_at: Any) -> None:
    async def main() -> None:
        async with journal_at() as journal:
            async def writer(w: int) -> list[Event]:
                return [await journal.append(item(n=w * 1000 + i)) for i in range(25)]

            results = await asyncio.gather(*(writer(w) for w in range(8)))
            seqs = [event.seq for events in results for event in events]
            assert sorted(seqs) == list(range(1, 201))
            for events in results:  # each writer's appends got rising seqs, in its order
                assert [event.seq for event in events] == sorted(event.seq for event in events)
            stored = await journal.read("s", 0, 1000)
            assert {event.data["n"] for event in stored} == {w * 1000 + i for w in range(8) for i in range(25)}

    run(main())


def test_streams_are_independent(journal_at: Any) -> None:
    async def main() -> None:
        async with journal_at() as journal:
            for n in range(10):
                await journal.append(item("konsole/a", n))
                if n % 2:
                    await journal.append(item("konsole/b", n))
            await journal.append_many([item("tasks", 1), item("konsole/a", 10), item("tasks", 2)])
            a = await journal.read("konsole/a", 0, 100)
            b = await journal.read("konsole/b", 0, 100)
            tasks = await journal.read("tasks", 0, 100)
            assert [event.seq for event in a] == list(range(1, 12))
            assert [event.data["n"] for event in a] == list(range(11))
            assert [event.seq for event in b] == [1, 2, 3, 4, 5]
            assert [event.data["n"] for event in b] == [1, 3, 5, 7, 9]
            assert [(event.seq, event.data["n"]) for event in tasks] == [(1, 1), (2, 2)]
            assert {event.stream for event in a} == {"konsole/a"}
            assert (await journal.position("konsole/b")).head == 5
            assert (await journal.position("konsole/none")).head == 0
            assert await journal.streams("konsole/") == ["konsole/a", "konsole/b"]
            assert await journal.streams("") == ["konsole/a", "konsole/b", "tasks"]
            assert await journal.read("konsole/none", 0, 10) == []

    run(main())


# the listener


def test_listener_sees_each_event_only_after_it_is_stored_and_in_order(backend: Backend, journal_at: Any) -> None:
    seen: list[tuple[str, int]] = []
    problems: list[str] = []
    journal: Journal | None = None  # the listener's view of the store, set once it is open

    def listener(event: Event) -> None:
        assert journal is not None
        seen.append((event.stream, event.seq))
        if event.seq not in backend.stored(journal, event.stream):
            problems.append(f"{event.stream}#{event.seq} reached the listener before the store")
        if event.data.get("doc") and backend.stored_doc(journal, "thing", event.data["doc"]) is None:
            problems.append(f"the document of {event.stream}#{event.seq} was not stored with it")

    async def main() -> None:
        nonlocal journal
        async with journal_at() as opened:
            journal = opened
            opened.set_listener(listener)
            await opened.watch("x")
            await opened.watch("y")
            await asyncio.gather(
                *(opened.append(item("x", n)) for n in range(30)),
                *(opened.append_many([item("y", n), item("x", 100 + n)]) for n in range(10)),
                opened.append(Append("y", "with.doc", {"doc": "d1"}, doc=Doc("thing", "d1", {"v": 1}))),
            )
            await opened.append(item("x", 999))

    run(main())
    assert problems == []
    for stream, count in (("x", 41), ("y", 11)):
        seqs = [seq for name, seq in seen if name == stream]
        # Every event exactly once, in seq order (this process made them all, so none is missed).
        assert seqs == list(range(1, count + 1)), stream


def test_a_listener_that_raises_stops_no_append(journal_at: Any, caplog: pytest.LogCaptureFixture) -> None:
    """The listener fails on some events: each append still returns at once with its events, every
    later append (alone, concurrent, batched with the failing one) does too, every event is stored,
    the listener keeps being called in order, and each failure is logged with its stream and seq."""
    seen: list[tuple[str, int]] = []
    raised: set[tuple[str, int]] = set()

    def listener(event: Event) -> None:
        seen.append((event.stream, event.seq))
        if event.data.get("boom"):
            raised.add((event.stream, event.seq))
            raise RuntimeError(f"listener bug at n={event.data['n']}")

    async def main() -> None:
        async with journal_at() as journal:
            journal.set_listener(listener)
            await journal.watch("x")
            await journal.watch("y")
            async with asyncio.timeout(10):  # a writer killed by the listener would hang here instead
                first = await journal.append(item("x", 0, boom=True))
                assert first.seq == 1
                later = [await journal.append(item("x", n)) for n in range(1, 4)]
                assert [event.seq for event in later] == [2, 3, 4]
                mixed = await asyncio.gather(
                    *(journal.append(item("x", n, boom=n % 3 == 0)) for n in range(4, 20)),
                    journal.append_many([item("y", 0, boom=True), item("y", 1), item("x", 20)]),
                )
                assert len(mixed) == 17
                last = await journal.append(item("y", 2))
                assert last.seq == 3
            assert [event.seq for event in await journal.read("x", 0, 100)] == list(range(1, 22))
            assert [event.seq for event in await journal.read("y", 0, 100)] == [1, 2, 3]

    with caplog.at_level(logging.ERROR, logger="agentwire.journal"):
        run(main())
    for stream, count in (("x", 21), ("y", 3)):
        assert [seq for name, seq in seen if name == stream] == list(range(1, count + 1)), stream
    assert {("x", 1), ("y", 1)} <= raised and len(raised) == 7  # x: n = 0, 6, 9, 12, 15, 18; y: n = 0
    failures = [_named(record.getMessage()) for record in caplog.records if record.exc_info is not None]
    assert sorted(failures) == sorted(raised)


def _named(message: str) -> tuple[str, int]:
    found = re.search(r"listener failed on (\S+) #(\d+)", message)
    assert found is not None, message
    return found.group(1), int(found.group(2))


def test_listener_gets_the_same_bytes_that_are_read_back(journal_at: Any) -> None:
    async def main() -> None:
        seen: list[Event] = []
        async with journal_at() as journal:
            journal.set_listener(seen.append)
            await journal.watch("u")
            data = {"text": "grüße 🔌 \"quoted\" \n newline <b>", "nested": {"list": [1, 2.5, None, True]}}
            returned = await journal.append(Append("u", "text.delta", data, turn="t_1", lane="quick"))
            [read] = await journal.read("u", 0, 10)
            assert [event.raw for event in seen] == [returned.raw] == [read.raw]
            envelope = orjson.loads(read.raw)
            assert envelope == {"seq": 1, "stream": "u", "type": "text.delta", "ts": envelope["ts"],
                                "turn": "t_1", "lane": "quick", "data": data}
            assert b"\n" not in read.raw  # compact JSON: one SSE data line is enough
            assert read.turn == "t_1" and read.lane == "quick" and read.data == data
            # The live event knows its turn and lane without decoding; they are the stored ones, and
            # an event without them says so (not "not read yet").
            assert (seen[0].turn, seen[0].lane) == (returned.turn, returned.lane) == ("t_1", "quick")
            await journal.watch("v")
            bare = await journal.append(Append("v", "e", {}))
            assert (bare.turn, bare.lane) == (None, None) and b'"turn"' not in bare.raw

    run(main())
