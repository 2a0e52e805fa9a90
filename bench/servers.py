"""The three servers a case measures (agentwire, the baseline, the limit): each a process of its own,
started fresh for every case in its own session, so that it and anything it starts can be ended."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    HttpStatusError,
    PublishSpec,
    cpu_seconds,
    die_with_parent,
    free_port,
    request_json,
    rss_bytes,
    server_argv,
    stop_group,
)

BENCH_DIR = Path(__file__).resolve().parent
HOST = "127.0.0.1"


# --------------------------------------------------------------------------- targets and servers


@dataclass(frozen=True)
class Target:
    name: str
    script: str
    stream_path: Callable[[int | None], str]  # the SSE path, from an optional `from` position
    replay: bool  # can serve a stream from an old position (journal or in-memory history)
    extra_args: Callable[[Path], list[str]] = lambda workdir: []


def _from(path: str, position: int | None) -> str:
    return path if position is None else f"{path}?from={position}"


TARGETS = [
    Target("agentwire", "agentwire_server.py", lambda p: _from("/api/stream/tasks", p), replay=True,
           extra_args=lambda workdir: ["--journal", f"sqlite:///{workdir / 'bench.db'}"]),
    Target("baseline", "ref_baseline.py", lambda p: "/stream", replay=False),
    Target("limit", "ref_limit.py", lambda p: _from("/stream", p), replay=True),
]


class ServerError(RuntimeError):
    pass


class Server:
    """A target's server process, in its own session so that it and anything it starts can be ended."""

    def __init__(self, target: Target, workdir: Path) -> None:
        self.target = target
        self.workdir = workdir / f"{target.name}-{time.monotonic_ns()}"
        self.workdir.mkdir()
        self.port = free_port(HOST)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "server.log"

    def __enter__(self) -> Server:
        argv = server_argv([sys.executable, str(BENCH_DIR / self.target.script), "--host", HOST,
                            "--port", str(self.port), *self.target.extra_args(self.workdir)])
        with open(self.log_path, "wb") as log_file:
            self.proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=BENCH_DIR, start_new_session=True, preexec_fn=die_with_parent)
        try:
            self._wait_ready(30.0)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise ServerError(f"{self.target.name} exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                self.request("GET", "/bench/stats", timeout=2.0)
                return
            except (OSError, ServerError, HttpStatusError):
                if time.monotonic() > deadline:
                    raise ServerError(
                        f"{self.target.name} not ready after {timeout:.0f} s: {self.log_tail()}") from None
                time.sleep(0.1)

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        stop_group(self.proc)

    def request(self, method: str, path: str, timeout: float) -> dict[str, Any]:
        return request_json(self.port, method, path, timeout)

    def publish(self, spec: PublishSpec, timeout: float) -> dict[str, Any]:
        return self.request("POST", f"/bench/publish?{spec.query()}", timeout)

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss(self) -> int:
        return rss_bytes(self.pid)
