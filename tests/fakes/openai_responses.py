"""The OpenAI Responses API (``POST /v1/responses`` with ``"stream": true``) for `FakeLLMServer`: what
Codex CLI speaks (``wire_api = "responses"``). Scripted with the same scenarios as the other vendors
(queue them with ``provider="responses"``):

- `Text` → a ``message`` output item: ``response.output_item.added``, ``response.content_part.added``,
  ``response.output_text.delta``…, ``response.output_text.done``, ``response.content_part.done``,
  ``response.output_item.done``;
- `Thinking` → a ``reasoning`` item whose summary streams as ``response.reasoning_summary_text.delta``;
- `ToolCall` → a ``function_call`` item whose arguments stream as
  ``response.function_call_arguments.delta`` (``call_id`` is the scenario's ``id`` or a generated one).
  Codex's own shapes of a call: a name ``namespace/tool`` is a call in that namespace (Codex puts an MCP
  server's tools in ``mcp__<server>``); ``apply_patch`` is a freeform ``custom_tool_call`` whose input
  is the scenario's ``{"input": "<patch>"}``; ``tool_search`` is Codex's client-side tool search;
- then ``response.completed`` with the output and usage (``input_tokens``, ``output_tokens``, details).

Faults: ``error`` is a ``response.failed`` event (the API's own in-stream failure), ``malformed`` a
``data:`` line that is not JSON; the others (``drop``, ``stall``, ``end``) are the server's. HTTP errors
use the OpenAI JSON error body, as Chat Completions does.
"""

from __future__ import annotations

import time
from typing import Any

from tests.fakes.frames import Frame, compact, ident, json_pieces, tokens
from tests.fakes.recorded import RecordedRequest
from tests.fakes.scenarios import Fault, Reply, Text, Thinking, ToolCall, fragments

HEADERS = {"content-type": "text/event-stream; charset=utf-8", "openai-organization": "org-fake",
           "openai-processing-ms": "97", "openai-version": "2020-10-01"}
CUSTOM_TOOLS = {"apply_patch"}  # freeform tools in Codex's request (`"type": "custom"`)
FAILED_MESSAGE = "The server had an error while processing your request. Sorry about that!"


