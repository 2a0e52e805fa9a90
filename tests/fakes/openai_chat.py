"""OpenAI Chat Completions' stream (`POST /v1/chat/completions`), its faults and its error answers
(also the error answers of the Responses API, which are the same)."""

from __future__ import annotations

import json
import time
from typing import Any

from tests.fakes.frames import Frame, compact, ident, json_pieces, tokens
from tests.fakes.recorded import RecordedRequest
from tests.fakes.scenarios import Fault, HttpError, Reply, Text, Thinking, ToolCall, fragments

HEADERS = {"content-type": "text/event-stream; charset=utf-8", "openai-organization": "org-fake",
           "openai-processing-ms": "184", "openai-version": "2020-10-01"}


def frames(reply: Reply, request: RecordedRequest, n: int) -> list[Frame]:
    body = request.json or {}
    stream_options = body.get("stream_options") or {}
    include_usage = bool(stream_options.get("include_usage"))
    obfuscate = stream_options.get("include_obfuscation", True)
    base = {"id": "chatcmpl-" + ident(f"chat{n}", 29), "object": "chat.completion.chunk",
            "created": int(time.time()), "model": request.model or "gpt-4.1-mini", "service_tier": "default",
            "system_fingerprint": "fp_4c2851f862"}

    def chunk(delta: dict[str, Any], finish: str | None = None, *, counts: bool = False) -> Frame:
        obj: dict[str, Any] = {**base, "choices": [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if include_usage:
            obj["usage"] = None
        if obfuscate:
            obj["obfuscation"] = ident(compact(delta), 2 + len(compact(delta)) % 5)
        return Frame(f"data: {compact(obj)}\n\n".encode(), counts)

    visible = [b for b in reply.blocks if not isinstance(b, Thinking)]
    reasoning_tokens = sum(tokens(b.text) for b in reply.blocks if isinstance(b, Thinking))
    frames: list[Frame] = []
    output_tokens = reasoning_tokens
    call_index = 0
    for position, block in enumerate(visible):
        if isinstance(block, Text):
            if position == 0:
                frames.append(chunk({"role": "assistant", "content": "", "refusal": None}))
            frames += [chunk({"content": p}, counts=True) for p in fragments(block.text)]
            output_tokens += tokens(block.text)
            continue
        assert isinstance(block, ToolCall)
        call_id = block.id or "call_" + ident(f"call{n}.{position}", 24)
        first = {"index": call_index, "id": call_id, "type": "function",
                 "function": {"name": block.name, "arguments": ""}}
        if position == 0:
            frames.append(chunk({"role": "assistant", "content": None, "tool_calls": [first], "refusal": None}))
        else:
            frames.append(chunk({"tool_calls": [first]}))
        frames += [chunk({"tool_calls": [{"index": call_index, "function": {"arguments": p}}]}, counts=True)
                   for p in json_pieces(block.input)]
        output_tokens += tokens(compact(block.input)) + 10
        call_index += 1
    if not visible:
        frames.append(chunk({"role": "assistant", "content": "", "refusal": None}))
    finish = {"end_turn": "stop", "tool_use": "tool_calls", "max_tokens": "length"}[reply.stop_reason]
    frames.append(chunk({}, finish))
    if include_usage:
        prompt_tokens = tokens(request.body)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": output_tokens,
                 "total_tokens": prompt_tokens + output_tokens,
                 "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                 "completion_tokens_details": {"reasoning_tokens": reasoning_tokens, "audio_tokens": 0,
                                               "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}
        final: dict[str, Any] = {**base, "choices": [], "usage": usage}
        if obfuscate:
            final["obfuscation"] = "Ab"
        frames.append(Frame(f"data: {compact(final)}\n\n".encode()))
    frames.append(Frame(b"data: [DONE]\n\n"))
    return frames


def fault(fault: Fault) -> Frame:
    if fault == "error":
        return Frame(b'data: {"error":{"message":"The server had an error while processing your request. '
                      b'Sorry about that!","type":"server_error","param":null,"code":null}}\n\n')
    return Frame(b'data: {"id":"chatcmpl-broken","object":"chat.completion.chunk","choices":[{"index":0,'
                  b'"delta":{"content":"trunc\n\n')


def error_response(error: HttpError, request: RecordedRequest, n: int) -> tuple[int, dict[str, str], bytes]:
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
               "x-request-id": "req_" + ident(f"oreq{n}", 32).lower()}
    if error.retry_after is not None:
        headers["retry-after"] = f"{error.retry_after:g}"
        headers["x-ratelimit-limit-requests"] = "3"
        headers["x-ratelimit-remaining-requests"] = "0"
        headers["x-ratelimit-reset-requests"] = "20s"
    return error.status or status, headers, (json.dumps({"error": body}, indent=4) + "\n").encode()
