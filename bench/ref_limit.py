"""Reference server "limit": a bare asyncio server, no framework, as fast as Python gets.

`asyncio.start_server` (on uvloop) with minimal HTTP/1.1 parsing. Each event is encoded once
(orjson) into its `id:/event:/data:` frame, the same bytes are written to every client, and kept in
an in-memory list, so `GET /stream?from=N` can replay them (the ceiling for a journal's catch-up).
Backpressure is the simplest possible: a client whose socket buffer passes 256 KiB makes the
publisher wait for it (only an unpaced single-stream burst ever gets there).

    python bench/ref_limit.py --port 8002
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from typing import Any
from urllib.parse import parse_qsl

import orjson
import uvloop

from common import EVENT_TYPE, STREAM, PublishSpec, publish_loop, raise_nofile

SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/event-stream; charset=utf-8\r\n"
    b"Cache-Control: no-cache\r\n"
    b"X-Accel-Buffering: no\r\n"
    b"Connection: close\r\n\r\n"
    b"retry: 1000\n\n"
)
HIGH_WATER = 256 * 1024
REPLAY_CHUNK = 1000


class LimitServer:
    def __init__(self) -> None:
        self.clients: set[asyncio.StreamWriter] = set()
        self.history: list[bytes] = []  # frame of seq s at index s - 1

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            path, _, query = target.partition("?")
            params = dict(parse_qsl(query))
            if method == "GET" and path == "/stream":
                await self.stream(reader, writer, params)
            elif method == "POST" and path == "/bench/publish":
                await self.respond(writer, 200, await publish_loop(PublishSpec.from_query(params), self.emit))
            elif method == "GET" and path == "/bench/stats":
                await self.respond(writer, 200, {"subscribers": len(self.clients), "published": len(self.history)})
            else:
                await self.respond(writer, 404, {"error": {"code": "not_found", "message": path}})
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, ConnectionError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def respond(writer: asyncio.StreamWriter, status: int, body: dict[str, Any]) -> None:
        data = orjson.dumps(body)
        writer.write(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                     b"Connection: close\r\n\r\n%s" % (status, len(data), data))
        await writer.drain()

    async def stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     params: dict[str, str]) -> None:
        after = max(0, int(params["from"]) - 1) if "from" in params else len(self.history)
        opened = orjson.dumps({"stream": STREAM, "type": "stream.open",
                               "data": {"head": len(self.history), "from": after + 1}})
        writer.write(SSE_HEAD + b"event: stream.open\ndata: %s\n\n" % opened)
        while after < len(self.history):
            chunk = self.history[after : after + REPLAY_CHUNK]
            after += len(chunk)
            writer.write(b"".join(chunk))
            await writer.drain()
        self.clients.add(writer)  # no await since the last check: nothing published is skipped
        try:
            while await reader.read(4096):
                pass
        finally:
            self.clients.discard(writer)

    async def emit(self, items: list[dict[str, Any]]) -> None:
        frames: list[bytes] = []
        for data in items:
            seq = len(self.history) + len(frames) + 1
            envelope = orjson.dumps({"seq": seq, "stream": STREAM, "type": EVENT_TYPE,
                                     "ts": data["bts"] // 1_000_000, "data": data})
            frames.append(b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, EVENT_TYPE.encode(), envelope))
        self.history.extend(frames)
        blob = b"".join(frames)
        full = []
        for writer in tuple(self.clients):
            transport = writer.transport
            if transport.is_closing():
                self.clients.discard(writer)
                continue
            transport.write(blob)
            if transport.get_write_buffer_size() > HIGH_WATER:
                full.append(writer)
        for writer in full:
            with contextlib.suppress(ConnectionError):
                await writer.drain()


async def serve(host: str, port: int) -> None:
    server = LimitServer()
    listener = await asyncio.start_server(server.handle, host, port, backlog=4096)
    async with listener:
        await listener.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    args = parser.parse_args()
    raise_nofile()
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
