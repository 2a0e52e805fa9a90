"""The journal contract (journal/__init__.py), run against every backend: reading and positions,
retention, documents written with their events, epochs across restarts, and the backend a URL picks
(backends: tests/support/journal_backends.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from agentwire.journal import open_journal
from agentwire.journal.memory import MemoryJournal
from agentwire.journal.sqlite import SqliteJournal, sqlite_path
from agentwire.types import Append, Doc, Event
from tests.support.journal_backends import Backend, item, run

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
