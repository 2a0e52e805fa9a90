"""Gemini's `streamGenerateContent?alt=sse` stream, its faults and its error answers."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from tests.fakes.frames import Frame, compact, ident, tokens
from tests.fakes.recorded import RecordedRequest
from tests.fakes.scenarios import Fault, HttpError, Reply, Text, Thinking, fragments

HEADERS = {"content-type": "text/event-stream", "vary": "Origin, X-Origin, Referer",
           "server": "scaffolding on HTTPServer2", "x-xss-protection": "0"}


def _json(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ": "), ensure_ascii=False)


def frames(reply: Reply, request: RecordedRequest, n: int) -> list[Frame]:
    body = request.json or {}
    config = body.get("generationConfig") or {}
    thinking_config = config.get("thinkingConfig") or config.get("thinking_config") or {}
    # Google's JSON parsers accept proto field names too (google-genai sends `include_thoughts`).
    include_thoughts = bool(thinking_config.get("includeThoughts", thinking_config.get("include_thoughts")))
    prompt_tokens = tokens(request.body)
    response_id = ident(f"gem{n}", 23)
    parts: list[tuple[dict[str, Any], bool]] = []
    thoughts_tokens = 0
    for index, block in enumerate(reply.blocks):
        if isinstance(block, Thinking):
            thoughts_tokens += tokens(block.text)
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
        candidates_tokens += tokens(compact(part))
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
        frames.append(Frame(f"data: {_json(obj)}\r\n\r\n".encode(), counts))
    return frames


def fault(fault: Fault) -> Frame:
    if fault == "error":
        return Frame(b'data: {"error": {"code": 500,"message": "An internal error has occurred. Please retry or '
                      b'report in https://developers.generativeai.google/guide/troubleshooting",'
                      b'"status": "INTERNAL"}}\r\n\r\n')
    return Frame(b'data: {"candidates": [{"content": {"parts": [{"text": "trunc\r\n\r\n')


def error_response(error: HttpError, request: RecordedRequest, n: int) -> tuple[int, dict[str, str], bytes]:
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
