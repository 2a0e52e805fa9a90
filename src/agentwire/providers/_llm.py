"""What the SDK providers (anthropic, openai, gemini) share: block numbering, the 429 retry loop,
tool dispatch, error text and a small price table; block numbering and `ModelWait` serve the agent
CLIs' mappings too. No SDK is imported here.

Contracts the providers keep (and the console runtime may rely on):
- Text and thinking blocks are numbered from 0 across the whole turn (every model request of the
  tool loop continues the count), so a block number never repeats within a turn. Each block gets
  its deltas and then exactly one `*_done` with its full text, also when the turn fails mid-stream
  (the partial text), but not when it is cancelled.
- Each model request runs inside `io.llm_call()`. A 429 that comes before anything of the answer
  was shown is retried after `io.state("rate_limited", retry_in_s=…, attempt=n)` and a sleep
  outside `llm_call()`; everything else becomes `ProviderError("<provider>: <reason>")`.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import httpx

from agentwire.backoff import doubling
from agentwire.providers import ProviderError, ToolOutcome, TurnIO
from agentwire.types import JSON

R = TypeVar("R")
ClientT = TypeVar("ClientT")
BlockKind = Literal["text", "thinking"]

DEFAULT_MAX_ROUNDS = 20


@dataclass(slots=True)
class _Open:
    kind: BlockKind
    index: int
    parts: list[str] = field(default_factory=list)


class Blocks:
    """Turn-wide numbering of text/thinking blocks; `key` is the provider's own slot for a block."""

    def __init__(self, io: TurnIO) -> None:
        self._io = io
        self._next = 0
        self._open: dict[object, _Open] = {}
        self.emitted = 0  # deltas reported so far (a retry is only safe while this has not moved)

    async def delta(self, key: object, kind: BlockKind, text: str) -> None:
        if not text:
            return
        block = self._open.get(key)
        if block is not None and block.kind != kind:
            await self.close(key)
            block = None
        if block is None:
            block = self._open[key] = _Open(kind, self._next)
            self._next += 1
        block.parts.append(text)
        self.emitted += 1
        if kind == "text":
            await self._io.text(block.index, text)
        else:
            await self._io.thinking(block.index, text)

    async def close(self, key: object) -> None:
        block = self._open.pop(key, None)
        if block is None:
            return
        full = "".join(block.parts)
        if block.kind == "text":
            await self._io.text_done(block.index, full)
        else:
            await self._io.thinking_done(block.index, full)

    async def close_all(self) -> None:
        for key in sorted(self._open, key=lambda k: self._open[k].index):
            await self.close(key)


class ModelWait:
    """An agent that runs its own loop (an agent CLI) is waiting for its model whenever no tool runs:
    `io.llm_call()` held open from `begin()` to `end()`, across the lines that say so. Both are
    idempotent."""

    def __init__(self, io: TurnIO) -> None:
        self._io = io
        self._call: AsyncExitStack | None = None

    async def begin(self) -> None:
        if self._call is None:
            stack = AsyncExitStack()
            await stack.enter_async_context(self._io.llm_call())
            self._call = stack

    async def end(self) -> None:
        stack, self._call = self._call, None
        if stack is not None:
            await stack.aclose()


# -- options -----------------------------------------------------------------------------------------


def merged_options(provider_options: JSON, io: TurnIO) -> JSON:
    return {**provider_options, **(io.options or {})}


def int_option(options: JSON, name: str, default: int) -> int:
    value = options.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default


def float_option(options: JSON, name: str, default: float) -> float:
    value = options.get(name)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
        return float(value)
    return default


# -- 429 retry ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Session options `rate_limit_retries` (default 4) and `rate_limit_max_wait_s` (default 30)."""

    retries: int = 4
    base_s: float = 1.0
    cap_s: float = 30.0

    @classmethod
    def from_options(cls, options: JSON) -> RetryPolicy:
        retries = options.get("rate_limit_retries")
        return cls(
            retries=retries if isinstance(retries, int) and not isinstance(retries, bool) and retries >= 0 else 4,
            cap_s=float_option(options, "rate_limit_max_wait_s", 30.0),
        )

    def delay(self, attempt: int, retry_after: float | None) -> float:
        wanted = retry_after if retry_after is not None else doubling(attempt, self.base_s, self.cap_s)
        return round(min(max(wanted, 0.0), self.cap_s), 3)


@dataclass(frozen=True, slots=True)
class RateLimit:
    message: str
    retry_after: float | None


