"""Which node owns each open turn, and the sweep that ends the turns of a node that died.

A node holds a lease on every turn it runs or queues (taken before the turn's first event is stored,
renewed while it lives). A turn whose lease lapsed belongs to a node that died: the first node to take
its lease writes `turn.failed {"error": "interrupted"}`. On one process (SQLite, memory) no lease
survives a restart, so at start every open turn is interrupted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from agentwire.console.lanes import Turn
from agentwire.hub import Hub
from agentwire.types import AgentwireError, Append, Doc, session_stream

log = logging.getLogger("agentwire.console")


class Ownership:
    def __init__(self, hub: Hub, node: str, lease_seconds: float, turns: Callable[[], Iterable[Turn]]) -> None:
        self.hub = hub
        self.node = node
        self.lease_seconds = lease_seconds
        self._turns = turns  # this node's open turns (running or queued)
        # This node's turns that ended while their terminal event could not be stored: the sweep
        # records their end once the journal is back.
        self.unrecorded: set[str] = set()

    async def take(self, turn_id: str) -> bool:
        return await self.hub.journal.lease("turn:" + turn_id, self.node, self.lease_seconds)

    async def give_up(self, turn_id: str) -> None:
        await self.hub.journal.release("turn:" + turn_id, self.node)

    async def recover_interrupted(self) -> None:
        """Turns whose owner is gone are marked failed, so no viewer waits forever."""
        for doc in await self.hub.journal.list_docs("turn"):
            # This node's own turns are alive unless their end could not be recorded.
            mine = doc.get("node") == self.node and doc["id"] not in self.unrecorded
            if mine or not await self.take(doc["id"]):
                continue
            try:
                # Its owner may have ended the turn and given the lease up since the list was read;
                # the terminal event deletes the doc before the lease is released, so a turn whose
                # doc is still there now that this node holds the lease really is interrupted.
                if await self.hub.journal.get_doc("turn", doc["id"]) is not None:
                    await self.hub.append(Append(
                        session_stream(doc["session"]), "turn.failed", {"error": "interrupted"}, turn=doc["id"],
                        lane=doc.get("lane", "main"), doc=Doc("turn", doc["id"], None)))
                    log.info("turn %s of %s was interrupted: its node %s is gone", doc["id"], doc["session"],
                             doc.get("node"))
                self.unrecorded.discard(doc["id"])
            finally:
                await self.give_up(doc["id"])

    async def keep(self) -> None:
        """Renew this node's leases every third of a lease, and sweep for dead nodes' turns; forever."""
        period = self.lease_seconds / 3
        loop = asyncio.get_running_loop()
        # While the journal is away no lease is renewed, so after an outage longer than a lease every
        # lease has lapsed, also those of turns that are alive (quiet meanwhile, e.g. in a long tool
        # call). Sweeping waits a lease time after the last failed round: by then every live node
        # has taken its own leases again (it renews every period), so only dead nodes' turns are left.
        sweep_after = 0.0
        while True:
            await asyncio.sleep(period)
            try:
                for turn in list(self._turns()):
                    if not await self.take(turn.id):
                        log.warning("lost the lease of turn %s", turn.id)
                if loop.time() >= sweep_after:
                    await self.recover_interrupted()
            except AgentwireError as exc:  # the journal is away; the next round tries again
                log.warning("could not renew turn leases: %s", exc.message)
                sweep_after = loop.time() + self.lease_seconds
            except Exception:  # never let the keeper die: other nodes would take every turn for dead
                log.exception("turn lease round failed")
