"""The scripted agent: deterministic, realistic, and shaped by its options."""

from __future__ import annotations

import asyncio

import pytest

from agentwire.providers import ProviderError
from agentwire.providers.scripted import ScriptedProvider
from tests.support.turn_io import RecordingTurnIO


def _run(options: dict[str, object], message: str = "plan a trip") -> RecordingTurnIO:
    io = RecordingTurnIO(message=message)
    asyncio.run(ScriptedProvider("scripted-1", options).run(io))
    return io


def test_same_input_gives_the_same_turn() -> None:
    assert _run({"deltas": 40, "delay_ms": 0}).events == _run({"deltas": 40, "delay_ms": 0}).events


def test_options_shape_the_turn() -> None:
    io = _run({"deltas": 120, "delay_ms": 0, "tool_calls": 3, "thinking": False})
    kinds = [kind for kind, _ in io.events]
    assert kinds.count("text.delta") == 120 + 3
    assert "thinking.delta" not in kinds
    tools = [data["name"] for kind, data in io.events if kind == "tool.call"]
    assert tools == ["todo_write", "lookup", "lookup", "lookup", "todo_write", "task_create", "todo_write"]
    task = next(data for kind, data in io.events if kind == "tool.call" and data["name"] == "task_create")
    assert "<h3" in task["input"]["output"] and len(task["input"]["choices"]) == 2
    assert io.usage.output_tokens > 0


def test_fail_at_raises_a_readable_error_after_that_many_deltas() -> None:
    io = RecordingTurnIO(message="x")
    with pytest.raises(ProviderError, match="delta 7"):
        asyncio.run(ScriptedProvider("scripted-1", {"deltas": 20, "delay_ms": 0, "fail_at": 7}).run(io))
    assert sum(1 for kind, _ in io.events if kind == "text.delta") == 7
