"""The console: what the routes, the WebSocket and the protocol views call. A façade over the parts,
each its own module: session documents and folds (`sessions`), the lanes (`lanes`), turn ownership
and the interrupted sweep (`ownership`), one running turn (`turn`), permissions, tools, the warm
pool and the live agents. Here: lifecycle, and a turn's course from submit to its terminal event."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from agentwire.background import TaskSet
from agentwire.config import Config
from agentwire.console.agents import LiveAgents
from agentwire.console.lanes import Lanes, Turn, check_turn_request
from agentwire.console.ownership import Ownership
from agentwire.console.permissions import Permissions
from agentwire.console.pool import WarmPool
from agentwire.console.sessions import SessionIn, Sessions, new_id
from agentwire.console.tools import Tools
from agentwire.console.transcript import Transcript
from agentwire.console.turn import TurnRunner, TurnServices
from agentwire.hub import Hub
from agentwire.providers import Provider, check_provider, make_provider
from agentwire.tasks import Board
from agentwire.types import JSON, AgentwireError, Append, Conflict, Doc, Event, NotFound, session_stream

log = logging.getLogger("agentwire.console")

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
        self.sessions = Sessions(hub, config, self._prewarm)
        self.permissions = Permissions(hub, self.sessions.view, self.node, config.permission_timeout)
        self.lanes = Lanes()
        self.ownership = Ownership(hub, self.node, config.lease_seconds, self.lanes.open_turns)
        self._services = TurnServices(hub, self.tools, self.permissions, config)
        board.on_choose = self._on_choose
        # Every task the console starts (turns, the lease keeper, requests run to their end for a
        # client that left): `close` ends them all.
        self.tasks = TaskSet()

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
        when_busy = check_turn_request(message, lane, if_busy, self.config.max_message)
        session = await self.session(name, create=True)
        lanes = self.lanes.of(name)
        turn = Turn(new_id("t"), name, lane, message, origin=origin)
        # The lease comes before the turn's first event, so no node ever sees an open turn unowned.
        await self.ownership.take(turn.id)
        if lanes.runs_now(turn):
            try:
                turn.first_event = await self._started(turn, session)
            except BaseException:
                lanes.ended(turn)
                if lanes.main is turn:
                    self._advance(turn.session)
                raise
            self._spawn(turn, session)
            return turn
        assert lanes.main is not None
        if when_busy == "reject":
            await self.ownership.give_up(turn.id)
            raise Conflict(f"session {name!r} is running turn {lanes.main.id}", code="turn_in_progress")
        turn.first_event = await self.hub.append(Append(
            turn.stream, "turn.queued", {"message": message, "position": len(lanes.queue) + 1, **_origin(turn)},
            turn=turn.id, lane="main", doc=Doc("turn", turn.id, self._turn_doc(turn))))
        # Queued only once `turn.queued` is stored, so `turn.started` can never come before it.
        lanes.queue.append(turn)
        if lanes.main is None:
            self._advance(name)
        return turn

    def _turn_doc(self, turn: Turn) -> JSON:
        return {"id": turn.id, "session": turn.session, "lane": turn.lane, "node": self.node}

    async def _started(self, turn: Turn, session: JSON) -> Event:
        return await self.hub.append(Append(
            turn.stream, "turn.started",
            {"message": turn.message, "provider": session["provider"], "model": session.get("model"), **_origin(turn)},
            turn=turn.id, lane=turn.lane, doc=Doc("turn", turn.id, self._turn_doc(turn))))

    def _advance(self, name: str) -> None:
        if (following := self.lanes.of(name).advance()) is not None:
            self._spawn(following, None)

    def _spawn(self, turn: Turn, session: JSON | None) -> None:
        self.lanes.of(turn.session).tasks[turn.id] = self.tasks.spawn(self._run(turn, session), name=f"turn {turn.id}")

    async def _provider(self, turn: Turn, session: JSON) -> tuple[Provider, bool]:
        """The provider to run `turn` with, and whether it is the session's live one (lent by
        `self.agents`): quick turns take a warm pooled worker, live providers stay between turns."""
        name, model, options = session["provider"], session.get("model"), self.sessions.options(session)
        if turn.lane == "quick":
            return await self.pool.acquire(name, model, options), False
        if check_provider(name, options).live:
            return self.agents.take(turn.session, lambda: make_provider(name, model, options)), True
        return make_provider(name, model, options), False

    async def _run(self, turn: Turn, session: JSON | None) -> None:
        """Run a turn to its terminal event. `session` None: a queued turn, announced here."""
        runner: TurnRunner | None = None
        provider: Provider | None = None
        live = False
        crashed = False
        try:
            if session is None:
                session = await self.session(turn.session)
                await self._started(turn, session)
            view = await self.view(turn.session)
            main = turn.lane == "main"
            # Read per turn, not cached: the last turn may have run on another node, or before a restart.
            resume = await self.hub.journal.get_doc("agent", turn.session) if main else None
            runner = TurnRunner(self._services, turn, session, view.history(turn.lane, before_turn=turn.id),
                                resume, view.lane_todos.get("main", []) if main else [])
            provider, live = await self._provider(turn, session)
            if provider_model := getattr(provider, "model", None):
                runner.model = runner.model or str(provider_model)
            await provider.run(runner)
            await runner.finish("turn.completed", {"stop_reason": runner.stop_reason,
                                                   "usage": runner.usage.as_json()})
        except asyncio.CancelledError:
            reason = turn.cancel_reason or "cancelled"
            if reason == "interrupted":
                await self._end(turn, runner, "turn.failed", {"error": "interrupted"})
            else:
                await self._end(turn, runner, "turn.cancelled", {"reason": reason})
        except AgentwireError as exc:  # ProviderError included: a reason the user should read
            log.info("turn %s failed: %s", turn.id, exc)
            await self._end(turn, runner, "turn.failed", {"error": str(exc)})
        except Exception as exc:
            log.exception("turn %s crashed", turn.id)
            crashed = True
            await self._end(turn, runner, "turn.failed", {"error": f"internal error: {type(exc).__name__}: {exc}"})
        finally:
            turn.done = True
            lanes = self.lanes.of(turn.session)
            lanes.ended(turn)
            with contextlib.suppress(AgentwireError):
                await self.ownership.give_up(turn.id)
            if provider is not None and live and not crashed:
                self.agents.give_back(turn.session, provider)
            elif provider is not None and live:
                await self.agents.drop(turn.session, provider)
            elif provider is not None:
                with contextlib.suppress(Exception):
                    await provider.close()
            if lanes.main is turn:
                self._advance(turn.session)

    async def _end(self, turn: Turn, runner: TurnRunner | None, type: str, data: JSON) -> None:
        try:
            if runner is not None:
                await runner.finish(type, {**data, "usage": runner.usage.as_json()})
            else:
                await self.hub.append(Append(turn.stream, type, data, turn=turn.id, lane=turn.lane,
                                             doc=Doc("turn", turn.id, None)))
        except AgentwireError:
            log.exception("could not record the end of turn %s", turn.id)
            # The lease sweeper (`recover_interrupted`) records it once the journal is back.
            self.ownership.unrecorded.add(turn.id)

    async def cancel(self, name: str, turn_id: str | None = None, reason: str = "cancelled by user") -> JSON:
        await self.session(name)
        lanes = self.lanes.get(name)
        turn = lanes.find(turn_id)
        if turn is None and turn_id is None:
            raise Conflict("no main turn is running", code="no_running_turn")
        if turn is None:
            raise NotFound(f"no running or queued turn {turn_id!r} in session {name!r}", code="turn_not_found")
        if turn in lanes.queue:
            lanes.queue.remove(turn)
            await self.hub.append(Append(turn.stream, "turn.cancelled", {"reason": reason}, turn=turn.id,
                                         lane=turn.lane, doc=Doc("turn", turn.id, None)))
            await self.ownership.give_up(turn.id)
            return {"turn": turn.id, "status": "cancelled"}
        turn.cancel(reason)
        task = lanes.tasks.get(turn.id)
        if task is not None:
            task.cancel()
        return {"turn": turn.id, "status": "cancelling"}

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


def _origin(turn: Turn) -> JSON:
    return {} if turn.origin is None else {"origin": turn.origin}


def _turn_json(turn: Any) -> JSON:
    return {"id": turn.id, "lane": turn.lane, "message": turn.message, "status": turn.status,
            "provider": turn.provider, "model": turn.model}
