"""Gemini CLI's own calls beside the conversation: a non-streaming ``generateContent`` that asks for JSON
by schema (``responseMimeType: application/json`` with ``responseJsonSchema``), e.g. its model router
(``complexity_score``) or its next-speaker and loop checks. The fake answers them with the smallest
object the schema allows, without taking a scripted scenario, so that scenarios stay with the turn."""

from __future__ import annotations

import json
from typing import Any

from tests.fakes.frames import tokens
from tests.fakes.recorded import RecordedRequest


def is_utility_call(request: RecordedRequest) -> bool:
    config = (request.json or {}).get("generationConfig") or {}
    return request.path.endswith(":generateContent") and config.get("responseMimeType") == "application/json"


def answer(request: RecordedRequest) -> bytes:
    config = (request.json or {}).get("generationConfig") or {}
    schema = config.get("responseJsonSchema") or config.get("responseSchema") or {"type": "OBJECT"}
    text = json.dumps(smallest(schema))
    prompt = tokens(request.body)
    body = {"candidates": [{"content": {"parts": [{"text": text}], "role": "model"}, "finishReason": "STOP",
                            "index": 0}],
            "usageMetadata": {"promptTokenCount": prompt, "candidatesTokenCount": tokens(text),
                              "totalTokenCount": prompt + tokens(text)},
            "modelVersion": request.model, "responseId": "utility"}
    return json.dumps(body, indent=2).encode()


def smallest(schema: dict[str, Any]) -> Any:
    """The simplest value of `schema` (OpenAPI-style types in either case): first enum value, 1, "", …"""
    if schema.get("enum"):
        return schema["enum"][0]
    kind = str(schema.get("type", "object")).lower()
    if kind == "object":
        properties = schema.get("properties") or {}
        return {name: smallest(properties[name]) for name in schema.get("required", properties)}
    return {"string": "", "integer": 1, "number": 1, "boolean": False, "array": []}.get(kind)
