"""Fakes of the Anthropic, OpenAI and Gemini streaming HTTP APIs on 127.0.0.1, scripted per test.

One `FakeLLMServer` serves all three vendors on one free port, from a background thread with its own
event loop (a small HTTP/1.1 server on `asyncio.start_server`, keep-alive and chunked bodies, so
that the official SDKs talk to it exactly as they talk to the vendors, and so that a stream can be
cut or stalled at a chosen byte):

- Anthropic Messages: ``POST /v1/messages`` with ``"stream": true`` (SSE ``event:``/``data:`` pairs)
- OpenAI Chat Completions: ``POST /v1/chat/completions`` with ``"stream": true`` (``data:`` chunks,
  a usage chunk when ``stream_options.include_usage``, then ``data: [DONE]``). Chat Completions does
  not expose reasoning, so a `Thinking` block is not sent there; it only counts in
  ``completion_tokens_details.reasoning_tokens``.
- Gemini: ``POST /v1beta/models/{model}:streamGenerateContent?alt=sse`` (``data:`` lines with a
  ``GenerateContentResponse``, CRLF-separated as Google sends them). Thought parts are only sent
  when the request asks for ``thinkingConfig.includeThoughts``.
- OpenAI Responses: ``POST /v1/responses`` with ``"stream": true`` (what Codex CLI speaks): see
  `tests.fakes.openai_responses`; queue its scenarios with ``provider="responses"``.

A Gemini ``generateContent`` call that asks for JSON by schema (Gemini CLI's model router and its other
checks of its own) is answered from the schema without taking a scenario: see `tests.fakes.gemini_json`.

Every request takes the next queued **scenario** (a provider's own queue first, then the shared
one); a request with nothing queued gets an HTTP 500 in the vendor's error format naming the
problem. Every request is recorded (`server.requests`) with its headers and JSON body.

Use from pytest (the project's pytest config puts the repository root on ``sys.path``)::

    # conftest.py (or define your own fixture around ``with FakeLLMServer() as server:``)
    from tests.fakes.llm_servers import llm_server  # noqa: F401  (the fixture)

    # a test module
    from tests.fakes import llm_servers as fake

    def test_something(llm_server, monkeypatch):
        llm_server.patch_env(monkeypatch)   # ANTHROPIC_BASE_URL, OPENAI_BASE_URL (…/v1),
                                            # AGENTWIRE_GEMINI_BASE_URL and a test key for each
        llm_server.enqueue(*fake.tool_use_sequence())            # any provider
        llm_server.enqueue(fake.rate_limited(0), fake.text(), provider="openai")
        ...                                                      # run the turn
        assert llm_server.requests[1].tool_results()[0]["call_id"] == "toolu_…"
        assert not llm_server.pending()

For a server started in a subprocess use ``llm_server.env()`` (the same variables as a dict).
Base URLs: `anthropic_base_url` (SDK ``base_url``), `openai_base_url` (ends in ``/v1``),
`gemini_base_url` (``HttpOptions(base_url=…)``, API version ``v1beta``).

Scenarios (plain frozen dataclasses, so a test can also build its own `Reply`):

==========================  ========================================================================
``text()``                  replays ``tests/fixtures/providers/<vendor>_text.sse`` (`FIXTURE_TEXT`)
``text("…", delay_s=…)``    a generated text answer (``delay_s`` between events: slow streams)
``tool_call(name, input)``  a tool call (optionally after some text); stop reason tool use
``tool_use_sequence()``     three replies: ``todo_write`` call, ``task_create`` call, final text
``thinking()``              a thinking block (with signature) then text
``auth_error()``            401 (Gemini answers a bad key with 400 API_KEY_INVALID, as Google does;
                            ``auth_error(status=401)`` gives its UNAUTHENTICATED form)
``rate_limited(1)``         429 with ``retry-after: 1`` (Gemini: ``RetryInfo.retryDelay "1s"``)
``server_error()``          HTTP 500 before any byte of the stream
``error_mid_stream()``      200 and a few text deltas, then the vendor's in-stream error, then end
``malformed_chunk()``       200 and a few deltas, then a ``data:`` line that is not JSON, then rest
``dropped_connection()``    200 and a few deltas, then the socket closes (incomplete chunked body)
``stalled()``               200 and a few deltas, then silence until the client goes away
                            (``request.disconnected`` turns true): for cancellation tests
``truncated_stream()``      200 and a few deltas, then a clean end of the body without the
                            vendor's end marker (``message_stop``, ``finish_reason``/``[DONE]``,
                            ``finishReason``), as a misbehaving proxy might
==========================  ========================================================================
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http
import itertools
import json
import re
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

import pytest

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "providers"
FIXTURE_TEXT = "Hello! This answer was streamed from a recorded fixture."
PROVIDERS = ("anthropic", "openai", "gemini", "responses")  # responses: tests/fakes/openai_responses.py
TEST_KEYS = {"anthropic": "sk-ant-test-0000", "openai": "sk-test-0000", "gemini": "gemini-test-0000"}

# --------------------------------------------------------------------------------------------------
# Scenarios


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


# --------------------------------------------------------------------------------------------------
# Recorded requests


@dataclass
class RecordedRequest:
    provider: str
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: bytes
    scenario: Scenario | None = None
    disconnected: bool = False  # the client went away before the response ended

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    @property
    def model(self) -> str:
        if self.provider == "gemini":
            return self.path.rsplit("/", 1)[-1].split(":", 1)[0]
        return str((self.json or {}).get("model", ""))

    @property
    def api_key(self) -> str | None:
        if self.provider == "anthropic" and "x-api-key" in self.headers:
            return self.headers["x-api-key"]
        if self.provider == "gemini":
            return self.headers.get("x-goog-api-key") or self.query.get("key")
        auth = self.headers.get("authorization", "")
        return auth.removeprefix("Bearer ") if auth else None

    def tool_results(self) -> list[dict[str, Any]]:
        """The tool results this request sends back, in order: {call_id, name, output, is_error}."""
        body = self.json or {}
        if self.provider == "anthropic":
            return _anthropic_tool_results(body.get("messages", []))
        if self.provider == "openai":
            return _openai_tool_results(body.get("messages", []))
        if self.provider == "responses":
            return openai_responses.tool_results(body)
        return _gemini_tool_results(body.get("contents", []))


def _anthropic_tool_results(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not messages or messages[-1].get("role") != "user" or not isinstance(messages[-1]["content"], list):
        return []
    names: dict[str, str] = {}
    for message in messages[:-1]:
        if message.get("role") == "assistant" and isinstance(message.get("content"), list):
            names.update({b["id"]: b["name"] for b in message["content"] if b.get("type") == "tool_use"})
    results = []
    for block in messages[-1]["content"]:
        if block.get("type") != "tool_result":
            continue
        content = block.get("content", "")
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content)
        results.append({"call_id": block["tool_use_id"], "name": names.get(block["tool_use_id"]),
                        "output": content, "is_error": bool(block.get("is_error", False))})
    return results


def _openai_tool_results(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    names: dict[str, str] = {}
    for message in messages:
        for call in message.get("tool_calls") or []:
            names[call["id"]] = call["function"]["name"]
    trailing: list[dict[str, Any]] = []
    for message in reversed(messages):
        if message.get("role") != "tool":
            break
        trailing.insert(0, message)
    results = []
    for message in trailing:
        content = message.get("content", "")
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content)
        results.append({"call_id": message["tool_call_id"], "name": names.get(message["tool_call_id"]),
                        "output": content, "is_error": None})
    return results


def _gemini_tool_results(contents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not contents:
        return []
    results = []
    for part in contents[-1].get("parts", []):
        response = part.get("functionResponse")
        if response is None:
            continue
        payload = response.get("response", {})
        output = payload.get("output", payload.get("error", payload))
        results.append({"call_id": response.get("id"), "name": response.get("name"), "output": output,
                        "is_error": "error" in payload})
    return results


# --------------------------------------------------------------------------------------------------
# Wire formats


@dataclass
class _Frame:
    data: bytes
    delta: bool = False  # counts towards `Reply.fault_after`


def _ident(seed: str, length: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    digest = hashlib.sha256(seed.encode()).digest() * 4
    return "".join(alphabet[b % len(alphabet)] for b in digest[:length])


def _tokens(value: str | bytes) -> int:
    return max(1, len(value) // 4)


def _compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _json_pieces(value: dict[str, Any], pieces: int = 3) -> list[str]:
    encoded = _compact(value)
    size = max(1, -(-len(encoded) // pieces))
    return [encoded[i:i + size] for i in range(0, len(encoded), size)]


# Anthropic -----------------------------------------------------------------------------------------


def _anthropic_event(name: str, obj: Any, *, delta: bool = False, spaced: bool = False) -> _Frame:
    data = json.dumps(obj, ensure_ascii=False) if spaced else _compact(obj)
    return _Frame(f"event: {name}\ndata: {data}\n\n".encode(), delta)


def _anthropic_frames(reply: Reply, request: RecordedRequest, n: int) -> list[_Frame]:
    model = request.model or "claude-sonnet-4-5"
    input_tokens = _tokens(request.body)
    frames = [_anthropic_event("message_start", {"type": "message_start", "message": {
        "model": model, "id": "msg_01" + _ident(f"msg{n}", 22), "type": "message", "role": "assistant",
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                  "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
                  "output_tokens": 1, "service_tier": "standard"}}})]
    output_tokens = 0
    for index, block in enumerate(reply.blocks):
        def delta(body: dict[str, Any], *, counts: bool = True, index: int = index) -> _Frame:
            return _anthropic_event("content_block_delta",
                                    {"type": "content_block_delta", "index": index, "delta": body}, delta=counts)

        if isinstance(block, Thinking):
            start: dict[str, Any] = {"type": "thinking", "thinking": "", "signature": ""}
            body = [delta({"type": "thinking_delta", "thinking": p}) for p in fragments(block.text)]
            body.append(delta({"type": "signature_delta", "signature": block.signature}, counts=False))
            output_tokens += _tokens(block.text)
        elif isinstance(block, Text):
            start = {"type": "text", "text": ""}
            body = [delta({"type": "text_delta", "text": p}) for p in fragments(block.text)]
            output_tokens += _tokens(block.text)
        else:
            call_id = block.id or "toolu_01" + _ident(f"toolu{n}.{index}", 22)
            start = {"type": "tool_use", "id": call_id, "name": block.name, "input": {}}
            body = [delta({"type": "input_json_delta", "partial_json": ""}, counts=False)]
            body += [delta({"type": "input_json_delta", "partial_json": p}) for p in _json_pieces(block.input)]
            output_tokens += _tokens(_compact(block.input)) + 10
        frames.append(_anthropic_event("content_block_start",
                                       {"type": "content_block_start", "index": index, "content_block": start}))
        if index == 0:
            frames.append(_anthropic_event("ping", {"type": "ping"}, spaced=True))
        frames += body
        frames.append(_anthropic_event("content_block_stop", {"type": "content_block_stop", "index": index}))
    frames.append(_anthropic_event("message_delta", {
        "type": "message_delta", "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
        "usage": {"input_tokens": input_tokens, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                  "output_tokens": output_tokens}}))
    frames.append(_anthropic_event("message_stop", {"type": "message_stop"}))
    return frames


def _anthropic_fault(fault: Fault) -> _Frame:
    if fault == "error":
        return _anthropic_event("error", {"type": "error", "error": {
            "type": "api_error", "message": "Internal server error"}}, spaced=True)
    return _Frame(b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
                  b'"delta":{"type":"text_delta","text":"trunc\n\n')


def _anthropic_error(error: HttpError, request: RecordedRequest, n: int) -> tuple[int, dict[str, str], bytes]:
    status, kind, message = {
        "auth": (401, "authentication_error", "invalid x-api-key"),
        "rate_limit": (429, "rate_limit_error",
                       "This request would exceed the rate limit for your organization "
                       "(5bd1f6a4-0c2e-4a8e-9f8e-2f3c1e7b9d10) of 50 requests per minute. For details, refer to: "
                       "https://docs.claude.com/en/api/rate-limits. You can see the response headers for current "
                       "usage. Please reduce the prompt length or the maximum tokens requested, or try again later."),
        "server": (500, "api_error", "Internal server error"),
        "overloaded": (529, "overloaded_error", "Overloaded"),
    }[error.kind]
    request_id = "req_011CV" + _ident(f"req{n}", 19)
    headers = {"content-type": "application/json", "request-id": request_id,
               "x-should-retry": "true" if error.kind != "auth" else "false"}
    if error.retry_after is not None:
        headers["retry-after"] = f"{error.retry_after:g}"
        headers["anthropic-ratelimit-requests-limit"] = "50"
        headers["anthropic-ratelimit-requests-remaining"] = "0"
    body = {"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id}
    return error.status or status, headers, _compact(body).encode()


# OpenAI --------------------------------------------------------------------------------------------


def _openai_frames(reply: Reply, request: RecordedRequest, n: int) -> list[_Frame]:
    body = request.json or {}
    stream_options = body.get("stream_options") or {}
    include_usage = bool(stream_options.get("include_usage"))
    obfuscate = stream_options.get("include_obfuscation", True)
    base = {"id": "chatcmpl-" + _ident(f"chat{n}", 29), "object": "chat.completion.chunk",
            "created": int(time.time()), "model": request.model or "gpt-4.1-mini", "service_tier": "default",
            "system_fingerprint": "fp_4c2851f862"}

    def chunk(delta: dict[str, Any], finish: str | None = None, *, counts: bool = False) -> _Frame:
        obj: dict[str, Any] = {**base, "choices": [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if include_usage:
            obj["usage"] = None
        if obfuscate:
            obj["obfuscation"] = _ident(_compact(delta), 2 + len(_compact(delta)) % 5)
        return _Frame(f"data: {_compact(obj)}\n\n".encode(), counts)

    visible = [b for b in reply.blocks if not isinstance(b, Thinking)]
    reasoning_tokens = sum(_tokens(b.text) for b in reply.blocks if isinstance(b, Thinking))
    frames: list[_Frame] = []
    output_tokens = reasoning_tokens
    call_index = 0
    for position, block in enumerate(visible):
        if isinstance(block, Text):
            if position == 0:
                frames.append(chunk({"role": "assistant", "content": "", "refusal": None}))
            frames += [chunk({"content": p}, counts=True) for p in fragments(block.text)]
            output_tokens += _tokens(block.text)
            continue
        assert isinstance(block, ToolCall)
        call_id = block.id or "call_" + _ident(f"call{n}.{position}", 24)
        first = {"index": call_index, "id": call_id, "type": "function",
                 "function": {"name": block.name, "arguments": ""}}
        if position == 0:
            frames.append(chunk({"role": "assistant", "content": None, "tool_calls": [first], "refusal": None}))
        else:
            frames.append(chunk({"tool_calls": [first]}))
        frames += [chunk({"tool_calls": [{"index": call_index, "function": {"arguments": p}}]}, counts=True)
                   for p in _json_pieces(block.input)]
        output_tokens += _tokens(_compact(block.input)) + 10
        call_index += 1
    if not visible:
        frames.append(chunk({"role": "assistant", "content": "", "refusal": None}))
    finish = {"end_turn": "stop", "tool_use": "tool_calls", "max_tokens": "length"}[reply.stop_reason]
    frames.append(chunk({}, finish))
    if include_usage:
        prompt_tokens = _tokens(request.body)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": output_tokens,
                 "total_tokens": prompt_tokens + output_tokens,
                 "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                 "completion_tokens_details": {"reasoning_tokens": reasoning_tokens, "audio_tokens": 0,
                                               "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}
        final: dict[str, Any] = {**base, "choices": [], "usage": usage}
        if obfuscate:
            final["obfuscation"] = "Ab"
        frames.append(_Frame(f"data: {_compact(final)}\n\n".encode()))
    frames.append(_Frame(b"data: [DONE]\n\n"))
    return frames


def _openai_fault(fault: Fault) -> _Frame:
    if fault == "error":
        return _Frame(b'data: {"error":{"message":"The server had an error while processing your request. '
                      b'Sorry about that!","type":"server_error","param":null,"code":null}}\n\n')
    return _Frame(b'data: {"id":"chatcmpl-broken","object":"chat.completion.chunk","choices":[{"index":0,'
                  b'"delta":{"content":"trunc\n\n')


def _openai_error(error: HttpError, request: RecordedRequest, n: int) -> tuple[int, dict[str, str], bytes]:
    key = request.api_key or ""
    masked = key[:8] + "*" * max(0, len(key) - 12) + key[-4:] if len(key) > 12 else key
    status, body = {
        "auth": (401, {"message": f"Incorrect API key provided: {masked}. You can find your API key at "
                                  "https://platform.openai.com/account/api-keys.",
                       "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}),
        "rate_limit": (429, {"message": f"Rate limit reached for {request.model} in organization org-FAKE on "
                                        "requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again "
                                        "in 20s. Visit https://platform.openai.com/account/rate-limits to learn "
                                        "more.",
                             "type": "requests", "param": None, "code": "rate_limit_exceeded"}),
        "server": (500, {"message": "The server had an error while processing your request. Sorry about that!",
                         "type": "server_error", "param": None, "code": None}),
        "overloaded": (503, {"message": "The engine is currently overloaded, please try again later.",
                             "type": "server_error", "param": None, "code": None}),
    }[error.kind]
    headers = {"content-type": "application/json; charset=utf-8",
               "x-request-id": "req_" + _ident(f"oreq{n}", 32).lower()}
    if error.retry_after is not None:
        headers["retry-after"] = f"{error.retry_after:g}"
        headers["x-ratelimit-limit-requests"] = "3"
        headers["x-ratelimit-remaining-requests"] = "0"
        headers["x-ratelimit-reset-requests"] = "20s"
    return error.status or status, headers, (json.dumps({"error": body}, indent=4) + "\n").encode()


# Gemini --------------------------------------------------------------------------------------------


def _gemini_json(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ": "), ensure_ascii=False)


def _gemini_frames(reply: Reply, request: RecordedRequest, n: int) -> list[_Frame]:
    body = request.json or {}
    config = body.get("generationConfig") or {}
    thinking_config = config.get("thinkingConfig") or config.get("thinking_config") or {}
    # Google's JSON parsers accept proto field names too (google-genai sends `include_thoughts`).
    include_thoughts = bool(thinking_config.get("includeThoughts", thinking_config.get("include_thoughts")))
    prompt_tokens = _tokens(request.body)
    response_id = _ident(f"gem{n}", 23)
    parts: list[tuple[dict[str, Any], bool]] = []
    thoughts_tokens = 0
    for index, block in enumerate(reply.blocks):
        if isinstance(block, Thinking):
            thoughts_tokens += _tokens(block.text)
            if include_thoughts:
                parts += [({"text": p, "thought": True}, True) for p in fragments(block.text)]
        elif isinstance(block, Text):
            parts += [({"text": p}, True) for p in fragments(block.text)]
        else:
            call: dict[str, Any] = {"name": block.name, "args": block.input}
            if block.id:
                call = {"id": block.id, **call}
            signature = base64.b64encode(hashlib.sha256(f"sig{n}.{index}".encode()).digest()).decode()
            parts.append(({"functionCall": call, "thoughtSignature": signature}, True))
    if not parts:
        parts.append(({"text": ""}, False))
    finish = "MAX_TOKENS" if reply.stop_reason == "max_tokens" else "STOP"
    frames = []
    candidates_tokens = 0
    for position, (part, counts) in enumerate(parts):
        candidates_tokens += _tokens(_compact(part))
        candidate: dict[str, Any] = {"content": {"parts": [part], "role": "model"}}
        last = position == len(parts) - 1
        if last:
            candidate["finishReason"] = finish
        candidate["index"] = 0
        usage: dict[str, Any] = {
            "promptTokenCount": prompt_tokens, "candidatesTokenCount": candidates_tokens,
            "totalTokenCount": prompt_tokens + candidates_tokens + thoughts_tokens,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt_tokens}]}
        if thoughts_tokens:
            usage["thoughtsTokenCount"] = thoughts_tokens
        obj = {"candidates": [candidate], "usageMetadata": usage,
               "modelVersion": request.model or "gemini-2.5-flash", "responseId": response_id}
        frames.append(_Frame(f"data: {_gemini_json(obj)}\r\n\r\n".encode(), counts))
    return frames


def _gemini_fault(fault: Fault) -> _Frame:
    if fault == "error":
        return _Frame(b'data: {"error": {"code": 500,"message": "An internal error has occurred. Please retry or '
                      b'report in https://developers.generativeai.google/guide/troubleshooting",'
                      b'"status": "INTERNAL"}}\r\n\r\n')
    return _Frame(b'data: {"candidates": [{"content": {"parts": [{"text": "trunc\r\n\r\n')


def _gemini_error(error: HttpError, request: RecordedRequest, n: int) -> tuple[int, dict[str, str], bytes]:
    retry = f"{error.retry_after:g}s" if error.retry_after is not None else None
    if error.kind == "auth" and error.status == 401:
        status, body = 401, {
            "code": 401, "message": "Request had invalid authentication credentials. Expected OAuth 2 access "
            "token, login cookie or other valid authentication credential. See "
            "https://developers.google.com/identity/sign-in/web/devconsole-project.",
            "status": "UNAUTHENTICATED"}
    elif error.kind == "auth":
        status, body = 400, {
            "code": 400, "message": "API key not valid. Please pass a valid API key.", "status": "INVALID_ARGUMENT",
            "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                         "domain": "googleapis.com",
                         "metadata": {"service": "generativelanguage.googleapis.com"}},
                        {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US",
                         "message": "API key not valid. Please pass a valid API key."}]}
    elif error.kind == "rate_limit":
        details: list[dict[str, Any]] = [
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
                "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                "quotaDimensions": {"location": "global", "model": request.model}, "quotaValue": "10"}]},
            {"@type": "type.googleapis.com/google.rpc.Help", "links": [{
                "description": "Learn more about Gemini API quotas",
                "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]}]
        if retry is not None:
            details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry})
        status, body = 429, {
            "code": 429, "message": "You exceeded your current quota, please check your plan and billing details. "
            "For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.",
            "status": "RESOURCE_EXHAUSTED", "details": details}
    elif error.kind == "overloaded":
        status, body = 503, {"code": 503, "message": "The model is overloaded. Please try again later.",
                             "status": "UNAVAILABLE"}
    else:
        status, body = 500, {"code": 500, "message": "An internal error has occurred. Please retry or report in "
                             "https://developers.generativeai.google/guide/troubleshooting",
                             "status": "INTERNAL"}
    if error.status is not None:
        status = body["code"] = error.status
    headers = {"content-type": "application/json; charset=UTF-8", "vary": "Origin, X-Origin, Referer",
               "server": "scaffolding on HTTPServer2"}
    return status, headers, (json.dumps({"error": body}, indent=2) + "\n").encode()


from tests.fakes import gemini_json, openai_responses  # noqa: E402  (they build on the helpers above)

_RENDER = {"anthropic": _anthropic_frames, "openai": _openai_frames, "gemini": _gemini_frames,
           "responses": openai_responses.frames}
_FAULT = {"anthropic": _anthropic_fault, "openai": _openai_fault, "gemini": _gemini_fault,
          "responses": openai_responses.fault}
_ERROR = {"anthropic": _anthropic_error, "openai": _openai_error, "gemini": _gemini_error,
          "responses": _openai_error}
_STREAM_HEADERS = {
    "anthropic": {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache",
                  "anthropic-organization-id": "5bd1f6a4-0c2e-4a8e-9f8e-2f3c1e7b9d10"},
    "openai": {"content-type": "text/event-stream; charset=utf-8", "openai-organization": "org-fake",
               "openai-processing-ms": "184", "openai-version": "2020-10-01"},
    "gemini": {"content-type": "text/event-stream", "vary": "Origin, X-Origin, Referer",
               "server": "scaffolding on HTTPServer2", "x-xss-protection": "0"},
    "responses": openai_responses.HEADERS,
}


def fixture_frames(provider: str) -> list[bytes]:
    """The recorded text stream of `provider`, one event (with its own terminator) per item."""
    raw = (FIXTURES / f"{provider}_text.sse").read_bytes()
    return [m.group(0) for m in re.finditer(rb".+?(?:\r?\n\r?\n|\Z)", raw, re.S) if m.group(0).strip()]


def _fixture(provider: str, request: RecordedRequest) -> list[_Frame]:
    frames = []
    include_usage = bool(((request.json or {}).get("stream_options") or {}).get("include_usage"))
    for raw in fixture_frames(provider):
        if provider == "openai" and not include_usage and b'"choices":[]' in raw:
            continue  # the recording asked for usage; a request that did not gets no usage chunk
        frames.append(_Frame(raw, b"_delta" in raw or b'"content":"' in raw or b'"text": ' in raw))
    return frames


# --------------------------------------------------------------------------------------------------
# The server


def _route(method: str, path: str) -> str | None:
    if method != "POST":
        return None
    if path == "/v1/messages":
        return "anthropic"
    if path == "/v1/chat/completions":
        return "openai"
    if path == "/v1/responses":
        return "responses"
    if re.fullmatch(r"/v1(beta|alpha)?/models/[^/:]+:(streamGenerateContent|generateContent)", path):
        return "gemini"
    return None


class FakeLLMServer:
    """See the module docstring. Thread-safe: tests enqueue and read from the test's thread."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.requests: list[RecordedRequest] = []
        self._queues: dict[str | None, deque[Scenario]] = {None: deque(), **{p: deque() for p in PROVIDERS}}
        self._lock = threading.Lock()
        self._counter = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._request_seen = threading.Condition(self._lock)

    # -- lifecycle

    def start(self) -> FakeLLMServer:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="fake-llm-server", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), loop).result(10)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._on_connection, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        loop.close()
        self._loop = None

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses and environment

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def anthropic_base_url(self) -> str:
        return self.url

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    @property
    def gemini_base_url(self) -> str:
        return self.url

    def env(self) -> dict[str, str]:
        """Environment that points the SDKs (and agentwire's providers) at this server, with test keys."""
        return {
            "ANTHROPIC_BASE_URL": self.anthropic_base_url, "ANTHROPIC_API_KEY": TEST_KEYS["anthropic"],
            "OPENAI_BASE_URL": self.openai_base_url, "OPENAI_API_KEY": TEST_KEYS["openai"],
            "AGENTWIRE_GEMINI_BASE_URL": self.gemini_base_url, "GEMINI_API_KEY": TEST_KEYS["gemini"],
        }

    def patch_env(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name, value in self.env().items():
            monkeypatch.setenv(name, value)
        # google-genai prefers GOOGLE_API_KEY and warns when both are set; its own base URL variable
        # would be overridden by ours anyway.
        for name in ("GOOGLE_API_KEY", "GOOGLE_GEMINI_BASE_URL", "ANTHROPIC_AUTH_TOKEN", "OPENAI_ORG_ID",
                     "OPENAI_PROJECT_ID"):
            monkeypatch.delenv(name, raising=False)

    # -- scripting

    def enqueue(self, *scenarios: Scenario, provider: str | None = None) -> None:
        if provider is not None and provider not in PROVIDERS:
            raise ValueError(f"unknown provider {provider!r}")
        with self._lock:
            self._queues[provider].extend(scenarios)

    def pending(self) -> list[Scenario]:
        with self._lock:
            return [s for queue in self._queues.values() for s in queue]

    def requests_for(self, provider: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.provider == provider]

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[RecordedRequest]:
        with self._request_seen:
            if not self._request_seen.wait_for(lambda: len(self.requests) >= count, timeout):
                raise TimeoutError(f"{len(self.requests)} requests seen, {count} expected")
            return list(self.requests)

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)
            self._request_seen.notify_all()

    def _take(self, request: RecordedRequest) -> tuple[Scenario | None, int]:
        with self._lock:
            self.requests.append(request)
            self._request_seen.notify_all()
            for queue in (self._queues[request.provider], self._queues[None]):
                if queue:
                    return queue.popleft(), next(self._counter)
            return None, next(self._counter)

    # -- HTTP

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while True:
                parsed = await _read_request(reader)
                if parsed is None:
                    break
                if not await self._respond(*parsed, reader, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()

    async def _respond(self, method: str, target: str, headers: dict[str, str], body: bytes,
                       reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        split = urlsplit(target)
        provider = _route(method, split.path)
        if provider is None:
            payload = _compact({"error": f"fake LLM server: no route for {method} {split.path}"}).encode()
            await _write_plain(writer, 404, {"content-type": "application/json"}, payload)
            return True
        request = RecordedRequest(provider, method, split.path, dict(parse_qsl(split.query)), headers, body)
        if provider == "gemini" and gemini_json.is_utility_call(request):
            self._record(request)
            await _write_plain(writer, 200, {"content-type": "application/json; charset=UTF-8"},
                               gemini_json.answer(request))
            return True
        scenario, n = self._take(request)
        request.scenario = scenario
        if scenario is None:
            return await self._unscripted(provider, request, writer, n)
        if isinstance(scenario, HttpError):
            status, extra, payload = _ERROR[provider](scenario, request, n)
            await _write_plain(writer, status, extra, payload)
            return True
        if not _is_streaming(provider, request):
            status, extra, payload = _ERROR[provider](HttpError(400, "server"), request, n)
            await _write_plain(writer, 400, extra, payload)
            return True
        recorded = scenario.fixture and provider != "responses"  # no recording of it: generated from the blocks
        frames = _fixture(provider, request) if recorded else _RENDER[provider](scenario, request, n)
        return await self._stream(provider, request, scenario, frames, reader, writer, n)

    async def _unscripted(self, provider: str, request: RecordedRequest, writer: asyncio.StreamWriter,
                          n: int) -> bool:
        status, extra, payload = _ERROR[provider](HttpError(500, "server"), request, n)
        text = payload.decode().replace("Internal server error", "fake LLM server: no scenario queued")
        text = text.replace("The server had an error while processing your request. Sorry about that!",
                            "fake LLM server: no scenario queued")
        text = re.sub(r"An internal error has occurred[^\"]*", "fake LLM server: no scenario queued", text)
        await _write_plain(writer, status, extra, text.encode())
        return True

    async def _stream(self, provider: str, request: RecordedRequest, reply: Reply, frames: list[_Frame],
                      reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        headers = dict(_STREAM_HEADERS[provider])
        if provider == "anthropic":
            headers["request-id"] = "req_011CV" + _ident(f"req{n}", 19)
        elif provider in ("openai", "responses"):
            headers["x-request-id"] = "req_" + _ident(f"oreq{n}", 32).lower()
        headers["transfer-encoding"] = "chunked"
        try:
            await _write_head(writer, 200, headers)
            deltas = 0
            faulted = False
            for frame in frames:
                if reply.fault is not None and not faulted and deltas >= reply.fault_after:
                    faulted = True
                    if reply.fault == "drop":
                        await writer.drain()
                        writer.close()  # no terminating chunk: the client sees an incomplete body
                        return False
                    if reply.fault == "end":
                        break  # a clean end of the body, without the vendor's end-of-answer marker
                    if reply.fault == "stall":
                        await writer.drain()
                        try:
                            await asyncio.wait_for(reader.read(1), 60)
                        except TimeoutError:
                            pass
                        request.disconnected = True
                        return False
                    await _write_chunk(writer, _FAULT[provider](reply.fault).data)
                    if reply.fault == "error":
                        break  # the vendors end the stream after an error event
                await _write_chunk(writer, frame.data)
                deltas += frame.delta
                if reply.delay_s:
                    await asyncio.sleep(reply.delay_s)
            await _write_chunk(writer, b"")
        except ConnectionError:
            request.disconnected = True
            return False
        return True


def _is_streaming(provider: str, request: RecordedRequest) -> bool:
    if provider == "gemini":
        return request.path.endswith(":streamGenerateContent") and request.query.get("alt") == "sse"
    return bool((request.json or {}).get("stream"))


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        pieces = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            pieces.append(await reader.readexactly(size))
            await reader.readexactly(2)
            if size == 0:
                break
        body = b"".join(pieces)
    else:
        body = b""
    return method, target, headers, body


def _status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Site Overloaded" if status == 529 else "Error"
    return f"HTTP/1.1 {status} {phrase}\r\n".encode()


async def _write_head(writer: asyncio.StreamWriter, status: int, headers: dict[str, str]) -> None:
    lines = [_status_line(status)]
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())
    for name, value in {"date": date, **headers, "connection": "keep-alive"}.items():
        lines.append(f"{name}: {value}\r\n".encode())
    writer.write(b"".join(lines) + b"\r\n")
    await writer.drain()


async def _write_plain(writer: asyncio.StreamWriter, status: int, headers: dict[str, str], body: bytes) -> None:
    await _write_head(writer, status, {**headers, "content-length": str(len(body))})
    writer.write(body)
    await writer.drain()


async def _write_chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(b"%x\r\n%s\r\n" % (len(data), data))
    await writer.drain()


@pytest.fixture
def llm_server() -> Iterator[FakeLLMServer]:
    """A started `FakeLLMServer`, stopped after the test (environment not patched: `patch_env`)."""
    with FakeLLMServer() as server:
        yield server


__all__ = [
    "FIXTURE_TEXT", "PARTIAL_TEXT", "SEQUENCE_FINAL_TEXT", "SEQUENCE_PREAMBLE", "TASK_INPUT", "THOUGHT",
    "THOUGHT_ANSWER", "TODO_INPUT", "FakeLLMServer", "HttpError", "RecordedRequest", "Reply", "Scenario", "Text",
    "Thinking", "ToolCall", "auth_error", "dropped_connection", "error_mid_stream", "fixture_frames",
    "fragments", "llm_server", "malformed_chunk", "overloaded", "rate_limited", "server_error", "stalled", "text",
    "thinking", "tool_call", "tool_use_sequence", "truncated_stream",
]
