"""One running turn: the `TurnIO` a provider reports through, turned into journaled events with
agent-state tracking and timing."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from agentwire.config import Config
from agentwire.console.lanes import Turn
from agentwire.console.permissions import Permissions
from agentwire.console.timing import TurnClock
from agentwire.console.tools import ToolCall, Tools
from agentwire.hub import Hub
from agentwire.providers import Message, Permission, ToolOutcome, Usage
from agentwire.types import JSON, Append, Doc, Event


@dataclass(frozen=True, slots=True)
class TurnServices:
    """What a running turn uses of the console: where its events go, its tools, its permission
    requests, and the server's address (for the MCP server an agent CLI starts)."""

    hub: Hub
    tools: Tools
    permissions: Permissions
    config: Config


# A group-commit window, as databases have (PostgreSQL's commit_delay): while a turn streams (its last
# batch had at least STREAMING_BATCH events), the next commit waits GATHER_S for more of its events,
# so a transaction carries a hundred or more deltas instead of ~25. Each commit's fixed cost (the
# thread hop, the transaction, the wake-ups) dominated a fast turn: 87k → 114k (1 ms) → ~120-140k
# (2 ms) events/s on the turn bench; 2 ms is far below what a reader of the stream can notice. A
# turn's first event, a slow one's every event, and a flush (permission request, the turn's end)
# never wait.
GATHER_S = 0.002
STREAMING_BATCH = 16


class _EventWriter:
    """Appends a turn's events in order without making the agent wait for each commit.

    A provider streaming deltas faster than the journal commits would otherwise pay one transaction
    per delta; here whatever piles up while a commit is under way goes into the next one. Bounded:
    past `limit` waiting events the agent waits. Delivery is unchanged: subscribers still get an
    event only after the journal stored it. An append that fails is raised at the next `put`.
    """

    def __init__(self, hub: Hub, limit: int = 2048) -> None:
        self.hub = hub
        self.limit = limit
        self._items: list[Append] = []
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._error: BaseException | None = None
        self._flushing = False
        self._task = asyncio.create_task(self._run(), name="turn events")

    async def put(self, item: Append) -> None:
        while self._error is None and len(self._items) >= self.limit:
            self._space.clear()
            await self._space.wait()
        if self._error is not None:
            raise self._error
        self._items.append(item)
        self._drained.clear()
        self._wake.set()

    async def flush(self) -> None:
        self._flushing = True
        try:
            await self._drained.wait()
        finally:
            self._flushing = False
        if self._error is not None:
            raise self._error

    async def _run(self) -> None:
        streaming = False
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._items and self._error is None:
                if streaming and not self._flushing:
                    await asyncio.sleep(GATHER_S)
                batch, self._items = self._items, []
                streaming = len(batch) >= STREAMING_BATCH
                self._space.set()
                try:
                    await self.hub.append_many(batch)
                except Exception as exc:
                    self._error = exc
                    self._items = []
                    self._space.set()
            self._drained.set()

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.wait({self._task})


