"""The console: what the routes, the WebSocket and the protocol views call. A façade that builds the
parts, starts and stops them, and answers for them; each part is its own module: session documents
and folds (`sessions`), the lane policy (`lanes`), turn leases and the interrupted sweep
(`ownership`), this node's turns from submit to their end (`turns`), one running turn (`turn`),
permission requests, built-in tools, the warm pool and the live agents."""

from __future__ import annotations

import asyncio
from typing import Any

from agentwire.background import TaskSet
from agentwire.config import Config
from agentwire.console.agents import LiveAgents
from agentwire.console.lanes import Lanes, Turn
from agentwire.console.ownership import Ownership
from agentwire.console.permissions import Permissions
from agentwire.console.pool import WarmPool
from agentwire.console.sessions import SessionIn, Sessions, new_id
from agentwire.console.tools import Tools
from agentwire.console.transcript import Transcript
from agentwire.console.turn import TurnServices
from agentwire.console.turns import Turns
from agentwire.hub import Hub
from agentwire.tasks import Board
from agentwire.types import JSON, session_stream

# How long shutdown waits for cancelled turns to record their end and stop their agents (an agent CLI
# gets SIGINT, on which the ones we run stop at once, then SIGTERM and SIGKILL: `process.stop_agent`).
CLOSE_TIMEOUT = 3.0


class Console:
    def __init__(self, hub: Hub, board: Board, config: Config) -> None:
        self.hub = hub
        self.board = board
        self.config = config
        self.tools = Tools(board)
        self.pool = WarmPool(config.quick_pool, ttl=config.agent_ttl)
        self.agents = LiveAgents(config.agent_ttl)
        self.node = new_id("node")
        # Every task the console starts (turns, the lease keeper, requests run to their end for a
        # client that left): `close` ends them all.
        self.tasks = TaskSet()
        self.sessions = Sessions(hub, config, self._prewarm)
        self.permissions = Permissions(hub, self.sessions.view, self.node, config.permission_timeout)
        self.lanes = Lanes()
        self.ownership = Ownership(hub, self.node, config.lease_seconds, self.lanes.open_turns)
        self.turns = Turns(TurnServices(hub, self.tools, self.permissions, config), self.sessions, self.lanes,
                           self.ownership, self.pool, self.agents, self.tasks, config.max_message)
        board.on_choose = self._on_choose

    async def start(self) -> None:
        await self.ownership.recover_interrupted()
        self.tasks.spawn(self.ownership.keep(), name="turn leases")
        self.agents.start()

    async def close(self) -> None:
        """Server shutdown: running turns end as interrupted (their events still reach the journal)."""
        self.lanes.stop("interrupted")
        await self.tasks.close(timeout=CLOSE_TIMEOUT)
        await asyncio.gather(self.pool.close(), self.agents.close())

    # sessions

    async def create_session(self, body: SessionIn) -> JSON:
        return await self.sessions.create(body)

    async def session(self, name: str, *, create: bool = False) -> JSON:
        return await self.sessions.get(name, create=create)

    async def list_sessions(self) -> list[JSON]:
        return await self.sessions.summaries()

    async def view(self, name: str) -> Transcript:
        return await self.sessions.view(name)

    def settings(self, provider: str) -> JSON:
        return self.sessions.settings(provider)

    def _prewarm(self, session: JSON, options: JSON) -> None:
        if self.config.quick_pool:
            self.pool.prewarm(session["provider"], session["model"], options)

    async def state(self, name: str) -> JSON:
        await self.session(name)
        view = await self.view(name)
        position = await self.hub.journal.position(session_stream(name))
        return {
            **view.state, "session": name, "todos": view.todos, "usage": view.usage, "agent": view.agent,
            "running": [_turn_json(t) for t in view.open_turns() if t.status == "running"],
            "queued": [_turn_json(t) for t in view.open_turns() if t.status == "queued"],
            "permissions": view.pending_permissions(),
            "local_queue": [t.id for t in self.lanes.get(name).queue], "epoch": position.epoch,
            "head": position.head,
        }

    # turns

    async def submit(self, name: str, message: str, lane: str = "main", if_busy: str | None = None,
                     origin: JSON | None = None) -> Turn:
        """Start (or queue) a turn; returns once its first event is stored (`turn.first_event`).
        `origin`, if given, goes into `turn.queued`/`turn.started` as is."""
        return await self.turns.submit(name, message, lane, if_busy, origin)

    async def cancel(self, name: str, turn_id: str | None = None, reason: str = "cancelled by user") -> JSON:
        return await self.turns.cancel(name, turn_id, reason)

    async def decide(self, name: str, request_id: str, decision: str, message: str = "",
                     remember: bool = False) -> JSON:
        """A person's answer to a permission request (from any node): `permission.decided`."""
        await self.session(name)
        return await self.permissions.settle(name, request_id, decision, by="user", message=message,
                                             remember=remember)

    async def _on_choose(self, session: str, value: str) -> JSON:
        turn = await self.submit(session, value, "main", "queue")
        assert turn.first_event is not None
        return {"id": turn.id, "session": session, "seq": turn.first_event.seq}


def _turn_json(turn: Any) -> JSON:
    return {"id": turn.id, "lane": turn.lane, "message": turn.message, "status": turn.status,
            "provider": turn.provider, "model": turn.model}
