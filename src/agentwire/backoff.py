"""The one reconnect and retry delay (DESIGN §10; the page's twin is `web/retry.js`): doubling from a
first delay to a cap, with jitter so that clients cut at once do not all come back at once."""

from __future__ import annotations

import random


def doubling(attempt: int, first: float, cap: float) -> float:
    """The delay before retry number `attempt` (1, 2, …): `first`, then twice the last, at most `cap`."""
    return min(cap, first * 2.0 ** max(attempt - 1, 0))


class Backoff:
    """~250 ms growing ×2 to a 15 s cap, ±20 % jitter; `reset()` once a connection opens."""

    def __init__(self, first: float = 0.25, cap: float = 15.0, jitter: float = 0.2) -> None:
        self.first, self.cap, self.jitter, self.attempt = first, cap, jitter, 0

    def next_delay(self) -> float:
        self.attempt += 1
        factor: float = random.uniform(1 - self.jitter, 1 + self.jitter)
        return doubling(self.attempt, self.first, self.cap) * factor

    def reset(self) -> None:
        self.attempt = 0