class TurnRunner:
    """Implements `providers.TurnIO` for one turn: its calls become journaled events, in order."""

    def __init__(self, services: TurnServices, turn: Turn, session: JSON, history: list[Message],
                 resume: JSON | None = None, todo_list: list[JSON] | None = None) -> None:
        self.services = services
        self.turn = turn
        self.turn_id = turn.id
        self.session = turn.session
        self.lane = turn.lane
        self.stream = turn.stream  # a property that builds the name: read once, not per event
        self.message = turn.message
        self.history = history
        self.model = str(session.get("model") or "")
        self.provider = str(session.get("provider") or "")
        self.system = str(session.get("system") or "")
        self.options: JSON = dict(session.get("options") or {})
        self.resume: JSON = dict(resume or {})
        self.cwd = str(self.options.get("cwd") or os.getcwd())
        self.todo_list: list[JSON] = [dict(item) for item in todo_list or []]
        self.finish_data: JSON = {}
        self.tools = services.tools.specs
        self.usage = Usage()
        self.stop_reason = "end_turn"
        self.clock = TurnClock()
        self._llm_calls = 0
        self._tool_calls: dict[str, str] = {}
        self._agent_state = "starting"
        self._tool_started: dict[str, float] = {}
        self._tool_parents: dict[str, str] = {}
        self._writer = _EventWriter(services.hub)
        self._asking = 0  # permission requests waiting for an answer
        self._finishing = False
        self._before_asking = ""

    async def emit(self, type: str, data: JSON) -> None:
        await self._writer.put(Append(self.stream, type, data, self.turn_id, self.lane))

    async def _set_state(self, agent_state: str, **extra: Any) -> None:
        if agent_state == self._agent_state and not extra:
            return
        self._agent_state = agent_state
        await self.emit("state", {
            "agent_state": agent_state, "outstanding_llm_calls": self._llm_calls,
            "outstanding_tool_calls": [{"call_id": k, "name": v} for k, v in self._tool_calls.items()],
            **extra})

    async def state(self, agent_state: str, **extra: Any) -> None:
        await self._set_state(agent_state, **extra)

    @asynccontextmanager
    async def llm_call(self) -> AsyncIterator[None]:
        self._llm_calls += 1
        await self._llm_state()
        try:
            yield
        finally:
            self._llm_calls -= 1
            await self._llm_state()

    async def _llm_state(self) -> None:
        # The count itself is part of the state: show every change, not only the label's.
        self._agent_state = ""
        await self._set_state("waiting_for_model" if self._llm_calls else "working")

    async def thinking(self, block: int, text: str) -> None:
        self.clock.saw_output()
        if self._agent_state != "thinking":  # per delta: skip the call when the state stays
            await self._set_state("thinking")
        await self._writer.put(Append(self.stream, "thinking.delta", {"block": block, "text": text},
                                      self.turn_id, self.lane))

    async def thinking_done(self, block: int, text: str) -> None:
        self.clock.saw_output()
        await self.emit("thinking.done", {"block": block, "text": text})

    # Delta data dicts are made here and never kept, nor changed: the session's fold reads them as
    # given (`Event.given`) instead of decoding each delta's envelope.
    async def text(self, block: int, text: str) -> None:
        self.clock.saw_output()
        if self._agent_state != "writing":  # per delta: skip the call when the state stays
            await self._set_state("writing")
        await self._writer.put(Append(self.stream, "text.delta", {"block": block, "text": text},
                                      self.turn_id, self.lane))

    async def text_done(self, block: int, text: str) -> None:
        self.clock.saw_output()
        await self.emit("text.done", {"block": block, "text": text})

    async def tool_call(self, call_id: str, name: str, input: JSON, parent_call_id: str | None = None) -> None:
        self.clock.saw_output()
        self._tool_calls[call_id] = name
        self._tool_started[call_id] = time.monotonic()
        self._agent_state = ""
        await self._set_state("running_tool")
        data: JSON = {"call_id": call_id, "name": name, "input": input}
        if parent_call_id is not None:
            data["parent_call_id"] = self._tool_parents[call_id] = parent_call_id
        await self.emit("tool.call", data)

    async def tool_result(self, call_id: str, output: str, is_error: bool = False,
                          duration_ms: float | None = None) -> None:
        started = self._tool_started.pop(call_id, None)
        if duration_ms is None:
            duration_ms = (time.monotonic() - started) * 1000 if started is not None else 0.0
        self._tool_calls.pop(call_id, None)
        self.clock.tool_ran(duration_ms)
        data: JSON = {"call_id": call_id, "output": output, "is_error": is_error,
                      "duration_ms": round(duration_ms, 3)}
        if (parent := self._tool_parents.pop(call_id, None)) is not None:
            data["parent_call_id"] = parent
        await self.emit("tool.result", data)
        self._agent_state = ""
        await self._set_state("running_tool" if self._tool_calls else
                              ("waiting_for_model" if self._llm_calls else "working"))

    async def run_tool(self, call_id: str, name: str, input: JSON) -> ToolOutcome:
        await self.tool_call(call_id, name, input)
        started = time.monotonic()
        outcome = await self.services.tools.run(ToolCall(self.turn.session, self.turn.id, self.todos), name, input)
        await self.tool_result(call_id, outcome.output, outcome.is_error, (time.monotonic() - started) * 1000)
        return outcome

    async def ask_permission(self, tool: str, input: JSON, *, call_id: str | None = None,
                             title: str | None = None) -> Permission:
        if self._finishing:  # a late request after the turn's end: nobody could see it
            return Permission(False, "the turn has ended", by="turn_end")
        permissions = self.services.permissions
        self._asking += 1
        if self._asking == 1:
            self._before_asking = self._agent_state
            await self._set_state("waiting_for_permission")
        try:
            # Everything the turn said before the request is stored before it.
            await self._writer.flush()
            return await permissions.ask(self.turn, tool, input, call_id=call_id, title=title)
        finally:
            self._asking -= 1
            if not self._asking and not self._finishing:
                self._agent_state = ""
                await self._set_state(self._before_asking or "working")

    def mcp_command(self) -> tuple[list[str], dict[str, str]]:
        config = self.services.config
        # The agent runs on this node: it reaches the server on the address the server listens on (a
        # wildcard one through loopback), as the session's own client.
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(config.host, config.host)
        env = {"AGENTWIRE_URL": f"http://{f'[{host}]' if ':' in host else host}:{config.port}"}
        if config.token and not config.no_auth:
            env["AGENTWIRE_TOKEN"] = config.token  # in its environment: a command line is public in `ps`
        return [sys.executable, "-m", "agentwire", "mcp", "--session", self.session, "--agent", self.provider], env

    async def board_tool(self, name: str, input: JSON, agent: str) -> ToolOutcome:
        return await self.services.tools.run(ToolCall(self.turn.session, self.turn.id, self.todos, agent), name, input)

    async def todos(self, todos: list[JSON]) -> None:
        self.todo_list = [dict(item) for item in todos]
        await self.emit("todo.updated", {"todos": todos})

    async def remember(self, agent: JSON) -> None:
        # Stored with its event, so the record and the stream cannot disagree; a quick turn's agent
        # has a context of its own and must not become what the main lane resumes.
        doc = Doc("agent", self.session, agent) if self.lane == "main" else None
        await self._writer.put(Append(self.stream, "agent.info", agent, turn=self.turn_id, lane=self.lane,
                                      doc=doc))
        if doc is not None:
            self.resume = dict(agent)

    async def finish(self, type: str, data: JSON) -> Event:
        """The turn's last events: the agent is idle again, then the terminal event (closing its doc).
        Everything the turn emitted is stored before the terminal event is appended."""
        self._finishing = True
        self._llm_calls = 0
        self._tool_calls.clear()
        self._agent_state = ""
        try:
            await self._set_state("idle")
            await self._writer.flush()
            # What the turn still asks is denied before it ends (a cancel, a failure mid-request).
            await self.services.permissions.settle_turn(self.turn, "cancel" if type == "turn.cancelled"
                                                       else "turn_end")
        finally:
            await self._writer.close()
        return await self.services.hub.append(Append(
            self.turn.stream, type, {**self.finish_data, **data, "timing": self.clock.timing()}, turn=self.turn.id,
            lane=self.turn.lane, doc=Doc("turn", self.turn.id, None)))
