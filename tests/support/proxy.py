"""A TCP proxy on 127.0.0.1 that a test controls: it forwards bytes both ways and, on request, cuts a
connection after exactly N bytes went downstream (server → client), pauses all forwarding, or drops
every open connection at once. It runs its own event loop in a thread, so sync and async tests can
use it alike:

    with TcpProxy(server_port) as proxy:
        proxy.plan_cuts([1200, 40])   # 1st new connection cut after 1200 bytes, 2nd after 40
        ... connect to proxy.port ...
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TypeVar

_CHUNK = 65536
T = TypeVar("T")


class _Connection:
    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter, budget: int | None,
                 reset: bool) -> None:
        self.client = client
        self.upstream = upstream
        self.budget = budget  # downstream bytes still allowed before the cut; None: no cut
        self.reset = reset
        self.sent_down = 0
        self.closed = False

    def close(self, *, reset: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        for writer in (self.client, self.upstream):
            if reset:
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    # SO_LINGER 0: close() sends RST instead of FIN, as a dying peer or a NAT would.
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.connections_made = 0
        self.cuts_done = 0
        self._cuts: deque[int] = deque()
        self._reset_on_cut = False
        self._open: set[_Connection] = set()
        self._loop = asyncio.new_event_loop()
        self._resume = asyncio.Event()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    # control (thread-safe)

    def start(self) -> TcpProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def plan_cuts(self, offsets: Iterable[int], *, reset: bool = False) -> None:
        """The next new connections are cut after these many downstream bytes, one offset each, in
        order; connections after the plan runs out are not cut. `reset` cuts with RST, not FIN."""
        values = list(offsets)
        if any(value < 0 for value in values):
            raise ValueError("cut offsets must be >= 0")

        def plan() -> None:
            self._cuts = deque(values)
            self._reset_on_cut = reset

        self._call(plan)

    def pause(self) -> None:
        """Stop forwarding in both directions (bytes wait in the sockets) until `resume`."""
        self._call(self._resume.clear)

    def resume(self) -> None:
        self._call(self._resume.set)

    def drop_all(self, *, reset: bool = False) -> int:
        """Close every open connection now; returns how many there were."""
        def drop() -> int:
            dropped = [conn for conn in self._open if not conn.closed]
            for conn in dropped:
                conn.close(reset=reset)
            self._open.clear()
            return len(dropped)

        return self._call(drop)

    @property
    def open_connections(self) -> int:
        return self._call(lambda: sum(1 for conn in self._open if not conn.closed))

    def _call(self, fn: Callable[[], T]) -> T:
        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    # the loop side

    async def _listen(self) -> None:
        self._resume.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._open):
            conn.close()
        self._open.clear()
        self._resume.set()
        # Let every connection's handler finish, so none is destroyed pending with the loop.
        handlers = [task for task in self._handlers if not task.done()]
        if handlers:
            _, pending = await asyncio.wait(handlers, timeout=5)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections_made += 1
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        budget = self._cuts.popleft() if self._cuts else None
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.close()
            return
        conn = _Connection(client_writer, up_writer, budget, self._reset_on_cut)
        self._open.add(conn)
        try:
            await asyncio.gather(self._pipe(conn, client_reader, up_writer, down=False),
                                 self._pipe(conn, up_reader, client_writer, down=True))
        finally:
            conn.close()
            self._open.discard(conn)

    async def _pipe(self, conn: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                    down: bool) -> None:
        try:
            if down and conn.budget == 0:
                self._cut(conn)
                return
            while not conn.closed:
                data = await reader.read(_CHUNK)
                if not data:
                    break
                await self._resume.wait()
                if conn.closed:
                    break
                if down and conn.budget is not None:
                    allowed = data[: conn.budget - conn.sent_down]
                    writer.write(allowed)
                    conn.sent_down += len(allowed)
                    if conn.sent_down >= conn.budget:
                        with contextlib.suppress(ConnectionError):
                            await writer.drain()
                        self._cut(conn)
                        return
                else:
                    writer.write(data)
                    if down:
                        conn.sent_down += len(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            # One side ended: end the other (a half-closed proxy would leave the client waiting).
            conn.close()

    def _cut(self, conn: _Connection) -> None:
        self.cuts_done += 1
        conn.close(reset=conn.reset)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