class _Events:
    """Numbers events as the API does (`sequence_number` rises by one per event)."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.sequence = 0

    def add(self, type: str, *, counts: bool = False, **body: Any) -> None:
        event = {"type": type, **body, "sequence_number": self.sequence}
        self.sequence += 1
        self.frames.append(Frame(f"event: {type}\ndata: {compact(event)}\n\n".encode(), counts))


def frames(reply: Reply, request: RecordedRequest, n: int) -> list[Frame]:
    model = request.model or "gpt-5-codex"
    response: dict[str, Any] = {
        "id": "resp_" + ident(f"resp{n}", 40), "object": "response", "created_at": int(time.time()),
        "status": "in_progress", "model": model, "output": [], "usage": None, "error": None}
    events = _Events()
    events.add("response.created", response=response)
    events.add("response.in_progress", response=response)
    output: list[dict[str, Any]] = []
    output_tokens = reasoning_tokens = 0
    for index, block in enumerate(reply.blocks):
        if isinstance(block, Thinking):
            item = _reasoning(events, block, index, n)
            reasoning_tokens += tokens(block.text)
        elif isinstance(block, Text):
            item = _message(events, block, index, n)
            output_tokens += tokens(block.text)
        elif block.name == "tool_search":
            item = _tool_search(events, block, index, n)
        elif block.name in CUSTOM_TOOLS:
            item = _custom_tool_call(events, block, index, n)
        else:
            item = _function_call(events, block, index, n)
            output_tokens += tokens(compact(block.input)) + 10
        output.append(item)
    input_tokens = tokens(request.body)
    usage = {"input_tokens": input_tokens, "input_tokens_details": {"cached_tokens": 0},
             "output_tokens": output_tokens + reasoning_tokens,
             "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
             "total_tokens": input_tokens + output_tokens + reasoning_tokens}
    status = "incomplete" if reply.stop_reason == "max_tokens" else "completed"
    events.add("response.completed", response={**response, "status": status, "output": output, "usage": usage})
    return events.frames


def _message(events: _Events, block: Text, index: int, n: int) -> dict[str, Any]:
    item_id = "msg_" + ident(f"msg{n}.{index}", 40)
    item: dict[str, Any] = {"id": item_id, "type": "message", "status": "in_progress", "role": "assistant",
                            "content": []}
    where: dict[str, Any] = {"item_id": item_id, "output_index": index, "content_index": 0}
    events.add("response.output_item.added", output_index=index, item=item)
    events.add("response.content_part.added", **where, part={"type": "output_text", "annotations": [], "text": ""})
    for piece in fragments(block.text):
        events.add("response.output_text.delta", counts=True, **where, delta=piece, logprobs=[])
    part = {"type": "output_text", "annotations": [], "logprobs": [], "text": block.text}
    events.add("response.output_text.done", **where, text=block.text, logprobs=[])
    events.add("response.content_part.done", **where, part=part)
    done = {**item, "status": "completed", "content": [part]}
    events.add("response.output_item.done", output_index=index, item=done)
    return done


def _reasoning(events: _Events, block: Thinking, index: int, n: int) -> dict[str, Any]:
    item_id = "rs_" + ident(f"rs{n}.{index}", 40)
    item: dict[str, Any] = {"id": item_id, "type": "reasoning", "summary": []}
    where: dict[str, Any] = {"item_id": item_id, "output_index": index, "summary_index": 0}
    events.add("response.output_item.added", output_index=index, item=item)
    events.add("response.reasoning_summary_part.added", **where, part={"type": "summary_text", "text": ""})
    for piece in fragments(block.text):
        events.add("response.reasoning_summary_text.delta", counts=True, **where, delta=piece)
    events.add("response.reasoning_summary_text.done", **where, text=block.text)
    part = {"type": "summary_text", "text": block.text}
    events.add("response.reasoning_summary_part.done", **where, part=part)
    done = {**item, "summary": [part], "encrypted_content": "gAAAAB" + ident(block.signature, 60)}
    events.add("response.output_item.done", output_index=index, item=done)
    return done


def _function_call(events: _Events, block: ToolCall, index: int, n: int) -> dict[str, Any]:
    item_id = "fc_" + ident(f"fc{n}.{index}", 40)
    call_id = block.id or "call_" + ident(f"call{n}.{index}", 24)
    namespace, _, name = block.name.rpartition("/")
    item: dict[str, Any] = {"id": item_id, "type": "function_call", "status": "in_progress", "arguments": "",
                            "call_id": call_id, "name": name}
    if namespace:
        item["namespace"] = namespace
    events.add("response.output_item.added", output_index=index, item=item)
    for piece in json_pieces(block.input):
        events.add("response.function_call_arguments.delta", counts=True, item_id=item_id, output_index=index,
                   delta=piece)
    arguments = compact(block.input)
    events.add("response.function_call_arguments.done", item_id=item_id, output_index=index, arguments=arguments)
    done = {**item, "status": "completed", "arguments": arguments}
    events.add("response.output_item.done", output_index=index, item=done)
    return done


def _custom_tool_call(events: _Events, block: ToolCall, index: int, n: int) -> dict[str, Any]:
    item_id = "ctc_" + ident(f"ctc{n}.{index}", 40)
    text = str(block.input.get("input", ""))
    item: dict[str, Any] = {"id": item_id, "type": "custom_tool_call", "status": "in_progress",
                            "call_id": block.id or "call_" + ident(f"ctc{n}.{index}", 24), "name": block.name,
                            "input": ""}
    events.add("response.output_item.added", output_index=index, item=item)
    events.add("response.custom_tool_call_input.delta", counts=True, item_id=item_id, output_index=index,
               delta=text)
    events.add("response.custom_tool_call_input.done", item_id=item_id, output_index=index, input=text)
    done = {**item, "status": "completed", "input": text}
    events.add("response.output_item.done", output_index=index, item=done)
    return done


def _tool_search(events: _Events, block: ToolCall, index: int, n: int) -> dict[str, Any]:
    item = {"id": "tsc_" + ident(f"tsc{n}.{index}", 40), "type": "tool_search_call",
            "call_id": block.id or "call_" + ident(f"ts{n}.{index}", 24), "execution": "client",
            "status": "in_progress", "arguments": block.input}
    events.add("response.output_item.added", output_index=index, item=item)
    done = {**item, "status": "completed"}
    events.add("response.output_item.done", output_index=index, item=done)
    return done


def fault(kind: Fault) -> Frame:
    if kind == "error":
        failed = {"type": "response.failed", "sequence_number": 999, "response": {
            "id": "resp_failed", "object": "response", "status": "failed", "output": [],
            "error": {"code": "server_error", "message": FAILED_MESSAGE}}}
        return Frame(f"event: response.failed\ndata: {compact(failed)}\n\n".encode())
    return Frame(b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"trunc\n\n')


def texts(body: dict[str, Any], role: str) -> list[str]:
    """Every text the request carries for `role` ("user", "assistant", "developer"), in order."""
    found = []
    for item in body.get("input", []):
        if item.get("type") == "message" and item.get("role") == role:
            content = item.get("content")
            if isinstance(content, str):
                found.append(content)
                continue
            found += [part.get("text", "") for part in content or [] if isinstance(part, dict)]
    return found


def is_streaming(body: Any) -> bool:
    return isinstance(body, dict) and bool(body.get("stream"))


