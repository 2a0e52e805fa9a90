"""Owned background tasks: every task a long-lived object starts belongs to its `TaskSet`, which
keeps it until it is done, reads its outcome (so no failure goes unseen as "Task exception was
never retrieved") and, when the owner closes, cancels what is left and waits for it (so nothing
outlives its owner). A task group would cancel every sibling when one fails; these tasks are
independent (one subscriber's catch-up, one queued turn), so one failing must not end the rest."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

from agentwire.types import AgentwireError

T = TypeVar("T")

log = logging.getLogger("agentwire")


class TaskSet:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, work: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if isinstance(error, AgentwireError):  # an answer whose asker is gone (a closed socket)
            log.debug("task %s ended: %s", task.get_name(), error)
        elif error is not None:
            log.error("task %s failed", task.get_name(), exc_info=error)

    def __len__(self) -> int:
        return len(self._tasks)

    def cancel(self) -> None:
        for task in tuple(self._tasks):
            task.cancel()

    async def close(self, timeout: float | None = None) -> None:
        """Cancel every task (also those started meanwhile, e.g. by a task's own cleanup) and wait
        until they have ended, at most `timeout` seconds; one still running then is logged, since a
        task that ignores cancellation is a bug worth seeing."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while running := {task for task in self._tasks if not task.done()}:
            for task in running:
                task.cancel()
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                for task in running:
                    log.error("task %s did not end within %.1f s of being cancelled", task.get_name(), timeout)
                return
            await asyncio.wait(running, timeout=left)
