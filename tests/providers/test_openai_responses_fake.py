"""The fake's OpenAI Responses API and Gemini schema-JSON answers, read by the vendors' official SDKs:
what the fakes send is what those SDKs (and the CLIs built like them) accept."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import openai
import pytest
from google import genai
from google.genai import types as genai_types

from tests.fakes import llm_servers as fake
from tests.fakes.llm_servers import FakeLLMServer
from tests.fakes.openai_responses import FAILED_MESSAGE


@pytest.fixture
def llm() -> Any:
    with FakeLLMServer() as server:
        yield server


async def _events(server: FakeLLMServer, input: Any = "Hello") -> list[Any]:
    client = openai.AsyncOpenAI(base_url=server.openai_base_url, api_key="sk-test", max_retries=0)
    try:
        stream = await client.responses.create(model="gpt-5.5", input=input, stream=True)
        return [event async for event in stream]
    finally:
        await client.close()


def test_text_reasoning_and_a_function_call_parse_in_the_sdk(llm: FakeLLMServer) -> None:
    llm.enqueue(fake.Reply(blocks=(fake.Thinking("Think first."), fake.Text("Here it is."),
                                   fake.ToolCall("exec_command", {"cmd": "ls"}, id="call_1"))),
                provider="responses")
    events = asyncio.run(_events(llm))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    summary = "".join(e.delta for e in events if e.type == "response.reasoning_summary_text.delta")
    arguments = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert (text, summary, json.loads(arguments)) == ("Here it is.", "Think first.", {"cmd": "ls"})
    done = events[-1]
    assert done.type == "response.completed" and done.response.status == "completed"
    kinds = [item.type for item in done.response.output]
    assert kinds == ["reasoning", "message", "function_call"]
    assert done.response.output[2].call_id == "call_1" and done.response.output[2].name == "exec_command"
    usage = done.response.usage
    assert usage is not None and usage.input_tokens > 0 and usage.output_tokens_details.reasoning_tokens > 0
    request = llm.requests_for("responses")[0]
    assert request.model == "gpt-5.5" and request.api_key == "sk-test"


def test_the_recorded_text_scenario_is_generated_for_responses(llm: FakeLLMServer) -> None:
    llm.enqueue(fake.text(), provider="responses")
    events = asyncio.run(_events(llm))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == fake.FIXTURE_TEXT


def test_an_in_stream_failure_and_an_http_error(llm: FakeLLMServer) -> None:
    llm.enqueue(fake.error_mid_stream(), provider="responses")
    events = asyncio.run(_events(llm))
    assert events[-1].type == "response.failed" and events[-1].response.error.message == FAILED_MESSAGE
    llm.enqueue(fake.auth_error(), provider="responses")
    with pytest.raises(openai.AuthenticationError, match="Incorrect API key provided"):
        asyncio.run(_events(llm))


def test_tool_results_are_read_back_from_the_next_request(llm: FakeLLMServer) -> None:
    llm.enqueue(fake.text("ok"), provider="responses")
    asyncio.run(_events(llm, input=[
        {"type": "message", "role": "user", "content": "run ls"},
        {"type": "function_call", "call_id": "call_1", "name": "exec_command", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "a.txt"}]))
    assert llm.requests_for("responses")[0].tool_results() == [
        {"call_id": "call_1", "name": "exec_command", "output": "a.txt", "is_error": None}]


def test_gemini_schema_json_calls_are_answered_without_taking_a_scenario(llm: FakeLLMServer) -> None:
    llm.enqueue(fake.text("for the conversation"), provider="gemini")
    client = genai.Client(api_key="gemini-test", http_options=genai_types.HttpOptions(base_url=llm.gemini_base_url))
    schema = {"type": "OBJECT", "required": ["score", "reason"],
              "properties": {"score": {"type": "INTEGER"}, "reason": {"type": "STRING"},
                             "choice": {"type": "STRING", "enum": ["flash", "pro"]}}}
    answer = client.models.generate_content(
        model="gemini-2.5-flash-lite", contents="classify",
        config=genai_types.GenerateContentConfig(response_mime_type="application/json", response_json_schema=schema))
    assert json.loads(answer.text or "") == {"score": 1, "reason": ""}
    assert [type(s).__name__ for s in llm.pending()] == ["Reply"]  # the scripted answer is still there
