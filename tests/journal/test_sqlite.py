"""What only the SQLite journal has: batches stored as rows, what reads see while a commit is under
way, the `events` view, and files written before batches."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import orjson

from agentwire.journal.sqlite import ROW_EVENTS, SqliteJournal
from agentwire.types import Append, Event


class _PausedAfterCommit(SqliteJournal):
    """Stops its writer thread right after a transaction committed, before the event loop has heard
    of it: the moment a thread switch could always fall into, held open for the test."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.committed = threading.Event()
        self.go_on = threading.Event()
        self.pause = False

    def _store(self, *args: object) -> None:
        super()._store(*args)  # type: ignore[arg-type]
        if self.pause:
            self.committed.set()
            self.go_on.wait(10)


def test_reads_never_pass_the_head_while_a_commit_is_being_handed_on(tmp_path: Path) -> None:
    """The flaky `ahead_of_head` of the resume property test: a read came through between the COMMIT
    and the heads moving, handed a client a seq its reconnect was then refused for. Here the writer
    is held in that moment: everything read must be within the head `position` gives."""

    async def main() -> None:
        journal = _PausedAfterCommit(f"sqlite:///{tmp_path}/j.db")
        delivered: list[int] = []
        journal.set_listener(lambda event: delivered.append(event.seq))
        await journal.start()
        try:
            await journal.append(Append("s", "e", {"n": 1}))
            journal.pause = True
            appending = asyncio.create_task(journal.append(Append("s", "e", {"n": 2})))
            assert await asyncio.to_thread(journal.committed.wait, 10)
            # Row 2 is committed in the file; the loop has not passed it on yet.
            with sqlite3.connect(tmp_path / "j.db") as conn:
                assert conn.execute("SELECT max(seq) FROM events WHERE stream = 's'").fetchone() == (2,)
            read = await journal.read("s", 0, 100)
            position = await journal.position("s")
            assert [event.seq for event in read] == [1]
            assert position.head == 1
            assert delivered == [1]
            journal.go_on.set()
            await appending
            assert [event.seq for event in await journal.read("s", 0, 100)] == [1, 2]
            assert (await journal.position("s")).head == 2 and delivered == [1, 2]
        finally:
            journal.go_on.set()
            await journal.close()

    asyncio.run(main())


def test_a_batch_is_rows_and_reads_start_at_any_seq_inside_it(tmp_path: Path) -> None:
    count = ROW_EVENTS * 2 + 17

    async def main() -> list[Event]:
        journal = SqliteJournal(f"sqlite:///{tmp_path}/j.db")
        await journal.start()
        try:
            appended = await journal.append_many([Append("s", f"t{i % 3}", {"i": i}) for i in range(count)])
            assert [event.seq for event in appended] == list(range(1, count + 1))
            for after in (0, 1, ROW_EVENTS - 1, ROW_EVENTS, ROW_EVENTS + 1, count - 1, count):
                for limit in (1, 5, 1000):
                    page = await journal.read("s", after, limit)
                    expected = appended[after : after + limit]
                    assert [(e.seq, e.type, e.raw) for e in page] == [(e.seq, e.type, e.raw) for e in expected]
            return appended
        finally:
            await journal.close()

    appended = asyncio.run(main())
    with sqlite3.connect(tmp_path / "j.db") as conn:
        rows = conn.execute("SELECT first, last FROM batches WHERE stream = 's' ORDER BY last").fetchall()
        assert rows == [(1, ROW_EVENTS), (ROW_EVENTS + 1, 2 * ROW_EVENTS), (2 * ROW_EVENTS + 1, count)]
        # The view shows the same events, byte for byte, one per row.
        viewed = conn.execute("SELECT seq, type, raw FROM events WHERE stream = 's' ORDER BY seq").fetchall()
    assert viewed == [(e.seq, e.type, e.raw) for e in appended]
    assert orjson.loads(appended[5].raw)["data"] == {"i": 5}


def test_a_file_with_an_events_table_is_read_as_before(tmp_path: Path) -> None:
    """A journal file from before batches: its events, seqs and heads carry on."""
    path = tmp_path / "old.db"
    raws = [b'{"seq":%d,"stream":"s","type":"e","ts":1,"data":{"n":%d}}' % (seq, seq) for seq in (1, 2, 3)]
    with sqlite3.connect(path) as conn:
        conn.executescript("""
            CREATE TABLE streams (name TEXT PRIMARY KEY, epoch TEXT NOT NULL, first INTEGER NOT NULL,
                                  head INTEGER NOT NULL);
            CREATE TABLE events (stream TEXT NOT NULL, seq INTEGER NOT NULL, type TEXT NOT NULL, raw BLOB NOT NULL,
                                 PRIMARY KEY (stream, seq)) WITHOUT ROWID;
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            INSERT INTO meta VALUES ('epoch', 'old0epoch');
            INSERT INTO streams VALUES ('s', 'old0epoch', 1, 3);
        """)
        conn.executemany("INSERT INTO events VALUES ('s', ?, 'e', ?)", [(i + 1, raw) for i, raw in enumerate(raws)])

    async def main() -> None:
        journal = SqliteJournal(f"sqlite:///{path}")
        await journal.start()
        try:
            assert [event.raw for event in await journal.read("s", 0, 10)] == raws
            assert [event.raw for event in await journal.read("s", 2, 10)] == raws[2:]
            position = await journal.position("s")
            assert (position.epoch, position.first, position.head) == ("old0epoch", 1, 3)
            assert (await journal.append(Append("s", "e", {"n": 4}))).seq == 4
        finally:
            await journal.close()

    asyncio.run(main())
