from __future__ import annotations

import asyncio
import os
import secrets
import sqlite3
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson

from agentwire.journal import AppendsOne, Listener, pass_on
from agentwire.journal.group_commit import GroupCommit, Pending
from agentwire.journal.leases import LocalLeases
from agentwire.types import JSON, Append, Event, StreamPosition, Unavailable, envelope_tail, now_ms

# Events are stored in batches: the events one transaction appended to one stream, as one row (their
# envelopes back to back in `raw`, and `spans`: a JSON list of [type, offset, length] per event, so
# the row's first event has seq `first` and its last `last`). One row per batch instead of one per
# event is most of what a turn streaming thousands of deltas costs the writer. The `events` view
# lists them one per event, for anyone looking into the file with plain SQL.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
  name TEXT PRIMARY KEY, epoch TEXT NOT NULL, first INTEGER NOT NULL, head INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
  stream TEXT NOT NULL, last INTEGER NOT NULL, first INTEGER NOT NULL, spans TEXT NOT NULL, raw BLOB NOT NULL,
  PRIMARY KEY (stream, last)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS docs (
  kind TEXT NOT NULL, id TEXT NOT NULL, body BLOB NOT NULL, PRIMARY KEY (kind, id)
) WITHOUT ROWID;
"""

_EVENTS_VIEW = """
CREATE VIEW IF NOT EXISTS events (stream, seq, type, raw) AS
  SELECT b.stream, b.first + s.key, json_extract(s.value, '$[0]'),
         substr(b.raw, json_extract(s.value, '$[1]') + 1, json_extract(s.value, '$[2]'))
  FROM batches AS b JOIN streams AS t ON t.name = b.stream, json_each(b.spans) AS s
  WHERE b.first + s.key >= t.first
"""

# A batch row holds at most this many events, so a reader asking for a page from inside a long batch
# does not decode far more than the page.
ROW_EVENTS = 256

_Items = Sequence[tuple[Append, bytes]]  # what one caller appends: each item with its envelope's tail
_Batch = Pending[_Items]


@dataclass(slots=True)
class _Row:
    """A batch row being built: one stream's events of one transaction (up to ROW_EVENTS)."""

    stream: str
    first: int
    spans: list[tuple[str, int, int]] = field(default_factory=list)
    raws: list[bytes] = field(default_factory=list)
    size: int = 0


@dataclass(slots=True)
class _Written:
    """What a transaction stored: its events in order and the heads of the streams it touched."""

    events: list[Event]
    heads: dict[str, tuple[str, int, int]]


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


