"""Running the app on uvicorn (uvloop + httptools), in one process or, on a shared journal, several."""

from __future__ import annotations

import os

import uvicorn
from fastapi import FastAPI

from agentwire.app import create_app
from agentwire.config import Config

# A client that stopped reading holds its connection open until the graceful timeout (the bytes the
# kernel could not send keep the socket busy), so the timeout is what bounds shutdown: 1 s keeps a
# SIGTERM with such streams open well inside 2 s; ordinary requests finish in far less.
_UVICORN = {"loop": "uvloop", "http": "httptools", "ws": "websockets-sansio", "access_log": False,
            "lifespan": "on", "timeout_graceful_shutdown": 1,
            # Frames are encoded once for every subscriber; per-connection compression would undo that
            # (measured: 2.3x the CPU per delivery). Oversized frames are refused before being buffered.
            "ws_per_message_deflate": False}


def app_from_env() -> FastAPI:
    """The app of one `--workers` process: its settings come from the AGENTWIRE_* environment the
    parent wrote, so every worker serves with the same journal and token."""
    return create_app(Config.from_env())


def serve(config: Config) -> int:
    print(f"agentwire serving on {config.login_url}", flush=True)
    print(f"journal: {config.journal}" + (f", {config.workers} workers" if config.workers > 1 else ""), flush=True)
    if config.workers > 1:
        os.environ.update(config.to_env())
        uvicorn.run("agentwire.server:app_from_env", factory=True, host=config.host, port=config.port,
                    workers=config.workers, log_level=config.log_level, ws_max_size=config.max_body, **_UVICORN)  # type: ignore[arg-type]
        return 0
    uvicorn.run(create_app(config), host=config.host, port=config.port, log_level=config.log_level,
                ws_max_size=config.max_body, **_UVICORN)  # type: ignore[arg-type]
    return 0
