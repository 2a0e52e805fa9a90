"""Load client processes, forked, each talking to the driver over a pipe; ended on exit whatever
happened. Used by every benchmark case: `Clients(specs)` runs `sse_client.client_process` for each
spec, `Clients(jobs)` takes (target function, spec) pairs (the WebSocket client)."""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any

from sse_client import client_process

Job = tuple[Callable[[Any, Connection], None], Any]


class Clients:
    """Load client processes (forked); ended on exit whatever happened."""

    def __init__(self, specs: Sequence[Any]) -> None:
        self.jobs: list[Job] = [spec if isinstance(spec, tuple) else (client_process, spec) for spec in specs]
        self.procs: list[multiprocessing.process.BaseProcess] = []
        self.pipes: list[Connection] = []

    def __enter__(self) -> Clients:
        mp = multiprocessing.get_context("fork")
        for target, spec in self.jobs:
            parent, child = mp.Pipe()
            proc = mp.Process(target=target, args=(spec, child), daemon=True)
            proc.start()
            child.close()
            self.procs.append(proc)
            self.pipes.append(parent)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for proc in self.procs:
            proc.join(0 if exc_type else 5)
            if proc.is_alive():
                proc.terminate()
                proc.join(3)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for pipe in self.pipes:
            pipe.close()

    def receive(self, kind: str, timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        out = []
        for proc, pipe in zip(self.procs, self.pipes, strict=True):
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"a load client sent no {kind!r} within {timeout:.0f} s (alive: {proc.is_alive()})")
            try:
                got, payload = pipe.recv()
            except EOFError as exc:
                raise RuntimeError(f"a load client died (exit code {proc.exitcode})") from exc
            if got != kind:
                raise RuntimeError(f"a load client sent {got!r}, expected {kind!r}")
            out.append(payload)
        return out

    def ready(self, timeout: float) -> list[dict[str, Any]]:
        return self.receive("ready", timeout)

    def results(self, timeout: float) -> list[dict[str, Any]]:
        return self.receive("result", timeout)

    def stop(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send("stop")
