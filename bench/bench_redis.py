"""Append throughput of the Redis journal, per process: `python bench/bench_redis.py`.

Starts its own redis-server on a free port (never the system one), then for each batch size runs
`--tasks` concurrent appenders in one process (`append_many` of `batch` events per call, one round
trip each; concurrent calls share round trips through the journal's group commit) and prints events/s.
With `--processes N`, N processes append to the same stream at once and each prints its own rate.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, for tests.support

from agentwire.journal.redis import RedisJournal
from agentwire.types import Append
from tests.support.redis_server import RedisServer

TEXT = "The quick brown fox jumps over the lazy dog. "


async def _append(url: str, stream: str, events: int, batch: int, tasks: int) -> tuple[float, float]:
    """Returns events/s (wall clock) and events per second of this process's CPU time."""
    journal = RedisJournal(url)
    await journal.start()
    per_task = events // tasks

    async def appender(worker: int) -> None:
        done = 0
        while done < per_task:
            n = min(batch, per_task - done)
            await journal.append_many([
                Append(stream, "text.delta", {"block": worker, "text": TEXT, "i": done + k},
                       turn="t_bench", lane="main") for k in range(n)])
            done += n

    started, cpu = time.perf_counter(), time.process_time()
    async with asyncio.TaskGroup() as group:
        for worker in range(tasks):
            group.create_task(appender(worker))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    await journal.close()
    return per_task * tasks / elapsed, per_task * tasks / cpu


def _process(url: str, stream: str, events: int, batch: int, tasks: int,
             out: multiprocessing.Queue[tuple[float, float]]) -> None:
    out.put(asyncio.run(_append(url, stream, events, batch, tasks)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="events per run and process")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 10, 100, 1000])
    parser.add_argument("--tasks", type=int, default=1, help="concurrent appenders per process")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--appendfsync", choices=["no-aof", "everysec", "always"], default="everysec")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-redis-") as directory:
        server = RedisServer(directory, appendonly=args.appendfsync != "no-aof",
                             appendfsync="everysec" if args.appendfsync == "no-aof" else args.appendfsync)
        with server.start():
            print(f"redis-server on port {server.port}, AOF: {args.appendfsync}, "
                  f"{args.processes} process(es) x {args.tasks} task(s)")
            for batch in args.batch:
                events = args.events if batch > 1 else max(args.events // 10, 1000)
                stream = f"bench/{batch}"
                redis_cpu = server.cpu_seconds()
                if args.processes == 1:
                    rates = [asyncio.run(_append(server.url, stream, events, batch, args.tasks))]
                else:
                    out: multiprocessing.Queue[tuple[float, float]] = multiprocessing.Queue()
                    procs = [multiprocessing.Process(target=_process,
                                                     args=(server.url, stream, events, batch, args.tasks, out))
                             for _ in range(args.processes)]
                    for proc in procs:
                        proc.start()
                    rates = [out.get() for _ in procs]
                    for proc in procs:
                        proc.join()
                redis_cpu = server.cpu_seconds() - redis_cpu
                total = sum(rate for rate, _ in rates)
                per_process = ", ".join(f"{rate:,.0f}" for rate, _ in rates)
                per_cpu = ", ".join(f"{rate:,.0f}" for _, rate in rates)
                print(f"batch {batch:>5}: {total:>9,.0f} events/s ({per_process} per process); "
                      f"per CPU second: client {per_cpu}, redis-server {events * len(rates) / redis_cpu:,.0f}")


if __name__ == "__main__":
    main()
