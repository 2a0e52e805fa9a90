"""Running the app on uvicorn (uvloop + httptools), with a shutdown that ends open streams first.

uvicorn waits for open responses before it stops; an SSE response never ends by itself, so on
SIGTERM/SIGINT the hub ends every stream before uvicorn starts waiting.
"""

from __future__ import annotations

import asyncio
import sys
from types import FrameType

import uvicorn

from agentwire.app import create_app
from agentwire.config import Config
from agentwire.hub import Hub


class _Server(uvicorn.Server):
    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        hub = _find_hub(self.config.loaded_app if self.config.loaded else None)
        if hub is not None:
            try:
                asyncio.get_running_loop().call_soon_threadsafe(hub.close)
            except RuntimeError:
                hub.close()
        super().handle_exit(sig, frame)


def _find_hub(app: object) -> Hub | None:
    # uvicorn wraps the app in its own middleware; walk down to the FastAPI app that holds the context.
    for _ in range(10):
        state = getattr(app, "state", None)
        if state is not None and hasattr(state, "ctx"):
            hub: Hub = state.ctx.hub
            return hub
        app = getattr(app, "app", None)
        if app is None:
            return None
    return None


def uvicorn_config(config: Config) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(config), host=config.host, port=config.port, loop="uvloop", http="httptools",
        ws="websockets-sansio", log_level=config.log_level, timeout_graceful_shutdown=2, access_log=False,
        lifespan="on",
    )


def serve(config: Config) -> int:
    server = _Server(uvicorn_config(config))
    print(f"agentwire serving on {config.login_url}", flush=True)
    print(f"journal: {config.journal}", flush=True)
    server.run()
    return 0 if server.started or not sys.exc_info()[0] else 1
