"""The journal contract (journal/__init__.py), run against every backend.

Each backend is one entry in BACKENDS: how to open a journal at a place (a test's tmp_path; the same
place opens the same store again) and how to look into its store synchronously, bypassing the
journal's own API, so the tests can tell "stored" from "passed to the listener".
"""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest

from agentwire.journal import Journal, open_journal
from agentwire.journal.memory import MemoryJournal
from agentwire.journal.sqlite import SqliteJournal, sqlite_path
from agentwire.types import Append, Doc, Event, now_ms

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@dataclass(frozen=True)
class Backend:
    name: str
    open: Callable[[Path, int], Journal]  # (where, retention) → a journal, not started
    persistent: bool  # opening the same place again finds what was stored
    stored: Callable[[Journal, str], list[int]]  # seqs in the store for a stream, read synchronously
    stored_doc: Callable[[Journal, str, str], Any]  # a document in the store, read synchronously


def _memory_stored(journal: Journal, stream: str) -> list[int]:
    # The memory journal's store is its own lists: there is no other way to look at it.
    assert isinstance(journal, MemoryJournal)
    found = journal._streams.get(stream)
    return [event.seq for event in found.events] if found else []


def _memory_doc(journal: Journal, kind: str, id: str) -> Any:
    assert isinstance(journal, MemoryJournal)
    return journal._docs.get(kind, {}).get(id)


def _sqlite_query(journal: Journal, sql: str, *args: object) -> list[Any]:
    assert isinstance(journal, SqliteJournal)
    conn = sqlite3.connect(sqlite_path(journal.url))
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def _sqlite_stored(journal: Journal, stream: str) -> list[int]:
    return [seq for (seq,) in _sqlite_query(journal, "SELECT seq FROM events WHERE stream = ? ORDER BY seq", stream)]


def _sqlite_doc(journal: Journal, kind: str, id: str) -> Any:
    rows = _sqlite_query(journal, "SELECT body FROM docs WHERE kind = ? AND id = ?", kind, id)
    return orjson.loads(rows[0][0]) if rows else None


def _redis_open(where: Path, retention: int) -> Journal:
    from tests.support.redis_server import redis_journal_factory

    return redis_journal_factory(where, retention=retention)


def _redis_sync(journal: Journal) -> Any:
    import redis

    return redis.Redis.from_url(journal._redis_url)  # type: ignore[attr-defined]


def _redis_stored(journal: Journal, stream: str) -> list[int]:
    with _redis_sync(journal) as client:
        entries = client.xrange(journal._key("events:", stream))  # type: ignore[attr-defined]
    return [int(entry_id.split(b"-")[0]) for entry_id, _ in entries]


def _redis_doc(journal: Journal, kind: str, id: str) -> Any:
    with _redis_sync(journal) as client:
        body = client.hget(journal._key("docs:", kind), id)  # type: ignore[attr-defined]
    return None if body is None else orjson.loads(body)


BACKENDS = [
    pytest.param(Backend("memory", lambda where, retention: MemoryJournal("memory://", retention=retention),
                         False, _memory_stored, _memory_doc), id="memory"),
    pytest.param(Backend("sqlite", lambda where, retention: SqliteJournal(f"sqlite:///{where}/journal.db",
                                                                          retention=retention),
                         True, _sqlite_stored, _sqlite_doc), id="sqlite"),
    pytest.param(Backend("redis", _redis_open, True, _redis_stored, _redis_doc), id="redis",
                 marks=pytest.mark.redis),
]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    found: Backend = request.param
    return found




@pytest.fixture
def journal_at(backend: Backend, tmp_path: Path) -> Callable[..., Any]:
    """`async with journal_at(place=tmp_path, retention=0) as journal`: a started journal, closed after."""

    class _Opened:
        def __init__(self, where: Path, retention: int) -> None:
            self.journal = backend.open(where, retention)

        async def __aenter__(self) -> Journal:
            await self.journal.start()
            return self.journal

        async def __aexit__(self, *exc: object) -> None:
            await self.journal.close()

    def factory(where: Path | None = None, *, retention: int = 0) -> _Opened:
        return _Opened(where or tmp_path, retention)

    return factory


def item(stream: str = "s", n: int = 0, **data: Any) -> Append:
    return Append(stream, "test.event", {"n": n, **data})


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

    run(main())


# reading and positions


