"""Running the app on uvicorn (uvloop + httptools), in one process or, on a shared journal, several."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request as WsRequest
from websockets.protocol import State as WsState

from agentwire.app import create_app
from agentwire.config import Config
from agentwire.connection import SINK_EXTENSION
from agentwire.sse import ABORT_EXTENSION


class _NoticesLoss(asyncio.Protocol):
    """A protocol that calls `on_lost` (set by its sink) once when its connection is lost."""

    on_lost: Callable[[], None] | None = None

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        lost = self.on_lost
        if lost is not None:
            self.on_lost = None
            lost()


class _SocketSink:
    """What both sinks share: the transport's buffer, and the protocol's loss notice."""

    __slots__ = ("protocol", "transport")

    def __init__(self, protocol: _NoticesLoss, transport: asyncio.WriteTransport) -> None:
        self.protocol = protocol
        self.transport = transport

    def gone(self) -> bool:
        return self.transport.is_closing()

    def buffered(self) -> int:
        return self.transport.get_write_buffer_size()

    def on_lost(self, callback: Callable[[], None]) -> None:
        if self.gone():
            callback()
        else:
            self.protocol.on_lost = callback


class HttpProtocol(_NoticesLoss, HttpToolsProtocol):
    """uvicorn's httptools protocol, offering two ASGI extensions.

    - `scope["extensions"]["agentwire.abort"]["abort"]()` drops the connection at once. uvicorn
      ends a response the app left unfinished with a graceful close, which waits until the client
      has read what is queued: a cut slow subscriber (which stopped reading) would hold its socket
      open, in CLOSE-WAIT once it leaves, and every cut would log "ASGI callable returned without
      completing response".
    - `scope["extensions"]["agentwire.sink"]["sink"]()`: a `outbox.Sink` that writes body bytes of
      the started response straight to the socket (chunk-framed as uvicorn would), so the hub's
      flusher delivers to every stream in one pass per loop tick, without a writer task or the ASGI
      send chain per message; the connection's loss aborts the outbox attached to it.
    """

    # A response that goes on after the app's call (`BodySink.detach`): incoming bytes are ignored.
    detached = False

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = {**self.scope.get("extensions", {}),
                                    ABORT_EXTENSION: {"abort": self.transport.abort}}

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope:  # not taken for a WebSocket upgrade

            def sink() -> _Sink | None:
                if cycle.response_started and cycle.chunked_encoding and not cycle.response_complete:
                    return _Sink(self, cycle)
                return None

            self.scope["extensions"][SINK_EXTENSION] = {"sink": sink}

    def data_received(self, data: bytes) -> None:
        if not self.detached:
            super().data_received(data)


class _Sink(_SocketSink):
    """The body of one chunked response, written directly (see `HttpProtocol`)."""

    __slots__ = ("cycle", "http")

    def __init__(self, protocol: HttpProtocol, cycle: RequestResponseCycle) -> None:
        super().__init__(protocol, protocol.transport)
        self.http = protocol
        self.cycle = cycle

    def gone(self) -> bool:
        return self.cycle.disconnected or self.transport.is_closing()

    def write(self, data: bytes) -> None:
        # An empty chunk would end the chunked body (a framer may frame a message as nothing).
        if data and not self.transport.is_closing() and not self.cycle.disconnected:
            self.transport.write(b"%x\r\n%b\r\n" % (len(data), data))

    async def drain(self) -> None:
        await self.cycle.flow.drain()

    def detach(self) -> None:
        # uvicorn takes a response marked complete as ended by the app: no "returned without
        # completing response" close, no keep-alive reuse (nor its timer: `on_response` is not run).
        self.cycle.response_complete = True
        self.cycle.keep_alive = False
        self.http.detached = True
        # Nothing reads the request's scope any more (no send, no access log, no next request):
        # let it go with all a framework stored in it, which would otherwise stay per idle stream.
        self.cycle.scope = self.http.scope = {}  # type: ignore[typeddict-item]
        self.http.headers = []

    def end(self, grace: float) -> None:
        transport = self.transport
        if transport.is_closing():
            return
        transport.write(b"0\r\n\r\n")
        transport.close()  # after what is buffered has been sent
        if transport.get_write_buffer_size():
            asyncio.get_running_loop().call_later(grace, transport.abort)

    def drop(self) -> None:
        self.transport.abort()


class WsProtocol(_NoticesLoss, WebSocketsSansIOProtocol):
    """uvicorn's websockets (sans-I/O) protocol, offering the `agentwire.sink` extension too: a
    `outbox.Sink` that writes complete WebSocket frames (built once per event and shared, `ws.py`)
    straight to the socket, on a connection that negotiated no extension (no compression)."""

    def handle_connect(self, event: WsRequest) -> None:
        super().handle_connect(event)
        if self.response.status_code == 101:
            self.scope["extensions"][SINK_EXTENSION] = {"sink": self._sink}  # type: ignore[index]

    def _sink(self) -> _WsSink | None:
        if self.handshake_complete and not self.close_sent and not self.conn.extensions:
            return _WsSink(self)
        return None

class _WsSink(_SocketSink):
    """Frames written directly to an open WebSocket (see `WsProtocol`)."""

    __slots__ = ("ws",)

    def __init__(self, protocol: WsProtocol) -> None:
        super().__init__(protocol, protocol.transport)
        self.ws = protocol

    def gone(self) -> bool:
        return self.ws.disconnected or self.transport.is_closing()

    def write(self, data: bytes) -> None:
        protocol = self.ws
        if data and not protocol.close_sent and not protocol.disconnected and protocol.conn.state is WsState.OPEN:
            self.transport.write(data)

    async def drain(self) -> None:
        await self.ws.writable.wait()


def uvicorn_options(config: Config) -> dict[str, Any]:
    """The uvicorn settings agentwire runs with (also what the tests serve with)."""
    return {
        "http": HttpProtocol, "ws": WsProtocol, "access_log": False, "lifespan": "on",
        # A client that stopped reading holds its connection open until the graceful timeout (the
        # bytes the kernel could not send keep the socket busy), so the timeout is what bounds
        # shutdown: 1 s keeps a SIGTERM with such streams open well inside 2 s.
        "timeout_graceful_shutdown": 1,
        # Frames are encoded once for every subscriber; per-connection compression would undo that
        # (measured: 2.3x the CPU per delivery). Oversized frames are refused before being buffered.
        "ws_per_message_deflate": False, "ws_max_size": config.max_body,
        "log_level": config.log_level,
    }


def app_from_env() -> FastAPI:
    """The app of one `--workers` process: its settings come from the AGENTWIRE_* environment the
    parent wrote, so every worker serves with the same journal and token."""
    return create_app(Config.from_env())


def serve(config: Config) -> int:
    print(f"agentwire serving on {config.login_url}", flush=True)
    print(f"journal: {config.journal}" + (f", {config.workers} workers" if config.workers > 1 else ""), flush=True)
    options = {"host": config.host, "port": config.port, "loop": "uvloop", **uvicorn_options(config)}
    if config.workers > 1:
        os.environ.update(config.to_env())
        uvicorn.run("agentwire.server:app_from_env", factory=True, workers=config.workers, **options)
        return 0
    uvicorn.run(create_app(config), **options)
    return 0
