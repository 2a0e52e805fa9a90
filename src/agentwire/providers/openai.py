"""OpenAI Chat Completions, streamed, with the built-in tool loop.

Chat Completions does not stream the model's reasoning (reasoning models only report
`reasoning_tokens` in usage), so there are no thinking blocks from OpenAI itself; an
OpenAI-compatible server (via `OPENAI_BASE_URL`) that streams `reasoning_content` or `reasoning`
in its deltas gets them shown as thinking.

Session options: `max_tokens` (sent as `max_completion_tokens`), `temperature`, `reasoning_effort`,
`max_rounds` (default 20), `rate_limit_retries`, `rate_limit_max_wait_s`. Key and base URL come
from the SDK's own `OPENAI_API_KEY` and `OPENAI_BASE_URL`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import openai
from openai import AsyncOpenAI

from agentwire.providers import TurnIO
from agentwire.providers._llm import (
    DEFAULT_MAX_ROUNDS,
    Blocks,
    RateLimit,
    RetryPolicy,
    SdkProvider,
    StreamIncomplete,
    add_extra,
    call_model,
    cost_usd,
    float_option,
    int_option,
    loop_limit_error,
    merged_options,
    retry_after_from_headers,
    run_tool,
)
from agentwire.types import JSON

LABEL = "openai"
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use"}
_SLOT = "message"  # OpenAI streams one message per request: one block slot, text or reasoning


@dataclass(slots=True)
class _Call:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Round:
    text: list[str] = field(default_factory=list)
    calls: dict[int, _Call] = field(default_factory=dict)
    finish_reason: str | None = None


class OpenAIProvider(SdkProvider[AsyncOpenAI]):
    name = "openai"

    def _make_client(self) -> AsyncOpenAI:
        return AsyncOpenAI(max_retries=0)  # our retry loop, visible to the user

    async def _close_client(self, client: AsyncOpenAI) -> None:
        await client.close()

    def describe_error(self, error: BaseException) -> str | None:
        return _describe(error)

    async def _turn(self, io: TurnIO, blocks: Blocks) -> None:
        options = merged_options(self.options, io)
        model = io.model or self.model
        client = self._sdk()
        policy = RetryPolicy.from_options(options)
        messages: list[Any] = [{"role": "system", "content": io.system}] if io.system else []
        messages += [{"role": m.role, "content": m.content} for m in io.history if m.content]
        messages.append({"role": "user", "content": io.message})
        extra: dict[str, Any] = {}
        if io.tools:
            extra["tools"] = [{"type": "function", "function": {
                "name": t.name, "description": t.description, "parameters": t.input_schema}} for t in io.tools]
        if "max_tokens" in options:
            extra["max_completion_tokens"] = int_option(options, "max_tokens", 4096)
        if "temperature" in options:
            extra["temperature"] = float_option(options, "temperature", 1.0)
        if isinstance(options.get("reasoning_effort"), str):
            extra["reasoning_effort"] = options["reasoning_effort"]

        rounds = int_option(options, "max_rounds", DEFAULT_MAX_ROUNDS)
        for _ in range(rounds):
            async def attempt() -> _Round:
                stream = await client.chat.completions.create(
                    model=model, messages=messages, stream=True, stream_options={"include_usage": True}, **extra)
                try:
                    return await _consume(io, blocks, model, stream)
                finally:
                    await stream.close()

            result = await call_model(io, LABEL, policy, blocks, attempt, _rate_limit)
            calls = [result.calls[i] for i in sorted(result.calls)]
            assistant: JSON = {"role": "assistant", "content": "".join(result.text) or None}
            if calls:
                assistant["tool_calls"] = [{"id": c.id, "type": "function", "function": {
                    "name": c.name, "arguments": "".join(c.arguments)}} for c in calls]
            messages.append(assistant)
            if calls and result.finish_reason != "length":
                for call in calls:
                    outcome = await run_tool(io, call.id, call.name, "".join(call.arguments))
                    output = f"error: {outcome.output}" if outcome.is_error else outcome.output
                    messages.append({"role": "tool", "tool_call_id": call.id, "content": output})
                continue
            reason = result.finish_reason or "stop"
            io.stop_reason = STOP_REASONS.get(reason, reason)
            return
        raise loop_limit_error(LABEL, rounds)


async def _consume(io: TurnIO, blocks: Blocks, model: str, stream: Any) -> _Round:
    result = _Round()
    usage: Any = None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices[:1]:
            delta = choice.delta
            reasoning = (delta.model_extra or {}).get("reasoning_content") or (delta.model_extra or {}).get(
                "reasoning")
            if isinstance(reasoning, str):
                await blocks.delta(_SLOT, "thinking", reasoning)
            if delta.content:
                result.text.append(delta.content)
                await blocks.delta(_SLOT, "text", delta.content)
            for fragment in delta.tool_calls or []:
                call = result.calls.setdefault(fragment.index, _Call())
                if fragment.id:
                    call.id = fragment.id
                if fragment.function is not None:
                    if fragment.function.name:
                        call.name += fragment.function.name
                    if fragment.function.arguments:
                        call.arguments.append(fragment.function.arguments)
            if choice.finish_reason:
                result.finish_reason = choice.finish_reason
    await blocks.close_all()
    if result.finish_reason is None:
        raise StreamIncomplete()
    for index, call in result.calls.items():
        call.id = call.id or f"call_{io.turn_id}_{index}"
    if usage is not None:
        details = usage.prompt_tokens_details
        cached = (details.cached_tokens or 0) if details is not None else 0
        reasoning_tokens = 0
        if usage.completion_tokens_details is not None:
            reasoning_tokens = usage.completion_tokens_details.reasoning_tokens or 0
        io.usage.add(usage.prompt_tokens, usage.completion_tokens, cost_usd(
            model, input_tokens=usage.prompt_tokens - cached, output_tokens=usage.completion_tokens,
            cached_tokens=cached))
        add_extra(io, cached_input_tokens=cached, reasoning_tokens=reasoning_tokens)
    return result


def _rate_limit(error: BaseException) -> RateLimit | None:
    if not isinstance(error, openai.RateLimitError):
        return None
    return RateLimit(_message(error), retry_after_from_headers(error.response.headers))


def _message(error: openai.APIError) -> str:
    body = error.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    return error.message


def _describe(error: BaseException) -> str | None:
    if isinstance(error, openai.APIStatusError):
        return f"{error.code or error.type or f'HTTP {error.status_code}'}: {_message(error)}"
    if isinstance(error, openai.APIConnectionError):
        cause = error.__cause__
        return f"connection lost: {cause}" if cause is not None else f"connection error: {error.message}"
    if isinstance(error, openai.APIError):  # an error event inside a 200 stream
        return f"{error.code or error.type or 'error'}: {_message(error)}"
    if isinstance(error, openai.OpenAIError):
        return str(error)  # e.g. no API key
    return None
