"""SSE exactly as §3 frames it, read over raw sockets from a real server: headers, `retry:` first,
`stream.open`, `id:`/`event:`/`data:` per event (the journal's own bytes), heartbeats, resets, and
where a stream starts for each kind of position."""

from __future__ import annotations

import re
import sqlite3
import time
from typing import TYPE_CHECKING, Any

import httpx
import orjson
import pytest

from agentwire.journal.sqlite import sqlite_path
from agentwire.sse import sse_control, sse_frame
from agentwire.types import Event
from tests.support.sse import envelope, is_event, of_type, parse_sse, seq_of

if TYPE_CHECKING:
    from tests.support.server import Served, ServerFactory

FRAME = re.compile(rb"id: (\d+)\nevent: ([a-z._]+)\ndata: (\{[^\n]*\})\n\n")


def create_tasks(server: Served, count: int, prefix: str = "t") -> list[dict[str, Any]]:
    created = []
    for n in range(count):
        response = server.http.post("/api/tasks", json={"id": f"{prefix}{n}-{time.monotonic_ns()}", "title": f"#{n}"})
        assert response.status_code == 201, response.text
        created.append(response.json())
    return created


def journal_raw(server: Served, stream: str) -> dict[int, bytes]:
    conn = sqlite3.connect(sqlite_path(server.config.journal))
    try:
        return dict(conn.execute("SELECT seq, raw FROM events WHERE stream = ?", (stream,)).fetchall())
    finally:
        conn.close()


def test_frames_are_built_as_the_protocol_says() -> None:
    event = Event.build(12, "konsole/x", "text.delta", {"block": 0, "text": "a\nb"}, turn="t_1", lane="main")
    frame = sse_frame(event)
    assert frame == b"id: 12\nevent: text.delta\ndata: " + event.raw + b"\n\n"
    assert sse_frame(event) is frame  # built once, kept on the event
    assert b"\n" not in event.raw
    [message] = parse_sse(frame)
    assert (message.id, message.event, orjson.loads(message.data)["data"]["text"]) == ("12", "text.delta", "a\nb")
    opened = sse_control("tasks", "stream.open", {"epoch": "e", "head": 3, "from": 4})
    assert opened == (b'event: stream.open\ndata: {"stream":"tasks","type":"stream.open",'
                      b'"data":{"epoch":"e","head":3,"from":4}}\n\n')
    reset = sse_control("tasks", "stream.reset", {"epoch": "e", "head": 3, "reason": "trimmed"}, 3)
    assert reset.startswith(b"id: 3\nevent: stream.reset\ndata: ")


def test_a_stream_response_starts_with_headers_retry_and_stream_open(server: Served) -> None:
    create_tasks(server, 2)
    with server.stream("/api/stream/tasks?from=1") as stream:
        assert stream.read_headers() == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert stream.headers["cache-control"] == "no-cache"
        assert stream.headers["x-accel-buffering"] == "no"
        stream.read_until(lambda m: m.id == "2")
        # `retry:` is the very first thing in the body; then stream.open without an id.
        assert bytes(stream.body).startswith(b"retry: 1000\n\nevent: stream.open\ndata: ")
        opened = stream.messages[0]
        assert (opened.event, opened.id) == ("stream.open", None)
        body = envelope(opened)
        assert body["stream"] == "tasks" and body["type"] == "stream.open" and "seq" not in body
        assert set(body["data"]) == {"epoch", "head", "from", "heartbeat_ms"}
        assert body["data"]["head"] == 2 and body["data"]["from"] == 1


def test_each_event_is_id_event_data_with_the_journals_own_bytes(server: Served) -> None:
    with server.stream("/api/stream/tasks") as stream:
        stream.read_until(of_type("stream.open"))
        task = create_tasks(server, 1)[0]
        server.http.patch(f"/api/tasks/{task['id']}", json={"status": "completed"}).raise_for_status()
        server.http.delete(f"/api/tasks/{task['id']}").raise_for_status()
        stream.read_until(of_type("task.deleted"))
    raw = journal_raw(server, "tasks")
    body = bytes(stream.body)
    start = body.index(b"id: ")
    frames = FRAME.findall(body[start:])
    # Nothing but whole frames (and pings) after stream.open: every byte is accounted for.
    rest = FRAME.sub(b"", body[start:]).replace(b": ping\n\n", b"")
    assert rest == b""
    assert [(int(seq), kind) for seq, kind, _ in frames] == [
        (1, b"task.created"), (2, b"task.updated"), (3, b"task.deleted")]
    for seq, _, data in frames:
        assert data == raw[int(seq)]  # what the client got is what the journal holds, byte for byte
    updated = orjson.loads(frames[1][2])
    assert updated["data"]["changed"] == ["status"] and updated["stream"] == "tasks"
    assert isinstance(updated["ts"], int) and "turn" not in updated


