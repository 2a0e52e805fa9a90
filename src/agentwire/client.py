"""Python client: follow streams and run turns with resume built in (backoff, Last-Event-ID, dedup by seq).

    async with Client("http://127.0.0.1:8765", token) as client:
        async for event in client.turn("dashboard", "hello"):
            print(event["type"], event["data"])
"""

from __future__ import annotations

import asyncio
import random
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx
import orjson

from agentwire.console.transcript import TERMINAL, Transcript
from agentwire.types import JSON, KONSOLE_PREFIX


@dataclass
class SseMessage:
    event: str
    data: str
    id: str | None


class SseParser:
    """Incremental `text/event-stream` parser (comments dropped, CRLF tolerated)."""

    def __init__(self) -> None:
        self._buffer = b""
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, chunk: bytes) -> list[SseMessage]:
        self._buffer += chunk
        messages = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                return messages
            line = self._buffer[:end].rstrip(b"\r").decode()
            self._buffer = self._buffer[end + 1 :]
            if not line:
                if self._data or self._event:
                    messages.append(SseMessage(self._event or "message", "\n".join(self._data), self._id))
                self._event, self._data, self._id = "", [], None
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                self._data.append(value)
            elif name == "event":
                self._event = value
            elif name == "id":
                self._id = value


class Backoff:
    """~250 ms growing ×2 to a 15 s cap, ±20 % jitter; `reset()` once a connection opens."""

    def __init__(self, first: float = 0.25, cap: float = 15.0) -> None:
        self.first, self.cap, self.attempt = first, cap, 0

    def next_delay(self) -> float:
        self.attempt += 1
        delay = min(self.cap, self.first * 2 ** (self.attempt - 1))
        return delay * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self.attempt = 0


class StreamFailed(Exception):
    pass


def stream_path(stream: str) -> str:
    if stream == "tasks":
        return "/api/stream/tasks"
    if stream.startswith(KONSOLE_PREFIX):
        return f"/api/konsole/{stream[len(KONSOLE_PREFIX):]}/events"
    raise ValueError(f"unknown stream {stream!r}: use tasks or konsole/<session>")


class Client:
    def __init__(self, url: str, token: str | None = None, *, max_attempts: int | None = None,
                 timeout: float = 30.0) -> None:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.AsyncClient(base_url=url.rstrip("/"), headers=headers,
                                      timeout=httpx.Timeout(timeout, read=None))
        self.max_attempts = max_attempts
        self.on_status: Any = None  # called with ("connected"|"reconnecting", attempt, delay)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self.http.aclose()

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise StreamFailed(f"{method} {path}: {response.status_code} {response.text[:300]}")
        return response.json() if response.content else None

    async def _sse(self, method: str, path: str, *, after: int | None, json: JSON | None = None,
                   params: JSON | None = None) -> AsyncIterator[JSON]:
        headers = {"last-event-id": str(after)} if after is not None else {}
        async with self.http.stream(method, path, headers=headers, json=json, params=params) as response:
            if response.status_code >= 400:
                body = await response.aread()
                raise StreamFailed(f"{method} {path}: {response.status_code} {body[:300].decode(errors='replace')}")
            parser = SseParser()
            async for chunk in response.aiter_raw():
                for message in parser.feed(chunk):
                    envelope = orjson.loads(message.data)
                    yield envelope

    async def follow(self, stream: str, after: int | None = None, *, params: JSON | None = None,
                     stop: Any = None) -> AsyncIterator[JSON]:
        """Every event of `stream` after `after`, exactly once and in order, across reconnects.
        Control messages (`stream.open`, `stream.reset`) are yielded too; they carry no seq."""
        backoff = Backoff()
        last = after
        path = stream_path(stream)
        while True:
            try:
                async for envelope in self._sse("GET", path, after=last, params=params):
                    if envelope["type"] == "stream.open":
                        backoff.reset()
                        self._status("connected", 0, 0.0)
                    if envelope["type"] == "stream.reset":
                        last = envelope["data"]["head"]
                        yield envelope
                        continue
                    seq = envelope.get("seq")
                    if seq is not None:
                        if last is not None and seq <= last:
                            continue
                        last = seq
                    yield envelope
                    if stop is not None and stop(envelope):
                        return
            except (httpx.TransportError, httpx.RemoteProtocolError):
                pass
            except StreamFailed:
                raise
            if self.max_attempts is not None and backoff.attempt >= self.max_attempts:
                raise StreamFailed(f"gave up on {stream} after {backoff.attempt} attempts")
            delay = backoff.next_delay()
            self._status("reconnecting", backoff.attempt, delay)
            await asyncio.sleep(delay)

    def _status(self, status: str, attempt: int, delay: float) -> None:
        if self.on_status is not None:
            self.on_status(status, attempt, delay)

    async def turn(self, session: str, message: str, *, lane: str = "main",
                   if_busy: str = "queue") -> AsyncIterator[JSON]:
        """Run a turn and yield its events until its terminal one. If the POST response is cut, the
        rest comes from `GET …/events` with Last-Event-ID: the turn's events, none twice."""
        path = f"/api/konsole/{session}/{'quick' if lane == 'quick' else 'stream'}"
        turn_id: str | None = None
        last: int | None = None
        try:
            async for envelope in self._sse("POST", path, after=None, json={"message": message},
                                            params={"if_busy": if_busy} if lane == "main" else None):
                if envelope.get("seq") is None:
                    continue
                turn_id = turn_id or envelope.get("turn")
                last = envelope["seq"]
                yield envelope
                if envelope["type"] in TERMINAL:
                    return
        except (httpx.TransportError, httpx.RemoteProtocolError):
            pass
        if turn_id is None:
            raise StreamFailed("the turn's stream ended before its first event")
        async for envelope in self.follow(KONSOLE_PREFIX + session, last,
                                          stop=lambda e: e.get("turn") == turn_id and e["type"] in TERMINAL):
            if envelope.get("turn") == turn_id:
                yield envelope


