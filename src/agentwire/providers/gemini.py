"""Gemini (google-genai, Gemini Developer API), streamed, with the built-in tool loop and thought parts.

Gemini has no block boundaries in its stream: a run of consecutive thought parts is one thinking
block, a run of text parts one text block. The model's parts (with their thought signatures) are
sent back unchanged in the next request of the tool loop, as the API requires.

Session options: `thinking` (default on for gemini-2.5/3 models: thought summaries are shown;
`false` hides them, an int sets `thinking_budget`), `max_tokens`, `temperature`, `max_rounds`
(default 20), `rate_limit_retries`, `rate_limit_max_wait_s`. Key: `GEMINI_API_KEY` or
`GOOGLE_API_KEY` (the SDK reads them); base URL: `AGENTWIRE_GEMINI_BASE_URL`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from google import genai
from google.genai import errors, types

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
    parse_seconds,
    retry_after_from_headers,
    run_tool,
)
from agentwire.types import JSON

LABEL = "gemini"
BASE_URL_ENV = "AGENTWIRE_GEMINI_BASE_URL"
API_VERSION = "v1beta"
STOP_REASONS = {"STOP": "end_turn", "MAX_TOKENS": "max_tokens"}
_SLOT = "candidate"


@dataclass(slots=True)
class _Round:
    parts: list[types.Part] = field(default_factory=list)  # the model's content, to send back
    calls: list[types.FunctionCall] = field(default_factory=list)
    finish_reason: str | None = None


class GeminiProvider(SdkProvider[genai.Client]):
    name = "gemini"

    def _make_client(self) -> genai.Client:
        # No retry_options: the SDK does not retry, our loop does (and shows it).
        http_options = types.HttpOptions(base_url=os.environ.get(BASE_URL_ENV) or None, api_version=API_VERSION)
        return genai.Client(http_options=http_options)

    async def _close_client(self, client: genai.Client) -> None:
        await client.aio.aclose()
        client.close()

    def describe_error(self, error: BaseException) -> str | None:
        return _describe(error)

    async def _turn(self, io: TurnIO, blocks: Blocks) -> None:
        options = merged_options(self.options, io)
        model = io.model or self.model
        client = self._sdk()
        policy = RetryPolicy.from_options(options)
        contents: list[types.Content] = [
            types.Content(role="model" if m.role == "assistant" else "user", parts=[types.Part(text=m.content)])
            for m in io.history if m.content]
        contents.append(types.Content(role="user", parts=[types.Part(text=io.message)]))
        config = _config(io, model, options)

        calls_made = 0
        rounds = int_option(options, "max_rounds", DEFAULT_MAX_ROUNDS)
        for _ in range(rounds):
            async def attempt() -> _Round:
                stream = await client.aio.models.generate_content_stream(
                    model=model, contents=contents, config=config)
                try:
                    return await _consume(io, blocks, model, stream)
                finally:
                    close = getattr(stream, "aclose", None)
                    if close is not None:
                        await close()

            result = await call_model(io, LABEL, policy, blocks, attempt, _rate_limit)
            if result.parts:
                contents.append(types.Content(role="model", parts=result.parts))
            if result.calls and result.finish_reason in (None, "STOP"):
                responses: list[types.Part] = []
                for call in result.calls:
                    calls_made += 1
                    name = call.name or ""
                    outcome = await run_tool(io, call.id or f"call_{io.turn_id}_{calls_made}", name, call.args)
                    payload = {"error": outcome.output} if outcome.is_error else {"output": outcome.output}
                    responses.append(types.Part(function_response=types.FunctionResponse(
                        id=call.id, name=name, response=payload)))
                contents.append(types.Content(role="user", parts=responses))
                continue
            reason = result.finish_reason or "STOP"
            io.stop_reason = STOP_REASONS.get(reason, reason.lower())
            return
        raise loop_limit_error(LABEL, rounds)


def _config(io: TurnIO, model: str, options: JSON) -> types.GenerateContentConfig:
    config = types.GenerateContentConfig(
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True))
    if io.system:
        config.system_instruction = io.system
    if io.tools:
        config.tools = [types.Tool(function_declarations=[
            types.FunctionDeclaration(name=t.name, description=t.description, parameters_json_schema=t.input_schema)
            for t in io.tools])]
    thinking = options.get("thinking")
    if thinking is None:
        thinking = model.startswith(("gemini-2.5", "gemini-3"))
    if thinking:
        budget = thinking if isinstance(thinking, int) and not isinstance(thinking, bool) else None
        config.thinking_config = types.ThinkingConfig(include_thoughts=True, thinking_budget=budget)
    if "max_tokens" in options:
        config.max_output_tokens = int_option(options, "max_tokens", 8192)
    if "temperature" in options:
        config.temperature = float_option(options, "temperature", 1.0)
    return config


async def _consume(io: TurnIO, blocks: Blocks, model: str, stream: Any) -> _Round:
    result = _Round()
    usage: types.GenerateContentResponseUsageMetadata | None = None
    async for chunk in stream:
        if chunk.usage_metadata is not None:
            usage = chunk.usage_metadata  # cumulative: the last one counts
        if not chunk.candidates:
            continue
        candidate = chunk.candidates[0]
        if candidate.finish_reason is not None:
            result.finish_reason = str(getattr(candidate.finish_reason, "value", candidate.finish_reason))
        parts = (candidate.content.parts if candidate.content is not None else None) or []
        for part in parts:
            if part.function_call is not None:
                await blocks.close_all()
                result.calls.append(part.function_call)
                result.parts.append(part)
            elif part.text is not None:
                await blocks.delta(_SLOT, "thinking" if part.thought else "text", part.text)
                _append_text(result.parts, part)
            else:
                result.parts.append(part)
    await blocks.close_all()
    if result.finish_reason is None:
        raise StreamIncomplete()
    if usage is not None:
        prompt = usage.prompt_token_count or 0
        cached = usage.cached_content_token_count or 0
        thoughts = usage.thoughts_token_count or 0
        output = (usage.candidates_token_count or 0) + thoughts
        io.usage.add(prompt, output, cost_usd(model, input_tokens=prompt - cached, output_tokens=output,
                                              cached_tokens=cached))
        add_extra(io, cached_input_tokens=cached, thoughts_tokens=thoughts)
    return result


def _append_text(parts: list[types.Part], part: types.Part) -> None:
    """Merge streamed text fragments into one part per run (keeping a thought signature if one came)."""
    last = parts[-1] if parts else None
    if last is not None and last.text is not None and bool(last.thought) == bool(part.thought) \
            and last.function_call is None and not last.thought_signature:
        parts[-1] = types.Part(text=last.text + (part.text or ""), thought=part.thought or None,
                               thought_signature=part.thought_signature)
    else:
        parts.append(types.Part(text=part.text, thought=part.thought or None,
                                thought_signature=part.thought_signature))


def _rate_limit(error: BaseException) -> RateLimit | None:
    if not isinstance(error, errors.ClientError) or error.code != 429:
        return None
    retry_after = None
    details = error.details.get("error", error.details) if isinstance(error.details, dict) else {}
    for detail in details.get("details") or [] if isinstance(details, dict) else []:
        if isinstance(detail, dict) and detail.get("@type", "").endswith("google.rpc.RetryInfo"):
            retry_after = parse_seconds(detail.get("retryDelay"))
    if retry_after is None:
        retry_after = retry_after_from_headers(getattr(error.response, "headers", None))
    return RateLimit(error.message or f"HTTP {error.code}", retry_after)


def _describe(error: BaseException) -> str | None:
    if isinstance(error, errors.APIError):
        return f"{error.status or f'HTTP {error.code}'}: {error.message}"
    if isinstance(error, errors.UnknownApiResponseError):
        return f"malformed response from the API: {error}"
    if isinstance(error, ValueError) and "api key" in str(error).lower():
        return str(error)  # the SDK's "Missing key inputs argument! …"
    return None
