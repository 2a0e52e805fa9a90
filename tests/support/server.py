"""The one way tests start an agentwire server: as a real subprocess (`ServerProcess`, for kill/restart
tests) or in a thread of the test process (`served_in_thread` / `running_app`, cheaper). Both wait for
`/healthz`; the thread server also checks its shutdown. The `make_server`/`server` fixtures
(conftest.py) build on `running_app`."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import httpx
import uvicorn

from agentwire.app import create_app
from agentwire.config import Config
from agentwire.server import uvicorn_options
from tests.support.eventually import eventually
from tests.support.net import free_port
from tests.support.sse import SseStream

__all__ = [
    "TOKEN",
    "Served",
    "ServerFactory",
    "ServerProcess",
    "ThreadServer",
    "free_port",
    "running_app",
    "served_in_thread",
    "wait_healthy",
]

TOKEN = "test-token-0123456789"


@dataclass
class Served:
    """A server running in a thread of the test process, and an authorized HTTP client for it."""

    url: str
    config: Config
    http: httpx.Client
    auth: dict[str, str] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return self.config.port

    @property
    def token(self) -> str:
        assert self.config.token is not None
        return self.config.token

    def stream(self, path: str, headers: dict[str, str] | None = None, **kwargs: Any) -> SseStream:
        """Open `path` over a raw socket (with the token, unless `headers` brings its own)."""
        return SseStream(self.port, path, {**self.auth, **(headers or {})}, **kwargs)

    def tasks_head(self) -> int:
        head: int = self.http.get("/api/tasks", params={"limit": 1}).raise_for_status().json()["head"]
        return head


ServerFactory = Callable[..., Served]


def wait_healthy(url: str, timeout: float = 15.0, headers: dict[str, str] | None = None) -> None:
    """Until `GET /healthz` answers 200 (AssertionError after `timeout` s, naming the last failure)."""
    failures: list[str] = []

    def healthy() -> bool:
        try:
            return httpx.get(url + "/healthz", timeout=1.0, headers=headers).status_code == 200
        except httpx.HTTPError as exc:
            failures[:] = [repr(exc)]
            return False

    try:
        eventually(healthy, timeout, interval=0.05)
    except AssertionError:
        raise AssertionError(f"server at {url} did not become healthy in {timeout} s: {failures}") from None


class ServerProcess:
    """`agentwire serve` in its own process, on a fixed port so it can be restarted in place."""

    boot_timeout = 15.0  # seconds `start()` waits for /healthz (`cluster.Node` waits longer)

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
        self._log: BinaryIO | None = None

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
        self._log = open(self.log_path, "ab") if self.log_path else None  # closed by stop() or a restart
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log or subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            wait_healthy(self.url, timeout=self.boot_timeout, headers=self.headers)
        except BaseException:
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


class ThreadServer:
    """`create_app(config)` served as `agentwire serve` serves it, on a loop in a background thread.

    Shutdown is checked: once uvicorn has stopped, no task may be left pending on the loop and the
    loop may have reported nothing ("Task exception was never retrieved", "Task was destroyed but it
    is pending", an exception in a callback); either fails the test that ran the server."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.app = create_app(config)
        options = {**uvicorn_options(config), "log_level": "warning"}
        self.server = _ThreadServer(uvicorn.Config(self.app, host="127.0.0.1", port=config.port, loop="asyncio",
                                                   **options))
        self.loop = asyncio.new_event_loop()
        self.url = f"http://127.0.0.1:{config.port}"
        self.left_pending: list[str] = []
        self.loop_reports: list[str] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        loop.set_exception_handler(self._report)
        loop.run_until_complete(self.server.serve())
        left = asyncio.all_tasks(loop)
        self.left_pending = sorted(f"{task.get_name()}: {task.get_coro()}" for task in left)
        for task in left:  # end them, so the loop closes cleanly whatever the check says
            task.cancel()
        if left:
            loop.run_until_complete(asyncio.wait(left, timeout=5))
        gc.collect()  # a task that failed unseen reports "exception was never retrieved" when collected

    def _report(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.loop_reports.append(f"{context.get('message')}: {context.get('exception')!r} "
                                 f"{context.get('task') or context.get('future') or ''}")

    def start(self) -> ThreadServer:
        self._thread.start()
        headers = {"authorization": f"Bearer {self.config.token}"} if self.config.token else None
        wait_healthy(self.url, headers=headers)
        return self

    def stop(self) -> None:
        """As `agentwire serve` does on SIGTERM: end open streams, then let uvicorn stop."""
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.app.state.ctx.hub.close)
            self.server.should_exit = True
            self._thread.join(15)
        assert not self._thread.is_alive(), "the server did not stop within 15 s"
        self.loop.close()

    def check_shutdown(self) -> None:
        assert self.left_pending == [], f"tasks left pending at shutdown: {self.left_pending}"
        assert self.loop_reports == [], f"the loop reported at shutdown: {self.loop_reports}"


@contextlib.contextmanager
def running_app(config: Config | None = None, **overrides: Any) -> Iterator[tuple[str, Config]]:
    """Serve `create_app(config)` on a free port in a background thread; yields (url, config).
    On leaving, the shutdown is checked (`ThreadServer`)."""
    with served_in_thread(config, **overrides) as served:
        yield served.url, served.config


@contextlib.contextmanager
def served_in_thread(config: Config | None = None, **overrides: Any) -> Iterator[ThreadServer]:
    """Serve `config`, or a `Config` of `overrides` on a free port (memory journal; no auth unless a
    token is given), in a background thread; the shutdown is checked on leaving (`ThreadServer`)."""
    if config is None:
        values: dict[str, Any] = {"port": free_port(), "journal": "memory://", "no_auth": "token" not in overrides}
        config = Config(**{**values, **overrides})
    elif overrides:
        raise TypeError("give a Config or overrides, not both")
    served = ThreadServer(config)
    try:
        yield served.start()
    except BaseException:
        served.stop()
        raise
    served.stop()
    served.check_shutdown()
