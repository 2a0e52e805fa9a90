"""Group commit: appends that arrive while a write is under way go into the next write together."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from agentwire.types import Event, Unavailable

log = logging.getLogger("agentwire.journal")

T = TypeVar("T")
Pending = list[tuple[T, "asyncio.Future[list[Event]]"]]


class GroupCommit(Generic[T]):
    """One writer task per journal. An idle journal writes each append at once; a busy one writes
    everything that queued up during the previous write in one go (one transaction, one pipeline).
    `write` stores a batch and resolves each entry's future with its events (or an error)."""

    def __init__(self, write: Callable[[Pending[T]], Awaitable[None]]) -> None:
        self._write = write
        self._pending: Pending[T] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.closed = False

    @property
    def started(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="journal-writer")

    async def submit(self, item: T) -> list[Event]:
        future: asyncio.Future[list[Event]] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        self._wake.set()
        return await future

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    await self._write(batch)
                except Exception as exc:
                    # `write` answers every future itself; a bug that escapes it must fail this
                    # batch's callers, not end this task and leave every later append waiting.
                    log.exception("journal write failed")
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(Unavailable(f"journal write failed: {exc}"))
            if self.closed:
                return

    async def close(self) -> None:
        """Write what is queued, then stop."""
        self.closed = True
        if self._task is not None:
            self._wake.set()
            await self._task
