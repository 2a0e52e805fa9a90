"""What the protocol views share: frame ids and resuming inside one event's frames, the block fold,
the task card taken from a tool call, and the routes' OpenAPI."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance, unsupported_method

from agentwire.agui import AguiRun
from agentwire.aisdk import UiMessageStream
from agentwire.app import create_app
from agentwire.config import Config
from agentwire.types import AgentwireError, Event
from agentwire.views import Position, ViewFramer, task_card
from tests.support.sse import parse_sse


class Repeat:
    """A translator that makes `event.data["n"]` frames of each event."""

    def frames(self, event: Event) -> list[bytes]:
        return [b"data: %d/%d\n\n" % (event.seq, index) for index in range(event.data["n"])]

    def lost(self) -> list[bytes]:
        return [b"data: lost\n\n"]


def _events(*counts: int) -> list[Event]:
    return [Event.build(seq, "konsole/s", "x", {"n": n}, turn="t") for seq, n in enumerate(counts, start=10)]


def _sent(resume: Position | None, events: list[Event]) -> list[tuple[str | None, str]]:
    framer = ViewFramer(Repeat(), "test", resume)
    return [(m.id, m.data) for m in parse_sse(b"".join(framer.event(event) for event in events))]


def test_frame_ids_name_the_event_and_how_far_into_it() -> None:
    assert _sent(None, _events(1, 3, 0, 2)) == [
        ("10", "10/0"), ("11.1", "11/0"), ("11.2", "11/1"), ("11", "11/2"), ("13.1", "13/0"), ("13", "13/1")]


@pytest.mark.parametrize(("last_id", "first_sent"), [
    ("10", "11/0"), ("11.1", "11/1"), ("11.2", "11/2"), ("11", "13/0"), ("11.0", "11/0"), ("9", "10/0"),
    ("12", "13/0")])
def test_resuming_after_any_frame_id_sends_exactly_the_frames_after_it(last_id: str, first_sent: str) -> None:
    everything = _sent(None, _events(1, 3, 0, 2))
    rest = _sent(Position.parse(last_id), _events(1, 3, 0, 2))
    assert rest[0][1] == first_sent
    assert everything[-len(rest):] == rest


@pytest.mark.parametrize("value", ["", "x", "1.2.3", "-1", "1.", ".1", "1" * 20, "1.1234567", "١٢"])
def test_a_malformed_position_is_a_400(value: str) -> None:
    with pytest.raises(AgentwireError) as raised:
        Position.parse(value)
    assert raised.value.status == 400 and raised.value.field == "Last-Event-ID"


def test_a_reset_ends_the_run_the_protocols_way() -> None:
    framer = ViewFramer(Repeat(), "test", None)
    assert framer.control("konsole/s", "stream.open", {}) == b""
    assert framer.control("konsole/s", "stream.reset", {}, 5) == b"data: lost\n\n"
    run = AguiRun("s", "r", None)
    assert b'"RUN_ERROR"' in b"".join(run.lost()) and run.frames(_events(1)[0]) == []
    chat = UiMessageStream()
    assert chat.lost()[-1] == b"data: [DONE]\n\n"


def _turn(*events: tuple[str, dict[str, object]]) -> list[Event]:
    return [Event.build(seq, "konsole/s", kind, data, turn="t", lane="main")
            for seq, (kind, data) in enumerate(events, start=1)]


def _chunks(events: list[Event]) -> list[str]:
    chat = UiMessageStream()
    return [m.data for event in events for m in parse_sse(b"".join(chat.frames(event)))]


def test_a_block_without_deltas_is_opened_filled_and_closed_and_an_open_one_is_closed_at_the_end() -> None:
    chunks = _chunks(_turn(("turn.started", {}), ("text.done", {"block": 0, "text": "whole"}),
                           ("thinking.delta", {"block": 1, "text": "hm"}), ("turn.cancelled", {"reason": "user"})))
    assert chunks == [
        '{"type":"start","messageId":"t","messageMetadata":{"session":"s","turn":"t","lane":"main"}}',
        '{"type":"start-step"}', '{"type":"text-start","id":"text-0"}',
        '{"type":"text-delta","id":"text-0","delta":"whole"}', '{"type":"text-end","id":"text-0"}',
        '{"type":"reasoning-start","id":"reasoning-1"}', '{"type":"reasoning-delta","id":"reasoning-1","delta":"hm"}',
        '{"type":"reasoning-end","id":"reasoning-1"}', '{"type":"finish-step"}',
        '{"type":"abort","reason":"user"}', "[DONE]"]


def test_steps_follow_the_model_calls() -> None:
    def state(calls: int) -> tuple[str, dict[str, object]]:
        return ("state", {"agent_state": "x", "outstanding_llm_calls": calls})

    chunks = _chunks(_turn(("turn.started", {}), state(1), state(1), state(0),
                           ("tool.call", {"call_id": "c", "name": "lookup", "input": {}}), state(1), state(0),
                           ("turn.completed", {"stop_reason": "max_tokens"})))
    steps = [c for c in chunks if "step" in c or "finish" in c]
    assert steps == ['{"type":"start-step"}', '{"type":"finish-step"}', '{"type":"start-step"}',
                     '{"type":"finish-step"}', next(c for c in chunks if '"finish",' in c)]
    assert '"finishReason":"length"' in steps[-1]


def test_a_task_card_comes_from_a_successful_task_tool_call_only() -> None:
    input = {"title": "Report", "tags": ["a"], "output": "<script>x</script>", "choices": [{"label": "Go",
                                                                                           "value": "go"}]}
    result = {"output": '{"id": "k1", "status": "pending"}', "is_error": False}
    assert task_card("task_create", input, result) == {"title": "Report", "tags": ["a"], "choices": input["choices"],
                                                       "id": "k1", "status": "pending"}
    assert task_card("mcp__agentwire__task_update", {"id": "k1"}, result) == {"id": "k1", "status": "pending"}
    assert task_card("task_create", input, {**result, "is_error": True}) is None
    assert task_card("todo_write", input, result) is None
    assert task_card("task_create", input, {"output": "not json"}) is None


def test_the_routes_declare_their_bodies_streams_and_errors() -> None:
    schema = create_app(Config(journal="memory://", no_auth=True)).openapi()
    agui = schema["paths"]["/api/agui"]["post"]
    assert agui["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/RunIn")
    chat = schema["paths"]["/api/chat"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/ChatIn")
    resume = schema["paths"]["/api/chat/{id}/stream"]["get"]
    for operation, statuses in ((agui, {"200", "204", "400", "404", "409", "413", "422"}),
                                (chat, {"200", "400", "413", "422"}), (resume, {"200", "204", "400", "404", "422"})):
        assert statuses <= set(operation["responses"])
        assert "text/event-stream" in operation["responses"]["200"]["content"]
        for status in statuses - {"200", "204"}:
            assert operation["responses"][status]["content"]["application/json"]["schema"]["$ref"].endswith(
                "/Error")
    assert {p["name"] for p in agui["parameters"]} == {"last-event-id"}


# The ASGI test client calls itself "testserver": a name this app must answer to.
_fuzzed_app = create_app(Config(journal="memory://", no_auth=True, allowed_hosts=["testserver"]))
_schema = schemathesis.openapi.from_asgi("/openapi.json", _fuzzed_app)


@_schema.include(path_regex="^/api/(agui|chat)").parametrize()
@settings(max_examples=60, suppress_health_check=list(HealthCheck), deadline=None)
def test_the_protocol_routes_answer_fuzzed_requests_as_documented(case: schemathesis.Case[Any]) -> None:
    """No 5xx, every status and body as the schema says, every streamed event as it says. Left out:
    405 without an Allow header (the app's, not these routes'), and the check that schema-valid input
    is accepted: a message needs text, which a schema cannot say of the last list item."""
    case.call_and_validate(timeout=20, excluded_checks=[unsupported_method, positive_data_acceptance])
