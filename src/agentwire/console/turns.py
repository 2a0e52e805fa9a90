"""This node's turns, from submit to their terminal event: the lease before the first event, the main
lane's queue handed over in order, the provider each turn runs on (a warm pooled worker for a quick
turn, the session's live agent, or one made for the turn), and the end recorded whatever happens."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from agentwire.background import TaskSet
from agentwire.console.agents import LiveAgents
from agentwire.console.lanes import Lanes, Turn, check_turn_request
from agentwire.console.ownership import Ownership
from agentwire.console.pool import WarmPool
from agentwire.console.sessions import Sessions, new_id
from agentwire.console.turn import TurnRunner, TurnServices
from agentwire.hub import Hub
from agentwire.providers import Provider, check_provider, make_provider
from agentwire.types import JSON, AgentwireError, Append, Conflict, Doc, Event, NotFound

log = logging.getLogger("agentwire.console")


@dataclass
class Turns:
    services: TurnServices  # what a running turn uses: the hub, tools, permissions, config
    sessions: Sessions
    lanes: Lanes
    ownership: Ownership
    pool: WarmPool  # quick turns' workers
    agents: LiveAgents  # the sessions' live agents, kept between main turns
    tasks: TaskSet  # the console's: each turn runs in one
    max_message: int

    @property
    def hub(self) -> Hub:
        return self.services.hub

    async def submit(self, name: str, message: str, lane: str = "main", if_busy: str | None = None,
                     origin: JSON | None = None) -> Turn:
        """Start (or queue) a turn; returns once its first event is stored (`turn.first_event`).
        `origin`, if given, goes into `turn.queued`/`turn.started` as is."""
        when_busy = check_turn_request(message, lane, if_busy, self.max_message)
        session = await self.sessions.get(name, create=True)
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
        return {"id": turn.id, "session": turn.session, "lane": turn.lane, "node": self.ownership.node}

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
                session = await self.sessions.get(turn.session)
                await self._started(turn, session)
            view = await self.sessions.view(turn.session)
            main = turn.lane == "main"
            # Read per turn, not cached: the last turn may have run on another node, or before a restart.
            resume = await self.hub.journal.get_doc("agent", turn.session) if main else None
            runner = TurnRunner(self.services, turn, session, view.history(turn.lane, before_turn=turn.id),
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
        await self.sessions.get(name)
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


def _origin(turn: Turn) -> JSON:
    return {} if turn.origin is None else {"origin": turn.origin}
