"""The lane policy on its own: who runs, who queues, who is refused, and what a turn request may say."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agentwire.console.lanes import Lanes, SessionLanes, Turn, TurnIn, check_turn_request
from agentwire.types import AgentwireError


def _turn(turn_id: str, lane: str = "main") -> Turn:
    return Turn(turn_id, "s", lane, "hi")


def test_main_lane_runs_one_turn_and_hands_over_in_order() -> None:
    lanes = SessionLanes()
    first, second, third = _turn("t1"), _turn("t2"), _turn("t3")
    assert lanes.runs_now(first)
    assert not lanes.runs_now(second) and not lanes.runs_now(third)
    lanes.queue.extend([second, third])
    assert lanes.main is first and list(lanes.running) == ["t1"]
    lanes.ended(first)
    assert lanes.advance() is second and lanes.main is second and list(lanes.running) == ["t2"]
    lanes.ended(second)
    assert lanes.advance() is third
    lanes.ended(third)
    assert lanes.advance() is None and lanes.main is None and not lanes.running


def test_quick_turns_run_at_once_beside_a_busy_main_lane() -> None:
    lanes = SessionLanes()
    assert lanes.runs_now(_turn("t1"))
    assert lanes.runs_now(_turn("q1", "quick")) and lanes.runs_now(_turn("q2", "quick"))
    assert lanes.main is not None and lanes.main.id == "t1" and set(lanes.running) == {"t1", "q1", "q2"}


def test_find_open_turns_and_stop() -> None:
    every = Lanes()
    a, b = every.of("a"), every.of("b")
    running, queued, quick = _turn("t1"), _turn("t2"), _turn("q1", "quick")
    a.runs_now(running)
    a.queue.append(queued)
    b.runs_now(quick)
    assert a.find(None) is running and a.find("t2") is queued and a.find("nope") is None
    assert [t.id for t in every.open_turns()] == ["t1", "t2", "q1"]
    assert every.get("unknown").main is None and "unknown" not in [t.session for t in every.open_turns()]
    every.stop("interrupted")
    assert running.cancel_reason == quick.cancel_reason == "interrupted" and not a.queue
    assert queued.cancel_reason is None


@pytest.mark.parametrize(("message", "lane", "if_busy", "code", "status"), [
    ("", "main", None, "empty_message", 422),
    ("  \n", "main", None, "empty_message", 422),
    ("x" * 11, "main", None, "message_too_large", 413),
    ("hi", "side", None, "bad_lane", 422),
    ("hi", "main", "wait", "bad_if_busy", 422),
])
def test_turn_requests_are_refused_in_one_place(message: str, lane: str, if_busy: str | None, code: str,
                                               status: int) -> None:
    with pytest.raises(AgentwireError) as refused:
        check_turn_request(message, lane, if_busy, max_message=10)
    assert (refused.value.code, refused.value.status) == (code, status)


def test_if_busy_defaults_to_queue() -> None:
    assert check_turn_request("hi", "main", None, 10) == "queue"
    assert check_turn_request("hi", "quick", "reject", 10) == "reject"


def test_turn_in_takes_a_message_and_if_busy_only() -> None:
    assert TurnIn.model_validate({"message": "hi"}).if_busy is None
    assert TurnIn.model_validate({"message": "hi", "if_busy": "reject"}).if_busy == "reject"
    for bad in ({"message": "hi", "if_busy": "wait"}, {"message": "hi", "lane": "quick"}, {}):
        with pytest.raises(ValidationError):
            TurnIn.model_validate(bad)
