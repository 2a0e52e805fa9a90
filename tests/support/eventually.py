"""The suite's one "wait until": poll a check until it holds, fail the test naming what never came.

`eventually` polls from a thread (the test's own, or one beside a server); `eventually_async` polls
from a coroutine on the loop that makes the condition true, so it must yield to it between checks
(`asyncio.sleep`) instead of blocking it. Both return the check's first truthy value, so a wait can
also fetch (`page = eventually(lambda: find_page())`), and both check once more at the deadline: a
busy machine that starved the poller does not fail a condition that did come true in time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Literal, TypeVar

T = TypeVar("T")  # what the check returns once it holds (a falsy `None`/`False` means "not yet")


def eventually(check: Callable[[], T | Literal[False] | None], timeout: float = 30.0, what: str = "",
               interval: float = 0.02) -> T:
    """Call `check()` every `interval` seconds until it returns something truthy; return that.
    AssertionError after `timeout` seconds (an exception `check` raises ends the wait at once)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(_late(check, timeout, what))
        time.sleep(interval)


async def eventually_async(check: Callable[[], T | Literal[False] | None], timeout: float = 10.0, what: str = "",
                           interval: float = 0.005) -> T:
    """`eventually` for a coroutine: sleeps on the loop between checks so the loop's tasks run."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(_late(check, timeout, what))
        await asyncio.sleep(interval)


def _late(check: Callable[[], object], timeout: float, what: str) -> str:
    return f"not within {timeout} s: {what or getattr(check, '__qualname__', repr(check))}"
