"""Request bodies are validated whole before anything is written (body.py, types.loads_strict).

The property: whatever JSON a client sends to a route that writes, either the request succeeds and
the journal grew by what it reports, or it fails and the journal is exactly as it was — in
particular for numbers no journal entry may hold (NaN, ±Infinity, 1e999, integers outside 64 bits),
hidden anywhere in an otherwise valid body.
"""

from __future__ import annotations

import json
import math
import sqlite3
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from agentwire.types import INT_MAX, INT_MIN, BadJson, loads_strict

if TYPE_CHECKING:
    from tests.support.server import Served, ServerFactory

JSON_BODY = {"content-type": "application/json"}
UNSTORABLE = ["NaN", "Infinity", "-Infinity", "1e999", "-1e400", str(INT_MAX + 1), str(INT_MIN - 1),
              str(1 << 200), "1" * 30]
STORABLE = ["0", "-0", "1.5e308", str(INT_MAX), str(INT_MIN), "1e-400", "0.1"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(INT_MIN, INT_MAX),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=8), inner, max_size=4), max_leaves=20)
MARK = "\x00unstorable\x00"  # where the generated document gets its bad number, spliced in as text


def journal_rows(served: Served) -> list[tuple[str, int]]:
    db = served.config.journal.removeprefix("sqlite:///")
    conn = sqlite3.connect(db)
    try:
        events = conn.execute("SELECT stream, seq FROM events ORDER BY stream, seq").fetchall()
        docs = conn.execute("SELECT kind, id FROM docs ORDER BY kind, id").fetchall()
    finally:
        conn.close()
    return [*events, *docs]


@pytest.mark.parametrize("literal", UNSTORABLE)
def test_loads_strict_refuses_numbers_no_journal_can_hold(literal: str) -> None:
    for document in (literal, f'{{"a": [1, {{"b": {literal}}}]}}'):
        with pytest.raises(BadJson):
            loads_strict(document)


@pytest.mark.parametrize("literal", STORABLE)
def test_loads_strict_keeps_every_storable_number_exactly(literal: str) -> None:
    value = loads_strict(literal)
    assert value == json.loads(literal) and (not isinstance(value, float) or math.isfinite(value))


@pytest.fixture
def served(make_server: ServerFactory) -> Served:
    served = make_server()
    served.http.post("/api/tasks", json={"id": "known", "title": "known"}).raise_for_status()
    served.http.post("/api/konsole", json={"name": "s1", "options": {"deltas": 2, "delay_ms": 0}}).raise_for_status()
    return served


ROUTES = [
    ("POST", "/api/tasks", lambda extra: {"title": "t", "context": {"x": extra}}),
    ("PATCH", "/api/tasks/known", lambda extra: {"context": {"extra": extra}}),
    ("POST", "/api/konsole", lambda extra: {"name": "s2", "system": "sys", "options": {"deltas": 2, "x": extra}}),
    ("POST", "/api/tasks/known/choose", lambda extra: {"value": extra}),
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(route=st.sampled_from(ROUTES), extra=values, bad=st.sampled_from(UNSTORABLE), where=st.integers(0, 50))
def test_an_unstorable_number_anywhere_is_refused_and_stores_nothing(served: Served, route: Any, extra: Any,
                                                                     bad: str, where: int) -> None:
    method, path, build = route
    # Put the marker at some leaf position of the document, then splice the bad literal in as text.
    document = json.dumps(build(_with_marker(extra, where)))
    assume(json.dumps(MARK) in document)  # an empty list or object has no leaf to put it in
    body = document.replace(json.dumps(MARK), bad)
    before = journal_rows(served)
    response = served.http.request(method, path, content=body.encode(), headers=JSON_BODY)
    assert response.status_code == 422, (body[:300], response.text[:300])
    error = response.json()["error"]
    assert error["code"] == "validation_error" and error["field"] == "body"
    assert journal_rows(served) == before


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(route=st.sampled_from(ROUTES), extra=values)
def test_a_failed_request_leaves_the_journal_unchanged(served: Served, route: Any, extra: Any) -> None:
    method, path, build = route
    before = journal_rows(served)
    response = served.http.request(method, path, json=build(extra))
    after = journal_rows(served)
    if response.status_code >= 400:
        assert after == before, response.text[:300]
        assert response.json()["error"]["code"]
    else:
        assert len(after) >= len(before)  # (a PATCH that changes nothing appends nothing)


def _with_marker(value: Any, where: int) -> Any:
    """`value` with one of its leaves (or itself) replaced by MARK, the `where`-th in walk order."""
    leaves: list[int] = [0]

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(item) for item in node]
        if isinstance(node, dict):
            return {key: walk(item) for key, item in node.items()}
        leaves[0] += 1
        return MARK if leaves[0] - 1 == where % max(1, count(value)) else node

    return walk(value)


def count(value: Any) -> int:
    if isinstance(value, list):
        return sum(count(item) for item in value)
    if isinstance(value, dict):
        return sum(count(item) for item in value.values())
    return 1
