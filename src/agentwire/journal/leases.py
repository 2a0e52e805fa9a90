"""Leases for journals that belong to one process (memory, SQLite): a dict with expiry times.

Nothing outside this process can hold one, and none survives a restart, which is exactly right:
after a restart every turn the old process ran has lost its owner."""

from __future__ import annotations

import time


class LocalLeases:
    def __init__(self) -> None:
        self._leases: dict[str, tuple[str, float]] = {}

    async def lease(self, key: str, owner: str, ttl: float) -> bool:
        holder = self._leases.get(key)
        now = time.monotonic()
        if holder is not None and holder[0] != owner and holder[1] > now:
            return False
        self._leases[key] = (owner, now + ttl)
        return True

    async def release(self, key: str, owner: str) -> None:
        holder = self._leases.get(key)
        if holder is not None and holder[0] == owner:
            del self._leases[key]
