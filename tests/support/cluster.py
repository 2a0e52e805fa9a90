"""Helpers for tests that run several `agentwire serve` nodes on one redis-server."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import orjson

from agentwire.client import SseMessage
from agentwire.journal.redis import RedisJournal
from tests.support.redis_server import RedisServer
from tests.support.server import ServerProcess
from tests.support.sse import Follower, SseStream, envelope, is_event, seq_of

TOKEN = "multinode-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
LEASE_SECONDS = 2.0
TERMINAL = ("turn.completed", "turn.failed", "turn.cancelled")
_names = itertools.count()

Wire = tuple[int, str]  # (seq, the envelope exactly as sent)


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_names)}-{random.randrange(10**6)}"


class Node(ServerProcess):
    """`ServerProcess`, given longer to boot: three nodes starting at once on a busy 2-core machine
    can take longer than its 15 s."""

    boot_timeout = 90.0


class Cluster:
    """A redis-server and `agentwire serve` nodes on it, each a real process on its own port."""

    def __init__(self, directory: Path, count: int, *, lease: float = LEASE_SECONDS) -> None:
        self.redis = RedisServer(directory / "redis")
        self.directory = directory
        self.lease = lease
        self.nodes: list[Node] = []
        self.count = count

    @property
    def journal_url(self) -> str:
        return self.redis.url

    def start(self) -> Cluster:
        self.redis.start()
        self.nodes = [Node(self.journal_url, token=TOKEN, log_path=self.directory / f"node-{i}.log",
                                    args=["--lease-seconds", str(self.lease), "--heartbeat", "1"])
                      for i in range(self.count)]
        with ThreadPoolExecutor(self.count) as pool:  # the nodes boot side by side
            list(pool.map(Node.start, self.nodes))
        return self

    def stop(self) -> None:
        with ThreadPoolExecutor(max(1, len(self.nodes))) as pool:
            list(pool.map(ServerProcess.stop, self.nodes))
        self.redis.stop()

    def journal(self, stream: str) -> list[Wire]:
        """Every event of `stream` as the journal stores it."""
        return journal_events(self.journal_url, stream)


def journal_events(url: str, stream: str) -> list[Wire]:
    async def read_all() -> list[Wire]:
        journal = RedisJournal(url)
        await journal.start()
        try:
            events: list[Wire] = []
            while True:
                page = await journal.read(stream, events[-1][0] if events else 0, 1000)
                if not page:
                    return events
                events += [(event.seq, event.raw.decode()) for event in page]
        finally:
            await journal.close()

    return asyncio.run(asyncio.wait_for(read_all(), 30))


def wire(messages: list[SseMessage]) -> list[Wire]:
    return [(seq_of(m), m.data) for m in messages if is_event(m)]


def create_session(node: ServerProcess, name: str, **options: object) -> None:
    response = httpx.post(f"{node.url}/api/konsole", json={"name": name, "options": options}, headers=AUTH,
                          timeout=10)
    assert response.status_code == 201, response.text


def open_stream(port: int, path: str, headers: dict[str, str] | None = None, **kwargs: object) -> SseStream:
    stream = SseStream(port, path, {**AUTH, **(headers or {})}, **kwargs)  # type: ignore[arg-type]
    assert stream.read_headers() == 200, bytes(stream.body)
    return stream


def start_turn(node: ServerProcess | int, session: str, message: str, lane: str = "main") -> SseStream:
    port = node if isinstance(node, int) else node.port
    path = f"/api/konsole/{session}/{'quick' if lane == 'quick' else 'stream'}"
    return SseStream(port, path, AUTH, method="POST", body=orjson.dumps({"message": message}))


def follower(node: ServerProcess, path: str, headers: dict[str, str] | None = None) -> Follower:
    stream = open_stream(node.port, path, headers)
    stream.read_until(lambda m: m.event == "stream.open", 15)
    reader = Follower(stream)
    reader.start()
    return reader


def ends_turn(turn: str | None) -> Callable[[SseMessage], bool]:
    return lambda m: is_event(m) and m.event in TERMINAL and (turn is None or envelope(m).get("turn") == turn)


def read_to_seq(node: ServerProcess, path: str, last: int, after: int | None = None) -> SseStream:
    """GET `path` (with Last-Event-ID: `after`, if given) and read until the event with seq `last`."""
    stream = open_stream(node.port, path, None if after is None else {"last-event-id": str(after)})
    if (after or 0) < last:
        stream.read_until(lambda m: is_event(m) and int(m.id or 0) >= last, 30)
    else:
        stream.read_until(lambda m: m.event == "stream.open", 30)
    stream.close()
    return stream


# -- live delivery across nodes --------------------------------------------------------------------
