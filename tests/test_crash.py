"""Crash safety: `agentwire serve` (a real process, SQLite journal) is killed with SIGKILL while a long
turn streams and tasks are being created. After a restart on the same file, every event any client
had received is still there with the same seq and bytes, seqs continue without a gap, every task
whose creation was acknowledged exists, and the interrupted turn ends as `turn.failed
{"error": "interrupted"}` — which a client resuming with Last-Event-ID receives."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import httpx
import orjson

from tests.support.server import ServerProcess
from tests.support.sse import Follower, SseStream, envelope, of_type, seq_of

TOKEN = "crash-token"


def journal_rows(db: Path, stream: str) -> list[tuple[int, bytes]]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT seq, raw FROM events WHERE stream = ? ORDER BY seq", (stream,)).fetchall()
    finally:
        conn.close()
    return [(seq, bytes(raw)) for seq, raw in rows]


def received(follower: Follower) -> list[tuple[int, bytes]]:
    return [(seq_of(m), m.data.encode()) for m in follower.events]


def test_sigkill_while_appending_loses_nothing_any_client_saw(tmp_path: Path) -> None:
    db = tmp_path / "journal.db"
    server = ServerProcess(f"sqlite:///{db}", token=TOKEN, args=["--heartbeat", "0.5"],
                           log_path=tmp_path / "server.log")
    auth = server.headers
    server.start()
    followers: list[Follower] = []
    stop_creating = threading.Event()
    try:
        http = httpx.Client(base_url=server.url, headers=auth, timeout=30)
        http.post("/api/konsole", json={"name": "crash", "options": {"deltas": 150_000, "delay_ms": 1}}
                  ).raise_for_status()
        epoch_before = http.get("/api/konsole/crash/state").json()["epoch"]

        # Client 1: the turn's own POST response. Client 2: the session stream. Client 3: the board.
        turn_stream = SseStream(server.port, "/api/konsole/crash/stream", auth, method="POST",
                                body=orjson.dumps({"message": "a very long answer, please"}))
        assert turn_stream.read_headers() == 200
        turn = turn_stream.headers["x-agentwire-turn"]
        console = SseStream(server.port, "/api/konsole/crash/events", auth)
        board = SseStream(server.port, "/api/stream/tasks?from=1", auth)
        followers = [Follower(turn_stream), Follower(console), Follower(board)]
        for follower in followers:
            follower.start()

        # A writer creating tasks as fast as the server takes them, remembering every 201.
        acknowledged: dict[str, dict[str, Any]] = {}

        def create_tasks() -> None:
            with httpx.Client(base_url=server.url, headers=auth, timeout=10) as client:
                n = 0
                while not stop_creating.is_set():
                    try:
                        response = client.post("/api/tasks", json={"id": f"crash-{n}", "title": f"task {n}",
                                                                   "tags": ["crash"]})
                    except httpx.HTTPError:
                        return  # the server died under us: this one may or may not be stored
                    if response.status_code == 201:
                        acknowledged[f"crash-{n}"] = response.json()
                    n += 1

        creator = threading.Thread(target=create_tasks, daemon=True)
        creator.start()
        followers[1].wait_for(lambda events: len(events) >= 400)
        followers[2].wait_for(lambda events: len(events) >= 30)
        followers[0].wait_for(lambda events: len(events) >= 100)

        server.kill()  # SIGKILL, in the middle of it all
        stop_creating.set()
        creator.join(30)
        for follower in followers:
            follower.join(30)
            assert not follower.is_alive() and follower.error is None
            assert follower.stream.eof

        server.start()  # same port, same file
        # Nothing any client received was lost or changed: same seq, same bytes.
        stored = {"konsole/crash": dict(journal_rows(db, "konsole/crash")), "tasks": dict(journal_rows(db, "tasks"))}
        for follower, stream in zip(followers, ("konsole/crash", "konsole/crash", "tasks"), strict=True):
            got = received(follower)
            assert got, stream
            for seq, raw in got:
                assert stored[stream].get(seq) == raw, f"{stream}#{seq} differs after the crash"
        # Every task whose creation was acknowledged survived, as it was acknowledged.
        assert len(acknowledged) >= 30
        for task_id, body in acknowledged.items():
            response = http.get(f"/api/tasks/{task_id}")
            assert response.status_code == 200, task_id
            assert response.json() == body

        # Seqs continue without a gap: the journal is 1..head on both streams, and the interrupted
        # turn's end came right after the last event stored before the crash.
        for stream, rows in stored.items():
            assert list(rows) == list(range(1, len(rows) + 1)), stream
        console_rows = journal_rows(db, "konsole/crash")
        ends = [(seq, orjson.loads(raw)) for seq, raw in console_rows
                if orjson.loads(raw)["type"] in ("turn.completed", "turn.failed", "turn.cancelled")]
        assert len(ends) == 1
        end_seq, end = ends[0]
        assert end["type"] == "turn.failed" and end["data"]["error"] == "interrupted"
        assert end["turn"] == turn and end["lane"] == "main"
        assert end_seq == console_rows[-1][0]
        assert max(seq for seq, _ in received(followers[1])) < end_seq
        state = http.get("/api/konsole/crash/state").json()
        assert state["epoch"] == epoch_before  # the file's epoch: clients' positions stay valid
        assert state["running"] == [] and state["head"] == end_seq

        # The session client resumes where it was: exactly the rest, ending with the failure.
        last = followers[1].events[-1].id
        assert last is not None
        with SseStream(server.port, "/api/konsole/crash/events", {**auth, "Last-Event-ID": str(last)}) as resumed:
            resumed.read_until(of_type("turn.failed"))
            assert "stream.reset" not in [m.event for m in resumed.messages]
            rest = [(seq_of(m), m.data.encode()) for m in resumed.events]
            assert rest == [row for row in console_rows if row[0] > int(last)]
            assert envelope(resumed.messages[0])["data"]["epoch"] == epoch_before

        # New appends continue the sequence.
        head = http.get("/api/tasks", params={"limit": 1}).json()["head"]
        assert head == len(stored["tasks"])
        with SseStream(server.port, f"/api/stream/tasks?from={head + 1}", auth) as board_again:
            board_again.read_until(of_type("stream.open"))
            http.post("/api/tasks", json={"title": "after the crash"}).raise_for_status()
            assert board_again.read_until(of_type("task.created")).id == str(head + 1)
        # The main lane is free again (if_busy=reject would get a 409 while a turn is held).
        with SseStream(server.port, "/api/konsole/crash/stream?if_busy=reject", auth, method="POST",
                       body=b'{"message": "again"}') as second:
            assert second.read_headers() == 200
            started = envelope(second.read_until(of_type("turn.started")))
            assert int(second.events[0].id) == end_seq + 1  # type: ignore[arg-type]
            http.post("/api/konsole/crash/cancel", json={"turn": started["turn"]}).raise_for_status()
            second.read_until(of_type("turn.cancelled"))
        http.close()
    finally:
        stop_creating.set()
        for follower in followers:
            follower.stop()
        server.stop()
