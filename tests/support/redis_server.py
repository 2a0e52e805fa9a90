"""A real `redis-server` for tests and benchmarks: its own port on 127.0.0.1 and its own directory,
never the system Redis. It can be stopped (cleanly or killed) and started again in place, with the
same port and data, for restart tests."""

from __future__ import annotations

import atexit
import hashlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from agentwire.journal.redis import RedisJournal
from agentwire.types import Append
from tests.support.eventually import eventually
from tests.support.net import free_port


def redis_server_binary() -> str | None:
    return shutil.which("redis-server")


class RedisServer:
    """`redis-server` with `--save ""` (no RDB snapshots); `appendonly` turns on the AOF, fsynced as
    `appendfsync` says ("always": nothing acknowledged is lost even to a kill -9)."""

    def __init__(self, directory: Path | str, *, port: int | None = None, appendonly: bool = False,
                 appendfsync: str = "always") -> None:
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError("redis-server is not on PATH (Debian: apt-get install redis-server)")
        self.binary = binary
        self.directory = Path(directory)
        self.port = port or free_port()
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        if self.process is not None:
            raise RuntimeError("redis-server is already running")
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
            "--save", "", "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync, "--daemonize", "no", "--logfile", "redis.log",
        ]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        try:
            eventually(self._answers, timeout, f"redis-server on port {self.port} to answer PING")
        except AssertionError:
            self.stop(kill=True)
            raise AssertionError(f"redis-server on port {self.port} did not answer PING: {self._log_tail()}") from None
        return self

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            code, self.process = self.process.returncode, None
            raise RuntimeError(f"redis-server exited with {code}: {self._log_tail()}")
        try:
            return self.command("PING") == b"+PONG"
        except OSError:
            return False

    def stop(self, *, kill: bool = False, timeout: float = 10.0) -> None:
        """SIGTERM (Redis flushes and exits) or, with `kill`, SIGKILL (a crash)."""
        process, self.process = self.process, None
        if process is None:
            return
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self, *, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()

    def command(self, *args: str, timeout: float = 2.0) -> bytes:
        """Send one command (RESP) and return the first line of the reply, e.g. b"+PONG", b"+OK"."""
        payload = f"*{len(args)}\r\n".encode() + b"".join(
            b"$%d\r\n%s\r\n" % (len(arg.encode()), arg.encode()) for arg in args)
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(payload)
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
        return reply.split(b"\r\n", 1)[0]

    def cpu_seconds(self) -> float:
        """CPU time the server has used (Linux /proc), for benchmarks."""
        if self.process is None:
            return 0.0
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def flushall(self) -> None:
        if self.command("FLUSHALL") != b"+OK":
            raise RuntimeError("FLUSHALL failed")

    def _log_tail(self) -> str:
        try:
            return (self.directory / "redis.log").read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def __enter__(self) -> RedisServer:
        return self.start() if self.process is None else self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


_shared: RedisServer | None = None


def shared_redis_server() -> RedisServer:
    """One redis-server for the whole test run (started on first use, stopped at exit)."""
    global _shared
    if _shared is None or _shared.process is None or _shared.process.poll() is not None:
        directory = tempfile.mkdtemp(prefix="agentwire-redis-")
        _shared = RedisServer(directory).start()
        atexit.register(_stop_shared, _shared, directory)
    return _shared


def _stop_shared(server: RedisServer, directory: str) -> None:
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


def redis_journal_factory(where: Path | str, *, retention: int = 0) -> RedisJournal:
    """A `RedisJournal` (not started) on the shared test server, in a key space of its own per
    `where` (e.g. a test's tmp_path): the same `where` opens the same journal again, as a reopened
    file would; different ones never see each other. `make test` installs redis-server; without it
    the test fails rather than skips."""
    space = hashlib.sha1(os.fsencode(where)).hexdigest()[:16]
    return RedisJournal(shared_redis_server().url, retention=retention, prefix=f"agentwire-test:{space}:")


# The Redis journal's own tests (test_journal_redis*.py): one redis-server per test module and a key
# space of its own per test, offered to every test by the root conftest.py.
_spaces = itertools.count()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A key space of this test's own on the module's server."""
    return f"{redis_server.url}?prefix=t{next(_spaces)}:"


async def started(url: str, *, retention: int = 0) -> RedisJournal:
    journal = RedisJournal(url, retention=retention)
    await journal.start()
    return journal


def items(stream: str, n: int, **data: Any) -> list[Append]:
    return [Append(stream, "e", {"i": i, **data}) for i in range(n)]