def test_heartbeat_comments_keep_an_idle_stream_alive(server: Served) -> None:
    with server.stream("/api/stream/tasks") as stream:
        stream.read_until(of_type("stream.open"))
        started = time.monotonic()
        while bytes(stream.body).count(b"\n: ping\n\n") < 3:
            assert time.monotonic() - started < 15, "no heartbeats"
            stream.read_some(0.5)
        assert stream.messages[-1].event == "stream.open"  # comments are not messages
        # Heartbeats do not replace events: a new event still arrives on the same stream.
        create_tasks(server, 1)
        stream.read_until(is_event)


def test_tasks_stream_without_a_position_starts_now(server: Served) -> None:
    create_tasks(server, 3)
    with server.stream("/api/stream/tasks") as stream:
        opened = envelope(stream.read_until(of_type("stream.open")))["data"]
        assert (opened["head"], opened["from"]) == (3, 4)
        create_tasks(server, 1)
        first = stream.read_until(is_event)
        assert first.id == "4"
        assert [m.id for m in stream.events] == ["4"]


def test_from_zero_is_everything_and_from_n_starts_at_n(server: Served) -> None:
    create_tasks(server, 5)
    for query, first in (("from=0", 1), ("from=1", 1), ("from=3", 3), ("from=5", 5)):
        with server.stream(f"/api/stream/tasks?{query}") as stream:
            stream.read_until(lambda m: m.id == "5")
            assert [seq_of(m) for m in stream.events] == list(range(first, 6)), query
            assert envelope(stream.messages[0])["data"]["from"] == first


def test_last_event_id_means_after_and_wins_over_from(server: Served) -> None:
    create_tasks(server, 6)
    for headers, query, first in (({"Last-Event-ID": "2"}, "", 3), ({"Last-Event-ID": "4"}, "?from=1", 5),
                                  ({"Last-Event-ID": "0"}, "?from=6", 1), ({}, "?from=6", 6)):
        with server.stream(f"/api/stream/tasks{query}", headers) as stream:
            stream.read_until(lambda m: m.id == "6")
            assert [seq_of(m) for m in stream.events] == list(range(first, 7)), (headers, query)


def test_a_caught_up_position_gets_only_new_events(server: Served) -> None:
    create_tasks(server, 2)
    with server.stream("/api/stream/tasks", {"Last-Event-ID": "2"}) as stream:
        opened = envelope(stream.read_until(of_type("stream.open")))["data"]
        assert opened["from"] == 3
        stream.read_for(0.3)
        assert stream.events == []
        create_tasks(server, 1)
        assert stream.read_until(is_event).id == "3"


def test_a_position_past_the_head_gets_a_reset_and_continues_after_the_head(server: Served) -> None:
    create_tasks(server, 3)
    with server.stream("/api/stream/tasks", {"Last-Event-ID": "1000"}) as stream:
        reset = stream.read_until(of_type("stream.reset"))
        data = envelope(reset)["data"]
        assert data["reason"] == "ahead_of_head" and data["head"] == 3
        assert data["epoch"] == envelope(stream.messages[0])["data"]["epoch"]
        assert reset.id == "3"  # the browser's Last-Event-ID moves to the head
        create_tasks(server, 1)
        assert stream.read_until(is_event).id == "4"
        assert [m.event for m in stream.messages] == ["stream.open", "stream.reset", "task.created"]


def test_a_position_older_than_what_is_kept_gets_a_reset(make_server: ServerFactory) -> None:
    server = make_server(retention=5, heartbeat=0.2)
    create_tasks(server, 30)
    position = server.http.get("/api/tasks").json()["head"]
    assert position == 30
    for headers, query in (({"Last-Event-ID": "2"}, ""), ({}, "?from=1"), ({}, "?from=0")):
        with server.stream(f"/api/stream/tasks{query}", headers) as stream:
            reset = stream.read_until(of_type("stream.reset"))
            assert envelope(reset)["data"]["reason"] == "trimmed"
            assert reset.id == str(position) and envelope(reset)["data"]["head"] == position
            create_tasks(server, 1, prefix=f"again{len(query)}{len(headers)}")
            event = stream.read_until(is_event)
            assert [m.event for m in stream.messages][:2] == ["stream.open", "stream.reset"]
            assert [m.id for m in stream.events] == [event.id] == [str(position + 1)]
            position += 1
            # Reconnecting with the reset's id is served exactly: no second reset.
        with server.stream("/api/stream/tasks", {"Last-Event-ID": str(seq_of(event))}) as again:
            again.read_until(of_type("stream.open"))
            again.read_for(0.3)
            assert [m.event for m in again.messages] == ["stream.open"]
    # Still servable: a position within what is kept.
    with server.stream(f"/api/stream/tasks?from={position}") as stream:
        assert stream.read_until(is_event).id == str(position)
        assert "stream.reset" not in [m.event for m in stream.messages]


