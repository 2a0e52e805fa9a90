"""The resume rules of §3 as functions: parsing a position, Last-Event-ID against ?from, and where a
subscriber starts for every kind of position."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentwire.resume import MAX_SEQ, Start, parse_seq, requested_after, resolve
from agentwire.types import AgentwireError, StreamPosition


@pytest.mark.parametrize(("value", "expected"), [
    (None, None), ("0", 0), ("7", 7), (" 12 ", 12), ("0012", 12), (str(MAX_SEQ), MAX_SEQ),
])
def test_parse_seq_accepts_non_negative_integers(value: str | None, expected: int | None) -> None:
    assert parse_seq(value, "from") == expected


@pytest.mark.parametrize("value", [
    "", " ", "-1", "+3", "1.5", "1e3", "abc", "0x10", "١٢", "²", "12 13", str(MAX_SEQ + 1), "9" * 40, "NaN",
])
@pytest.mark.parametrize("name", ["Last-Event-ID", "from"])
def test_parse_seq_refuses_anything_else_with_a_400_naming_the_field(value: str, name: str) -> None:
    with pytest.raises(AgentwireError) as caught:
        parse_seq(value, name)
    error = caught.value
    assert error.status == 400
    assert error.field == name
    assert error.body()["error"]["code"] == "bad_position"
    assert error.body()["error"]["field"] == name
    assert len(error.message) < 200  # a huge header is not echoed back whole


def test_last_event_id_means_after_and_from_means_at_or_after() -> None:
    assert requested_after(None, None) is None
    assert requested_after("5", None) == 5
    assert requested_after(None, "5") == 4
    assert requested_after(None, "0") == 0
    assert requested_after(None, "1") == 0
    assert requested_after("0", None) == 0


def test_last_event_id_wins_over_from() -> None:
    # The browser re-sends the original URL (with ?from) plus Last-Event-ID on auto-reconnect.
    assert requested_after("40", "3") == 40
    assert requested_after("2", "30") == 2
    # A malformed header is a 400 of its own, never silently replaced by the query.
    with pytest.raises(AgentwireError) as caught:
        requested_after("x", "3")
    assert caught.value.field == "Last-Event-ID"
    with pytest.raises(AgentwireError) as caught:
        requested_after(None, "-3")
    assert caught.value.field == "from"


POSITION = StreamPosition("ep", 11, 50)  # events 11..50 kept


@pytest.mark.parametrize(("after", "at_head", "expected"), [
    (None, False, Start(10, None)),  # console: from its first kept event
    (None, True, Start(50, None)),  # tasks: from now
    (10, False, Start(10, None)),  # exactly at the first kept: nothing lost
    (30, True, Start(30, None)),
    (50, False, Start(50, None)),  # caught up
    (9, False, Start(50, "trimmed")),  # needs event 10, which is gone
    (0, True, Start(50, "trimmed")),
    (51, False, Start(50, "ahead_of_head")),  # a position from another epoch
    (10**12, False, Start(50, "ahead_of_head")),
])
def test_resolve(after: int | None, at_head: bool, expected: Start) -> None:
    assert resolve(POSITION, after, default_at_head=at_head) == expected


def test_resolve_on_an_empty_stream() -> None:
    empty = StreamPosition("ep", 1, 0)
    assert resolve(empty, None, default_at_head=False) == Start(0, None)
    assert resolve(empty, None, default_at_head=True) == Start(0, None)
    assert resolve(empty, 0, default_at_head=False) == Start(0, None)
    assert resolve(empty, 1, default_at_head=False) == Start(0, "ahead_of_head")


@given(first=st.integers(1, 1000), kept=st.integers(0, 1000), after=st.none() | st.integers(0, 3000),
       at_head=st.booleans())
def test_resolve_either_honours_the_position_or_says_why_not(first: int, kept: int, after: int | None,
                                                            at_head: bool) -> None:
    position = StreamPosition("e", first, first + kept - 1)
    start = resolve(position, after, default_at_head=at_head)
    assert position.first - 1 <= start.after <= position.head
    if start.reset is None:
        # Served exactly: every event after the requested position is still kept.
        assert after is None or start.after == after
    else:
        # Not served: continue after the head, never replaying a range with a hole in it.
        assert start.after == position.head
        assert after is not None and (after > position.head or after < position.first - 1)
