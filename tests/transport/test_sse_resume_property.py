"""Resume is exact: cut an SSE connection at random byte offsets (through a TCP proxy) while events are
being appended, reconnect from the last id seen, and the client ends with exactly the journal's
events, in order, none twice — with `Last-Event-ID` and with `?from=`.

The server is a real `agentwire serve` process with a SQLite journal; "the journal's events" are
read from its file, byte for byte.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from itertools import count
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentwire.client import SseMessage
from tests.support.proxy import TcpProxy
from tests.support.server import ServerProcess
from tests.support.sse import SseStream, envelope, is_event, seq_of

TERMINAL = ("turn.completed", "turn.failed", "turn.cancelled")
_names = count()


class Setup:
    def __init__(self, server: ServerProcess, proxy: TcpProxy, db: Path) -> None:
        self.server = server
        self.proxy = proxy
        self.db = db
        self.http = httpx.Client(base_url=server.url, timeout=30)

    def journal(self, stream: str, first: int, last: int) -> list[tuple[int, bytes]]:
        conn = sqlite3.connect(self.db)
        try:
            rows = conn.execute("SELECT seq, raw FROM events WHERE stream = ? AND seq BETWEEN ? AND ? ORDER BY seq",
                                (stream, first, last)).fetchall()
        finally:
            conn.close()
        return [(seq, bytes(raw)) for seq, raw in rows]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    db = tmp_path_factory.mktemp("resume") / "journal.db"
    with ServerProcess(f"sqlite:///{db}", args=["--heartbeat", "0.5"]) as server, TcpProxy(server.port) as proxy:
        found = Setup(server, proxy, db)
        yield found
        found.http.close()


def follow(setup: Setup, path: str, mode: str, first: int, done: Callable[[SseMessage], bool],
           deadline: float) -> list[SseMessage]:
    """Read `path` through the proxy from seq `first`, reconnecting from the last id seen after every
    cut, until `done(message)`; returns every event message received, across all connections.
    Every reconnect must have been caused by one of the proxy's planned cuts, none by the server."""
    cuts_before = setup.proxy.cuts_done
    received: list[SseMessage] = []
    last: int | None = None
    connections = 0
    while True:
        connections += 1
        assert connections < 100, "too many reconnects"
        assert time.monotonic() < deadline, f"not done in time; {len(received)} events"
        if mode == "last-event-id":
            # As a browser does: the original URL again, plus the last id it saw.
            headers = {} if last is None else {"Last-Event-ID": str(last)}
            target = path if first == 1 else f"{path}?from={first}"
        else:
            headers = {}
            target = f"{path}?from={first if last is None else last + 1}"
        with SseStream(setup.proxy.port, target, headers) as stream:
            while not stream.eof:
                new = stream.read_some(min(1.0, max(0.05, deadline - time.monotonic())))
                if time.monotonic() > deadline:
                    break
                for message in new:
                    assert message.event != "stream.reset", envelope(message)
                    if not is_event(message):
                        continue
                    received.append(message)
                    last = seq_of(message)
                    if done(message):
                        cuts = setup.proxy.cuts_done - cuts_before
                        # (a cut planned exactly where the last read ended counts, too)
                        assert connections - 1 <= cuts <= connections, (connections, cuts)
                        return received
            if stream.status is not None:
                assert stream.status == 200, bytes(stream.body)


def check_exact(setup: Setup, stream: str, received: list[SseMessage], first: int, last: int) -> None:
    got = [(seq_of(m), m.data.encode()) for m in received]
    seqs = [seq for seq, _ in got]
    assert len(seqs) == len(set(seqs)), "an event arrived twice"
    assert seqs == list(range(first, last + 1)), "events missing or out of order"
    assert got == setup.journal(stream, first, last), "what the client holds differs from the journal"
    for message in received:
        assert message.event == envelope(message)["type"]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(deltas=st.integers(50, 400), cuts=st.lists(st.integers(0, 40_000), max_size=6),
       reset=st.booleans(), data=st.data())