def parse_seconds(value: object) -> float | None:
    """'1', '0.5', '1.5s' (Google's Duration), or None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = float(value.strip().removesuffix("s"))
        except ValueError:
            return None
    else:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def retry_after_from_headers(headers: Any) -> float | None:
    if headers is None:
        return None
    milliseconds = parse_seconds(headers.get("retry-after-ms"))
    if milliseconds is not None:
        return milliseconds / 1000
    return parse_seconds(headers.get("retry-after"))


async def call_model(
    io: TurnIO,
    label: str,
    policy: RetryPolicy,
    blocks: Blocks,
    attempt: Callable[[], Awaitable[R]],
    rate_limit: Callable[[BaseException], RateLimit | None],
) -> R:
    """One model request (inside `io.llm_call()`), retried on a 429 that came before any output."""
    retries = 0
    while True:
        shown = blocks.emitted
        try:
            async with io.llm_call():
                return await attempt()
        except Exception as error:
            limited = rate_limit(error)
            if limited is None or blocks.emitted != shown:
                raise
            retries += 1
            if retries > policy.retries:
                raise ProviderError(
                    f"{label}: rate limited: {limited.message} (gave up after {policy.retries} retries)"
                ) from error
            wait = policy.delay(retries, limited.retry_after)
        await io.state("rate_limited", retry_in_s=wait, attempt=retries)
        await asyncio.sleep(wait)


# -- tools -------------------------------------------------------------------------------------------


async def run_tool(io: TurnIO, call_id: str, name: str, arguments: str | JSON | None) -> ToolOutcome:
    """Run a tool the model asked for; an unknown tool or unparsable arguments are shown and answered
    with an error result (the model can correct itself) instead of failing the turn."""
    if isinstance(arguments, str):
        try:
            parsed = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as error:
            return await _refuse(io, call_id, name, {"arguments": arguments},
                                 f"invalid JSON arguments for {name}: {error.msg}")
    else:
        parsed = arguments or {}
    if not isinstance(parsed, dict):
        return await _refuse(io, call_id, name, {"arguments": parsed}, f"arguments for {name} must be an object")
    if name not in {tool.name for tool in io.tools}:
        return await _refuse(io, call_id, name, parsed, f"unknown tool {name!r}")
    return await io.run_tool(call_id, name, parsed)


async def _refuse(io: TurnIO, call_id: str, name: str, input: JSON, message: str) -> ToolOutcome:
    await io.tool_call(call_id, name, input)
    await io.tool_result(call_id, message, is_error=True, duration_ms=0.0)
    return ToolOutcome(message, is_error=True)


# -- errors ------------------------------------------------------------------------------------------


class StreamIncomplete(Exception):
    """The response body ended cleanly but before the vendor's end-of-answer marker."""

    def __init__(self, what: str = "answer") -> None:
        super().__init__(f"the stream ended before the {what} was complete")


def _transport_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [httpx.TransportError, httpx.StreamError, OSError,
                                         asyncio.IncompleteReadError]
    try:
        import httpx2  # the transport of the current SDKs
    except ImportError:
        pass
    else:
        errors += [httpx2.TransportError, httpx2.StreamError]
    return tuple(errors)


def describe_error(label: str, error: BaseException, specific: Callable[[BaseException], str | None]) -> str:
    """`<label>: <reason>` for the user: the vendor's own words where there are some."""
    text = specific(error)
    if text:
        return f"{label}: {text}"
    if isinstance(error, StreamIncomplete):
        return f"{label}: connection lost: {error}"
    if isinstance(error, json.JSONDecodeError):
        return f"{label}: malformed response from the API ({error.msg} at line {error.lineno} column {error.colno})"
    transport = _transport_errors()
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, transport):
            return f"{label}: connection lost: {cause or type(cause).__name__}"
        cause = cause.__cause__
    return f"{label}: {type(error).__name__}: {error}"


async def run_guarded(label: str, blocks: Blocks, body: Awaitable[None],
                      specific: Callable[[BaseException], str | None]) -> None:
    """Run a turn; on failure close the open blocks (what was shown stays shown) and raise a
    `ProviderError` with a readable reason. Cancellation passes through untouched."""
    try:
        await body
    except ProviderError:
        await blocks.close_all()
        raise
    except Exception as error:
        await blocks.close_all()
        raise ProviderError(describe_error(label, error, specific)) from error


def loop_limit_error(label: str, rounds: int) -> ProviderError:
    return ProviderError(f"{label}: stopped after {rounds} model requests in one turn (tool loop limit; "
                         "raise the session option max_rounds to allow more)")


