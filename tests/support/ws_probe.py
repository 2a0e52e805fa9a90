"""A raw WebSocket client for the `/api/ws` tests (`Probe`), and the SSE reads they compare it with."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as sync_connect

from agentwire.client import Client, ws_url
from agentwire.console.transcript import TERMINAL
from tests.support.server import Served

JSON = dict[str, Any]
_names = itertools.count(1)


def unique_name(prefix: str) -> str:
    return f"{prefix}-{next(_names)}-{time.monotonic_ns() % 10**6}"


class Probe:
    """A raw WebSocket on `/api/ws`: send requests, read frames, keep every frame seen."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[JSON] = []
        self._refs = itertools.count(1)

    def send(self, frame: JSON | str) -> None:
        self.ws.send(frame if isinstance(frame, str) else orjson.dumps(frame).decode())

    def recv(self, timeout: float = 20.0) -> JSON:
        message: JSON = orjson.loads(self.ws.recv(timeout))
        self.frames.append(message)
        return message

    def request(self, op: str, **fields: Any) -> JSON:
        ref = f"t{next(self._refs)}"
        self.send({"op": op, "ref": ref, **fields})
        while True:
            message = self.recv()
            if message.get("op") in ("ack", "error") and message.get("ref") == ref:
                return message

    def until(self, stop: Callable[[JSON], bool], timeout: float = 30.0) -> list[JSON]:
        deadline = time.monotonic() + timeout
        out = []
        while True:
            message = self.recv(max(0.1, deadline - time.monotonic()))
            out.append(message)
            if stop(message):
                return out

    def events(self, stream: str) -> list[JSON]:
        return [f for f in self.frames if f.get("stream") == stream and "seq" in f and "op" not in f]


@contextlib.contextmanager
def probe(served: Served, headers: dict[str, str] | None = None, path: str = "") -> Iterator[Probe]:
    with sync_connect(ws_url(served.url) + path, additional_headers=served.auth if headers is None else headers,
                      max_size=None, max_queue=None, compression=None, open_timeout=20) as ws:
        yield Probe(ws)


def terminal_of(turn: str) -> Callable[[JSON], bool]:
    return lambda frame: frame.get("turn") == turn and frame.get("type") in TERMINAL


def journal_of(served: Served, session: str) -> list[JSON]:
    """Every event of the session stream so far, read over SSE (the reference)."""
    head = served.http.get(f"/api/konsole/{session}/state").raise_for_status().json()["head"]
    return read_sse(served, f"konsole/{session}", 0, head)


def read_sse(served: Served, stream: str, after: int, head: int) -> list[JSON]:
    """The events `after` < seq <= `head` of a stream, read over SSE."""
    out: list[JSON] = []

    async def read() -> None:
        async with Client(served.url, served.config.token) as c:
            async for envelope in c.follow(stream, after, stop=lambda e: e.get("seq") == head):
                if "seq" in envelope:
                    out.append(envelope)

    if head > after:
        asyncio.run(read())
    return out


def assert_contiguous(events: list[JSON], first: int = 1) -> None:
    assert [e["seq"] for e in events] == list(range(first, first + len(events)))
