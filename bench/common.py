"""Shared by the benchmark driver, its load clients and its servers: stdlib only, cheap to import.

Every server under test offers the same bench-only endpoints, so the driver treats them alike:

- `POST /bench/publish?n=&rate=&batch=&seconds=` runs `publish_loop` in the server process and
  answers, once it is done, `{"published": count, "seconds": elapsed}`;
- `GET /bench/stats` answers `{"subscribers": n, "published": seq}` (also the readiness probe).

Each published event's data is `{"bts": <publish time, time.time_ns()>, "i": <index in the run>,
"text": TEXT}`; the run's final event also carries `"last": 1`, which tells clients to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import http.client
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

STREAM = "tasks"
EVENT_TYPE = "bench"
# About the size of one streamed text delta of an agent's answer.
TEXT = "The quick brown fox jumps over the lazy dog. "

PR_SET_PDEATHSIG = 1
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def call_json(port: int, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
    """An API call with a JSON body (or none) on 127.0.0.1; its JSON answer, or HttpStatusError."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body),
                     headers={"content-type": "application/json"})
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    if response.status >= 300:
        raise HttpStatusError(f"{method} {path}: HTTP {response.status} {data[:300]!r}")
    return json.loads(data) if data else None


def stop_process(proc: subprocess.Popen[bytes], grace: float = 10) -> None:
    """SIGTERM, then SIGKILL if it is still there after `grace` seconds."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def stop_group(proc: subprocess.Popen[bytes] | None, grace: float = 10) -> None:
    """End a server started in a session of its own and everything it started: SIGTERM to its
    process group, then SIGKILL if it is still there after `grace` seconds."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


@contextlib.contextmanager
def healthy_server(argv_for: Callable[[int], list[str]], log_dir: Path, what: str,
                   env: Mapping[str, str] | None = None, cwd: Path | None = None,
                   pin: bool = True) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """Start the server `argv_for(port)` on a free port (on the server's core when `pin`), wait for
    its `/healthz`, yield (port, process); SIGTERM (then SIGKILL) on the way out. Its output goes to
    `log_dir/server-<what>-<port>.log`."""
    port = free_port()
    with open(log_dir / f"server-{what}-{port}.log", "wb") as log:
        argv = server_argv(argv_for(port)) if pin else argv_for(port)
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=log,
                                stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    call_json(port, "GET", "/healthz", timeout=1)
                    break
                except OSError as exc:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        tail = Path(log.name).read_text(errors="replace")[-500:]
                        raise RuntimeError(f"{what} did not start: {tail}") from exc
                    time.sleep(0.1)
            yield port, proc
        finally:
            stop_process(proc, 20)


def raise_nofile() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (thousands of sockets); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft
    return target


# Issue 13's figures are taken with the server on one core and its load clients on the others, so
# that they do not take CPU from each other: `pin_clients` (in the driver, before any client is
# forked) and `server_argv` (every server a case starts). Without taskset, or on one core, nothing
# is pinned and the report says so.
SERVER_CPU = 0
# The CPUs this run may use, read before `pin_clients` narrows this process to the clients' ones
# (read after it, one CPU would look like a single-core machine and the servers would share it).
_CPUS = frozenset(os.sched_getaffinity(0))


def pinning() -> bool:
    return shutil.which("taskset") is not None and len(_CPUS) >= 2 and SERVER_CPU in _CPUS


def pin_clients() -> str:
    """Move this process (and so the clients it forks later) off the server's core; says what it did."""
    if not pinning():
        return "not pinned (no taskset or a single core)"
    cpus = set(_CPUS - {SERVER_CPU})
    os.sched_setaffinity(0, cpus)
    return f"pinned: server on CPU {SERVER_CPU} (taskset), load clients on CPU {','.join(map(str, sorted(cpus)))}"


def server_argv(argv: list[str]) -> list[str]:
    """A server's command line, run on the server's own core when pinning."""
    return ["taskset", "-c", str(SERVER_CPU), *argv] if pinning() else argv


def die_with_parent() -> None:
    """Linux: have the kernel send this process SIGTERM when its parent dies, so that a benchmark
    driver killed outright (SIGKILL) leaves no server or client behind. A no-op elsewhere."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        stat = f.read()
    # The command name (field 2) may hold spaces: the fields after it start behind the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / CLK_TCK


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc/<pid>/statm."""
    with open(f"/proc/{pid}/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * PAGE_SIZE


@dataclass(frozen=True, slots=True)
class PublishSpec:
    """One publish run: `n` events in all (the last one marked), `batch` per publish call,
    paced at `rate` events/s (0: as fast as the server takes them), stopped early after `seconds`
    (0: no time limit) by publishing the marked last event at once."""

    n: int
    rate: float = 0.0
    batch: int = 1
    seconds: float = 0.0

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> PublishSpec:
        return cls(
            n=max(1, int(query.get("n", "1"))),
            rate=float(query.get("rate", "0")),
            batch=max(1, int(query.get("batch", "1"))),
            seconds=float(query.get("seconds", "0")),
        )

    def query(self) -> str:
        return urlencode({"n": self.n, "rate": self.rate, "batch": self.batch, "seconds": self.seconds})


Emit = Callable[[list[dict[str, Any]]], Awaitable[None]]


async def publish_loop(spec: PublishSpec, emit: Emit) -> dict[str, Any]:
    """Drive a server's publisher (`emit`, one call per batch of event data) as `spec` says."""
    started = time.perf_counter()
    deadline = started + spec.seconds if spec.seconds > 0 else None
    i = 0
    while i < spec.n:
        if spec.rate > 0:
            delay = started + i / spec.rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        out_of_time = deadline is not None and time.perf_counter() >= deadline
        k = 1 if out_of_time else min(spec.batch, spec.n - i)
        ts = time.time_ns()
        items: list[dict[str, Any]] = [{"bts": ts, "i": i + j, "text": TEXT} for j in range(k)]
        if out_of_time or i + k == spec.n:
            items[-1]["last"] = 1
        await emit(items)
        i += k
        if out_of_time:
            break
        if spec.rate <= 0:
            await asyncio.sleep(0)  # let the writers run between bursts, as a real producer would
    return {"published": i, "seconds": time.perf_counter() - started}


class HttpStatusError(RuntimeError):
    """A bench endpoint answered with an error status."""


def request_json(port: int, method: str, path: str, timeout: float) -> dict[str, Any]:
    """A bench endpoint's JSON answer (the servers under test all offer the same bench routes)."""
    result: dict[str, Any] = call_json(port, method, path, timeout=timeout)
    return result


def split(total: int, parts: int) -> list[int]:
    """`total` load clients over at most `parts` processes, as evenly as they go."""
    parts = max(1, min(parts, total))
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def percentile(sorted_values: list[int], q: float) -> float:
    """The nearest-rank percentile `q` (0..1) of values sorted ascending."""
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))
    return float(sorted_values[index])
