"""Console load: many sessions streaming scripted turns to several viewers each, on the real server.

    .venv/bin/python bench/bench_console.py [--sessions 100] [--viewers 5] [--rate 50] [--seconds 10]

One `agentwire serve` process (SQLite journal); every session streams a scripted turn at `rate`
deltas/s and has `viewers` SSE viewers (`GET /api/konsole/{s}/events`) in client processes of their
own. Reported: p50/p99 of delta latency (event `ts`, stamped when the server builds the event, to
its arrival at a viewer), server CPU-seconds per 100k deliveries, events lost, and a quick turn's
time to first event (request sent → `turn.started` received) while the load runs. Prints; asserts
nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from common import (
    call_json,
    cpu_seconds,
    die_with_parent,
    free_port,
    pin_clients,
    raise_nofile,
    server_argv,
    stop_process,
)

HOST = "127.0.0.1"
TS = re.compile(rb'"ts":(\d+)')
SEQ = re.compile(rb'"seq":(\d+)')


async def _viewer(port: int, session: str, after: int, stop_at: float, out: dict[str, Any]) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(f"GET /api/konsole/{session}/events HTTP/1.1\r\nHost: {HOST}\r\nLast-Event-ID: {after}\r\n\r\n"
                 .encode())
    last_seq = after
    buffer = b""
    latencies: list[int] = out["latencies"]
    try:
        while time.time() < stop_at:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), timeout=max(0.1, stop_at - time.time()))
            except TimeoutError:
                break
            if not chunk:
                break
            now = time.time_ns() // 1_000_000
            buffer += chunk
            frames = buffer.split(b"\n\n")
            buffer = frames.pop()
            for frame in frames:
                if b"\ndata: {\"seq\"" not in frame and not frame.startswith(b"id:"):
                    continue
                seq_match, ts_match = SEQ.search(frame), TS.search(frame)
                if seq_match is None or ts_match is None:
                    continue
                seq = int(seq_match.group(1))
                if seq != last_seq + 1:
                    out["gaps"] += 1
                last_seq = seq
                out["delivered"] += 1
                if b"text.delta" in frame:
                    latencies.append(now - int(ts_match.group(1)))
                elif b"event: turn.completed" in frame:
                    out["completed"] += 1
                    return
    finally:
        writer.close()


def _viewers_process(port: int, sessions: list[tuple[str, int]], viewers: int, stop_at: float,
                     pipe: Connection) -> None:
    die_with_parent()
    raise_nofile()
    out: dict[str, Any] = {"latencies": [], "delivered": 0, "gaps": 0, "completed": 0}

    async def main() -> None:
        tasks = [asyncio.create_task(_viewer(port, name, after, stop_at, out))
                 for name, after in sessions for _ in range(viewers)]
        await asyncio.sleep(0.5)
        pipe.send("ready")
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())
    pipe.send(out)


def _quick_first_event(port: int, session: str) -> float:
    body = json.dumps({"message": "quick question"}).encode()
    sock = socket.create_connection((HOST, port), timeout=30)
    started = time.perf_counter()
    sock.sendall(f"POST /api/konsole/{session}/quick HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    received = b""
    while b"turn.started" not in received:
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    elapsed = time.perf_counter() - started
    sock.close()
    return elapsed


def run(sessions: int = 100, viewers: int = 5, rate: float = 50, seconds: float = 10,
        client_processes: int = 2) -> dict[str, Any]:
    raise_nofile()
    workdir = Path(tempfile.mkdtemp(prefix="agentwire-bench-console-"))
    port = free_port()
    server = subprocess.Popen(server_argv([sys.executable, "-m", "agentwire", "serve", "--port", str(port),
                                           "--no-auth", "--journal", f"sqlite:///{workdir / 'console.db'}",
                                           "--log-level", "warning"]),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                call_json(port, "GET", "/healthz")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        deltas = int(rate * seconds)
        names = []
        for index in range(sessions):
            name = f"bench-{index}"
            call_json(port, "POST", "/api/konsole", {"name": name, "options": {
                "deltas": deltas, "delay_ms": 1000 / rate, "tool_calls": 0, "thinking": False}})
            names.append((name, call_json(port, "GET", f"/api/konsole/{name}/state")["head"]))
        call_json(port, "POST", "/api/konsole", {"name": "bench-quick", "options": {"deltas": 5, "delay_ms": 0}})
        stop_at = time.time() + 3 * seconds + 20  # viewers stop at their turn's end, or give up here
        pipes, procs = [], []
        for part in range(client_processes):
            parent, child = multiprocessing.Pipe()
            proc = multiprocessing.Process(target=_viewers_process,
                                           args=(port, names[part::client_processes], viewers, stop_at, child))
            proc.start()
            pipes.append(parent)
            procs.append(proc)
        for pipe in pipes:
            pipe.recv()
        cpu_before = cpu_seconds(server.pid)
        posts = []
        for name, _ in names:  # start every turn; the POST response is not read (the viewers watch)
            sock = socket.create_connection((HOST, port))
            body = json.dumps({"message": "stream for the benchmark"}).encode()
            sock.sendall(f"POST /api/konsole/{name}/stream HTTP/1.1\r\nHost: {HOST}\r\n"
                         f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
            posts.append(sock)
        time.sleep(seconds / 2)
        quick = [_quick_first_event(port, "bench-quick") for _ in range(5)]
        results = [pipe.recv() for pipe in pipes]
        cpu = cpu_seconds(server.pid) - cpu_before
        for proc in procs:
            proc.join(10)
        for sock in posts:
            sock.close()
        latencies = sorted(lat for r in results for lat in r["latencies"])
        delivered = sum(r["delivered"] for r in results)
        viewers_total = sessions * viewers
        completed = sum(r["completed"] for r in results)
        return {
            "sessions": sessions, "viewers": viewers, "rate": rate, "seconds": seconds,
            "delta_p50_ms": statistics.median(latencies) if latencies else None,
            "delta_p99_ms": latencies[int(len(latencies) * 0.99) - 1] if latencies else None,
            "deliveries": delivered, "cpu_s_per_100k": round(cpu / delivered * 100_000, 3) if delivered else None,
            # Lost: a seq a viewer never got (a gap), or a viewer whose turn did not end in time.
            "gaps": sum(r["gaps"] for r in results), "lost": sum(r["gaps"] for r in results)
            + (viewers_total - completed), "viewers_completed": completed, "viewers_total": viewers_total,
            "quick_first_event_ms": [round(q * 1000, 1) for q in quick],
            "quick_first_event_median_ms": round(statistics.median(quick) * 1000, 1),
        }
    finally:
        stop_process(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--viewers", type=int, default=5)
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    print(pin_clients(), flush=True)
    print(json.dumps(run(args.sessions, args.viewers, args.rate, args.seconds), indent=2))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
