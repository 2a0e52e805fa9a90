"""The console runtime: sessions, the main lane (one turn at a time, the rest queue) and the quick
lane (at once, on a warm pooled worker with its own context), cancellation and restart recovery."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
from collections import deque
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentwire.background import TaskSet
from agentwire.config import Config
from agentwire.console.agents import LiveAgents
from agentwire.console.permissions import Permissions
from agentwire.console.pool import WarmPool
from agentwire.console.tools import Tools
from agentwire.console.transcript import Transcript
from agentwire.console.turn import Turn, TurnRunner
from agentwire.hub import Hub
from agentwire.providers import Provider, check_provider, make_provider
from agentwire.tasks import Board, iso_now
from agentwire.types import (
    JSON,
    KONSOLE_PREFIX,
    AgentwireError,
    Append,
    Conflict,
    Doc,
    Event,
    NotFound,
    ValidationFailed,
)

log = logging.getLogger("agentwire.console")

# How long shutdown waits for cancelled turns to record their end and stop their agents (an agent CLI
# gets SIGINT, on which the ones we run stop at once, then SIGTERM and SIGKILL: `process.stop_agent`).
CLOSE_TIMEOUT = 3.0
SESSION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
Lane = Literal["main", "quick"]


class SessionOptions(BaseModel):
    """Per-session agent options, checked here so a typo is a 422, not a surprise mid-turn.
    Scripted: size and speed of its turns; cli: the command to run; LLM providers: limits."""

    model_config = ConfigDict(extra="forbid")
    deltas: Annotated[int, Field(ge=1, le=200_000)] | None = None
    delay_ms: Annotated[float, Field(ge=0, le=60_000)] | None = None
    tool_calls: Annotated[int, Field(ge=0, le=50)] | None = None
    # scripted: bool; anthropic: true, a token budget or "adaptive"; gemini: false turns thoughts off
    thinking: bool | Annotated[int, Field(ge=1024, le=200_000)] | Literal["adaptive"] | None = None
    fail_at: Annotated[int, Field(ge=0)] | None = None
    # scripted: ask permission first, for a Write (true), or the tool named (a permission request)
    ask_permission: bool | Literal["Write", "Edit", "Bash"] | None = None
    command: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=64)] | None = None
    # The working directory of an agent that runs tools (Claude Code, Codex, Gemini CLI); must exist.
    cwd: Annotated[str, Field(min_length=1, max_length=4096)] | None = None
    # What an agent CLI may do (codex, gemini-cli): "read-only" (default: its own safe headless mode) or
    # "full" (no sandbox, never asks). Shown in the session header.
    approval: Literal["read-only", "full"] | None = None
    max_tokens: Annotated[int, Field(ge=1, le=200_000)] | None = None
    max_rounds: Annotated[int, Field(ge=1, le=100)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None
    rate_limit_retries: Annotated[int, Field(ge=0, le=20)] | None = None
    rate_limit_max_wait_s: Annotated[float, Field(ge=0, le=600)] | None = None


class SessionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(pattern=SESSION_NAME.pattern)] | None = None
    provider: str | None = None
    model: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    system: Annotated[str, Field(max_length=50_000)] | None = None
    options: SessionOptions = SessionOptions()


def check_session_name(name: str) -> str:
    if not SESSION_NAME.match(name):
        raise AgentwireError(
            f"bad session name {name[:80]!r}: 1-64 letters, digits, '_', '.', '-', "
            "starting with a letter or digit",
            code="bad_session_name", status=422, field="session")
    return name


def check_cwd(path: str) -> str:
    full = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(full):
        raise AgentwireError(f"options.cwd: no such directory {path[:200]!r}", code="bad_cwd", status=422,
                             field="options.cwd")
    return full


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


@dataclass
class _Lanes:
    main: Turn | None = None
    queue: deque[Turn] = field(default_factory=deque)
    running: dict[str, Turn] = field(default_factory=dict)
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)


class Console:
    def __init__(self, hub: Hub, board: Board, config: Config) -> None:
        self.hub = hub
        self.board = board
        self.config = config
        self.tools = Tools(board)
        self.pool = WarmPool(config.quick_pool, ttl=config.agent_ttl)
        self.agents = LiveAgents(config.agent_ttl)
        self.node = new_id("node")
        self.permissions = Permissions(hub, self.view, self.node, config.permission_timeout)
        self._lanes: dict[str, _Lanes] = {}
        self._views: dict[str, Transcript] = {}
        # Session documents never change once created, so one read per process is enough.
        self._sessions: dict[str, JSON] = {}
        board.on_choose = self._on_choose
        hub.observers.append(self._fold_live)
        # Every task the console starts (turns, the lease keeper, requests run to their end for a
        # client that left): `close` ends them all.
        self.tasks = TaskSet()
        # This node's turns that ended while their terminal event could not be stored.
        self._unrecorded: set[str] = set()

    async def start(self) -> None:
        await self.recover_interrupted()
        self.tasks.spawn(self._keep_leases(), name="turn leases")
        self.agents.start()

    async def close(self) -> None:
        """Server shutdown: running turns end as interrupted (their events still reach the journal)."""
        for lanes in self._lanes.values():
            for turn in lanes.running.values():
                turn.cancel("interrupted")
            lanes.queue.clear()
        await self.tasks.close(timeout=CLOSE_TIMEOUT)
        await asyncio.gather(self.pool.close(), self.agents.close())

    async def recover_interrupted(self) -> None:
        """Turns whose owner is gone are marked failed, so no viewer waits forever.

        A node holds a lease on every turn it runs or queues (taken before the turn's first event is
        stored, renewed while it lives). A turn whose lease lapsed belongs to a node that died: the
        first node to take its lease writes `turn.failed {"error": "interrupted"}`. On one process
        (SQLite, memory) no lease survives a restart, so at start every open turn is interrupted.
        """
        for doc in await self.hub.journal.list_docs("turn"):
            # This node's own turns are alive unless their end could not be recorded (`_end`).
            mine = doc.get("node") == self.node and doc["id"] not in self._unrecorded
            if mine or not await self._lease(doc["id"]):
                continue
            try:
                # Its owner may have ended the turn and given the lease up since the list was read;
                # the terminal event deletes the doc before the lease is released, so a turn whose
                # doc is still there now that this node holds the lease really is interrupted.
                if await self.hub.journal.get_doc("turn", doc["id"]) is not None:
                    await self.hub.append(Append(
                        KONSOLE_PREFIX + doc["session"], "turn.failed", {"error": "interrupted"}, turn=doc["id"],
                        lane=doc.get("lane", "main"), doc=Doc("turn", doc["id"], None)))
                    log.info("turn %s of %s was interrupted: its node %s is gone", doc["id"], doc["session"],
                             doc.get("node"))
                self._unrecorded.discard(doc["id"])
            finally:
                await self.hub.journal.release("turn:" + doc["id"], self.node)

    async def _lease(self, turn_id: str) -> bool:
        return await self.hub.journal.lease("turn:" + turn_id, self.node, self.config.lease_seconds)

    async def _keep_leases(self) -> None:
        period = self.config.lease_seconds / 3
        loop = asyncio.get_running_loop()
        # While the journal is away no lease is renewed, so after an outage longer than a lease every
        # lease has lapsed, also those of turns that are alive (quiet meanwhile, e.g. in a long tool
        # call). Sweeping waits a lease time after the last failed round: by then every live node
        # has taken its own leases again (it renews every period), so only dead nodes' turns are left.
        sweep_after = 0.0
        while True:
            await asyncio.sleep(period)
            try:
                for lanes in self._lanes.values():
                    for turn in [*lanes.running.values(), *lanes.queue]:
                        if not await self._lease(turn.id):
                            log.warning("lost the lease of turn %s", turn.id)
                if loop.time() >= sweep_after:
                    await self.recover_interrupted()
            except AgentwireError as exc:  # the journal is away; the next round tries again
                log.warning("could not renew turn leases: %s", exc.message)
                sweep_after = loop.time() + self.config.lease_seconds
            except Exception:  # never let the keeper die: other nodes would take every turn for dead
                log.exception("turn lease round failed")

    # sessions

    async def create_session(self, body: SessionIn) -> JSON:
        name = body.name or new_id("s")
        provider = body.provider or self.config.provider
        options = body.options.model_dump(exclude_none=True)
        info = check_provider(provider, {**options, **self.settings(provider)})
        if await self.hub.journal.get_doc("session", name) is not None:
            raise Conflict(f"session {name!r} exists", code="session_exists")
        if "cwd" in options:
            options["cwd"] = check_cwd(options["cwd"])
        if "command" in options and not self.config.allow_session_command:
            raise AgentwireError(
                "the session option 'command' chooses a program the server runs; this server was not "
                "started with --allow-session-command (AGENTWIRE_ALLOW_SESSION_COMMAND=1), so sessions "
                "use its --cli-command", code="session_command_not_allowed", status=403, field="options.command")
        if provider == "cli" and "command" not in options:
            options["command"] = list(self.config.cli_command)
        model = body.model or (provider == self.config.provider and self.config.model) or info.default_model
        session: JSON = {"name": name, "provider": provider, "model": model,
                         "system": body.system or "", "options": options, "createdAt": iso_now()}
        await self.hub.append(Append(KONSOLE_PREFIX + name, "session.created", {"session": session},
                                     doc=Doc("session", name, session)))
        if self.config.quick_pool:
            self.pool.prewarm(provider, session["model"], self._options(session))
        return session

    def settings(self, provider: str) -> JSON:
        """What the server decides for a provider (its flags: the agent CLI to run), given to it in its
        options. Not stored with a session: a restart with other flags applies to every session."""
        config = self.config
        server: JSON = {"claude": {"claude_bin": config.claude_bin}, "codex": {"codex_bin": config.codex_bin},
                        "gemini-cli": {"gemini_bin": config.gemini_bin}}.get(provider, {})
        return {k: v for k, v in server.items() if v is not None}

    def _options(self, session: JSON) -> JSON:
        """What a session's provider is made with: its options, plus the server's settings for it."""
        return {**session["options"], **self.settings(session["provider"])}

    async def session(self, name: str, *, create: bool = False) -> JSON:
        check_session_name(name)
        found = self._sessions.get(name) or await self.hub.journal.get_doc("session", name)
        if found is not None:
            self._sessions[name] = found
            return found
        if not create:
            raise NotFound(f"no session named {name!r}", code="session_not_found")
        try:
            return await self.create_session(SessionIn(name=name))
        except Conflict:  # created by a concurrent request
            found = await self.hub.journal.get_doc("session", name)
            assert found is not None
            return found

    async def list_sessions(self) -> list[JSON]:
        sessions = sorted(await self.hub.journal.list_docs("session"), key=lambda s: s["createdAt"])
        listed = []
        for session in sessions:
            view = await self.view(session["name"])
            listed.append({**session, "agent_state": view.state.get("agent_state", "idle"),
                           "head": view.seq, "open_turns": len(view.open_turns()),
                           "pending_permissions": len(view.pending_permissions())})
        return listed

    def _fold_live(self, event: Event) -> None:
        """Keep cached folds current as events pass, so retention trimming the journal cannot take
        events out of a session's transcript before anyone asked for it."""
        if event.stream.startswith(KONSOLE_PREFIX):
            view = self._views.get(event.stream[len(KONSOLE_PREFIX):])
            if view is not None and event.seq == view.seq + 1:
                view.apply(event)

    async def view(self, name: str) -> Transcript:
        """The session's fold, brought up to the journal's head (cached; only new events are read)."""
        view = self._views.setdefault(name, Transcript())
        while True:
            page = await self.hub.journal.read(KONSOLE_PREFIX + name, view.seq, 1000)
            for event in page:
                view.apply(event)
            if len(page) < 1000:
                return view

    async def state(self, name: str) -> JSON:
        await self.session(name)
        view = await self.view(name)
        position = await self.hub.journal.position(KONSOLE_PREFIX + name)
        lanes = self._lanes.get(name, _Lanes())
        return {
            **view.state, "session": name, "todos": view.todos, "usage": view.usage, "agent": view.agent,
            "running": [_turn_json(t) for t in view.open_turns() if t.status == "running"],
            "queued": [_turn_json(t) for t in view.open_turns() if t.status == "queued"],
            "permissions": view.pending_permissions(),
            "local_queue": [t.id for t in lanes.queue], "epoch": position.epoch, "head": position.head,
        }

    # turns

    def check_message(self, message: str) -> str:
        if not message.strip():
            raise AgentwireError("message is empty", code="empty_message", status=422, field="message")
        if len(message) > self.config.max_message:
            raise AgentwireError(f"message over {self.config.max_message} characters", code="message_too_large",
                                 status=413, field="message")
        return message

    async def submit(self, name: str, message: str, lane: Lane = "main", if_busy: str = "queue",
                     origin: JSON | None = None) -> Turn:
        """Start (or queue) a turn; returns once its first event is stored (`turn.first_event`).
        `origin`, if given, goes into `turn.queued`/`turn.started` as is."""
        self.check_message(message)
        if if_busy not in ("queue", "reject"):
            raise AgentwireError("if_busy must be 'queue' or 'reject'", code="bad_if_busy", status=422,
                                 field="if_busy")
        session = await self.session(name, create=True)
        lanes = self._lanes.setdefault(name, _Lanes())
        turn = Turn(new_id("t"), name, lane, message, origin=origin)
        # The lease comes before the turn's first event, so no node ever sees an open turn unowned.
        await self._lease(turn.id)
        if lane == "quick":
            lanes.running[turn.id] = turn
            turn.first_event = await self._started(turn, session)
            self._spawn(lanes, turn, session)
            return turn
        if lanes.main is None:
            lanes.main = turn
            lanes.running[turn.id] = turn
            try:
                turn.first_event = await self._started(turn, session)
            except BaseException:
                lanes.main = None
                lanes.running.pop(turn.id, None)
                raise
            self._spawn(lanes, turn, session)
            return turn
        if if_busy == "reject":
            await self.hub.journal.release("turn:" + turn.id, self.node)
            raise Conflict(f"session {name!r} is running turn {lanes.main.id}", code="turn_in_progress")
        turn.first_event = await self.hub.append(Append(
            turn.stream, "turn.queued", {"message": message, "position": len(lanes.queue) + 1, **_origin(turn)},
            turn=turn.id, lane="main", doc=Doc("turn", turn.id, self._turn_doc(turn))))
        # Queued only once `turn.queued` is stored, so `turn.started` can never come before it.
        lanes.queue.append(turn)
        if lanes.main is None:
            self._next(name)
        return turn

    def _turn_doc(self, turn: Turn) -> JSON:
        return {"id": turn.id, "session": turn.session, "lane": turn.lane, "node": self.node}

    async def _started(self, turn: Turn, session: JSON) -> Event:
        return await self.hub.append(Append(
            turn.stream, "turn.started",
            {"message": turn.message, "provider": session["provider"], "model": session.get("model"), **_origin(turn)},
            turn=turn.id, lane=turn.lane, doc=Doc("turn", turn.id, self._turn_doc(turn))))

    def _spawn(self, lanes: _Lanes, turn: Turn, session: JSON | None) -> None:
        lanes.tasks[turn.id] = self.tasks.spawn(self._run(turn, session), name=f"turn {turn.id}")

    def _next(self, name: str) -> None:
        lanes = self._lanes[name]
        lanes.main = None
        if lanes.queue:
            turn = lanes.queue.popleft()
            lanes.main = turn
            lanes.running[turn.id] = turn
            self._spawn(lanes, turn, None)

    async def _run(self, turn: Turn, session: JSON | None) -> None:
        """Run a turn to its terminal event. `session` None: a queued turn, announced here."""
        lanes = self._lanes[turn.session]
        runner: TurnRunner | None = None
        provider: Provider | None = None
        live = False  # a session's live provider, lent by `self.agents`
        crashed = False
        try:
            if session is None:
                session = await self.session(turn.session)
                await self._started(turn, session)
            view = await self.view(turn.session)
            # Read per turn, not cached: the last turn may have run on another node, or before a restart.
            resume = await self.hub.journal.get_doc("agent", turn.session) if turn.lane == "main" else None
            runner = TurnRunner(self, turn, session, view.history(turn.lane, before_turn=turn.id), self.tools.specs,
                                resume, view.lane_todos.get("main", []) if turn.lane == "main" else [])
            name, model, options = session["provider"], session.get("model"), self._options(session)
            if turn.lane == "quick":
                provider = await self.pool.acquire(name, model, options)
            elif check_provider(name, options).live:
                provider = self.agents.take(turn.session, lambda: make_provider(name, model, options))
                live = True
            else:
                provider = make_provider(name, model, options)
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
            await self._fail(turn, runner, str(exc))
        except Exception as exc:
            log.exception("turn %s crashed", turn.id)
            crashed = True
            await self._fail(turn, runner, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            turn.done = True
            lanes.running.pop(turn.id, None)
            lanes.tasks.pop(turn.id, None)
            with contextlib.suppress(AgentwireError):
                await self.hub.journal.release("turn:" + turn.id, self.node)
            if provider is not None and live and not crashed:
                self.agents.give_back(turn.session, provider)
            elif provider is not None and live:
                await self.agents.drop(turn.session, provider)
            elif provider is not None:
                with contextlib.suppress(Exception):
                    await provider.close()
            if lanes.main is turn:
                self._next(turn.session)

    async def _fail(self, turn: Turn, runner: TurnRunner | None, error: str) -> None:
        await self._end(turn, runner, "turn.failed", {"error": error})

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
            self._unrecorded.add(turn.id)

    async def cancel(self, name: str, turn_id: str | None = None, reason: str = "cancelled by user") -> JSON:
        await self.session(name)
        lanes = self._lanes.get(name, _Lanes())
        if turn_id is None:
            turn = lanes.main
            if turn is None:
                raise Conflict("no main turn is running", code="no_running_turn")
        else:
            turn = lanes.running.get(turn_id) or next((t for t in lanes.queue if t.id == turn_id), None)
            if turn is None:
                raise NotFound(f"no running or queued turn {turn_id!r} in session {name!r}", code="turn_not_found")
        if turn in lanes.queue:
            lanes.queue.remove(turn)
            await self.hub.append(Append(turn.stream, "turn.cancelled", {"reason": reason}, turn=turn.id,
                                         lane=turn.lane, doc=Doc("turn", turn.id, None)))
            await self.hub.journal.release("turn:" + turn.id, self.node)
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


def parse_session_in(body: JSON) -> SessionIn:
    try:
        return SessionIn.model_validate(body)
    except ValidationError as exc:
        raise ValidationFailed(exc.errors()) from exc