def test_read_after_and_limit(journal_at: Any) -> None:
    async def main() -> None:
        async with journal_at() as journal:
            await journal.append_many([item(n=n) for n in range(1, 31)])
            assert [e.seq for e in await journal.read("s", 10, 5)] == [11, 12, 13, 14, 15]
            assert [e.seq for e in await journal.read("s", 0, 3)] == [1, 2, 3]
            assert [e.seq for e in await journal.read("s", 28, 100)] == [29, 30]
            assert await journal.read("s", 30, 100) == []
            assert await journal.read("s", 500, 100) == []
            assert [e.data["n"] for e in await journal.read("s", 20, 1)] == [21]
            assert len(await journal.read("s", 0, 1000)) == 30

    run(main())


def test_position_of_empty_and_growing_streams(journal_at: Any) -> None:
    async def main() -> None:
        async with journal_at() as journal:
            empty = await journal.position("p")
            assert (empty.first, empty.head) == (1, 0)
            assert isinstance(empty.epoch, str) and empty.epoch
            await journal.append_many([item("p", n) for n in range(7)])
            grown = await journal.position("p")
            # A client that saw the empty stream must not be told its history was lost.
            assert (grown.epoch, grown.first, grown.head) == (empty.epoch, 1, 7)
            assert await journal.watch("p") == 7
            await journal.append(item("p", 8))
            assert (await journal.position("p")).head == 8

    run(main())


@pytest.mark.parametrize("retention", [1, 10, 50])
def test_retention_trims_the_oldest_and_moves_first(journal_at: Any, retention: int) -> None:
    async def main() -> None:
        async with journal_at(retention=retention) as journal:
            for n in range(0, 300, 7):  # batches of various sizes
                await journal.append_many([item("r", i) for i in range(n, min(n + 7, 300))])
            await journal.append(item("r", 300))
            await journal.append(item("other", 0))
            position = await journal.position("r")
            kept = await journal.read("r", 0, 10_000)
            assert position.head == 301
            assert position.first > 1, "nothing was trimmed"
            # At least `retention` kept, and not unboundedly more (a backend may trim in steps).
            assert retention <= position.head - position.first + 1 <= 2 * retention + 1
            assert [e.seq for e in kept] == list(range(position.first, position.head + 1))
            # Reading from before `first` starts at `first`: the jump is how a reader learns of the trim.
            assert (await journal.read("r", 0, 1))[0].seq == position.first
            assert (await journal.position("other")).first == 1

    run(main())


# documents


def test_docs_are_written_with_their_events(backend: Backend, journal_at: Any) -> None:
    async def main() -> None:
        async with journal_at() as journal:
            body = {"id": "t1", "title": "Ünïcode ✓", "tags": ["a"], "context": {"output": "<b>x</b>"}}
            event = await journal.append(Append("tasks", "task.created", {"task": body}, doc=Doc("task", "t1", body)))
            assert await journal.get_doc("task", "t1") == body
            assert backend.stored_doc(journal, "task", "t1") == body
            assert event.seq in backend.stored(journal, "tasks")
            other = {"id": "t2", "title": "two"}
            await journal.append_many([
                Append("tasks", "task.created", {"task": other}, doc=Doc("task", "t2", other)),
                Append("tasks", "task.updated", {"task": {**body, "title": "new"}},
                       doc=Doc("task", "t1", {**body, "title": "new"})),
            ])
            assert await journal.get_doc("task", "t1") == {**body, "title": "new"}
            assert sorted(doc["id"] for doc in await journal.list_docs("task")) == ["t1", "t2"]
            await journal.append(Append("tasks", "task.deleted", {"id": "t1"}, doc=Doc("task", "t1", None)))
            assert await journal.get_doc("task", "t1") is None
            assert backend.stored_doc(journal, "task", "t1") is None
            assert [doc["id"] for doc in await journal.list_docs("task")] == ["t2"]
            assert await journal.list_docs("session") == []
            assert await journal.get_doc("session", "t2") is None
            assert (await journal.position("tasks")).head == 4

    run(main())


