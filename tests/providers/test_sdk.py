"""The SDK providers (anthropic, openai, gemini) against the fake vendor servers, through a recording
TurnIO: what a user sees of each turn, and what goes back to the model."""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Iterator
from typing import Any

import pytest

from agentwire.providers import PROVIDERS, Message, Provider, ProviderError, ToolOutcome, make_provider
from tests.fakes import llm_servers as fake
from tests.fakes.llm_servers import FakeLLMServer
from tests.support.eventually import eventually_async
from tests.support.turn_io import RecordingTurnIO

NAMES = ["anthropic", "openai", "gemini"]


@pytest.fixture
def llm_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        server.patch_env(monkeypatch)
        yield server


def run_turn(name: str, io: RecordingTurnIO, options: dict[str, Any] | None = None) -> RecordingTurnIO:
    provider = make_provider(name, None, options or {})

    async def turn() -> None:
        try:
            await provider.run(io)
        finally:
            await provider.close()

    asyncio.run(turn())
    return io


def failing_turn(name: str, io: RecordingTurnIO, options: dict[str, Any] | None = None) -> str:
    with pytest.raises(ProviderError) as error:
        run_turn(name, io, options)
    return str(error.value)


# -- text ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_text_only(llm_server: FakeLLMServer, name: str) -> None:
    llm_server.enqueue(fake.text())
    io = run_turn(name, RecordingTurnIO(message="Say hello"))

    assert io.kinds()[0] == "llm_call.start" and io.kinds()[-1] == "llm_call.end"
    assert io.deltas() == {0: fake.FIXTURE_TEXT} and io.done() == {0: fake.FIXTURE_TEXT}
    assert len(io.of("text.delta")) >= 3  # streamed, not in one piece
    assert io.kinds().index("text.done") > max(i for i, k in enumerate(io.kinds()) if k == "text.delta")
    assert io.stop_reason == "end_turn"
    assert io.usage.input_tokens > 0 and io.usage.output_tokens > 0
    assert io.usage.cost_usd is not None and io.usage.cost_usd > 0
    [request] = llm_server.requests
    assert request.model == PROVIDERS[name].default_model
    assert request.api_key == fake.TEST_KEYS[name]


