"""Claude Code's stream-json messages mapped onto a turn, shared by the `claude` provider (messages
from claude-agent-sdk) and the `cli` provider (lines a subprocess prints). One `StreamJsonTurn` per
turn: `handle()` every message in order, then `complete()`.

- `system`: `init` says what the agent is (version, model, cwd, session id): kept with `io.remember`
  when the turn ends (and at once for a new agent session), with the session id to resume;
  `api_retry` → `state rate_limited` with `retry_in_ms` (Claude Code retries by itself).
- `stream_event` (Anthropic raw stream events, with `--include-partial-messages`): text and thinking
  deltas as they arrive. Content-block indexes restart with each API message, so blocks get our own
  per-turn numbers.
- `assistant`: the complete blocks. A block already streamed gets only its `*.done` (with the full
  text); one never streamed gets its whole text as one delta, then the done. `tool_use` → `tool.call`.
  An API error message (Claude Code's own text for a failed request, `error` set) is not assistant
  text: the turn fails with it, once, from the `result` that follows.
- `user`: `tool_result` → `tool.result`; the todo tools' results update the todo list (`todos.py`).
- `result`: usage; the turn's cost (Claude Code reports a running total per session, so the turn's
  cost is the difference to the total before it); `permission_denials` → the terminal event; an error
  result fails the turn with its message.

Subagent lines (`Task`/`Agent` tool) carry `parent_tool_use_id`: their tool calls are shown with
`parent_call_id`; their prose is not (it reaches the parent call's result). The agent state follows
the conversation: an LLM call is outstanding (`io.llm_call()`) whenever no tool call is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, TypeGuard

import orjson

from agentwire.providers import ProviderError, TurnIO
from agentwire.providers._llm import ModelWait
from agentwire.providers.todos import TODO_TOOLS, TodoList
from agentwire.types import JSON

log = logging.getLogger("agentwire.providers.stream_json")

# Known message types this mapping has nothing to show for.
IGNORED_TYPES = frozenset({"rate_limit_event", "keep_alive", "control_request", "control_response",
                           "control_cancel_request", "tool_progress", "auth_status", "conversation_reset"})
_TOOL_USES = ("tool_use", "server_tool_use", "mcp_tool_use")
_TOOL_RESULTS = ("tool_result", "web_search_tool_result", "mcp_tool_result")


@dataclass(slots=True)
class _Block:
    kind: str  # "text" | "thinking"
    index: int  # our per-turn block number
    text: str = ""
    done: bool = False
    matched: bool = False  # an `assistant` message has covered it


@dataclass(slots=True)
class _Call:
    name: str
    input: JSON


class StreamJsonTurn:
    def __init__(self, io: TurnIO, name: str, label: str, *, cost_before: float = 0.0,
                 info: JSON | None = None) -> None:
        """`name`: the agent's name in `agent.info`; `label`: in error messages; `cost_before`: the
        agent session's running cost before this turn; `info`: more for `agent.info` (e.g. its pid)."""
        self.io = io
        self.name = name
        self.agent = label
        self.cost_before = cost_before
        self.info = dict(info or {})
        self.init: JSON = {}
        self.session_id: str | None = None
        self.result: JSON | None = None
        self.cost_total = cost_before  # the agent's running cost after this turn (once it has a result)
        self.todos = TodoList(io.todo_list)
        self._next_block = {"text": 0, "thinking": 0}
        self._messages: dict[str, list[_Block]] = {}  # streamed blocks per API message id
        self._open: dict[int, _Block] = {}  # content-block index → block, in the current message
        self._current: str | None = None
        self._message_count = 0
        self._calls: dict[str, _Call] = {}  # every tool call shown
        self._running: set[str] = set()  # outstanding tool calls
        self._seen: set[tuple[str, str, str]] = set()  # (message id, kind, text) of completed blocks
        self._model = ModelWait(io)  # an LLM call is outstanding whenever no tool call is
        self._rate_limited = False

    async def start(self) -> None:
        """The prompt is on its way: the agent is waiting for its model."""
        await self._model.begin()

    async def handle(self, obj: JSON) -> bool:
        """Map one message; False if its type is not one Claude Code sends."""
        kind = obj.get("type")
        if kind == "stream_event":
            if not obj.get("parent_tool_use_id"):  # a subagent's partial output: its calls come whole
                await self._stream_event(_dict(obj.get("event")))
        elif kind == "assistant":
            await self._assistant(obj)
        elif kind == "user":
            await self._user(obj)
        elif kind == "system":
            await self._system(obj)
        elif kind == "result":
            self.result = obj
            await self._flush_blocks()
        elif kind not in IGNORED_TYPES:
            return False
        return True

    async def stop(self) -> None:
        """The turn ends without `complete()` (cancelled, or the agent died): no LLM call is open."""
        await self._model.end()

    async def complete(self) -> None:
        """The turn is over (its `result` came, or the agent stopped): close what is open, report
        usage and what the agent keeps, and fail the turn if the agent says it failed."""
        await self._flush_blocks()
        await self._model.end()
        result = self.result
        if result is None:
            return
        io = self.io
        usage = _dict(result.get("usage"))
        total = result.get("total_cost_usd", result.get("cost_usd"))
        cost = None
        if _number(total):
            self.cost_total = float(total)
            cost = self.cost_total - self.cost_before if self.cost_total >= self.cost_before else self.cost_total
        io.usage.add(_int(usage.get("input_tokens")), _int(usage.get("output_tokens")), cost)
        for name in ("cache_creation_input_tokens", "cache_read_input_tokens"):
            if name in usage:
                io.usage.extra[name] = _int(usage.get(name))
        for name in ("duration_ms", "duration_api_ms", "num_turns"):
            if _number(result.get(name)):
                io.usage.extra[name] = result[name]
        if isinstance(result.get("session_id"), str):
            self.session_id = result["session_id"]
        if self.session_id:
            io.usage.extra["session_id"] = self.session_id
        if isinstance(result.get("stop_reason"), str):
            io.stop_reason = result["stop_reason"]
        denials = _list(result.get("permission_denials"))
        if denials:
            io.finish_data["permission_denials"] = [
                {"tool": _str(d.get("tool_name")), "call_id": _str(d.get("tool_use_id")), "input": d.get("tool_input")}
                for d in map(_dict, denials)]
        if self.session_id:
            await self._remember()
        subtype = _str(result.get("subtype")) or "unknown"
        if result.get("is_error") is True or subtype != "success":
            raise ProviderError(self.error_text(result, subtype))

    async def _remember(self) -> None:
        io = self.io
        await io.remember({
            "name": self.name, "version": _str(self.init.get("claude_code_version")) or None,
            "model": _str(self.init.get("model")) or io.model or None, "cwd": _str(self.init.get("cwd")) or io.cwd,
            **self.info, "resume_id": self.session_id, "last_turn": io.turn_id,
            "cost_usd_total": round(self.cost_total, 6)})

    def error_text(self, result: JSON, subtype: str) -> str:
        detail = _str(result.get("result")).strip()
        if not detail:
            errors = [e if isinstance(e, str) else orjson.dumps(e).decode() for e in _list(result.get("errors"))]
            detail = "; ".join(errors)
        status = result.get("api_error_status")
        if status is not None and str(status) not in detail:
            detail = f"API error {status}: {detail}"
        if subtype == "error_max_turns":
            detail = detail or f"reached the maximum number of turns ({result.get('num_turns', '?')})"
        if subtype == "success":
            return f"{self.agent} reported an error: {detail or 'no details'}"
        return f"{self.agent} stopped ({subtype}): {detail or 'no details'}"

    # the messages

    async def _system(self, obj: JSON) -> None:
        subtype = obj.get("subtype")
        if subtype == "init":
            self.init = obj
            if isinstance(obj.get("model"), str):
                self.io.usage.extra["model"] = obj["model"]
            if isinstance(obj.get("session_id"), str):
                self.session_id = obj["session_id"]
                if self.io.lane == "main" and self.io.resume.get("resume_id") != self.session_id:
                    # A new agent session: kept at once, so that a turn that never ends (the agent
                    # killed, the server restarted) is still resumed by the next one.
                    await self._remember()
        elif subtype == "api_retry":
            self._rate_limited = True
            await self.io.state("rate_limited", retry_in_ms=_int(obj.get("retry_delay_ms")),
                                attempt=_int(obj.get("attempt")), max_retries=_int(obj.get("max_retries")),
                                error_status=obj.get("error_status"), error=_str(obj.get("error")) or None)
        elif subtype == "status" and obj.get("status") == "requesting" and self._rate_limited:
            self._rate_limited = False
            await self.io.state("waiting_for_model")

    async def _stream_event(self, event: JSON) -> None:
        kind = event.get("type")
        if kind == "message_start":
            message = _dict(event.get("message"))
            self._message_count += 1
            self._current = _str(message.get("id")) or f"#{self._message_count}"
            self._messages.setdefault(self._current, [])
            self._open = {}
        elif kind == "content_block_start":
            block_json = _dict(event.get("content_block"))
            block_kind = block_json.get("type")
            if block_kind in ("text", "thinking"):
                block = self._new_streamed(str(block_kind), _int(event.get("index")))
                await self._delta(block, _str(block_json.get(str(block_kind))))
        elif kind == "content_block_delta":
            delta = _dict(event.get("delta"))
            index = _int(event.get("index"))
            if delta.get("type") == "text_delta":
                await self._delta(self._streamed(index, "text"), _str(delta.get("text")))
            elif delta.get("type") == "thinking_delta":
                await self._delta(self._streamed(index, "thinking"), _str(delta.get("thinking")))
            # input_json_delta, signature_delta, citations_delta: the complete block comes later.
        elif kind == "message_delta":
            stop = _dict(event.get("delta")).get("stop_reason")
            if isinstance(stop, str):
                self.io.stop_reason = stop
        elif kind == "message_stop":
            await self._flush_blocks()

    async def _assistant(self, obj: JSON) -> None:
        message = _dict(obj.get("message"))
        parent = _str(obj.get("parent_tool_use_id")) or None
        if obj.get("error") or obj.get("is_api_error_message"):
            log.info("%s: API error message: %.300s", self.agent, message.get("content"))
            return  # shown once, as the failed turn's error (the result repeats its text)
        message_id = _str(message.get("id")) or self._current or ""
        streamed = self._messages.get(message_id, [])
        if isinstance(message.get("stop_reason"), str) and parent is None:
            self.io.stop_reason = message["stop_reason"]
        for content in map(_dict, _list(message.get("content"))):
            kind = content.get("type")
            if kind in ("text", "thinking") and parent is None:
                await self._complete_block(message_id, str(kind), _str(content.get(str(kind))), streamed)
            elif kind in _TOOL_USES:
                await self._tool_use(content, parent)

    async def _complete_block(self, message_id: str, kind: str, full: str, streamed: list[_Block]) -> None:
        if (message_id, kind, full) in self._seen:
            return  # a message repeated with the blocks it had so far: shown already
        self._seen.add((message_id, kind, full))
        block = next((b for b in streamed if b.kind == kind and not b.matched), None)
        if block is not None:
            block.matched = True
            if not block.done or block.text != full:
                await self._done(block, full)
            return
        if not full:
            return
        block = _Block(kind, self._take_index(kind), matched=True)
        self._messages.setdefault(message_id, []).append(block)
        await self._delta(block, full)
        await self._done(block, full)

    async def _tool_use(self, content: JSON, parent: str | None) -> None:
        call_id = _str(content.get("id"))
        if not call_id or call_id in self._calls:
            return
        name = _str(content.get("name")) or "tool"
        tool_input = content.get("input")
        tool_input = tool_input if isinstance(tool_input, dict) else {"input": tool_input}
        self._calls[call_id] = _Call(name, tool_input)
        if not self._running:
            await self._model.end()
        self._running.add(call_id)
        if parent is None:
            await self.io.tool_call(call_id, name, tool_input)
        else:
            await self.io.tool_call(call_id, name, tool_input, parent_call_id=parent)

    async def _user(self, obj: JSON) -> None:
        message = _dict(obj.get("message"))
        for content in map(_dict, _list(message.get("content"))):
            call_id = _str(content.get("tool_use_id"))
            if content.get("type") not in _TOOL_RESULTS or not call_id:
                continue
            self._running.discard(call_id)
            output, is_error = tool_output(content.get("content")), content.get("is_error") is True
            await self.io.tool_result(call_id, output, is_error)
            call = self._calls.get(call_id)
            # The session's list is the main agent's: a subagent's todo calls are its own.
            if call is not None and call.name in TODO_TOOLS and obj.get("parent_tool_use_id") is None and \
                    self.todos.apply(call.name, call.input, output, is_error, obj.get("tool_use_result")):
                await self.io.todos([dict(item) for item in self.todos.items])
            if not self._running and self.result is None:
                await self._model.begin()

    # blocks

    def _new_streamed(self, kind: str, index: int) -> _Block:
        if self._current is None:  # deltas without a message_start: still show them
            self._message_count += 1
            self._current = f"#{self._message_count}"
            self._messages.setdefault(self._current, [])
        block = _Block(kind, self._take_index(kind))
        self._messages[self._current].append(block)
        self._open[index] = block
        return block

    def _streamed(self, index: int, kind: str) -> _Block:
        block = self._open.get(index)
        if block is None or block.kind != kind:
            block = self._new_streamed(kind, index)
        return block

    def _take_index(self, kind: str) -> int:
        index = self._next_block[kind]
        self._next_block[kind] = index + 1
        return index

    async def _delta(self, block: _Block, text: str) -> None:
        if not text or block.done:
            return
        block.text += text
        if block.kind == "text":
            await self.io.text(block.index, text)
        else:
            await self.io.thinking(block.index, text)

    async def _done(self, block: _Block, text: str) -> None:
        block.text, block.done = text, True
        if block.kind == "text":
            await self.io.text_done(block.index, text)
        else:
            await self.io.thinking_done(block.index, text)

    async def _flush_blocks(self) -> None:
        """Streamed blocks no `assistant` message completed (yet): done with what was streamed."""
        for blocks in self._messages.values():
            for block in blocks:
                if not block.done:
                    await self._done(block, block.text)



def tool_output(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for item in content:
            if isinstance(item, dict) and item.get("type") == "text":
                parts.append(_str(item.get("text")))
            elif isinstance(item, dict) and item.get("type") == "image":
                parts.append("[image]")
            elif isinstance(item, str):
                parts.append(item)
            else:
                parts.append(orjson.dumps(item).decode())
        return "\n".join(parts)
    return orjson.dumps(content).decode()


def _number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _dict(value: Any) -> JSON:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _int(value: Any) -> int:
    return int(value) if _number(value) else 0