def test_a_batch_that_cannot_be_stored_leaves_nothing_behind(backend: Backend, journal_at: Any) -> None:
    """append_many is all or nothing: a batch with an event that cannot be encoded stores neither its
    other events nor their documents, reaches no listener, and the stream's next seq is unchanged."""

    async def main() -> None:
        seen: list[Event] = []
        async with journal_at() as journal:
            journal.set_listener(seen.append)
            await journal.watch("b")
            await journal.append(item("b", 1))
            bad = Append("b", "bad", {"value": object()})
            with pytest.raises(Exception):  # noqa: B017 - which error is the backend's to choose
                await journal.append_many([
                    Append("b", "good", {"n": 2}, doc=Doc("thing", "half", {"v": 1})), bad])
            assert backend.stored(journal, "b") == [1]
            assert backend.stored_doc(journal, "thing", "half") is None
            assert await journal.get_doc("thing", "half") is None
            assert (await journal.position("b")).head == 1
            assert [e.seq for e in seen] == [1]
            after = await journal.append(item("b", 3))
            assert after.seq == 2
            assert [e.data["n"] for e in await journal.read("b", 0, 10)] == [1, 3]

    run(main())


def test_one_callers_bad_batch_does_not_fail_other_callers(journal_at: Any) -> None:
    """Backends that commit concurrent appends together must not make a good append fail because
    another caller's batch in the same commit could not be stored."""

    async def main() -> None:
        async with journal_at() as journal:
            await journal.append(item("g", 0))
            results = await asyncio.gather(
                *(journal.append(item("g", n)) for n in range(1, 6)),
                journal.append_many([Append("g", "bad", {"value": object()})]),
                *(journal.append(item("g", n)) for n in range(6, 11)),
                return_exceptions=True,
            )
            failures = [r for r in results if isinstance(r, BaseException)]
            assert len(failures) == 1, failures
            stored = await journal.read("g", 0, 100)
            assert [e.seq for e in stored] == list(range(1, 12))
            assert sorted(e.data["n"] for e in stored) == list(range(11))

    run(main())


# epochs across restarts


def test_epoch_and_heads_survive_reopening_the_same_store(backend: Backend, journal_at: Any, tmp_path: Path) -> None:
    async def main() -> None:
        async with journal_at(tmp_path / "one") as journal:
            await journal.append_many([item("e", n) for n in range(5)])
            await journal.append(Append("tasks", "task.created", {}, doc=Doc("task", "k", {"id": "k"})))
            first = await journal.position("e")
            raw = [event.raw for event in await journal.read("e", 0, 10)]
        async with journal_at(tmp_path / "one") as journal:
            again = await journal.position("e")
            if backend.persistent:
                assert again == first
                assert [event.raw for event in await journal.read("e", 0, 10)] == raw
                assert (await journal.append(item("e", 5))).seq == 6
                assert await journal.get_doc("task", "k") == {"id": "k"}
            else:
                # Lost with the process: a new epoch tells every client to reload.
                assert again.epoch != first.epoch and again.head == 0
        async with journal_at(tmp_path / "two") as journal:
            fresh = await journal.position("e")
            assert fresh.epoch != first.epoch
            assert (fresh.first, fresh.head) == (1, 0)
            assert (await journal.append(item("e", 0))).seq == 1

    run(main())


def test_ping_answers_on_a_started_journal(journal_at: Any) -> None:
    async def main() -> None:
        async with journal_at() as journal:
            await journal.ping()

    run(main())


# choosing a backend by URL


def test_open_journal_picks_the_backend_by_scheme(tmp_path: Path) -> None:
    assert isinstance(open_journal("memory://"), MemoryJournal)
    journal = open_journal(f"sqlite:///{tmp_path}/j.db", retention=5)
    assert isinstance(journal, SqliteJournal)
    assert journal._retention == 5
    with pytest.raises(ValueError, match="unknown journal URL"):
        open_journal("postgres://localhost/db")


def test_sqlite_url_paths() -> None:
    assert sqlite_path("sqlite:///data/x.db") == "data/x.db"
    assert sqlite_path("sqlite:////abs/x.db") == "/abs/x.db"
    for bad in ("sqlite:///", "sqlite://x.db", "file:///x.db"):
        with pytest.raises(ValueError, match="bad SQLite journal URL"):
            sqlite_path(bad)


def test_sqlite_journal_creates_its_directory_and_refuses_appends_once_closed(tmp_path: Path) -> None:
    from agentwire.types import Unavailable

    async def main() -> None:
        journal = SqliteJournal(f"sqlite:///{tmp_path}/deep/er/j.db")
        await journal.start()
        await journal.append(item())
        await journal.close()
        assert (tmp_path / "deep" / "er" / "j.db").is_file()
        with pytest.raises(Unavailable):
            await journal.append(item())

    run(main())
