"""Every journal backend, for the contract tests: how to open one at a place and how to look into its
store synchronously (bypassing the journal's own API, so a test can tell "stored" from "passed to the
listener"). The `backend` fixture (one parameter per backend) and `journal_at` are offered to every test
by the root conftest.py."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest

from agentwire.journal import Journal
from agentwire.journal.memory import MemoryJournal
from agentwire.journal.sqlite import SqliteJournal, sqlite_path
from agentwire.types import Append

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
