"""Warm workers for quick turns: providers made (and, where they can, warmed up) before they are needed."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import orjson

from agentwire.background import TaskSet
from agentwire.providers import Provider, make_provider
from agentwire.types import JSON

log = logging.getLogger("agentwire.pool")


def _key(provider: str, model: str | None, options: JSON) -> str:
    return orjson.dumps([provider, model, options], option=orjson.OPT_SORT_KEYS).decode()


class WarmPool:
    """Keeps up to `size` idle, warmed providers per (provider, model, options).

    A worker serves one quick turn and is then closed: a quick turn has its own context, so nothing
    of one may leak into the next. The pool refills in the background after each acquire. A worker
    idle for `ttl` seconds is closed (a warm agent process holds memory; the next acquire refills).
    """

    def __init__(self, size: int, ttl: float | None = None) -> None:
        self.size = size
        self.ttl = ttl
        self._idle: dict[str, list[Provider]] = {}
        self._filling = TaskSet()
        self._closing = TaskSet()

    async def acquire(self, provider: str, model: str | None, options: JSON) -> Provider:
        key = _key(provider, model, options)
        idle = self._idle.setdefault(key, [])
        worker = idle.pop() if idle else None
        self._refill(key, provider, model, options)
        if worker is None:
            worker = make_provider(provider, model, options)
            await _warm(worker)
        return worker

    def prewarm(self, provider: str, model: str | None, options: JSON) -> None:
        self._refill(_key(provider, model, options), provider, model, options)

    def _refill(self, key: str, provider: str, model: str | None, options: JSON) -> None:
        if self.size <= 0:
            return

        async def fill() -> None:
            idle = self._idle.setdefault(key, [])
            while len(idle) < self.size:
                worker = make_provider(provider, model, options)
                try:
                    await _warm(worker)
                except BaseException as exc:  # cancelled (shutdown) or failed: never leak the worker
                    with contextlib.suppress(Exception):
                        await worker.close()
                    if not isinstance(exc, Exception):
                        raise
                    log.warning("could not warm a %s worker", provider, exc_info=True)
                    return
                idle.append(worker)
                if self.ttl is not None:
                    asyncio.get_running_loop().call_later(self.ttl, self._expire, idle, worker)

        self._filling.spawn(fill(), name=f"warm {provider}")

    def _expire(self, idle: list[Provider], worker: Provider) -> None:
        if worker in idle:
            idle.remove(worker)
            self._closing.spawn(_close(worker), name=f"close idle {worker.name}")

    async def close(self) -> None:
        await self._filling.close(timeout=5)
        workers = []
        for idle in self._idle.values():
            workers += idle
            idle.clear()
        await asyncio.gather(*(_close(worker) for worker in workers))
        await self._closing.close(timeout=5)


async def _close(worker: Provider) -> None:
    try:
        await worker.close()
    except Exception:
        log.warning("could not close a %s worker", worker.name, exc_info=True)


async def _warm(worker: Provider) -> None:
    warm = getattr(worker, "warm", None)
    if warm is not None:
        await warm()
