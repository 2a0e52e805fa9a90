"""The offline default agent: deterministic, and shaped like a real turn (thinking, a todo list,
text in many deltas, a tool call or two, a task card with HTML output and choices).

Session options set its size and speed so tests and benchmarks can make long, slow or failing
turns: `deltas`, `delay_ms`, `tool_calls`, `thinking`, `fail_at` (the delta index that fails);
`ask_permission` makes it ask permission first — to write a note (true or "Write"), edit it ("Edit")
or run `git status` ("Bash"), tools it only pretends to run — so the dashboard's permission card can
be seen and tested without a CLI agent.
"""

from __future__ import annotations

import asyncio
import html
import re

from agentwire.providers import ProviderError, TurnIO
from agentwire.types import JSON

_WORDS = ("Here is what I found. The stream is journaled before delivery, so a reconnecting "
          "client resumes from its last sequence number and sees every event exactly once, in order. "
          "Slow viewers are cut loose instead of slowing the agent, and quick questions run beside "
          "the main turn on a warm worker. ").split(" ")


class ScriptedProvider:
    name = "scripted"

    def __init__(self, model: str, options: JSON) -> None:
        self.model = model
        self.deltas = int(options.get("deltas", 24))
        self.delay = float(options.get("delay_ms", 20)) / 1000
        self.tool_calls = int(options.get("tool_calls", 1))
        self.thinking = bool(options.get("thinking", True))
        ask = options.get("ask_permission") or None
        self.ask_permission: str | None = "Write" if ask is True else ask
        fail_at = options.get("fail_at")
        self.fail_at = None if fail_at is None else int(fail_at)

    async def close(self) -> None:
        pass

    async def _pause(self) -> None:
        # Always yield, even with no delay, so a zero-delay turn never starves other lanes.
        await asyncio.sleep(self.delay)

    async def _ask(self, io: TurnIO, tool: str, topic: str) -> bool:
        """Ask to use `tool` as a coding agent asks before it touches files; True if allowed."""
        path = "notes/" + (re.sub(r"[^a-z0-9]+", "-", topic.lower())[:40].strip("-") or "note") + ".md"
        inputs: dict[str, JSON] = {
            "Write": {"file_path": path, "content": f"# {topic}\n\nWhat I looked up, and what is next.\n"},
            "Edit": {"file_path": path, "old_string": "What I looked up, and what is next.",
                     "new_string": "What I found, and what I would do next."},
            "Bash": {"command": "git status --short", "description": "See what changed"},
        }
        results = {"Write": f"wrote {path}", "Edit": f"edited {path}", "Bash": f" M {path}"}
        call_id = f"call_{tool.lower()}_1"
        input = inputs[tool]
        await io.tool_call(call_id, tool, input)
        title = {"Bash": "Run git status --short"}.get(tool, f"{tool} {path}")
        answer = await io.ask_permission(tool, input, call_id=call_id, title=title)
        if answer.allowed:
            await io.tool_result(call_id, results[tool] + " (the scripted agent only pretends)")
        else:
            await io.tool_result(call_id, answer.message or "permission denied", is_error=True)
        return answer.allowed

    async def run(self, io: TurnIO) -> None:
        topic = " ".join(io.message.split()[:8]) or "your request"
        async with io.llm_call():
            if self.thinking:
                thought = f"The user asks about: {topic}. I will plan, look things up, then answer."
                parts = _chunks(thought, 4)
                for part in parts:
                    await io.thinking(0, part)
                    await self._pause()
                await io.thinking_done(0, thought)
            todos = [
                {"content": "Understand the request", "status": "completed", "activeForm": "Understanding the request"},
                {"content": "Look things up", "status": "in_progress", "activeForm": "Looking things up"},
                {"content": "Write the answer", "status": "pending", "activeForm": "Writing the answer"},
            ]
            # A copy each time: the list is changed below, and an event's data must not change after
            # it was handed over (it may be encoded only when its batch is committed).
            await io.run_tool("call_todo_1", "todo_write", {"todos": _copy(todos)})
        noted = await self._ask(io, self.ask_permission, topic) if self.ask_permission else None
        for index in range(self.tool_calls):
            call_id = f"call_lookup_{index + 1}"
            await io.tool_call(call_id, "lookup", {"query": topic, "page": index + 1})
            await self._pause()
            await io.tool_result(call_id, f"{3 + index} results for {topic!r} (page {index + 1})")
        async with io.llm_call():
            todos[1]["status"], todos[2]["status"] = "completed", "in_progress"
            await io.run_tool("call_todo_2", "todo_write", {"todos": _copy(todos)})
            text = ""
            for index in range(self.deltas):
                if self.fail_at is not None and index == self.fail_at:
                    raise ProviderError(f"scripted failure at delta {index} (fail_at option)")
                piece = ("" if index == 0 else " ") + _WORDS[index % len(_WORDS)] + (
                    f" [{index + 1}]" if (index + 1) % 50 == 0 else "")
                text += piece
                await io.text(0, piece)
                await self._pause()
            await io.text_done(0, text)
            await io.run_tool("call_task_1", "task_create", {
                "title": f"Report: {topic}"[:200],
                "description": "What the scripted agent found, with a choice of next step.",
                "tags": ["scripted", "report"],
                "status": "completed",
                "output": (f"<div style=\"padding:12px;border-radius:6px;background:#1e293b;color:#e2e8f0\">"
                           f"<h3 style=\"margin:0 0 8px 0\">Findings</h3><p>{html.escape(topic)}: "
                           f"{self.deltas} deltas, {self.tool_calls} lookups.</p></div>"),
                "choices": [{"label": "Go on", "value": f"Go on with {topic}", "primary": True},
                            {"label": "Stop here", "value": "Stop here, thanks"}],
            })
            todos[2]["status"] = "completed"
            await io.run_tool("call_todo_3", "todo_write", {"todos": _copy(todos)})
            closing = "Done: the card on the board has the details." + (
                " I left the note alone: permission was denied." if noted is False else "")
            for part in _chunks(closing, 3):
                await io.text(1, part)
                await self._pause()
            await io.text_done(1, closing)
        io.usage.add(input_tokens=len(io.message) // 4 + 50, output_tokens=self.deltas + 20)
        io.stop_reason = "end_turn"


def _copy(todos: list[JSON]) -> list[JSON]:
    return [dict(todo) for todo in todos]


def _chunks(text: str, parts: int) -> list[str]:
    size = max(1, -(-len(text) // parts))
    return [text[i : i + size] for i in range(0, len(text), size)]
