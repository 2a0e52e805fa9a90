"""Live agents: one provider per session, kept between its main turns, for providers that keep their
agent process alive (`ProviderInfo.live`, e.g. Claude Code): no cold start per turn.

A session's provider is made on its first main turn, lent to each main turn (the main lane runs one
at a time) and closed once it has been idle for `ttl` seconds, or at shutdown. A provider whose
process is gone — reaped here, crashed, or on another node — starts a new one and resumes the
session's context itself (from `io.resume`), so closing one only costs the next turn a start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from agentwire.background import TaskSet
from agentwire.providers import Provider

log = logging.getLogger("agentwire.agents")


class LiveAgents:
    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._idle: dict[str, tuple[Provider, float]] = {}  # session → (provider, idle since)
        self._busy: dict[str, Provider] = {}
        self._tasks = TaskSet()

    def start(self) -> None:
        self._tasks.spawn(self._reap(), name="live agents reaper")

    def take(self, session: str, make: Callable[[], Provider]) -> Provider:
        """The session's provider for a main turn (its idle one, or a new one); `give_back` after."""
        entry = self._idle.pop(session, None)
        provider = entry[0] if entry is not None else make()
        self._busy[session] = provider
        return provider

    def give_back(self, session: str, provider: Provider) -> None:
        if self._busy.get(session) is provider:
            del self._busy[session]
        self._idle[session] = (provider, asyncio.get_running_loop().time())

    async def drop(self, session: str, provider: Provider) -> None:
        """Close a provider that must not serve another turn (its turn crashed in our own code)."""
        if self._busy.get(session) is provider:
            del self._busy[session]
        await _close(provider)

    def __len__(self) -> int:
        return len(self._idle) + len(self._busy)

    async def reap(self) -> int:
        """Close the providers idle for `ttl` seconds or more; returns how many."""
        now = asyncio.get_running_loop().time()
        old = [s for s, (_, since) in self._idle.items() if now - since >= self.ttl]
        providers = [self._idle.pop(session)[0] for session in old]
        await asyncio.gather(*(_close(p) for p in providers))
        for session in old:
            log.info("closed the idle agent of session %s", session)
        return len(old)

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(min(max(self.ttl / 4, 0.05), 30))
            try:
                await self.reap()
            except Exception:  # never let the reaper die: idle processes would pile up
                log.exception("reaping idle agents failed")

    async def close(self) -> None:
        """Shutdown: close every provider (the console has cancelled their turns already)."""
        await self._tasks.close()
        providers = [p for p, _ in self._idle.values()] + list(self._busy.values())
        self._idle.clear()
        self._busy.clear()
        await asyncio.gather(*(_close(p) for p in providers))


async def _close(provider: Provider) -> None:
    try:
        await provider.close()
    except Exception:
        log.exception("closing a %s agent failed", provider.name)