@pytest.mark.parametrize("mode", ["last-event-id", "from"])
def test_console_stream_resumes_exactly_across_cuts(setup: Setup, mode: str, deltas: int, cuts: list[int],
                                                    reset: bool, data: st.DataObject) -> None:
    session = f"prop-{mode[0]}-{next(_names)}"
    setup.http.post("/api/konsole", json={"name": session, "options": {
        "deltas": deltas, "delay_ms": data.draw(st.sampled_from([0.2, 0.5, 1]), label="delay_ms"),
        "tool_calls": 1}}).raise_for_status()
    setup.proxy.plan_cuts(cuts, reset=reset)
    # Start the turn and let it run on its own (its POST response is closed at once); the reader
    # comes in while it is streaming: first a replay, then live, then cut, then replay again.
    with setup.http.stream("POST", f"/api/konsole/{session}/stream", json={"message": "go"}) as response:
        assert response.status_code == 200
        turn = response.headers["x-agentwire-turn"]

    def done(message: SseMessage) -> bool:
        body = envelope(message)
        return body["type"] in TERMINAL and body.get("turn") == turn

    received = follow(setup, f"/api/konsole/{session}/events", mode, 1, done, time.monotonic() + 60)
    assert envelope(received[-1])["type"] == "turn.completed"
    last = seq_of(received[-1])
    check_exact(setup, f"konsole/{session}", received, 1, last)
    deltas_seen = [envelope(m)["data"]["text"] for m in received if m.event == "text.delta"]
    done_text = [envelope(m)["data"]["text"] for m in received if m.event == "text.done"]
    # The assistant's text survives the cuts: its deltas add up to the block's final text.
    assert "".join(deltas_seen) == "".join(done_text)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(tasks=st.integers(5, 80), cuts=st.lists(st.integers(0, 60_000), max_size=5), reset=st.booleans())
@pytest.mark.parametrize("mode", ["last-event-id", "from"])
def test_tasks_stream_resumes_exactly_while_tasks_are_created(setup: Setup, mode: str, tasks: int,
                                                              cuts: list[int], reset: bool) -> None:
    # A board loads its snapshot, then subscribes from head+1 (§3).
    head = setup.http.get("/api/tasks", params={"limit": 1}).json()["head"]
    setup.proxy.plan_cuts(cuts, reset=reset)
    created: list[int] = []
    errors: list[BaseException] = []
    prefix = f"prop-{mode[0]}-{next(_names)}"

    def create() -> None:
        try:
            with httpx.Client(base_url=setup.server.url, timeout=30) as http:
                for n in range(tasks):
                    response = http.post("/api/tasks", json={"id": f"{prefix}-{n}", "title": f"task {n}",
                                                             "description": "x" * (n * 37 % 700)})
                    response.raise_for_status()
                    created.append(n)
        except BaseException as exc:
            errors.append(exc)

    writer = threading.Thread(target=create)
    writer.start()
    try:
        last_id = f"{prefix}-{tasks - 1}"

        def done(message: SseMessage) -> bool:
            return bool(envelope(message)["data"].get("task", {}).get("id") == last_id)

        received = follow(setup, "/api/stream/tasks", mode, head + 1, done, time.monotonic() + 60)
    finally:
        writer.join(60)
    assert errors == [] and len(created) == tasks
    last = seq_of(received[-1])
    check_exact(setup, "tasks", received, head + 1, last)
    mine = [envelope(m)["data"]["task"]["id"] for m in received]
    assert mine == [f"{prefix}-{n}" for n in range(tasks)]


def test_a_connection_that_died_silently_resumes_exactly(setup: Setup) -> None:
    """A phone asleep: the network stops carrying bytes (the proxy pauses), the connection is then
    dropped, and the client comes back with the last id it saw: it gets exactly what it missed."""
    head = setup.http.get("/api/tasks", params={"limit": 1}).json()["head"]
    setup.proxy.plan_cuts([])

    def create(n: int) -> None:
        setup.http.post("/api/tasks", json={"id": f"asleep-{n}", "title": f"asleep {n}"}).raise_for_status()

    with SseStream(setup.proxy.port, f"/api/stream/tasks?from={head + 1}") as first:
        for n in range(3):
            create(n)
        first.read_until(lambda m: m.id == str(head + 3))
        setup.proxy.pause()
        for n in range(3, 8):
            create(n)
        first.read_for(0.3)
        assert [m.id for m in first.events] == [str(head + n) for n in (1, 2, 3)]  # nothing got through
        assert setup.proxy.drop_all(reset=True) == 1
        first.read_to_eof()
        assert first.last_id == str(head + 3)
    setup.proxy.resume()
    with SseStream(setup.proxy.port, f"/api/stream/tasks?from={head + 1}", {"Last-Event-ID": first.last_id}) as again:
        again.read_until(lambda m: m.id == str(head + 8))
        assert [m.event for m in again.messages] == ["stream.open"] + ["task.created"] * 5
    check_exact(setup, "tasks", [*first.events, *again.events], head + 1, head + 8)