# -- prices ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Price:
    """US dollars per million tokens."""

    input: float
    output: float
    cached_input: float | None = None  # reading a cached prompt
    cache_write: float | None = None  # writing one (Anthropic)


# Public list prices (standard tier, prompts up to 200k tokens) by model name, with or without a
# date suffix. A model not listed gets no cost rather than a guess. Vendors change these; they are
# an estimate for the console, not a bill.
PRICES: dict[str, Price] = {
    "claude-opus-4-5": Price(5.0, 25.0, 0.5, 6.25),
    "claude-opus-4-1": Price(15.0, 75.0, 1.5, 18.75),
    "claude-opus-4": Price(15.0, 75.0, 1.5, 18.75),
    "claude-sonnet-4-6": Price(3.0, 15.0, 0.3, 3.75),
    "claude-sonnet-4-5": Price(3.0, 15.0, 0.3, 3.75),
    "claude-sonnet-4": Price(3.0, 15.0, 0.3, 3.75),
    "claude-3-7-sonnet": Price(3.0, 15.0, 0.3, 3.75),
    "claude-haiku-4-5": Price(1.0, 5.0, 0.1, 1.25),
    "claude-3-5-haiku": Price(0.8, 4.0, 0.08, 1.0),
    "gpt-4.1": Price(2.0, 8.0, 0.5),
    "gpt-4.1-mini": Price(0.4, 1.6, 0.1),
    "gpt-4.1-nano": Price(0.1, 0.4, 0.025),
    "gpt-4o": Price(2.5, 10.0, 1.25),
    "gpt-4o-mini": Price(0.15, 0.6, 0.075),
    "gpt-5": Price(1.25, 10.0, 0.125),
    "gpt-5-mini": Price(0.25, 2.0, 0.025),
    "gpt-5-nano": Price(0.05, 0.4, 0.005),
    "o4-mini": Price(1.1, 4.4, 0.275),
    "o3": Price(2.0, 8.0, 0.5),
    "gemini-2.5-pro": Price(1.25, 10.0, 0.125),
    "gemini-2.5-flash": Price(0.3, 2.5, 0.03),
    "gemini-2.5-flash-lite": Price(0.1, 0.4, 0.01),
    "gemini-2.0-flash": Price(0.1, 0.4, 0.025),
}


_DATED = re.compile(r"-(\d{8}|\d{4}-\d{2}-\d{2}|latest)$")


def price_for(model: str) -> Price | None:
    name = model.removeprefix("models/")
    return PRICES.get(name) or PRICES.get(_DATED.sub("", name))


def cost_usd(model: str, *, input_tokens: int, output_tokens: int, cached_tokens: int = 0,
             cache_write_tokens: int = 0) -> float | None:
    """`input_tokens` excludes `cached_tokens` and `cache_write_tokens` (each is billed at its own rate)."""
    price = price_for(model)
    if price is None:
        return None
    total = input_tokens * price.input + output_tokens * price.output
    total += cached_tokens * (price.cached_input if price.cached_input is not None else price.input)
    total += cache_write_tokens * (price.cache_write if price.cache_write is not None else price.input)
    return total / 1_000_000


def add_extra(io: TurnIO, **counts: int) -> None:
    """Sum vendor-specific token counts into `io.usage.extra` (only the ones that are not zero)."""
    for name, value in counts.items():
        if value:
            io.usage.extra[name] = int(io.usage.extra.get(name, 0)) + value


class SdkProvider(Generic[ClientT]):
    """What the SDK providers share: their options, one SDK client made on first use and closed with
    the provider, and the guarded turn. A provider adds its client and its turn."""

    name = "sdk"

    def __init__(self, model: str, options: JSON) -> None:
        self.model = model
        self.options = dict(options)
        self._client: ClientT | None = None

    async def run(self, io: TurnIO) -> None:
        blocks = Blocks(io)
        await run_guarded(self.name, blocks, self._turn(io, blocks), self.describe_error)

    def _sdk(self) -> ClientT:
        if self._client is None:
            self._client = self._make_client()
        return self._client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await self._close_client(client)

    def _make_client(self) -> ClientT:
        raise NotImplementedError

    async def _close_client(self, client: ClientT) -> None:
        raise NotImplementedError

    async def _turn(self, io: TurnIO, blocks: Blocks) -> None:
        raise NotImplementedError

    def describe_error(self, error: BaseException) -> str | None:
        """The provider's own reading of an SDK error, or None for the generic one."""
        return None
