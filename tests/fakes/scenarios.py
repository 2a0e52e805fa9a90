"""What a fake model answers: the scenarios a test queues (`Reply`, `HttpError`) and their builders.

See `tests.fakes.llm_servers` for the table of builders and how a request takes the next scenario."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from tests.support.paths import TESTS

FIXTURES = TESTS / "fixtures" / "providers"
FIXTURE_TEXT = "Hello! This answer was streamed from a recorded fixture."
PROVIDERS = ("anthropic", "openai", "gemini", "responses")  # responses: tests/fakes/openai_responses.py
TEST_KEYS = {"anthropic": "sk-ant-test-0000", "openai": "sk-test-0000", "gemini": "gemini-test-0000"}

@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Thinking:
    text: str
    signature: str = "EqQBCkgIBxABGAIiQHbW0ZsXpq5tT8yLm1H2ve6QGm9sRgA3kB0iEw5Jx7dPtcnY4KfOa2LzU1VhXe8rIuA6bS"


@dataclass(frozen=True)
class ToolCall:
    name: str
    input: dict[str, Any]
    id: str | None = None  # default: a vendor-style id (Gemini sends none unless given)


Block = Text | Thinking | ToolCall
Fault = Literal["error", "malformed", "drop", "stall", "end"]


@dataclass(frozen=True)
class Reply:
    """A 200 streamed answer made of blocks, optionally broken by a fault after `fault_after` deltas."""

    blocks: tuple[Block, ...] = ()
    stop: Literal["end_turn", "tool_use", "max_tokens"] | None = None  # default: from the blocks
    fault: Fault | None = None
    fault_after: int = 2
    delay_s: float = 0.0
    fixture: bool = False  # replay the recorded fixture file instead of generating events

    @property
    def stop_reason(self) -> str:
        if self.stop is not None:
            return self.stop
        return "tool_use" if any(isinstance(b, ToolCall) for b in self.blocks) else "end_turn"


@dataclass(frozen=True)
class HttpError:
    """An error answer before any stream byte, in the vendor's JSON error format."""

    status: int | None  # None: the vendor's usual status for `kind`
    kind: Literal["auth", "rate_limit", "server", "overloaded"]
    retry_after: float | None = None


Scenario = Reply | HttpError

TODO_INPUT: dict[str, Any] = {
    "todos": [
        {"content": "Read the failing test", "status": "completed", "activeForm": "Reading the failing test"},
        {"content": "Fix the parser", "status": "in_progress", "activeForm": "Fixing the parser"},
        {"content": "Publish a report", "status": "pending", "activeForm": "Publishing a report"},
    ]
}
TASK_INPUT: dict[str, Any] = {
    "title": "Parser fix ready for review",
    "description": "The tokenizer now keeps quoted commas.",
    "output": "<p>All <b>42</b> tests pass.</p>",
    "choices": [{"label": "Merge", "value": "merge", "primary": True}, {"label": "Hold", "value": "hold"}],
}
SEQUENCE_PREAMBLE = "Let me plan this first."
SEQUENCE_FINAL_TEXT = "Done: the parser is fixed and a report card is on the board."
THOUGHT = "The user wants a greeting. A short, friendly answer will do."
THOUGHT_ANSWER = "Hi there! How can I help today?"
PARTIAL_TEXT = "This answer will be cut off in the middle of its stream."


def text(content: str | None = None, *, delay_s: float = 0.0) -> Reply:
    """A text answer: the recorded fixture (`FIXTURE_TEXT`) by default."""
    if content is None:
        return Reply(blocks=(Text(FIXTURE_TEXT),), fixture=True, delay_s=delay_s)
    return Reply(blocks=(Text(content),), delay_s=delay_s)


def tool_call(name: str, input: dict[str, Any], *, text: str | None = None, id: str | None = None) -> Reply:
    blocks: tuple[Block, ...] = (ToolCall(name, input, id),)
    return Reply(blocks=((Text(text), *blocks) if text else blocks))


def tool_use_sequence() -> list[Scenario]:
    """`todo_write`, then (after its result) `task_create`, then a final text: three requests."""
    return [
        tool_call("todo_write", TODO_INPUT, text=SEQUENCE_PREAMBLE),
        tool_call("task_create", TASK_INPUT),
        text(SEQUENCE_FINAL_TEXT),
    ]


def thinking(thought: str = THOUGHT, answer: str = THOUGHT_ANSWER) -> Reply:
    return Reply(blocks=(Thinking(thought), Text(answer)))


def auth_error(*, status: int | None = None) -> HttpError:
    return HttpError(status, "auth")


def rate_limited(retry_after: float = 1) -> HttpError:
    return HttpError(429, "rate_limit", retry_after)


def server_error(status: int = 500) -> HttpError:
    return HttpError(status, "server")


def overloaded() -> HttpError:
    return HttpError(None, "overloaded")


def error_mid_stream(content: str = PARTIAL_TEXT, after: int = 2) -> Reply:
    return Reply(blocks=(Text(content),), fault="error", fault_after=after)


def malformed_chunk(content: str = PARTIAL_TEXT, after: int = 2) -> Reply:
    return Reply(blocks=(Text(content),), fault="malformed", fault_after=after)


def dropped_connection(content: str = PARTIAL_TEXT, after: int = 2) -> Reply:
    return Reply(blocks=(Text(content),), fault="drop", fault_after=after)


def stalled(content: str = PARTIAL_TEXT, after: int = 2) -> Reply:
    return Reply(blocks=(Text(content),), fault="stall", fault_after=after)


def truncated_stream(content: str = PARTIAL_TEXT, after: int = 2) -> Reply:
    return Reply(blocks=(Text(content),), fault="end", fault_after=after)


def fragments(content: str, words: int = 2) -> list[str]:
    """How the fakes split text into deltas: every `words` words, each piece keeping its leading space."""
    tokens = re.findall(r"\s*\S+|\s+$", content)
    return ["".join(tokens[i:i + words]) for i in range(0, len(tokens), words)] or [content]
