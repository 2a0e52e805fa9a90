"""The Anthropic Messages API's stream (`POST /v1/messages`), its faults and its error answers."""

from __future__ import annotations

import json
from typing import Any

from tests.fakes.frames import Frame, compact, ident, json_pieces, tokens
from tests.fakes.recorded import RecordedRequest
from tests.fakes.scenarios import Fault, HttpError, Reply, Text, Thinking, fragments

HEADERS = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache",
           "anthropic-organization-id": "5bd1f6a4-0c2e-4a8e-9f8e-2f3c1e7b9d10"}


def _event(name: str, obj: Any, *, delta: bool = False, spaced: bool = False) -> Frame:
    data = json.dumps(obj, ensure_ascii=False) if spaced else compact(obj)
    return Frame(f"event: {name}\ndata: {data}\n\n".encode(), delta)


def frames(reply: Reply, request: RecordedRequest, n: int) -> list[Frame]:
    model = request.model or "claude-sonnet-4-5"
    input_tokens = tokens(request.body)
    frames = [_event("message_start", {"type": "message_start", "message": {
        "model": model, "id": "msg_01" + ident(f"msg{n}", 22), "type": "message", "role": "assistant",
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                  "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
                  "output_tokens": 1, "service_tier": "standard"}}})]
    output_tokens = 0
    for index, block in enumerate(reply.blocks):
        def delta(body: dict[str, Any], *, counts: bool = True, index: int = index) -> Frame:
            return _event("content_block_delta",
                                    {"type": "content_block_delta", "index": index, "delta": body}, delta=counts)

        if isinstance(block, Thinking):
            start: dict[str, Any] = {"type": "thinking", "thinking": "", "signature": ""}
            body = [delta({"type": "thinking_delta", "thinking": p}) for p in fragments(block.text)]
            body.append(delta({"type": "signature_delta", "signature": block.signature}, counts=False))
            output_tokens += tokens(block.text)
        elif isinstance(block, Text):
            start = {"type": "text", "text": ""}
            body = [delta({"type": "text_delta", "text": p}) for p in fragments(block.text)]
            output_tokens += tokens(block.text)
        else:
            call_id = block.id or "toolu_01" + ident(f"toolu{n}.{index}", 22)
            start = {"type": "tool_use", "id": call_id, "name": block.name, "input": {}}
            body = [delta({"type": "input_json_delta", "partial_json": ""}, counts=False)]
            body += [delta({"type": "input_json_delta", "partial_json": p}) for p in json_pieces(block.input)]
            output_tokens += tokens(compact(block.input)) + 10
        frames.append(_event("content_block_start",
                                       {"type": "content_block_start", "index": index, "content_block": start}))
        if index == 0:
            frames.append(_event("ping", {"type": "ping"}, spaced=True))
        frames += body
        frames.append(_event("content_block_stop", {"type": "content_block_stop", "index": index}))
    frames.append(_event("message_delta", {
        "type": "message_delta", "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
        "usage": {"input_tokens": input_tokens, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                  "output_tokens": output_tokens}}))
    frames.append(_event("message_stop", {"type": "message_stop"}))
    return frames


def fault(fault: Fault) -> Frame:
    if fault == "error":
        return _event("error", {"type": "error", "error": {
            "type": "api_error", "message": "Internal server error"}}, spaced=True)
    return Frame(b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
                  b'"delta":{"type":"text_delta","text":"trunc\n\n')


def error_response(error: HttpError, request: RecordedRequest, n: int) -> tuple[int, dict[str, str], bytes]:
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
    request_id = "req_011CV" + ident(f"req{n}", 19)
    headers = {"content-type": "application/json", "request-id": request_id,
               "x-should-retry": "true" if error.kind != "auth" else "false"}
    if error.retry_after is not None:
        headers["retry-after"] = f"{error.retry_after:g}"
        headers["anthropic-ratelimit-requests-limit"] = "50"
        headers["anthropic-ratelimit-requests-remaining"] = "0"
    body = {"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id}
    return error.status or status, headers, compact(body).encode()
