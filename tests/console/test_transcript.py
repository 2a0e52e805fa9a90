"""Folding a session stream: the transcript, the state, and the catch-up fold of finished blocks."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from agentwire.console.transcript import CatchUpFold, Transcript
from agentwire.types import Event


def _events(spec: list[tuple[str, dict[str, Any]]], turn: str = "t1") -> list[Event]:
    return [Event.build(i + 1, "konsole/s", kind, data, turn=turn, lane="main") for i, (kind, data) in enumerate(spec)]


TURN: list[tuple[str, dict[str, Any]]] = [
    ("turn.started", {"message": "hi", "provider": "scripted", "model": "m"}),
    ("thinking.delta", {"block": 0, "text": "hm"}),
    ("thinking.done", {"block": 0, "text": "hm"}),
    ("text.delta", {"block": 0, "text": "Hel"}),
    ("state", {"agent_state": "writing", "outstanding_llm_calls": 1, "outstanding_tool_calls": []}),
    ("text.delta", {"block": 0, "text": "lo"}),
    ("text.done", {"block": 0, "text": "Hello"}),
    ("tool.call", {"call_id": "c1", "name": "todo_write", "input": {"todos": []}}),
    ("todo.updated", {"todos": [{"content": "a", "status": "completed", "activeForm": "a"}]}),
    ("tool.result", {"call_id": "c1", "output": "ok", "is_error": False, "duration_ms": 1.0}),
    ("text.delta", {"block": 1, "text": "bye"}),
    ("turn.completed", {"stop_reason": "end_turn", "usage": {"input_tokens": 3, "output_tokens": 4}, "timing": {}}),
]


def test_transcript_has_one_entry_per_message() -> None:
    transcript = Transcript()
    for event in _events(TURN):
        transcript.apply(event)
        transcript.apply(event)  # duplicates are ignored
    kinds = [(e["kind"], e.get("text")) for e in transcript.entries]
    assert kinds == [("message", "hi"), ("thinking", "hm"), ("text", "Hello"), ("tool", None), ("text", "bye"),
                     ("turn.completed", None)]
    tool = transcript.entries[3]
    assert tool["output"] == "ok" and tool["done"]
    assert transcript.todos[0]["status"] == "completed"
    assert transcript.usage == {"input_tokens": 3, "output_tokens": 4}
    assert transcript.state["agent_state"] == "idle"
    assert [(m.role, m.content) for m in transcript.history("main")] == [("user", "hi"), ("assistant", "Hello\n\nbye")]
    assert transcript.history("main", before_turn="t1") == []


def test_a_live_fold_from_the_given_data_equals_the_fold_of_the_stored_bytes() -> None:
    """The server folds live deltas from the data TurnRunner handed over (`Event.given`); the same
    events read back (no given data, decoded from the envelope) fold to the same transcript."""
    live, stored = Transcript(), Transcript()
    for event in _events(TURN):
        stored.apply(Event(event.seq, event.stream, event.type, event.raw))
        assert event.given is None
        event.given = orjson.loads(event.raw)["data"]
        live.apply(event)
    assert live.entries == stored.entries and live.seq == stored.seq == len(TURN)
    assert [e.get("text") for e in live.entries if e["kind"] == "text"] == ["Hello", "bye"]


def test_catch_up_fold_keeps_order_and_replaces_finished_deltas() -> None:
    events = _events(TURN)
    fold = CatchUpFold()
    out = fold.page(events[:6]) + fold.page(events[6:]) + fold.end()
    types = [e.type for e in out]
    assert "thinking.delta" not in types
    assert [e.data.get("text") for e in out if e.type == "text.delta"] == ["bye"]  # block 1 never finished
    assert [e.seq for e in out] == sorted(e.seq for e in out)
    folded, plain = Transcript(), Transcript()
    for e in out:
        folded.apply(e)
    for e in events:
        plain.apply(e)
    assert [(x["kind"], x.get("text")) for x in folded.entries] == [(x["kind"], x.get("text")) for x in plain.entries]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(TURN)), max_size=4))
def test_catch_up_fold_gives_the_same_transcript_for_any_paging(cuts: list[int]) -> None:
    events = _events(TURN)
    bounds = sorted(set(cuts))
    fold = CatchUpFold()
    out: list[Event] = []
    start = 0
    for bound in [*bounds, len(events)]:
        out += fold.page(events[start:bound])
        start = bound
    out += fold.end()
    assert sorted(e.seq for e in out) == [e.seq for e in out]
    a, b = Transcript(), Transcript()
    for e in out:
        a.apply(e)
    for e in events:
        b.apply(e)
    assert [(x["kind"], x.get("text")) for x in a.entries] == [(x["kind"], x.get("text")) for x in b.entries]
    assert a.todos == b.todos and a.seq == b.seq


def test_catch_up_fold_holds_what_follows_an_open_block() -> None:
    # A block interleaved with other events: they are held until it ends, so nothing overtakes it,
    # and the folded block comes where it finished (ids keep rising).
    events = _events([("text.delta", {"block": 0, "text": "a"}),
                      ("tool.call", {"call_id": "c", "name": "x", "input": {}}),
                      ("text.delta", {"block": 0, "text": "b"}), ("text.done", {"block": 0, "text": "ab"})])
    fold = CatchUpFold()
    assert fold.page(events[:3]) == []
    out = fold.page(events[3:]) + fold.end()
    assert [(e.seq, e.type) for e in out] == [(2, "tool.call"), (4, "text.done")]
