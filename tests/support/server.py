"""Start agentwire servers for tests: as a real subprocess (`ServerProcess`, for kill/restart tests)
or in a thread of the test process (`running_app`, cheaper)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import uvicorn

from agentwire.app import create_app
from agentwire.config import Config


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(url: str, timeout: float = 15.0, headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1.0, headers=headers).status_code == 200:
                return
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"server at {url} did not become healthy: {last}")


class ServerProcess:
    """`agentwire serve` in its own process, on a fixed port so it can be restarted in place."""

    def __init__(self, journal: str, *, port: int | None = None, token: str | None = None,
                 args: list[str] | None = None, env: dict[str, str] | None = None,
                 log_path: Path | None = None) -> None:
        self.journal = journal
        self.port = port or free_port()
        self.token = token
        self.args = args or []
        self.env = env or {}
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"} if self.token else {}

    def start(self) -> ServerProcess:
        auth = ["--token", self.token] if self.token else ["--no-auth"]
        cmd = [sys.executable, "-m", "agentwire", "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--journal", self.journal, "--log-level", "warning", *auth, *self.args]
        env = {**os.environ, **self.env}
        if self._log is not None:  # a restart: the previous run's log file is done
            self._log.close()
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self._log = out if self.log_path else None
        self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_healthy(self.url, headers=self.headers)
        except TimeoutError:
            self.kill()
            raise
        return self

    def terminate(self, timeout: float = 5.0) -> float:
        """SIGTERM; returns how long the process took to exit."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout)
        return time.monotonic() - started

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.terminate()
            self.kill()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _ThreadServer(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the test process keeps its own handlers
        pass


@contextlib.contextmanager
def running_app(config: Config | None = None, **overrides: object) -> Iterator[tuple[str, Config]]:
    """Serve `create_app(config)` on a free port in a background thread; yields (url, config)."""
    if config is None:
        values: dict[str, object] = {"port": free_port(), "journal": "memory://", "no_auth": True}
        values.update(overrides)
        config = Config(**values)  # type: ignore[arg-type]
    app = create_app(config)
    server = _ThreadServer(uvicorn.Config(app, host="127.0.0.1", port=config.port, loop="asyncio",
                                          http="httptools", ws="websockets-sansio", log_level="warning",
                                          ws_per_message_deflate=False, ws_max_size=config.max_body,
                                          timeout_graceful_shutdown=1))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(server.serve(),), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{config.port}"
    try:
        headers = {"authorization": f"Bearer {config.token}"} if config.token else None
        wait_healthy(url, headers=headers)
        yield url, config
    finally:
        # As `agentwire serve` does on SIGTERM: end open streams, then let uvicorn stop.
        loop.call_soon_threadsafe(app.state.ctx.hub.close)
        server.should_exit = True
        thread.join(10)
        loop.close()
