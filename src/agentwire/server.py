"""Running the app on uvicorn (uvloop + httptools), in one process or, on a shared journal, several."""

from __future__ import annotations

import os
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from agentwire.app import create_app
from agentwire.config import Config
from agentwire.sse import ABORT_EXTENSION


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, offering one ASGI extension: `scope["extensions"]
    ["agentwire.abort"]["abort"]()` drops the connection at once. uvicorn ends a response the app
    left unfinished with a graceful close, which waits until the client has read what is queued: a
    cut slow subscriber (which stopped reading) would hold its socket open, in CLOSE-WAIT once it
    leaves, and every cut would log "ASGI callable returned without completing response"."""

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = {**self.scope.get("extensions", {}),
                                    ABORT_EXTENSION: {"abort": self.transport.abort}}


def uvicorn_options(config: Config) -> dict[str, Any]:
    """The uvicorn settings agentwire runs with (also what the tests serve with)."""
    return {
        "http": HttpProtocol, "ws": "websockets-sansio", "access_log": False, "lifespan": "on",
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