def test_console_stream_without_a_position_starts_at_its_first_event(server: Served) -> None:
    created = server.http.post("/api/konsole", json={"name": "sse-console", "options": {
        "deltas": 5, "delay_ms": 0, "tool_calls": 0, "thinking": False}})
    assert created.status_code == 201, created.text
    with server.http.stream("POST", "/api/konsole/sse-console/stream", json={"message": "hi"}) as response:
        assert response.status_code == 200
        assert b"turn.completed" in response.read()
    head = server.http.get("/api/konsole/sse-console/state").json()["head"]
    with server.stream("/api/konsole/sse-console/events") as stream:
        stream.read_until(lambda m: m.id == str(head))
        assert [seq_of(m) for m in stream.events] == list(range(1, head + 1))
        assert stream.events[0].event == "session.created"
        opened = envelope(stream.messages[0])["data"]
        assert (opened["head"], opened["from"], opened["heartbeat_ms"]) == (head, 1, 200)
    with server.stream("/api/konsole/sse-console/events?from=4") as stream:
        stream.read_until(lambda m: m.id == str(head))
        assert [seq_of(m) for m in stream.events] == list(range(4, head + 1))
        assert all(envelope(m)["turn"].startswith("t_") for m in stream.events)
    missing = server.http.get("/api/konsole/nobody-here/events")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "session_not_found"


@pytest.mark.parametrize(("headers", "query", "field"), [
    ({"Last-Event-ID": "abc"}, "", "Last-Event-ID"),
    ({"Last-Event-ID": "-1"}, "", "Last-Event-ID"),
    ({"Last-Event-ID": "1.5"}, "?from=1", "Last-Event-ID"),
    ({}, "?from=x", "from"),
    ({}, "?from=-2", "from"),
    ({}, "?from=99999999999999999999999", "from"),
])
def test_a_malformed_position_is_a_400_naming_the_field_not_a_hang(server: Served, headers: dict[str, str],
                                                                   query: str, field: str) -> None:
    for path in ("/api/stream/tasks", "/api/konsole/bad-position/events"):
        if "konsole" in path:
            server.http.post("/api/konsole", json={"name": "bad-position"})
        response = server.http.get(path + query, headers=headers, timeout=httpx.Timeout(10))
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == "bad_position" and error["field"] == field
        assert field in error["message"]
    assert server.http.get("/healthz").json()["streams_open"] == 0


def test_idle_streams_hold_no_task_and_still_get_events_and_notice_a_client_leaving() -> None:
    """Issue 13: an open SSE stream is written by the hub's flusher straight to the socket, so
    streams that idle cost no task each (nor a coroutine); they still get every event, and a
    client that leaves is noticed (its subscription ends) without a task listening for it."""
    import asyncio
    import socket

    from tests.support.server import served_in_thread

    streams = 30
    with served_in_thread() as served, httpx.Client(base_url=served.url, timeout=30) as http:

        async def count() -> int:
            return len(asyncio.all_tasks())

        def tasks_now() -> int:
            return asyncio.run_coroutine_threadsafe(count(), served.loop).result(10)

        def open_streams() -> int:
            return int(http.get("/healthz").json()["streams_open"])

        before = tasks_now()
        socks = []
        for _ in range(streams):
            sock = socket.create_connection(("127.0.0.1", served.config.port), timeout=10)
            sock.sendall(b"GET /api/stream/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
            socks.append(sock)
        deadline = time.monotonic() + 20
        while open_streams() < streams:
            assert time.monotonic() < deadline, "the streams did not open"
            time.sleep(0.02)
        assert tasks_now() - before < streams  # less than one task per open stream
        card = http.post("/api/tasks", json={"title": "seen by every stream"})
        assert card.status_code == 201
        for sock in socks:
            received = b""
            while b"seen by every stream" not in received:
                chunk = sock.recv(65536)
                assert chunk, "a stream ended before the event"
                received += chunk
        for sock in socks:
            sock.close()
        while open_streams() > 0:
            assert time.monotonic() < deadline + 20, "closed clients still counted as open streams"
            time.sleep(0.02)
