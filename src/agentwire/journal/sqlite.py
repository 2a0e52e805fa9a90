from __future__ import annotations

import asyncio
import os
import secrets
import sqlite3
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from agentwire.journal import Listener, pass_on
from agentwire.journal.group_commit import GroupCommit, Pending
from agentwire.journal.leases import LocalLeases
from agentwire.types import JSON, Append, Event, StreamPosition, Unavailable

_SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
  name TEXT PRIMARY KEY, epoch TEXT NOT NULL, first INTEGER NOT NULL, head INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
  stream TEXT NOT NULL, seq INTEGER NOT NULL, type TEXT NOT NULL, raw BLOB NOT NULL,
  PRIMARY KEY (stream, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS docs (
  kind TEXT NOT NULL, id TEXT NOT NULL, body BLOB NOT NULL, PRIMARY KEY (kind, id)
) WITHOUT ROWID;
"""

_Batch = Pending[Sequence[Append]]


def sqlite_path(url: str) -> str:
    """`sqlite:///rel/path.db` is relative, `sqlite:////abs/path.db` absolute (SQLAlchemy's rule)."""
    if not url.startswith("sqlite:///") or len(url) == len("sqlite:///"):
        raise ValueError(f"bad SQLite journal URL {url!r}: use sqlite:///path/to/file.db")
    return url[len("sqlite:///") :]


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode: a committed transaction survives the process being killed (the OS holds
    # the WAL pages); only a power loss could drop the last commits. fsync per batch is the price
    # of FULL and buys nothing against the failure this journal guards (a dying server process).
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


class SqliteJournal(LocalLeases):
    """The embedded default: one file, WAL, one writer thread with group commit.

    Appends queue up while a transaction is being written and go into the next one together, so an
    idle journal commits each append at once and a busy one commits hundreds per transaction.
    Seqs are given out by the writer from heads it loaded at start; one process owns the file.
    """

    def __init__(self, url: str, *, retention: int = 0) -> None:
        super().__init__()
        self.url = url
        self._path = sqlite_path(url)
        self._retention = retention
        self._listener: Listener | None = None
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="journal-writer")
        self._readers = ThreadPoolExecutor(2, thread_name_prefix="journal-reader")
        self._local = threading.local()
        self._write_conn: sqlite3.Connection | None = None
        self._heads: dict[str, tuple[str, int, int]] = {}  # name -> (epoch, first, head), committed
        self._writes: GroupCommit[Sequence[Append]] = GroupCommit(self._commit)
        self._epoch = ""

    async def start(self) -> None:
        if os.path.dirname(self._path):
            os.makedirs(os.path.dirname(self._path), exist_ok=True)
        await self._run_write(self._open)
        self._writes.start()

    def _open(self) -> None:
        conn = _connect(self._path)
        conn.executescript(_SCHEMA)
        self._write_conn = conn
        # The file's epoch is made once, with the file: a wiped or replaced file gets a new one, so
        # a client holding positions from the old file is told to reload instead of being trusted.
        conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('epoch', ?)", (secrets.token_hex(8),))
        self._epoch = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0]
        for name, epoch, first, head in conn.execute("SELECT name, epoch, first, head FROM streams"):
            self._heads[name] = (epoch, first, head)

    async def close(self) -> None:
        await self._writes.close()
        if self._write_conn is not None:
            await self._run_write(self._write_conn.close)
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)

    def set_listener(self, listener: Listener) -> None:
        self._listener = listener

    async def _run_write(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._writer, fn, *args)

    async def _run_read(self, fn: Any, *args: Any) -> Any:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._readers, fn, *args)
        except sqlite3.Error as exc:
            raise Unavailable(f"journal read failed: {exc}") from exc

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = _connect(self._path)
        return conn

    async def append(self, item: Append) -> Event:
        return (await self.append_many([item]))[0]

    async def append_many(self, items: Sequence[Append]) -> list[Event]:
        if self._writes.closed:
            raise Unavailable("journal is closed")
        return await self._writes.submit(items)

    async def _commit(self, batch: _Batch) -> None:
        try:
            events: list[Event] = await self._run_write(self._write_batch, [items for items, _ in batch])
        except Exception as exc:  # nothing of the batch was committed
            if len(batch) > 1:
                # Group commit must not let one caller's bad batch (say, data that cannot be encoded)
                # fail the others it happened to share a transaction with: commit each on its own.
                for entry in batch:
                    await self._commit([entry])
                return
            for _, future in batch:
                if not future.done():
                    future.set_exception(Unavailable(f"journal write failed: {exc}"))
            return
        # Stored: only now may anyone see the events (the listener is the path to subscribers).
        pass_on(self._listener, events)
        offset = 0
        for items, future in batch:
            if not future.done():
                future.set_result(events[offset : offset + len(items)])
            offset += len(items)

    def _write_batch(self, batches: list[Sequence[Append]]) -> list[Event]:
        conn = self._write_conn
        assert conn is not None
        heads = dict(self._heads)
        events: list[Event] = []
        rows: list[tuple[str, int, str, bytes]] = []
        docs_put: list[tuple[str, str, bytes]] = []
        docs_del: list[tuple[str, str]] = []
        for items in batches:
            for item in items:
                epoch, first, head = heads.get(item.stream) or (self._epoch, 1, 0)
                event = Event.build(head + 1, item.stream, item.type, item.data, turn=item.turn, lane=item.lane)
                heads[item.stream] = (epoch, first, head + 1)
                events.append(event)
                rows.append((item.stream, event.seq, event.type, event.raw))
                if item.doc is not None:
                    if item.doc.body is None:
                        docs_del.append((item.doc.kind, item.doc.id))
                    else:
                        docs_put.append((item.doc.kind, item.doc.id, orjson.dumps(item.doc.body)))
        touched = {event.stream for event in events}
        trims: list[tuple[str, int]] = []
        if self._retention:
            for name in touched:
                epoch, first, head = heads[name]
                # Trim in steps of a tenth, not per event, so a busy stream does not delete every commit.
                if head - first + 1 > self._retention + max(1, self._retention // 10):
                    first = head - self._retention + 1
                    heads[name] = (epoch, first, head)
                    trims.append((name, first))
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("INSERT INTO events (stream, seq, type, raw) VALUES (?, ?, ?, ?)", rows)
            for name, first in trims:
                conn.execute("DELETE FROM events WHERE stream = ? AND seq < ?", (name, first))
            conn.executemany(
                "INSERT INTO streams (name, epoch, first, head) VALUES (?, ?, ?, ?) ON CONFLICT(name) "
                "DO UPDATE SET first = excluded.first, head = excluded.head",
                [(name, *heads[name]) for name in touched],
            )
            if docs_put:
                conn.executemany("INSERT OR REPLACE INTO docs (kind, id, body) VALUES (?, ?, ?)", docs_put)
            if docs_del:
                conn.executemany("DELETE FROM docs WHERE kind = ? AND id = ?", docs_del)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._heads = heads
        return events

    async def read(self, stream: str, after: int, limit: int) -> list[Event]:
        rows: list[tuple[int, str, bytes]] = await self._run_read(self._read_rows, stream, after, limit)
        return [Event(seq, stream, type_, raw) for seq, type_, raw in rows]

    def _read_rows(self, stream: str, after: int, limit: int) -> list[tuple[int, str, bytes]]:
        return self._reader().execute(
            "SELECT seq, type, raw FROM events WHERE stream = ? AND seq > ? ORDER BY seq LIMIT ?",
            (stream, after, limit),
        ).fetchall()

    async def position(self, stream: str) -> StreamPosition:
        found = self._heads.get(stream)
        if found is None:
            return StreamPosition(self._epoch, 1, 0)
        epoch, first, head = found
        return StreamPosition(epoch, first, head)

    async def streams(self, prefix: str) -> list[str]:
        return sorted(name for name in self._heads if name.startswith(prefix))

    async def get_doc(self, kind: str, id: str) -> JSON | None:
        row = await self._run_read(
            lambda: self._reader().execute("SELECT body FROM docs WHERE kind = ? AND id = ?", (kind, id)).fetchone()
        )
        return None if row is None else orjson.loads(row[0])  # type: ignore[no-any-return]

    async def list_docs(self, kind: str) -> list[JSON]:
        rows = await self._run_read(
            lambda: self._reader().execute("SELECT body FROM docs WHERE kind = ?", (kind,)).fetchall()
        )
        return [orjson.loads(body) for (body,) in rows]

    async def watch(self, stream: str) -> int:
        found = self._heads.get(stream)
        return found[2] if found else 0

    async def unwatch(self, stream: str) -> None:
        pass

    async def ping(self) -> None:
        await self._run_read(lambda: self._reader().execute("SELECT 1").fetchone())
