"""The fake vendor servers are trustworthy: each official SDK streams every scenario from them as it
would from the vendor (text, tool calls, thinking) and raises its own exception types for errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from tests.fakes import llm_servers as fake
from tests.fakes.llm_servers import FakeLLMServer
from tests.support.eventually import eventually, eventually_async

PROVIDERS = ["anthropic", "openai", "gemini"]
MODELS = {"anthropic": "claude-sonnet-4-5", "openai": "gpt-4.1-mini", "gemini": "gemini-2.5-flash"}
TOOL_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}


@pytest.fixture
def llm_server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        yield server


@dataclass
class Streamed:
    """What a caller saw of one streamed response (filled as it arrives, so kept after an error)."""

    text: str = ""
    thinking: str = ""
    signature: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    stop: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    raw_parts: list[Any] = field(default_factory=list)  # gemini: the model's parts, to send back


async def _anthropic(server: FakeLLMServer, out: Streamed, messages: list[Any], tools: bool,
                     thinking: bool, max_retries: int = 0) -> None:
    async with anthropic.AsyncAnthropic(base_url=server.anthropic_base_url, api_key=fake.TEST_KEYS["anthropic"],
                                        max_retries=max_retries) as client:
        extra: dict[str, Any] = {}
        if tools:
            extra["tools"] = [{"name": n, "description": n, "input_schema": TOOL_SCHEMA}
                              for n in ("todo_write", "task_create")]
        if thinking:
            extra["thinking"] = {"type": "enabled", "budget_tokens": 1024}
        stream = await client.messages.create(model=MODELS["anthropic"], max_tokens=2048, messages=messages,
                                              stream=True, **extra)
        partial: dict[int, list[str]] = {}
        async for event in stream:
            if event.type == "message_start":
                out.input_tokens = event.message.usage.input_tokens
            elif event.type == "content_block_start" and event.content_block.type == "tool_use":
                out.tool_calls.append({"id": event.content_block.id, "name": event.content_block.name})
                partial[event.index] = []
            elif event.type == "content_block_delta":
                if event.delta.type == "text_delta":
                    out.text += event.delta.text
                elif event.delta.type == "thinking_delta":
                    out.thinking += event.delta.thinking
                elif event.delta.type == "signature_delta":
                    out.signature += event.delta.signature
                elif event.delta.type == "input_json_delta":
                    partial[event.index].append(event.delta.partial_json)
            elif event.type == "content_block_stop" and event.index in partial:
                out.tool_calls[-1]["input"] = json.loads("".join(partial.pop(event.index)))
            elif event.type == "message_delta":
                out.stop = event.delta.stop_reason
                out.output_tokens = event.usage.output_tokens


async def _openai(server: FakeLLMServer, out: Streamed, messages: list[Any], tools: bool, thinking: bool,
                  max_retries: int = 0) -> None:
    async with openai.AsyncOpenAI(base_url=server.openai_base_url, api_key=fake.TEST_KEYS["openai"],
                                  max_retries=max_retries) as client:
        extra: dict[str, Any] = {}
        if tools:
            extra["tools"] = [{"type": "function", "function": {"name": n, "parameters": TOOL_SCHEMA}}
                              for n in ("todo_write", "task_create")]
        stream = await client.chat.completions.create(model=MODELS["openai"], messages=messages, stream=True,
                                                      stream_options={"include_usage": True}, **extra)
        async for chunk in stream:
            if chunk.usage is not None:
                out.input_tokens = chunk.usage.prompt_tokens
                out.output_tokens = chunk.usage.completion_tokens
                details = chunk.usage.completion_tokens_details
                out.reasoning_tokens = (details.reasoning_tokens or 0) if details else 0
            for choice in chunk.choices:
                out.text += choice.delta.content or ""
                for call in choice.delta.tool_calls or []:
                    if call.id:
                        out.tool_calls.append({"id": call.id, "name": call.function.name, "arguments": ""})
                    elif call.function and call.function.arguments:
                        out.tool_calls[call.index]["arguments"] += call.function.arguments
                if choice.finish_reason:
                    out.stop = choice.finish_reason
        for call in out.tool_calls:
            call["input"] = json.loads(call.pop("arguments"))


async def _gemini(server: FakeLLMServer, out: Streamed, contents: list[Any], tools: bool, thinking: bool,
                  max_retries: int = 0) -> None:
    client = genai.Client(api_key=fake.TEST_KEYS["gemini"], http_options=genai_types.HttpOptions(
        base_url=server.gemini_base_url, api_version="v1beta"))
    try:
        config = genai_types.GenerateContentConfig()
        if tools:
            config.tools = [genai_types.Tool(function_declarations=[
                genai_types.FunctionDeclaration(name=n, description=n, parameters_json_schema=TOOL_SCHEMA)
                for n in ("todo_write", "task_create")])]
            config.automatic_function_calling = genai_types.AutomaticFunctionCallingConfig(disable=True)
        if thinking:
            config.thinking_config = genai_types.ThinkingConfig(include_thoughts=True)
        stream = await client.aio.models.generate_content_stream(
            model=MODELS["gemini"], contents=contents, config=config)
        async for chunk in stream:
            if chunk.usage_metadata:
                out.input_tokens = chunk.usage_metadata.prompt_token_count or 0
                out.output_tokens = chunk.usage_metadata.candidates_token_count or 0
                out.reasoning_tokens = chunk.usage_metadata.thoughts_token_count or 0
            assert chunk.candidates, chunk
            candidate = chunk.candidates[0]
            assert candidate.content is not None, chunk
            for part in candidate.content.parts or []:
                out.raw_parts.append(part)
                if part.function_call:
                    out.tool_calls.append({"id": part.function_call.id, "name": part.function_call.name,
                                           "input": part.function_call.args, "signature": part.thought_signature})
                elif part.thought:
                    out.thinking += part.text or ""
                else:
                    out.text += part.text or ""
            if candidate.finish_reason:
                out.stop = candidate.finish_reason.value
    finally:
        await client.aio.aclose()


STREAMERS: dict[str, Callable[..., Coroutine[Any, Any, None]]] = {
    "anthropic": _anthropic, "openai": _openai, "gemini": _gemini}


def stream(provider: str, server: FakeLLMServer, *, message: str = "Hello", tools: bool = False,
           thinking: bool = False, max_retries: int = 0, out: Streamed | None = None) -> Streamed:
    out = out if out is not None else Streamed()
    if provider == "gemini":
        conversation: list[Any] = [genai_types.Content(role="user", parts=[genai_types.Part(text=message)])]
    else:
        conversation = [{"role": "user", "content": message}]
    asyncio.run(STREAMERS[provider](server, out, conversation, tools, thinking, max_retries))
    return out


# -- text ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_text_replays_the_recorded_fixture(llm_server: FakeLLMServer, provider: str) -> None:
    llm_server.enqueue(fake.text())
    out = stream(provider, llm_server)
    assert out.text == fake.FIXTURE_TEXT
    assert out.stop == {"anthropic": "end_turn", "openai": "stop", "gemini": "STOP"}[provider]
    assert out.input_tokens > 0 and out.output_tokens > 0
    request = llm_server.requests[0]
    assert request.provider == provider and request.model == MODELS[provider]
    assert request.api_key == fake.TEST_KEYS[provider]
    assert not llm_server.pending()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_fixture_bytes_go_out_unchanged(llm_server: FakeLLMServer, provider: str) -> None:
    path, body = {
        "anthropic": ("/v1/messages", {"model": "m", "max_tokens": 5, "stream": True, "messages": []}),
        "openai": ("/v1/chat/completions",
                   {"model": "m", "stream": True, "stream_options": {"include_usage": True}, "messages": []}),
        "gemini": ("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", {"contents": []}),
    }[provider]
    llm_server.enqueue(fake.text())
    response = httpx.post(llm_server.url + path, json=body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.content == (fake.FIXTURES / f"{provider}_text.sse").read_bytes()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_generated_text_streams_in_fragments(llm_server: FakeLLMServer, provider: str) -> None:
    llm_server.enqueue(fake.text("One two three four five six seven.", delay_s=0.01))
    assert stream(provider, llm_server).text == "One two three four five six seven."


# -- tools ---------------------------------------------------------------------------------------------


def _anthropic_sequence(server: FakeLLMServer) -> list[Streamed]:
    messages: list[Any] = [{"role": "user", "content": "Fix the parser"}]
    seen = []
    for _ in range(3):
        out = Streamed()
        asyncio.run(_anthropic(server, out, messages, tools=True, thinking=False))
        seen.append(out)
        if out.stop != "tool_use":
            break
        content: list[Any] = [{"type": "text", "text": out.text}] if out.text else []
        content += [{"type": "tool_use", "id": c["id"], "name": c["name"], "input": c["input"]}
                    for c in out.tool_calls]
        messages.append({"role": "assistant", "content": content})
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": c["id"], "content": f"{c['name']} done"} for c in out.tool_calls]})
    return seen


def _openai_sequence(server: FakeLLMServer) -> list[Streamed]:
    messages: list[Any] = [{"role": "user", "content": "Fix the parser"}]
    seen = []
    for _ in range(3):
        out = Streamed()
        asyncio.run(_openai(server, out, messages, tools=True, thinking=False))
        seen.append(out)
        if out.stop != "tool_calls":
            break
        messages.append({"role": "assistant", "content": out.text or None, "tool_calls": [
            {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": json.dumps(c["input"])}}
            for c in out.tool_calls]})
        messages += [{"role": "tool", "tool_call_id": c["id"], "content": f"{c['name']} done"}
                     for c in out.tool_calls]
    return seen


def _gemini_sequence(server: FakeLLMServer) -> list[Streamed]:
    contents: list[Any] = [genai_types.Content(role="user", parts=[genai_types.Part(text="Fix the parser")])]
    seen = []
    for _ in range(3):
        out = Streamed()
        asyncio.run(_gemini(server, out, contents, tools=True, thinking=False))
        seen.append(out)
        if not out.tool_calls:
            break
        contents.append(genai_types.Content(role="model", parts=out.raw_parts))
        contents.append(genai_types.Content(role="user", parts=[
            genai_types.Part.from_function_response(name=c["name"], response={"output": f"{c['name']} done"})
            for c in out.tool_calls]))
    return seen


@pytest.mark.parametrize("provider", PROVIDERS)
def test_tool_use_sequence_and_the_results_sent_back(llm_server: FakeLLMServer, provider: str) -> None:
    llm_server.enqueue(*fake.tool_use_sequence())
    seen = {"anthropic": _anthropic_sequence, "openai": _openai_sequence, "gemini": _gemini_sequence}[provider](
        llm_server)

    assert [[c["name"] for c in out.tool_calls] for out in seen] == [["todo_write"], ["task_create"], []]
    assert seen[0].tool_calls[0]["input"] == fake.TODO_INPUT
    assert seen[1].tool_calls[0]["input"] == fake.TASK_INPUT
    assert seen[0].text == fake.SEQUENCE_PREAMBLE
    assert seen[2].text == fake.SEQUENCE_FINAL_TEXT
    if provider == "gemini":
        assert seen[0].tool_calls[0]["signature"]  # thought signature, to be sent back
    else:
        assert seen[0].tool_calls[0]["id"] != seen[1].tool_calls[0]["id"]

    first, second, third = llm_server.requests
    assert first.tool_results() == []
    [result] = second.tool_results()
    assert result["name"] == "todo_write" and result["output"] == "todo_write done"
    if provider != "gemini":
        assert result["call_id"] == seen[0].tool_calls[0]["id"]
    [result] = third.tool_results()
    assert result["name"] == "task_create" and result["output"] == "task_create done"
    if provider == "gemini":  # the model's function call went back with its thought signature
        model_turn = second.json["contents"][1]
        assert model_turn["role"] == "model"
        assert any("thoughtSignature" in part or "thought_signature" in part for part in model_turn["parts"])


# -- thinking ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_thinking_then_text(llm_server: FakeLLMServer, provider: str) -> None:
    llm_server.enqueue(fake.thinking())
    out = stream(provider, llm_server, thinking=True)
    assert out.text == fake.THOUGHT_ANSWER
    if provider == "openai":  # Chat Completions does not expose reasoning, only counts it
        assert out.thinking == "" and out.reasoning_tokens > 0
    else:
        assert out.thinking == fake.THOUGHT
    if provider == "anthropic":
        assert out.signature


def test_gemini_sends_thoughts_only_when_asked(llm_server: FakeLLMServer) -> None:
    llm_server.enqueue(fake.thinking())
    out = stream("gemini", llm_server, thinking=False)
    assert out.thinking == "" and out.text == fake.THOUGHT_ANSWER and out.reasoning_tokens > 0


# -- errors --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_auth_error(llm_server: FakeLLMServer, provider: str) -> None:
    llm_server.enqueue(fake.auth_error())
    if provider == "anthropic":
        with pytest.raises(anthropic.AuthenticationError) as anthropic_error:
            stream(provider, llm_server)
        assert anthropic_error.value.status_code == 401
        assert anthropic_error.value.type == "authentication_error"
        assert anthropic_error.value.api_message == "invalid x-api-key"
    elif provider == "openai":
        with pytest.raises(openai.AuthenticationError) as openai_error:
            stream(provider, llm_server)
        assert openai_error.value.status_code == 401 and openai_error.value.code == "invalid_api_key"
        assert "Incorrect API key provided: sk-test-" in openai_error.value.message
    else:  # Gemini answers a bad API key with 400 INVALID_ARGUMENT / API_KEY_INVALID
        with pytest.raises(genai_errors.ClientError) as gemini_error:
            stream(provider, llm_server)
        assert gemini_error.value.code == 400 and gemini_error.value.status == "INVALID_ARGUMENT"
        assert gemini_error.value.message == "API key not valid. Please pass a valid API key."


def test_gemini_unauthenticated_401(llm_server: FakeLLMServer) -> None:
    llm_server.enqueue(fake.auth_error(status=401))
    with pytest.raises(genai_errors.ClientError) as error:
        stream("gemini", llm_server)
    assert error.value.code == 401 and error.value.status == "UNAUTHENTICATED"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_rate_limited_then_success(llm_server: FakeLLMServer, provider: str) -> None:
    llm_server.enqueue(fake.rate_limited(1), fake.text())
    if provider == "gemini":
        with pytest.raises(genai_errors.ClientError) as gemini_error:
            stream(provider, llm_server)
        assert gemini_error.value.code == 429 and gemini_error.value.status == "RESOURCE_EXHAUSTED"
        retry = [d for d in gemini_error.value.details["error"]["details"] if d["@type"].endswith("RetryInfo")]
        assert retry == [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"}]
    else:
        error_type = anthropic.RateLimitError if provider == "anthropic" else openai.RateLimitError
        with pytest.raises(error_type) as error:
            stream(provider, llm_server)
        assert isinstance(error.value, anthropic.RateLimitError | openai.RateLimitError)
        assert error.value.status_code == 429
        assert error.value.response.headers["retry-after"] == "1"
    assert stream(provider, llm_server).text == fake.FIXTURE_TEXT


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_sdk_retries_honour_retry_after(llm_server: FakeLLMServer, provider: str) -> None:
    llm_server.enqueue(fake.rate_limited(0), fake.text())
    assert stream(provider, llm_server, max_retries=1).text == fake.FIXTURE_TEXT
    assert len(llm_server.requests) == 2


@pytest.mark.parametrize("provider", PROVIDERS)
def test_server_error_before_the_stream(llm_server: FakeLLMServer, provider: str) -> None:
    llm_server.enqueue(fake.server_error())
    expected: type[Exception] = {"anthropic": anthropic.InternalServerError, "openai": openai.InternalServerError,
                                 "gemini": genai_errors.ServerError}[provider]
    with pytest.raises(expected):
        stream(provider, llm_server)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_error_in_the_middle_of_the_stream(llm_server: FakeLLMServer, provider: str) -> None:
    llm_server.enqueue(fake.error_mid_stream())
    out = Streamed()
    if provider == "anthropic":
        with pytest.raises(anthropic.APIStatusError) as anthropic_error:
            stream(provider, llm_server, out=out)
        assert anthropic_error.value.type == "api_error"
        assert anthropic_error.value.api_message == "Internal server error"
    elif provider == "openai":
        with pytest.raises(openai.APIError) as openai_error:
            stream(provider, llm_server, out=out)
        assert openai_error.value.type == "server_error"
        assert openai_error.value.message.startswith("The server had an error")
    else:
        with pytest.raises(genai_errors.ServerError) as gemini_error:
            stream(provider, llm_server, out=out)
        assert gemini_error.value.code == 500 and gemini_error.value.status == "INTERNAL"
    assert out.text and fake.PARTIAL_TEXT.startswith(out.text) and out.text != fake.PARTIAL_TEXT


@pytest.mark.parametrize("provider", PROVIDERS)
def test_malformed_chunk(llm_server: FakeLLMServer, provider: str) -> None:
    llm_server.enqueue(fake.malformed_chunk())
    out = Streamed()
    expected: type[Exception] = {"anthropic": json.JSONDecodeError, "openai": json.JSONDecodeError,
                                 "gemini": genai_errors.UnknownApiResponseError}[provider]
    with pytest.raises(expected):
        stream(provider, llm_server, out=out)
    assert out.text and fake.PARTIAL_TEXT.startswith(out.text)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_dropped_connection(llm_server: FakeLLMServer, provider: str) -> None:
    """The SDK sees the socket close mid-body. Which exception class carries that differs between SDK
    releases (raw transport error, or the SDK's connection error wrapping it), so this checks what
    every release reports: an error whose chain names the incomplete body, after the partial text."""
    llm_server.enqueue(fake.dropped_connection())
    out = Streamed()
    with pytest.raises(Exception) as raised:
        stream(provider, llm_server, out=out)
    assert "incomplete chunked read" in _chain_text(raised.value)
    assert out.text and fake.PARTIAL_TEXT.startswith(out.text) and out.text != fake.PARTIAL_TEXT


def _chain_text(error: BaseException | None) -> str:
    parts = []
    while error is not None:
        parts.append(f"{type(error).__name__}: {error}")
        error = error.__cause__ or error.__context__
    return " <- ".join(parts)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_request_with_nothing_queued_gets_a_readable_500(llm_server: FakeLLMServer, provider: str) -> None:
    expected: type[Exception] = {"anthropic": anthropic.InternalServerError, "openai": openai.InternalServerError,
                                 "gemini": genai_errors.ServerError}[provider]
    with pytest.raises(expected, match="no scenario queued"):
        stream(provider, llm_server)


def test_stalled_stream_sees_the_client_leave(llm_server: FakeLLMServer) -> None:
    llm_server.enqueue(fake.stalled())
    out = Streamed()

    async def cancel_after_first_text() -> None:
        task = asyncio.create_task(_anthropic(llm_server, out, [{"role": "user", "content": "hi"}], False, False))
        await eventually_async(lambda: out.text or task.done(), what="text before the stall")
        assert out.text, "no text arrived before the stall"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_after_first_text())
    eventually(lambda: llm_server.requests[0].disconnected, 5, "the fake to see the client leave")
    assert out.text


def test_provider_queues_before_the_shared_one(llm_server: FakeLLMServer) -> None:
    llm_server.enqueue(fake.text("shared"))
    llm_server.enqueue(fake.text("only openai"), provider="openai")
    assert stream("anthropic", llm_server).text == "shared"
    assert stream("openai", llm_server).text == "only openai"
    assert llm_server.pending() == []


def test_env_points_at_the_server(llm_server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    llm_server.patch_env(monkeypatch)
    env = llm_server.env()
    assert env["OPENAI_BASE_URL"].endswith("/v1") and env["ANTHROPIC_BASE_URL"] == llm_server.url
    llm_server.enqueue(fake.text())

    async def via_env() -> str:
        async with openai.AsyncOpenAI(max_retries=0) as client:  # base URL and key from the environment
            chunks = await client.chat.completions.create(model="gpt-4.1-mini", stream=True,
                                                          messages=[{"role": "user", "content": "hi"}])
            return "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])

    assert asyncio.run(via_env()) == fake.FIXTURE_TEXT
