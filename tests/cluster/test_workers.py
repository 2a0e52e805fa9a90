"""`agentwire serve --workers N`: several uvicorn worker processes behind one port, sharing a Redis journal.

Both workers answer (requests on new connections land on different worker pids, which `/healthz` names
when there are several workers), a stream read from one worker resumes on the other with `Last-Event-ID`
(also while a turn runs on the first), SIGTERM ends the server, its workers and their open streams
within a few seconds, and `--workers 2` on a journal that belongs to one process (SQLite, memory) is
refused with a clear message and a non-zero exit.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from agentwire.client import SseMessage, SseParser
from tests.support.cluster import AUTH, TOKEN, Node, Wire, ends_turn, journal_events
from tests.support.redis_server import RedisServer
from tests.support.server import free_port

pytestmark = [pytest.mark.redis]

WORKERS = 2


def start_workers(directory: Path) -> tuple[RedisServer, Node]:
    redis = RedisServer(directory / "redis").start()
    node = Node(redis.url, token=TOKEN, log_path=directory / "server.log",
                args=["--workers", str(WORKERS), "--lease-seconds", "2", "--heartbeat", "0.5"])
    try:
        node.start()
    except BaseException:
        redis.stop()
        raise
    return redis, node


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, Node]]:
    redis, node = start_workers(tmp_path_factory.mktemp("workers"))
    try:
        yield redis, node
    finally:
        node.stop()
        redis.stop()


class WorkerConnection:
    """One keep-alive HTTP connection, and the pid of the worker serving it (from `/healthz` on it):
    whatever it sends next is served by that same worker."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.conn.request("GET", "/healthz", headers=AUTH)
        self.pid: int = orjson.loads(self.conn.getresponse().read())["pid"]
        self.response: http.client.HTTPResponse | None = None

    def open(self, method: str, path: str, *, headers: dict[str, str] | None = None,
             body: bytes | None = None) -> http.client.HTTPResponse:
        extra = {"content-type": "application/json"} if body is not None else {}
        self.conn.request(method, path, body=body, headers={**AUTH, **extra, **(headers or {})})
        self.response = self.conn.getresponse()
        assert self.response.status == 200, self.response.read()
        return self.response

    def read_sse(self, method: str, path: str, *, stop: int | None = None,
                 until: Callable[[SseMessage], bool] | None = None, headers: dict[str, str] | None = None,
                 body: bytes | None = None) -> list[SseMessage]:
        """Read an SSE response until `stop` events arrived, `until(message)` holds, or it ends."""
        response = self.open(method, path, headers=headers, body=body)
        messages: list[SseMessage] = []
        parser = SseParser()
        events = 0
        while chunk := response.read1(65536):
            for message in parser.feed(chunk):
                messages.append(message)
                events += message.id is not None and message.event != "stream.reset"
                if (stop is not None and events >= stop) or (until is not None and until(message)):
                    return messages
        return messages

    def close(self) -> None:
        self.conn.close()


def worker_pid(port: int) -> int:
    """The pid of the worker that serves a new connection."""
    connection = WorkerConnection(port)
    connection.close()
    return connection.pid


def worker_pids(port: int, want: int = WORKERS, seconds: float = 60.0) -> dict[int, int]:
    """Requests on new connections until `want` different workers answered (and at least 50 in all);
    pid → answers. Idle workers on one shared socket take new connections very unevenly (the kernel
    wakes them all and the quickest accepts), so this may take a few hundred connections."""
    seen: dict[int, int] = {}
    deadline = time.monotonic() + seconds
    while (len(seen) < want or sum(seen.values()) < 50) and time.monotonic() < deadline:
        pid = worker_pid(port)
        seen[pid] = seen.get(pid, 0) + 1
    return seen


