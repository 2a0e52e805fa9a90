"""Anthropic Messages API, streamed, with the built-in tool loop and optional extended thinking.

Session options: `max_tokens` (default 8192, 16000 with thinking), `thinking`
(`true` = 4096-token budget, an int = that budget, `"adaptive"`), `max_rounds` (model requests per
turn, default 20), `rate_limit_retries`, `rate_limit_max_wait_s`. (The current SDK's `create` has
no `temperature`.) Key and base URL come from the SDK's own `ANTHROPIC_API_KEY` and
`ANTHROPIC_BASE_URL`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import anthropic
from anthropic import AsyncAnthropic

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
    int_option,
    loop_limit_error,
    merged_options,
    retry_after_from_headers,
    run_tool,
)
from agentwire.types import JSON

LABEL = "anthropic"


@dataclass(slots=True)
class _Round:
    content: list[JSON] = field(default_factory=list)  # the assistant message, to send back
    tool_uses: list[JSON] = field(default_factory=list)
    stop_reason: str | None = None


class AnthropicProvider(SdkProvider[AsyncAnthropic]):
    name = "anthropic"

    def _make_client(self) -> AsyncAnthropic:
        return AsyncAnthropic(max_retries=0)  # our retry loop, visible to the user

    async def _close_client(self, client: AsyncAnthropic) -> None:
        await client.close()

    def describe_error(self, error: BaseException) -> str | None:
        return _describe(error)

    async def _turn(self, io: TurnIO, blocks: Blocks) -> None:
        options = merged_options(self.options, io)
        model = io.model or self.model
        client = self._sdk()
        policy = RetryPolicy.from_options(options)
        messages: list[Any] = [{"role": m.role, "content": m.content} for m in io.history if m.content]
        messages.append({"role": "user", "content": io.message})
        params: dict[str, Any] = {"model": model, "max_tokens": 8192}
        if io.system:
            params["system"] = io.system
        if io.tools:
            params["tools"] = [{"name": t.name, "description": t.description, "input_schema": t.input_schema}
                               for t in io.tools]
        thinking = options.get("thinking")
        if thinking == "adaptive":
            params["thinking"] = {"type": "adaptive"}
            params["max_tokens"] = 16000
        elif thinking:
            budget = thinking if isinstance(thinking, int) and not isinstance(thinking, bool) else 4096
            params["thinking"] = {"type": "enabled", "budget_tokens": max(1024, budget)}
            params["max_tokens"] = max(16000, max(1024, budget) + 4096)
        params["max_tokens"] = int_option(options, "max_tokens", params["max_tokens"])
        budget_tokens = params.get("thinking", {}).get("budget_tokens")
        if budget_tokens is not None and params["max_tokens"] <= budget_tokens:
            params["max_tokens"] = budget_tokens + 4096

        rounds = int_option(options, "max_rounds", DEFAULT_MAX_ROUNDS)
        for _ in range(rounds):
            async def attempt() -> _Round:
                stream = await client.messages.create(**params, messages=messages, stream=True)
                try:
                    return await _consume(io, blocks, model, stream)
                finally:
                    await stream.close()

            result = await call_model(io, LABEL, policy, blocks, attempt, _rate_limit)
            messages.append({"role": "assistant", "content": result.content})
            if result.stop_reason == "tool_use" and result.tool_uses:
                results: list[JSON] = []
                for use in result.tool_uses:
                    outcome = await run_tool(io, use["id"], use["name"], use["input"])
                    block: JSON = {"type": "tool_result", "tool_use_id": use["id"], "content": outcome.output}
                    if outcome.is_error:
                        block["is_error"] = True
                    results.append(block)
                messages.append({"role": "user", "content": results})
                continue
            io.stop_reason = result.stop_reason or "end_turn"
            return
        raise loop_limit_error(LABEL, rounds)


async def _consume(io: TurnIO, blocks: Blocks, model: str, stream: Any) -> _Round:
    result = _Round()
    content: dict[int, JSON] = {}
    partial_json: dict[int, list[str]] = {}
    usage = {"input_tokens": 0, "output_tokens": 0, "cache_read_input_tokens": 0,
             "cache_creation_input_tokens": 0}
    complete = False
    async for event in stream:
        if event.type == "message_start":
            _update_usage(usage, event.message.usage)
        elif event.type == "content_block_start":
            block = event.content_block
            if block.type == "text":
                content[event.index] = {"type": "text", "text": block.text}
            elif block.type == "thinking":
                content[event.index] = {"type": "thinking", "thinking": block.thinking, "signature": block.signature}
            elif block.type == "redacted_thinking":
                content[event.index] = {"type": "redacted_thinking", "data": block.data}
            elif block.type == "tool_use":
                content[event.index] = {"type": "tool_use", "id": block.id, "name": block.name, "input": {}}
                partial_json[event.index] = []
            else:  # server tools and the like: kept so the conversation stays valid
                content[event.index] = block.model_dump(mode="json", exclude_none=True)
        elif event.type == "content_block_delta":
            delta, slot = event.delta, content.get(event.index, {})
            if delta.type == "text_delta":
                slot["text"] = slot.get("text", "") + delta.text
                await blocks.delta(event.index, "text", delta.text)
            elif delta.type == "thinking_delta":
                slot["thinking"] = slot.get("thinking", "") + delta.thinking
                await blocks.delta(event.index, "thinking", delta.thinking)
            elif delta.type == "signature_delta":
                slot["signature"] = slot.get("signature", "") + delta.signature
            elif delta.type == "input_json_delta":
                partial_json.setdefault(event.index, []).append(delta.partial_json)
        elif event.type == "content_block_stop":
            if event.index in partial_json:
                raw = "".join(partial_json.pop(event.index))
                content[event.index]["input"] = json.loads(raw) if raw.strip() else {}
            await blocks.close(event.index)
        elif event.type == "message_delta":
            result.stop_reason = event.delta.stop_reason
            _update_usage(usage, event.usage)
        elif event.type == "message_stop":
            complete = True
    await blocks.close_all()
    if not complete:
        raise StreamIncomplete("message")
    for index in sorted(content):
        block = content[index]
        if block["type"] == "text" and not block["text"]:
            continue  # the API refuses empty text blocks
        result.content.append(block)
        if block["type"] == "tool_use":
            result.tool_uses.append(block)
    io.usage.add(usage["input_tokens"], usage["output_tokens"], cost_usd(
        model, input_tokens=usage["input_tokens"], output_tokens=usage["output_tokens"],
        cached_tokens=usage["cache_read_input_tokens"], cache_write_tokens=usage["cache_creation_input_tokens"]))
    add_extra(io, cache_read_input_tokens=usage["cache_read_input_tokens"],
              cache_creation_input_tokens=usage["cache_creation_input_tokens"])
    return result


def _update_usage(usage: dict[str, int], reported: Any) -> None:
    """message_start carries the prompt's counts, message_delta cumulative ones: keep the latest."""
    for name in usage:
        value = getattr(reported, name, None)
        if isinstance(value, int):
            usage[name] = value


def _rate_limit(error: BaseException) -> RateLimit | None:
    if not isinstance(error, anthropic.RateLimitError):
        return None
    return RateLimit(error.api_message or error.message, retry_after_from_headers(error.response.headers))


def _describe(error: BaseException) -> str | None:
    if isinstance(error, anthropic.APIStatusError):
        kind = error.type or f"HTTP {error.status_code}"
        return f"{kind}: {error.api_message or error.message}"
    if isinstance(error, anthropic.APIConnectionError) and error.__cause__ is None:
        return f"connection error: {error.message}"
    if isinstance(error, anthropic.AnthropicError) and not isinstance(error, anthropic.APIError):
        return str(error)
    if isinstance(error, TypeError) and "authentication method" in str(error):
        return str(error).strip('"')  # no API key
    return None