@pytest.mark.parametrize("name", NAMES)
def test_history_and_system_prompt_reach_the_model(llm_server: FakeLLMServer, name: str) -> None:
    llm_server.enqueue(fake.text("Fine."))
    history = [Message("user", "My name is Ada."), Message("assistant", "Hello Ada.")]
    run_turn(name, RecordingTurnIO(message="What is my name?", history=history, system="Be brief."))
    body = llm_server.requests[0].json
    if name == "anthropic":
        assert body["system"] == "Be brief."
        assert body["messages"] == [{"role": "user", "content": "My name is Ada."},
                                    {"role": "assistant", "content": "Hello Ada."},
                                    {"role": "user", "content": "What is my name?"}]
    elif name == "openai":
        assert body["messages"] == [{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": "My name is Ada."},
                                    {"role": "assistant", "content": "Hello Ada."},
                                    {"role": "user", "content": "What is my name?"}]
        assert body["stream_options"] == {"include_usage": True}
    else:
        assert [(c["role"], c["parts"][0]["text"]) for c in body["contents"]] == [
            ("user", "My name is Ada."), ("model", "Hello Ada."), ("user", "What is my name?")]
        instruction = body.get("systemInstruction") or body.get("system_instruction")
        assert instruction["parts"][0]["text"] == "Be brief."


# -- tools ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_two_tool_calls_then_a_final_answer(llm_server: FakeLLMServer, name: str) -> None:
    llm_server.enqueue(*fake.tool_use_sequence())
    io = RecordingTurnIO(message="Fix the parser", handlers={
        "todo_write": lambda input: ToolOutcome("todo list updated: 1/3 completed"),
        "task_create": lambda input: ToolOutcome('{"id": "task_1", "status": "pending"}'),
    })
    run_turn(name, io)

    calls, results = io.of("tool.call"), io.of("tool.result")
    assert [(c["name"], c["input"]) for c in calls] == [("todo_write", fake.TODO_INPUT),
                                                        ("task_create", fake.TASK_INPUT)]
    assert [r["call_id"] for r in results] == [c["call_id"] for c in calls]
    assert len({c["call_id"] for c in calls}) == 2
    # Text blocks are numbered across the turn: the preamble and the final answer do not collide.
    assert io.done() == {0: fake.SEQUENCE_PREAMBLE, 1: fake.SEQUENCE_FINAL_TEXT}
    assert io.kinds().count("llm_call.start") == 3 == io.kinds().count("llm_call.end")
    order = [k for k in io.kinds() if k in ("text.done", "tool.call", "tool.result")]
    assert order == ["text.done", "tool.call", "tool.result", "tool.call", "tool.result", "text.done"]
    assert io.stop_reason == "end_turn"

    first, second, third = llm_server.requests
    assert [t["name"] for t in _offered_tools(name, first.json)] == ["todo_write", "task_create", "task_update"]
    [sent] = second.tool_results()
    assert sent["name"] == "todo_write" and sent["output"] == "todo list updated: 1/3 completed"
    [sent] = third.tool_results()
    assert sent["name"] == "task_create" and sent["output"] == '{"id": "task_1", "status": "pending"}'
    if name != "gemini":  # Gemini's API gives its calls no ids; ours are made up per turn
        assert [r["call_id"] for r in (second.tool_results() + third.tool_results())] == [
            c["call_id"] for c in calls]
    _assert_assistant_turn_sent_back(name, second.json)
    assert io.usage.input_tokens > 0 and io.usage.output_tokens > 0


def _offered_tools(name: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    if name == "anthropic":
        return list(body["tools"])
    if name == "openai":
        return [t["function"] for t in body["tools"]]
    declarations = body["tools"][0].get("functionDeclarations") or body["tools"][0]["function_declarations"]
    return list(declarations)


def _assert_assistant_turn_sent_back(name: str, body: dict[str, Any]) -> None:
    """The model's own message (text + tool call) precedes the tool result, in the vendor's format."""
    if name == "anthropic":
        assistant = body["messages"][-2]
        assert assistant["role"] == "assistant"
        assert [b["type"] for b in assistant["content"]] == ["text", "tool_use"]
        assert assistant["content"][0]["text"] == fake.SEQUENCE_PREAMBLE
        assert assistant["content"][1]["input"] == fake.TODO_INPUT
        assert body["messages"][-1]["content"][0]["type"] == "tool_result"
    elif name == "openai":
        assistant = body["messages"][-2]
        assert assistant["role"] == "assistant" and assistant["content"] == fake.SEQUENCE_PREAMBLE
        assert assistant["tool_calls"][0]["function"]["name"] == "todo_write"
        assert body["messages"][-1]["role"] == "tool"
    else:
        model = body["contents"][-2]
        assert model["role"] == "model"
        assert model["parts"][0]["text"] == fake.SEQUENCE_PREAMBLE
        call_part = model["parts"][1]
        assert (call_part.get("functionCall") or call_part["function_call"])["args"] == fake.TODO_INPUT
        assert call_part.get("thoughtSignature") or call_part.get("thought_signature")
        response_part = body["contents"][-1]["parts"][0]
        assert body["contents"][-1]["role"] == "user"
        assert (response_part.get("functionResponse") or response_part["function_response"])["name"] == "todo_write"


@pytest.mark.parametrize("name", NAMES)
def test_tool_errors_go_back_to_the_model(llm_server: FakeLLMServer, name: str) -> None:
    llm_server.enqueue(fake.tool_call("task_update", {"id": "nope"}), fake.tool_call("no_such_tool", {}),
                       fake.text("Sorry."))
    io = RecordingTurnIO(handlers={"task_update": lambda input: ToolOutcome("no task 'nope'", is_error=True)})
    run_turn(name, io)
    assert [(r["output"], r["is_error"]) for r in io.of("tool.result")] == [
        ("no task 'nope'", True), ("unknown tool 'no_such_tool'", True)]
    assert io.done() == {0: "Sorry."}
    for request, output in zip(llm_server.requests[1:], ["no task 'nope'", "unknown tool 'no_such_tool'"],
                               strict=True):
        [sent] = request.tool_results()
        assert output in sent["output"]
        if name != "openai":  # Chat Completions has no error flag on tool messages (ours say "error: …")
            assert sent["is_error"] is True


@pytest.mark.parametrize("name", NAMES)
def test_the_tool_loop_is_bounded(llm_server: FakeLLMServer, name: str) -> None:
    llm_server.enqueue(*[fake.tool_call("todo_write", fake.TODO_INPUT) for _ in range(3)])
    io = RecordingTurnIO()
    message = failing_turn(name, io, {"max_rounds": 3})
    assert message.startswith(f"{name}: stopped after 3 model requests")
    assert len(io.of("tool.call")) == 3 and not llm_server.pending()


# -- thinking ------------------------------------------------------------------------------------------


def test_anthropic_extended_thinking(llm_server: FakeLLMServer) -> None:
    llm_server.enqueue(fake.thinking())
    io = run_turn("anthropic", RecordingTurnIO(), {"thinking": 2048})
    assert io.deltas("thinking") == {0: fake.THOUGHT} == io.done("thinking")
    assert io.done() == {1: fake.THOUGHT_ANSWER}
    assert io.kinds().index("thinking.done") < io.kinds().index("text.delta")
    body = llm_server.requests[0].json
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert body["max_tokens"] > 2048 and "temperature" not in body


def test_anthropic_thinking_blocks_go_back_with_their_signature(llm_server: FakeLLMServer) -> None:
    thought = fake.Thinking("I should write the todo list first.")
    llm_server.enqueue(fake.Reply(blocks=(thought, fake.ToolCall("todo_write", fake.TODO_INPUT))), fake.text("Ok."))
    io = run_turn("anthropic", RecordingTurnIO(), {"thinking": True})
    assert io.done("thinking") == {0: thought.text} and io.done() == {1: "Ok."}
    assistant = llm_server.requests[1].json["messages"][-2]
    assert assistant["content"][0] == {"type": "thinking", "thinking": thought.text, "signature": thought.signature}
    assert assistant["content"][1]["type"] == "tool_use"


def test_anthropic_without_thinking_option_does_not_ask_for_it(llm_server: FakeLLMServer) -> None:
    llm_server.enqueue(fake.text())
    run_turn("anthropic", RecordingTurnIO(), {"max_tokens": 300})
    body = llm_server.requests[0].json
    assert "thinking" not in body and body["max_tokens"] == 300


def test_gemini_thought_parts(llm_server: FakeLLMServer) -> None:
    llm_server.enqueue(fake.thinking())
    io = run_turn("gemini", RecordingTurnIO())  # thoughts are on by default for gemini-2.5 models
    assert io.done("thinking") == {0: fake.THOUGHT} and io.done() == {1: fake.THOUGHT_ANSWER}
    assert io.usage.extra["thoughts_tokens"] > 0
    config = llm_server.requests[0].json["generationConfig"]
    thinking = config.get("thinkingConfig") or config["thinking_config"]
    assert thinking.get("includeThoughts", thinking.get("include_thoughts")) is True


def test_gemini_thoughts_can_be_turned_off(llm_server: FakeLLMServer) -> None:
    llm_server.enqueue(fake.thinking())
    io = run_turn("gemini", RecordingTurnIO(), {"thinking": False})
    assert io.of("thinking.delta") == [] and io.done() == {0: fake.THOUGHT_ANSWER}


def test_openai_reasoning_is_counted_not_shown(llm_server: FakeLLMServer) -> None:
    llm_server.enqueue(fake.thinking())
    io = run_turn("openai", RecordingTurnIO(), {"reasoning_effort": "low"})
    assert io.of("thinking.delta") == [] and io.done() == {0: fake.THOUGHT_ANSWER}
    assert io.usage.extra["reasoning_tokens"] > 0
    assert llm_server.requests[0].json["reasoning_effort"] == "low"


# -- errors --------------------------------------------------------------------------------------------

AUTH_MESSAGES = {
    "anthropic": "anthropic: authentication_error: invalid x-api-key",
    "openai": "openai: invalid_api_key: Incorrect API key provided: sk-test-0000. You can find your API key at "
              "https://platform.openai.com/account/api-keys.",
    "gemini": "gemini: INVALID_ARGUMENT: API key not valid. Please pass a valid API key.",
}
SERVER_ERROR_MESSAGES = {
    "anthropic": "anthropic: api_error: Internal server error",
    "openai": "openai: server_error: The server had an error while processing your request. Sorry about that!",
    "gemini": "gemini: INTERNAL: An internal error has occurred. Please retry or report in "
              "https://developers.generativeai.google/guide/troubleshooting",
}


@pytest.mark.parametrize("name", NAMES)
def test_auth_error(llm_server: FakeLLMServer, name: str) -> None:
    llm_server.enqueue(fake.auth_error())
    io = RecordingTurnIO()
    assert failing_turn(name, io) == AUTH_MESSAGES[name]
    assert io.kinds() == ["llm_call.start", "llm_call.end"] and len(llm_server.requests) == 1


def test_gemini_unauthenticated(llm_server: FakeLLMServer) -> None:
    llm_server.enqueue(fake.auth_error(status=401))
    assert failing_turn("gemini", RecordingTurnIO()).startswith(
        "gemini: UNAUTHENTICATED: Request had invalid authentication credentials.")


@pytest.mark.parametrize("name", NAMES)
def test_rate_limited_then_success(llm_server: FakeLLMServer, name: str) -> None:
    llm_server.enqueue(fake.rate_limited(1), fake.rate_limited(0), fake.text())
    io = run_turn(name, RecordingTurnIO(), {"rate_limit_max_wait_s": 0.05})

    # retry-after 1 s, capped by the session option; then retry-after 0 s, respected.
    assert io.of("state") == [{"agent_state": "rate_limited", "retry_in_s": 0.05, "attempt": 1},
                              {"agent_state": "rate_limited", "retry_in_s": 0.0, "attempt": 2}]
    assert io.done() == {0: fake.FIXTURE_TEXT} and io.stop_reason == "end_turn"
    assert len(llm_server.requests) == 3
    # every attempt is its own model request; the wait is outside of them
    assert io.kinds()[:6] == ["llm_call.start", "llm_call.end", "state", "llm_call.start", "llm_call.end", "state"]


@pytest.mark.parametrize("name", NAMES)
def test_rate_limited_gives_up(llm_server: FakeLLMServer, name: str) -> None:
    llm_server.enqueue(fake.rate_limited(0), fake.rate_limited(0))
    io = RecordingTurnIO()
    message = failing_turn(name, io, {"rate_limit_retries": 1})
    assert message.startswith(f"{name}: rate limited: ") and message.endswith("(gave up after 1 retries)")
    assert len(io.of("state")) == 1 and len(llm_server.requests) == 2


def test_rate_limit_backoff_without_retry_after(llm_server: FakeLLMServer) -> None:
    llm_server.enqueue(fake.HttpError(429, "rate_limit"), fake.text())  # no retry-after header
    io = run_turn("openai", RecordingTurnIO(), {"rate_limit_max_wait_s": 0.01})
    assert io.of("state") == [{"agent_state": "rate_limited", "retry_in_s": 0.01, "attempt": 1}]


@pytest.mark.parametrize("name", NAMES)
def test_server_error_before_the_stream(llm_server: FakeLLMServer, name: str) -> None:
    llm_server.enqueue(fake.server_error())
    io = RecordingTurnIO()
    assert failing_turn(name, io) == SERVER_ERROR_MESSAGES[name]
    assert len(llm_server.requests) == 1  # a 500 is not retried


@pytest.mark.parametrize("name", NAMES)
def test_server_error_mid_stream(llm_server: FakeLLMServer, name: str) -> None:
    llm_server.enqueue(fake.error_mid_stream())
    io = RecordingTurnIO()
    assert failing_turn(name, io) == SERVER_ERROR_MESSAGES[name]
    _assert_partial_text_kept(io)


@pytest.mark.parametrize("name", NAMES)
def test_malformed_chunk(llm_server: FakeLLMServer, name: str) -> None:
    llm_server.enqueue(fake.malformed_chunk())
    io = RecordingTurnIO()
    assert failing_turn(name, io).startswith(f"{name}: malformed response from the API")
    _assert_partial_text_kept(io)


@pytest.mark.parametrize("name", NAMES)
def test_dropped_connection(llm_server: FakeLLMServer, name: str) -> None:
    llm_server.enqueue(fake.dropped_connection())
    io = RecordingTurnIO()
    assert failing_turn(name, io) == (f"{name}: connection lost: peer closed connection without sending "
                                      "complete message body (incomplete chunked read)")
    _assert_partial_text_kept(io)


@pytest.mark.parametrize("name", NAMES)
def test_stream_that_ends_too_early(llm_server: FakeLLMServer, name: str) -> None:
    llm_server.enqueue(fake.truncated_stream())
    io = RecordingTurnIO()
    message = failing_turn(name, io)
    assert message.startswith(f"{name}: connection lost: the stream ended before the ")
    _assert_partial_text_kept(io)


def _assert_partial_text_kept(io: RecordingTurnIO) -> None:
    """What was shown before the failure stays shown, and its block is closed with that text."""
    shown = io.deltas()[0]
    assert shown and fake.PARTIAL_TEXT.startswith(shown) and shown != fake.PARTIAL_TEXT
    assert io.done() == {0: shown}
    assert io.kinds()[-1] == "text.done" or io.kinds()[-2:] == ["text.done", "llm_call.end"]
    assert io.outstanding_llm_calls == 0


@pytest.mark.parametrize("name", NAMES)
def test_missing_key_is_a_readable_error(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    module, cls = PROVIDERS[name].target.split(":")
    provider: Provider = getattr(importlib.import_module(module), cls)("model-x", {})  # no key check
    for variable in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "OPENAI_API_KEY", "GEMINI_API_KEY",
                     "GOOGLE_API_KEY"):
        monkeypatch.delenv(variable, raising=False)

    async def turn() -> None:
        try:
            await provider.run(RecordingTurnIO())
        finally:
            await provider.close()

    with pytest.raises(ProviderError) as error:
        asyncio.run(turn())
    assert str(error.value).startswith(f"{name}: ")


# -- cancellation --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_cancel_closes_the_stream(llm_server: FakeLLMServer, name: str) -> None:
    llm_server.enqueue(fake.stalled())
    io = RecordingTurnIO()
    provider = make_provider(name, None, {})

    async def cancel_mid_stream() -> None:
        task = asyncio.create_task(provider.run(io))
        await eventually_async(lambda: io.of("text.delta") or task.done(), what="text before the stall")
        assert io.of("text.delta"), "no text arrived before the stall"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await provider.close()
        await eventually_async(lambda: llm_server.requests[0].disconnected, 5, "the fake to see the client leave")

    asyncio.run(cancel_mid_stream())
    assert llm_server.requests[0].disconnected  # the HTTP stream was closed, not left hanging
    assert io.of("text.done") == []  # a cancelled turn does not pretend its block finished
    assert io.kinds()[-1] == "llm_call.end" and io.outstanding_llm_calls == 0
