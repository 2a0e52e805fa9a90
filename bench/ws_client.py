"""The WebSocket load client: forked processes that speak raw WebSocket to `/api/ws`, as cheap per
event as Python allows (the SSE twin is `sse_client.py`), and report each delivery's latency."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import resource
import struct
import time
import zlib
from array import array
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, cast

from common import raise_nofile

OPEN_MARK = b'"stream.open"'
LAST_MARK = b'"last"'


@dataclass(frozen=True, slots=True)
class WsSpec:
    host: str
    port: int
    streams: tuple[str, ...]  # subscribed on every connection
    connections: int
    deadline: float
    deflate: bool = False  # offer permessage-deflate, as every browser does
    connect_concurrency: int = 100
    open_timeout: float = 30.0


def _masked(opcode: int, payload: bytes) -> bytes:
    """A client frame (clients must mask); only a few are sent, so plain Python is fine."""
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    elif size < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    return head + mask + body


class _Totals:
    def __init__(self, target: int) -> None:
        self.latencies = array("q")
        self.finished = 0
        self.ended = 0
        self.target = target
        self.all_ended = asyncio.Event()

    def end(self) -> None:
        self.ended += 1
        if self.ended >= self.target:
            self.all_ended.set()


class WsConnection(asyncio.Protocol):
    """One raw WebSocket: handshake, subscribe, then per text frame: seq check per stream, latency."""

    def __init__(self, spec: WsSpec, totals: _Totals) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        offer = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" if spec.deflate else ""
        self.request = (f"GET /api/ws HTTP/1.1\r\nHost: {spec.host}:{spec.port}\r\nUpgrade: websocket\r\n"
                        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                        f"{offer}\r\n").encode()
        self.inflater: Any = None
        self.fresh_inflater = False
        self.subscribes = b"".join(_masked(1, json.dumps({"op": "subscribe", "stream": s}).encode())
                                   for s in spec.streams)
        self.totals = totals
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.open_needed = len(spec.streams)
        self.last_needed = len(spec.streams)
        self.buf = b""
        self.head_done = False
        self.count = 0
        self.last: dict[bytes, int] = {}
        self.gaps = 0
        self.repeats = 0
        self.finished = False
        self.ended = False
        self.error: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        buf = self.buf + data if self.buf else data
        if not self.head_done:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            if b" 101" not in buf[: buf.find(b"\r\n")]:
                self._fail(buf[: buf.find(b"\r\n")].decode("latin-1"))
                return
            self.head_done = True
            response = buf[:end].lower()
            if b"permessage-deflate" in response:
                self.inflater = zlib.decompressobj(-15)
                self.fresh_inflater = b"server_no_context_takeover" in response
            buf = buf[end + 4:]
            assert self.transport is not None
            self.transport.write(self.subscribes)
        pos, size = 0, len(buf)
        while size - pos >= 2:
            opcode = buf[pos] & 0x0F
            length = buf[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2:pos + 4], "big")
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2:pos + 10], "big")
                head = 10
            if size - pos < head + length:
                break
            payload = buf[pos + head:pos + head + length]
            pos += head + length
            if opcode == 1:
                if buf[pos - head - length] & 0x40 and self.inflater is not None:  # RSV1: compressed
                    if self.fresh_inflater:
                        self.inflater = zlib.decompressobj(-15)
                    payload = self.inflater.decompress(payload + b"\x00\x00\xff\xff")
                self._text(payload, now)
            elif opcode == 9 and self.transport is not None:
                self.transport.write(_masked(10, payload))
            elif opcode == 8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self._fail(f"closed by server: {code} {payload[2:].decode(errors='replace')}")
                return
        self.buf = buf[pos:]

    def _text(self, payload: bytes, now: int) -> None:
        if payload.startswith(b'{"seq":'):
            comma = payload.find(b",", 7)
            seq = int(payload[7:comma])
            start = payload.find(b'"stream":"', comma) + 10
            stream = payload[start:payload.find(b'"', start)]
            last = self.last.get(stream, 0)
            if last and seq != last + 1:
                if seq > last:
                    self.gaps += seq - last - 1
                else:
                    self.repeats += 1
            self.last[stream] = seq
            self.count += 1
            ts = payload.find(b'"bts":')
            if ts >= 0:
                self.totals.latencies.append(now - int(payload[ts + 6:payload.find(b",", ts + 6)]))
            if LAST_MARK in payload:
                self.last_needed -= 1
                if self.last_needed == 0:
                    self.finished = True
                    self.totals.finished += 1
                    self._end()
        elif OPEN_MARK in payload:
            self.open_needed -= 1
            if self.open_needed == 0 and not self.opened.done():
                self.opened.set_result(now)

    def _fail(self, error: str) -> None:
        if self.error is None:
            self.error = error
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(error))
        if self.transport is not None:
            self.transport.abort()
        self._end()

    def _end(self) -> None:
        if not self.ended:
            self.ended = True
            self.totals.end()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished and self.error is None:
            self._fail("closed by server" if exc is None else repr(exc))
        self._end()


async def _open(spec: WsSpec, totals: _Totals, gate: asyncio.Semaphore) -> WsConnection:
    loop = asyncio.get_running_loop()
    conn = WsConnection(spec, totals)
    async with gate:
        try:
            await loop.create_connection(lambda: conn, spec.host, spec.port)
            await asyncio.wait_for(asyncio.shield(conn.opened), spec.open_timeout)
        except (OSError, TimeoutError) as exc:
            conn._fail(repr(exc))
    return conn


async def _ws_run(spec: WsSpec, pipe: Connection) -> None:
    loop = asyncio.get_running_loop()
    totals = _Totals(spec.connections)
    gate = asyncio.Semaphore(spec.connect_concurrency)
    conns = await asyncio.gather(*(_open(spec, totals, gate) for _ in range(spec.connections)))
    for conn in conns:
        if conn.opened.done() and not conn.opened.cancelled():
            conn.opened.exception()
    errors = [c.error for c in conns if c.error is not None]
    pipe.send(("ready", {"open": len(conns) - len(errors), "errors": errors[:5], "error_count": len(errors)}))
    stop = asyncio.Event()
    loop.add_reader(pipe.fileno(), stop.set)
    waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(totals.all_ended.wait())]
    await asyncio.wait(waits, timeout=spec.deadline, return_when=asyncio.FIRST_COMPLETED)
    for waiter in waits:
        waiter.cancel()
    loop.remove_reader(pipe.fileno())
    os.set_blocking(pipe.fileno(), True)
    for conn in conns:
        if conn.transport is not None:
            conn.transport.abort()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    errors = [c.error for c in conns if c.error is not None and not c.finished]
    pipe.send(("result", {
        "connections": len(conns), "received": sum(c.count for c in conns), "finished": totals.finished,
        "gaps": sum(c.gaps for c in conns), "repeats": sum(c.repeats for c in conns),
        "errors": errors[:5], "error_count": len(errors), "latencies": totals.latencies.tobytes(),
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
    }))


def ws_client_process(spec: WsSpec, pipe: Connection) -> None:
    raise_nofile()
    import uvloop

    try:
        uvloop.run(_ws_run(spec, pipe))
    finally:
        pipe.close()
