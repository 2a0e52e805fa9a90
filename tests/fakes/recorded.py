"""A request as the fakes recorded it, with what a test asks of it (its JSON, model, tool results)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tests.fakes.scenarios import Scenario


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
            return _responses_tool_results(body)
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


def _responses_tool_results(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The tool outputs the request carries (`function_call_output`, `custom_tool_call_output`), in order."""
    names: dict[str, str] = {}
    results = []
    for item in body.get("input", []):
        if item.get("type") in ("function_call", "custom_tool_call"):
            names[item["call_id"]] = item["name"]
        elif item.get("type") in ("function_call_output", "custom_tool_call_output"):
            output = item.get("output", "")
            if isinstance(output, list):
                output = "".join(part.get("text", "") for part in output)
            results.append({"call_id": item["call_id"], "name": names.get(item["call_id"]), "output": output,
                            "is_error": None})
    return results
