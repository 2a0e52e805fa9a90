"""The load client: many raw SSE connections in one process, as cheap per event as Python allows.

A `ClientSpec` says how many connections to open to which path and what to measure:

- `count`: count events (`\\nid: ` occurrences) and note the first event's publish time and when the
  marked last event arrived (throughput of one stream, catch-up);
- `latency`: also record publish→receive latency of every event and check that ids rise by one
  (fan-out);
- `idle`: only open the connections and hold them (memory per connection).

Run by `client_process(spec, pipe)` in a child process: it sends `("ready", {...})` once every
connection has its `stream.open` (or failed), then waits until every connection saw the last
event, `"stop"` arrives on the pipe, or `spec.deadline` seconds pass, and sends `("result", {...})`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import signal
import time
from array import array
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, cast

from common import die_with_parent, raise_nofile

BTS_RE = re.compile(rb'"bts": ?(\d+)')
OPEN_MARK = b"stream.open"
LAST_MARK = b'"last"'


@dataclass(frozen=True, slots=True)
class ClientSpec:
    host: str
    port: int
    path: str
    connections: int
    mode: str  # "count" | "latency" | "idle"
    deadline: float  # seconds, from "ready" until the client gives up waiting
    connect_concurrency: int = 100
    open_timeout: float = 30.0


class Totals:
    """What all connections of the process add up to (latencies in ns)."""

    def __init__(self) -> None:
        self.latencies = array("q")
        self.finished = 0
        self.ended = 0  # connections that are done for any reason (last event, EOF, error)
        self.all_ended = asyncio.Event()
        self.target = 0

    def end(self) -> None:
        self.ended += 1
        if self.ended >= self.target:
            self.all_ended.set()


class SseConnection(asyncio.Protocol):
    def __init__(self, spec: ClientSpec, totals: Totals) -> None:
        self.request = (f"GET {spec.path} HTTP/1.1\r\nHost: {spec.host}:{spec.port}\r\n"
                        "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n").encode()
        self.latency = spec.mode == "latency"
        self.counting = spec.mode != "idle"
        self.totals = totals
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.buf = b""
        self.head_done = False
        self.count = 0
        self.last_id = 0
        self.gaps = 0
        self.repeats = 0
        self.started_ns = time.time_ns()
        self.first_bts = 0
        self.last_recv_ns = 0
        self.finished = False
        self.ended = False
        self.error: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        buf = self.buf + data if self.buf else data
        if not self.head_done:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            status = buf[: buf.find(b"\r\n")]
            if b" 200" not in status:
                self._fail(status.decode("latin-1"))
                return
            self.head_done = True
            buf = buf[end + 2 :]  # keep "\r\n": every event frame then follows a "\n"
        # Complete frames end in a blank line ("\n\n" or "\r\n\r\n"). Cut after the first "\n" of
        # the last one, so that the next frame's first line still follows a "\n" in the next part.
        cut = max(buf.rfind(b"\n\n"), buf.rfind(b"\n\r\n"))
        if cut < 0:
            self.buf = buf
            return
        part, self.buf = buf[: cut + 1], buf[cut + 1 :]
        if not self.opened.done() and OPEN_MARK in part:
            self.opened.set_result(now)
        if self.counting:
            self._count(part, now)

    def _count(self, part: bytes, now: int) -> None:
        if self.latency:
            # str.find instead of regexes: most parts hold one event, and this is the client's hot path.
            pos = part.find(b"\nid: ")
            if pos < 0:
                return
            last = self.last_id
            latencies = self.totals.latencies
            while pos >= 0:
                end = part.find(b"\n", pos + 5)
                seq = int(part[pos + 5 : end])
                if last and seq != last + 1:
                    if seq > last:
                        self.gaps += seq - last - 1
                    else:
                        self.repeats += 1
                last = seq
                self.count += 1
                ts = part.find(b'"bts":', end)
                if ts >= 0:
                    ts += 6
                    stop = part.find(b",", ts)  # "bts" is the first key of the data, "i" follows
                    latencies.append(now - int(part[ts:stop]))  # int() skips the space of stdlib json
                    end = stop
                pos = part.find(b"\nid: ", end)
            self.last_id = last
        else:
            n = part.count(b"\nid: ")
            if not n:
                return
            if not self.count:
                match = BTS_RE.search(part)
                self.first_bts = int(match.group(1)) if match else 0
            self.count += n
        if LAST_MARK in part:
            self.last_recv_ns = now
            self.finished = True
            self.totals.finished += 1
            self._end()

    def _fail(self, error: str) -> None:
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
            self.error = "closed by server" if exc is None else repr(exc)
            if not self.opened.done():
                self.opened.set_exception(ConnectionError(self.error))
        self._end()


async def _open(spec: ClientSpec, totals: Totals, gate: asyncio.Semaphore) -> SseConnection:
    loop = asyncio.get_running_loop()
    conn = SseConnection(spec, totals)
    async with gate:
        try:
            await loop.create_connection(lambda: conn, spec.host, spec.port)
            await asyncio.wait_for(asyncio.shield(conn.opened), spec.open_timeout)
        except (OSError, TimeoutError) as exc:
            if conn.error is None:
                conn.error = repr(exc)
                conn._end()
            if conn.transport is not None:
                conn.transport.abort()
    return conn


async def _run(spec: ClientSpec, pipe: Connection) -> None:
    loop = asyncio.get_running_loop()
    totals = Totals()
    totals.target = spec.connections
    gate = asyncio.Semaphore(spec.connect_concurrency)
    conns = await asyncio.gather(*(_open(spec, totals, gate) for _ in range(spec.connections)))
    for conn in conns:
        if conn.opened.done() and not conn.opened.cancelled():
            conn.opened.exception()  # retrieved: no "exception never retrieved" noise
    errors = [c.error for c in conns if c.error is not None]
    pipe.send(("ready", {"open": len(conns) - len(errors), "errors": errors[:5], "error_count": len(errors)}))

    stop = asyncio.Event()
    loop.add_reader(pipe.fileno(), stop.set)
    waits = [asyncio.ensure_future(stop.wait())]
    if spec.mode != "idle":
        waits.append(asyncio.ensure_future(totals.all_ended.wait()))
    await asyncio.wait(waits, timeout=spec.deadline, return_when=asyncio.FIRST_COMPLETED)
    for waiter in waits:
        waiter.cancel()
    loop.remove_reader(pipe.fileno())
    os.set_blocking(pipe.fileno(), True)  # add_reader made it non-blocking; the result may be megabytes
    with contextlib.suppress(EOFError, OSError):
        if pipe.poll():
            pipe.recv()

    for conn in conns:
        if conn.transport is not None:
            conn.transport.abort()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    first = conns[0] if conns else None
    errors = [c.error for c in conns if c.error is not None and not c.finished]
    pipe.send(("result", {
        "connections": len(conns),
        "received": sum(c.count for c in conns),
        "finished": totals.finished,
        "gaps": sum(c.gaps for c in conns),
        "repeats": sum(c.repeats for c in conns),
        "errors": errors[:5],
        "error_count": len(errors),
        "latencies": totals.latencies.tobytes(),
        "started_ns": first.started_ns if first else 0,
        "first_bts": first.first_bts if first else 0,
        "last_recv_ns": first.last_recv_ns if first else 0,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
    }))


def client_process(spec: ClientSpec, pipe: Connection) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the driver's handler, inherited by fork
    die_with_parent()
    raise_nofile()
    import uvloop

    try:
        uvloop.run(_run(spec, pipe))
    finally:
        pipe.close()


def latencies_from(result: dict[str, Any]) -> array[int]:
    values = array("q")
    values.frombytes(result["latencies"])
    return values
