"""Read SSE from a server the way a browser would, and parse it with the client's own `SseParser`.

`SseStream` speaks HTTP/1.1 over a raw socket, so a test sees exactly what went over the wire (status
line, headers, chunk by chunk), can read nothing at all (a stalled client), can shrink its receive
buffer, and notices a cut connection. `httpx_sse` is the same for an `httpx.Client`.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson

from agentwire.client import SseMessage, SseParser
from tests.support.eventually import eventually

Predicate = Callable[[SseMessage], bool]


def parse_sse(raw: bytes) -> list[SseMessage]:
    """Every complete message in `raw` (a trailing incomplete one is dropped, as a browser does)."""
    return SseParser().feed(raw)


def envelope(message: SseMessage) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(message.data)
    return data


def is_event(message: SseMessage) -> bool:
    """A journaled event (it has an id and a seq), not `stream.open`/`stream.reset`."""
    return message.id is not None and message.event not in ("stream.open", "stream.reset")


def seq_of(message: SseMessage) -> int:
    """The seq of a journaled event (its SSE id)."""
    assert message.id is not None, f"{message.event} has no id: not a journaled event"
    return int(message.id)


def of_type(*types: str) -> Predicate:
    return lambda message: message.event in types


class _Dechunker:
    """Incremental `Transfer-Encoding: chunked` decoder."""

    def __init__(self) -> None:
        self._buffer = b""
        self._left = 0  # bytes of the current chunk still to come
        self._crlf = False  # the CRLF after a chunk's data is still to come
        self.done = False

    def feed(self, data: bytes) -> bytes:
        self._buffer += data
        out = bytearray()
        while not self.done:
            if self._crlf:
                if len(self._buffer) < 2:
                    break
                if self._buffer[:2] != b"\r\n":
                    raise ValueError(f"bad chunk terminator {self._buffer[:10]!r}")
                self._buffer = self._buffer[2:]
                self._crlf = False
            if self._left:
                piece = self._buffer[: self._left]
                out += piece
                self._buffer = self._buffer[len(piece) :]
                self._left -= len(piece)
                if self._left:
                    break
                self._crlf = True
                continue
            end = self._buffer.find(b"\r\n")
            if end < 0:
                break
            size = int(self._buffer[:end].split(b";")[0], 16)
            self._buffer = self._buffer[end + 2 :]
            if size == 0:
                self.done = True
                break
            self._left = size
        return bytes(out)


class SseStream:
    """One HTTP request over a raw socket whose response body is parsed as SSE as it arrives.

    `messages` holds every complete SSE message so far, `body` every body byte; `eof` is set once the
    server (or a proxy) ended the connection or the body. A cut in the middle of a message leaves
    that message out, as it must.
    """

    def __init__(self, port: int, path: str, headers: dict[str, str] | None = None, *,
                 method: str = "GET", body: bytes | None = None, host: str = "127.0.0.1",
                 rcvbuf: int | None = None, connect_timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            # Before connect, so the window the client advertises is small from the first segment.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(connect_timeout)
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.head = b""  # the raw status line and headers
        self.body = bytearray()
        self.messages: list[SseMessage] = []
        self.received_at: list[float] = []  # time.time() when the bytes completing each message arrived
        self.eof = False
        self.reset = False  # the connection ended with an error (RST), not a clean end
        self._pending = b""
        self._parser = SseParser()
        self._dechunker: _Dechunker | None = None
        self._length: int | None = None
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Accept: text/event-stream"]
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
            lines.append("Content-Type: application/json")
        try:
            self.sock.connect((host, port))
            self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))
        except (ConnectionResetError, BrokenPipeError):
            # Cut before the request was even sent (a proxy cutting at byte 0): an ended stream.
            # Refused connections still raise: nothing listening is a different failure.
            self.eof = self.reset = True

    # reading

    def _on_data(self, data: bytes, arrived: float) -> list[SseMessage]:
        if self.status is None:
            self._pending += data
            end = self._pending.find(b"\r\n\r\n")
            if end < 0:
                return []
            self.head, data = self._pending[:end], self._pending[end + 4 :]
            self._pending = b""
            status_line, *header_lines = self.head.decode("latin-1").split("\r\n")
            self.status = int(status_line.split(" ", 2)[1])
            for line in header_lines:
                name, _, value = line.partition(":")
                key = name.strip().lower()
                self.headers[key] = (self.headers[key] + ", " if key in self.headers else "") + value.strip()
            if self.headers.get("transfer-encoding", "").lower() == "chunked":
                self._dechunker = _Dechunker()
            elif "content-length" in self.headers:
                self._length = int(self.headers["content-length"])
        if self._dechunker is not None:
            data = self._dechunker.feed(data)
        self.body += data
        new = self._parser.feed(data)
        self.messages.extend(new)
        self.received_at.extend(arrived for _ in new)
        if (self._dechunker is not None and self._dechunker.done) or (
                self._length is not None and len(self.body) >= self._length):
            self.eof = True
        return new

    def read_some(self, timeout: float) -> list[SseMessage]:
        """Whatever arrives within `timeout` (one recv); [] on timeout or at EOF."""
        if self.eof:
            return []
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
            arrived = time.time()
        except TimeoutError:
            return []
        except OSError:
            self.eof = self.reset = True
            return []
        if not data:
            self.eof = True
            return []
        return self._on_data(data, arrived)

    def read_until(self, predicate: Predicate, timeout: float = 15.0) -> SseMessage:
        """Read until a message (already received or new) satisfies `predicate`; TimeoutError if none
        does in time, EOFError if the connection ends first."""
        for message in self.messages:
            if predicate(message):
                return message
        deadline = time.monotonic() + timeout
        while True:
            for message in self.read_some(max(0.01, min(0.5, deadline - time.monotonic()))):
                if predicate(message):
                    return message
            if self.eof:
                raise EOFError(f"stream ended before the awaited message; got {len(self.messages)} messages")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no awaited message within {timeout}s; got {len(self.messages)} messages")

    def read_headers(self, timeout: float = 15.0) -> int:
        deadline = time.monotonic() + timeout
        while self.status is None:
            if self.eof:
                raise EOFError("connection ended before the response headers")
            if time.monotonic() > deadline:
                raise TimeoutError("no response headers in time")
            self.read_some(0.5)
        return self.status

    def read_to_eof(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.eof:
            if time.monotonic() > deadline:
                raise TimeoutError(f"stream still open after {timeout}s")
            self.read_some(0.5)

    def read_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.eof and time.monotonic() < deadline:
            self.read_some(max(0.01, deadline - time.monotonic()))

    # what was read

    @property
    def events(self) -> list[SseMessage]:
        return [message for message in self.messages if is_event(message)]

    @property
    def last_id(self) -> str | None:
        """The id a browser would send as Last-Event-ID (ids of `stream.reset` count too)."""
        ids = [message.id for message in self.messages if message.id is not None]
        return ids[-1] if ids else None

    def json(self) -> Any:
        return orjson.loads(bytes(self.body))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> SseStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Follower(threading.Thread):
    """Reads an `SseStream` in a thread until the connection ends or `stop()`; for tests that need a
    client reading while the test does something else (appending, killing the server)."""

    def __init__(self, stream: SseStream) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            while not self.stream.eof and not self._halt.is_set():
                self.stream.read_some(0.2)
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc

    @property
    def events(self) -> list[SseMessage]:
        return [message for message in list(self.stream.messages) if is_event(message)]

    def wait_for(self, predicate: Callable[[list[SseMessage]], bool], timeout: float = 30.0) -> None:
        """Until `predicate(self.events)` holds; the reader's error, or EOFError if the stream ended first."""
        def met() -> bool:
            if predicate(self.events):
                return True
            if self.error is not None:
                raise self.error
            if not self.is_alive():
                raise EOFError(f"stream ended while waiting; {len(self.events)} events")
            return False

        eventually(met, timeout, f"a condition on the followed stream ({len(self.events)} events at the start)",
                   interval=0.01)

    def stop(self, timeout: float = 10.0) -> None:
        self._halt.set()
        self.join(timeout)
        self.stream.close()


@contextlib.contextmanager
def httpx_sse(client: httpx.Client, path: str, **kwargs: Any) -> Iterator[tuple[httpx.Response,
                                                                               Iterator[SseMessage]]]:
    """`client.stream("GET", path)`, yielding the response and an iterator of its SSE messages."""
    with client.stream(kwargs.pop("method", "GET"), path, **kwargs) as response:
        def messages() -> Iterator[SseMessage]:
            parser = SseParser()
            for chunk in response.iter_raw():
                yield from parser.feed(chunk)

        yield response, messages()