class SqliteJournal(AppendsOne, LocalLeases):
    """The embedded default: one file, WAL, one writer thread with group commit.

    Appends queue up while a transaction is being written and go into the next one together, so an
    idle journal commits each append at once and a busy one commits hundreds per transaction.
    Seqs are given out by the writer from heads it loaded at start; one process owns the file.

    The cached heads move on the event loop, after the commit and right before the listener is
    called, and reads stop at them: `read` and `position` never show an event the listener has not
    been handed yet, so no client can hold a seq past the head a reconnect is checked against.
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
        self._writes: GroupCommit[_Items] = GroupCommit(self._commit)
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
        _migrate(conn)
        conn.execute(_EVENTS_VIEW)
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

    async def append_many(self, items: Sequence[Append]) -> list[Event]:
        if self._writes.closed:
            raise Unavailable("journal is closed")
        # Encoded here, so data that cannot be encoded fails its own caller and no transaction.
        ts = now_ms()
        return await self._writes.submit(
            [(item, envelope_tail(item.stream, item.type, item.data, ts, item.turn, item.lane)) for item in items])

    async def _commit(self, batch: _Batch) -> None:
        try:
            written: _Written = await self._run_write(self._write_batch, [items for items, _ in batch])
        except Exception as exc:  # nothing of the batch was committed
            if len(batch) > 1:
                # Group commit must not let one caller's bad batch fail the others it happened to
                # share a transaction with: commit each on its own.
                for entry in batch:
                    await self._commit([entry])
                return
            for _, future in batch:
                if not future.done():
                    future.set_exception(Unavailable(f"journal write failed: {exc}"))
            return
        # Stored: only now may anyone see the events (the listener is the path to subscribers, the
        # heads are what reads stop at). No await between the two: no reader comes in between.
        self._heads.update(written.heads)
        pass_on(self._listener, written.events)
        events = written.events
        offset = 0
        for items, future in batch:
            if not future.done():
                future.set_result(events[offset : offset + len(items)])
            offset += len(items)

    def _write_batch(self, batches: list[_Items]) -> _Written:
        """In the writer thread: give out seqs from the cached heads and store one transaction."""
        cached = self._heads
        heads: dict[str, tuple[str, int, int]] = {}
        events: list[Event] = []
        rows: dict[str, _Row] = {}
        full: list[_Row] = []
        docs_put: list[tuple[str, str, bytes]] = []
        docs_del: list[tuple[str, str]] = []
        for items in batches:
            for item, tail in items:
                name = item.stream
                epoch, first, head = heads.get(name) or cached.get(name) or (self._epoch, 1, 0)
                seq = head + 1
                heads[name] = (epoch, first, seq)
                event = Event.sealed(seq, name, item.type, tail, item.turn, item.lane, item.data)
                events.append(event)
                row = rows.get(name)
                if row is None or len(row.spans) >= ROW_EVENTS:
                    if row is not None:
                        full.append(row)
                    row = rows[name] = _Row(name, seq)
                raw = event.raw
                row.spans.append((item.type, row.size, len(raw)))
                row.raws.append(raw)
                row.size += len(raw)
                if item.doc is not None:
                    if item.doc.body is None:
                        docs_del.append((item.doc.kind, item.doc.id))
                    else:
                        docs_put.append((item.doc.kind, item.doc.id, orjson.dumps(item.doc.body)))
        full.extend(rows.values())
        trims: list[tuple[str, int]] = []
        if self._retention:
            for name, (epoch, first, head) in heads.items():
                # Trim in steps of a tenth, not per event, so a busy stream does not delete every commit.
                if head - first + 1 > self._retention + max(1, self._retention // 10):
                    first = head - self._retention + 1
                    heads[name] = (epoch, first, head)
                    trims.append((name, first))
        self._store(
            [(row.stream, row.first + len(row.spans) - 1, row.first, orjson.dumps(row.spans), b"".join(row.raws))
             for row in full],
            trims, [(name, *head) for name, head in heads.items()], docs_put, docs_del)
        return _Written(events, heads)

    def _store(self, rows: list[tuple[str, int, int, bytes, bytes]], trims: list[tuple[str, int]],
               streams: list[tuple[str, str, int, int]], docs_put: list[tuple[str, str, bytes]],
               docs_del: list[tuple[str, str]]) -> None:
        """One transaction: all of it is stored, or (raising) none of it."""
        conn = self._write_conn
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("INSERT INTO batches (stream, last, first, spans, raw) VALUES (?, ?, ?, ?, ?)", rows)
            for name, first in trims:
                # A row reaching past `first` stays; reads and the view skip its trimmed events.
                conn.execute("DELETE FROM batches WHERE stream = ? AND last < ?", (name, first))
            conn.executemany(
                "INSERT INTO streams (name, epoch, first, head) VALUES (?, ?, ?, ?) ON CONFLICT(name) "
                "DO UPDATE SET first = excluded.first, head = excluded.head", streams)
            if docs_put:
                conn.executemany("INSERT OR REPLACE INTO docs (kind, id, body) VALUES (?, ?, ?)", docs_put)
            if docs_del:
                conn.executemany("DELETE FROM docs WHERE kind = ? AND id = ?", docs_del)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def read(self, stream: str, after: int, limit: int) -> list[Event]:
        # Up to the head as the loop knows it now: rows a commit under way has stored are not shown
        # before the listener has had them (see the class docstring).
        found = self._heads.get(stream)
        if found is None or limit <= 0 or after >= found[2]:
            return []
        _, first, head = found
        rows: list[tuple[int, str, bytes]] = await self._run_read(
            self._read_rows, stream, max(after, first - 1), min(limit, head - after), head)
        return [Event(seq, stream, type_, raw) for seq, type_, raw in rows]

    def _read_rows(self, stream: str, after: int, limit: int, head: int) -> list[tuple[int, str, bytes]]:
        found: list[tuple[int, str, bytes]] = []
        cursor = self._reader().execute(
            "SELECT first, spans, raw FROM batches WHERE stream = ? AND last > ? ORDER BY last", (stream, after))
        try:
            for first, spans, raw in cursor:
                seq = max(first, after + 1)
                for type_, offset, length in orjson.loads(spans)[seq - first :]:
                    if seq > head or len(found) >= limit:
                        return found
                    found.append((seq, type_, raw[offset : offset + length]))
                    seq += 1
                if len(found) >= limit:
                    return found
            return found
        finally:
            cursor.close()  # an unfinished statement would hold its read transaction open

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


def _migrate(conn: sqlite3.Connection) -> None:
    """A file written before events were stored in batches has an `events` table: its events become
    batches of one, in one transaction."""
    kind = conn.execute("SELECT type FROM sqlite_master WHERE name = 'events'").fetchone()
    if kind is None or kind[0] != "table":
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for stream, seq, type_, raw in conn.execute("SELECT stream, seq, type, raw FROM events").fetchall():
            conn.execute("INSERT INTO batches (stream, last, first, spans, raw) VALUES (?, ?, ?, ?, ?)",
                         (stream, seq, seq, orjson.dumps([(type_, 0, len(raw))]), bytes(raw)))
        conn.execute("DROP TABLE events")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