def _print_event(envelope: JSON, out: Any) -> None:
    kind, data = envelope["type"], envelope.get("data", {})
    if kind in ("text.delta",):
        out.write(data.get("text", ""))
    elif kind == "text.done":
        out.write("\n")
    elif kind == "thinking.done":
        out.write(f"\x1b[2m(thought: {data.get('text', '')[:200]})\x1b[0m\n")
    elif kind == "tool.call":
        out.write(f"\x1b[36m→ {data.get('name')}({orjson.dumps(data.get('input')).decode()[:200]})\x1b[0m\n")
    elif kind == "tool.result":
        mark = "✗" if data.get("is_error") else "✓"
        out.write(f"\x1b[36m  {mark} {str(data.get('output'))[:200]}\x1b[0m\n")
    elif kind == "todo.updated":
        for todo in data.get("todos", []):
            box = {"completed": "[x]", "in_progress": "[~]"}.get(todo.get("status"), "[ ]")
            out.write(f"  {box} {todo.get('content')}\n")
    elif kind == "turn.queued":
        out.write(f"(queued, position {data.get('position')})\n")
    elif kind == "turn.completed":
        timing = data.get("timing", {})
        out.write(f"\x1b[2m— done in {timing.get('totalMs', 0) / 1000:.1f}s, TTFE {timing.get('ttfeMs')} ms, "
                  f"{timing.get('toolCallCount', 0)} tools\x1b[0m\n")
    elif kind == "turn.failed":
        out.write(f"\x1b[31mturn failed: {data.get('error')}\x1b[0m\n")
    elif kind == "turn.cancelled":
        out.write(f"turn cancelled: {data.get('reason')}\n")
    out.flush()


async def chat_command(url: str, token: str | None, session: str, message: str, quick: bool) -> int:
    async with Client(url, token, max_attempts=40) as client:
        client.on_status = lambda status, attempt, delay: status == "reconnecting" and print(
            f"\x1b[33m(reconnecting, attempt {attempt}, next in {delay:.1f}s)\x1b[0m", file=sys.stderr)
        transcript = Transcript()
        final = "turn.failed"
        try:
            async for envelope in client.turn(session, message, lane="quick" if quick else "main"):
                transcript.apply_envelope(envelope)
                _print_event(envelope, sys.stdout)
                final = envelope["type"]
        except StreamFailed as exc:
            print(f"agentwire chat: {exc}", file=sys.stderr)
            return 1
        return 0 if final == "turn.completed" else 1


async def tail_command(url: str, token: str | None, stream: str, from_: int | None, raw: bool) -> int:
    async with Client(url, token) as client:
        try:
            async for envelope in client.follow(stream, None if from_ is None else max(0, from_ - 1)):
                if raw:
                    print(orjson.dumps(envelope).decode(), flush=True)
                else:
                    seq = envelope.get("seq", "-")
                    print(f"{seq:>6} {envelope['type']:<16} {orjson.dumps(envelope.get('data')).decode()[:160]}",
                          flush=True)
        except StreamFailed as exc:
            print(f"agentwire tail: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 0
    return 0