@contextlib.contextmanager
def on_worker(node: Node, avoid: int | None = None, seconds: float = 60.0) -> Iterator[WorkerConnection]:
    """A connection served by a worker other than `avoid`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        connection = WorkerConnection(node.port)
        if connection.pid != avoid:
            try:
                yield connection
            finally:
                connection.close()
            return
        connection.close()
    raise AssertionError(f"no worker other than {avoid} took a connection in {seconds} s")


def wire(messages: list[SseMessage]) -> list[Wire]:
    return [(int(m.id), m.data) for m in messages if m.id is not None and m.event != "stream.reset"]


def test_both_workers_answer(served: tuple[RedisServer, Node]) -> None:
    _, node = served
    assert node.proc is not None
    seen = worker_pids(node.port)
    print(f"{sum(seen.values())} new connections answered by workers {seen}")
    assert len(seen) == WORKERS, seen
    assert node.proc.pid not in seen, "the supervisor itself must not serve"
    health = httpx.get(f"{node.url}/healthz", headers=AUTH).json()
    assert health["status"] == "ok" and health["journal"] == "redis"


def test_stream_resumes_on_the_other_worker(served: tuple[RedisServer, Node]) -> None:
    redis, node = served
    with httpx.Client(base_url=node.url, headers=AUTH, timeout=30) as client:
        head = client.get("/api/tasks", params={"limit": 1}).json()["head"]
        for i in range(120):
            assert client.post("/api/tasks", json={"id": f"w-{head}-{i}", "title": f"task {i}"}).status_code == 201
    journal = [(seq, raw) for seq, raw in journal_events(redis.url, "tasks") if seq > head]
    assert len(journal) == 120
    with on_worker(node) as first:
        before = first.read_sse("GET", f"/api/stream/tasks?from={head + 1}", stop=47)
    with on_worker(node, avoid=first.pid) as second:
        after = second.read_sse("GET", "/api/stream/tasks", stop=120 - 47,
                                headers={"last-event-id": str(wire(before)[-1][0])})
    assert first.pid != second.pid
    assert wire(before) + wire(after) == journal


def test_live_turn_resumes_on_the_other_worker(served: tuple[RedisServer, Node]) -> None:
    """A turn runs in one worker; its POST response is dropped mid-turn and the client resumes on
    the other worker, which follows the turn through Redis to its end."""
    redis, node = served
    session = f"workers-{time.monotonic_ns()}"
    httpx.post(f"{node.url}/api/konsole", headers=AUTH, json={"name": session, "options": {
        "deltas": 300, "delay_ms": 5, "tool_calls": 1}}).raise_for_status()
    with on_worker(node) as first:
        before = first.read_sse("POST", f"/api/konsole/{session}/stream", stop=40,
                                body=orjson.dumps({"message": "run in one worker"}))
    turn = orjson.loads(before[-1].data)["turn"]
    with on_worker(node, avoid=first.pid) as second:
        after = second.read_sse("GET", f"/api/konsole/{session}/events", until=ends_turn(turn),
                                headers={"last-event-id": str(wire(before)[-1][0])})
    assert after[-1].event == "turn.completed"
    journal = journal_events(redis.url, f"konsole/{session}")
    assert wire(before) + wire(after) == [(seq, raw) for seq, raw in journal if seq > 1]
    # Live: the other worker delivered events the turn had not produced yet when it subscribed.
    assert len(wire(after)) > 100


def test_sigterm_ends_the_server_its_workers_and_open_streams(tmp_path: Path) -> None:
    redis, node = start_workers(tmp_path)
    streams: list[WorkerConnection] = []
    try:
        assert node.proc is not None
        pids = set(worker_pids(node.port))
        assert len(pids) == WORKERS
        httpx.post(f"{node.url}/api/konsole", headers=AUTH, json={"name": "long", "options": {
            "deltas": 100_000, "delay_ms": 5}}).raise_for_status()
        # Open streams on every worker: a long turn's own response on the first, the board on the others.
        deadline = time.monotonic() + 60
        while {c.pid for c in streams} != pids and time.monotonic() < deadline:
            connection = WorkerConnection(node.port)
            if connection.pid in {c.pid for c in streams}:
                connection.close()
                continue
            if streams:
                connection.open("GET", "/api/stream/tasks")
            else:
                connection.open("POST", "/api/konsole/long/stream", body=orjson.dumps({"message": "go on"}))
            streams.append(connection)
        assert {c.pid for c in streams} == pids
        for connection in streams:
            assert connection.response is not None and connection.response.read1(65536)  # open and flowing
        took = node.terminate(timeout=20)
        print(f"SIGTERM with {len(streams)} open streams on {len(pids)} workers: everything gone in {took:.2f} s")
        assert took < 6
        assert node.proc.returncode == 0
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        for connection in streams:  # each open stream was ended, not left hanging
            assert connection.response is not None
            ended = time.monotonic()
            with contextlib.suppress(http.client.HTTPException, OSError):
                while connection.response.read1(65536):
                    pass
            assert time.monotonic() - ended < 5
    finally:
        for connection in streams:
            connection.close()
        node.stop()
        redis.stop()


@pytest.mark.parametrize("journal", ["sqlite", "memory"])
def test_workers_refused_on_a_journal_of_one_process(tmp_path: Path, journal: str) -> None:
    url = f"sqlite:///{tmp_path / 'journal.db'}" if journal == "sqlite" else "memory://"
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "agentwire", "serve", "--workers", "2", "--journal", url,
                           "--port", str(free_port()), "--no-auth"],
                          capture_output=True, text=True, timeout=60, env=os.environ.copy())
    assert done.returncode != 0
    assert "--workers 2 needs a journal every worker shares: use --journal redis://" in done.stderr
    assert f"the {journal} journal belongs to one process" in done.stderr
    assert "Traceback" not in done.stderr
    assert time.monotonic() - began < 30
