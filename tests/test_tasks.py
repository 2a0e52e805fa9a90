"""The task board over HTTP: create, list (filters, paging, head), read, patch, delete, choose; every
change an event on /api/stream/tasks; agent-made HTML sanitized; the original kontask cards (the
seed fixtures) go in as they are and come back faithfully."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from typing import TYPE_CHECKING, Any

import pytest

from tests.support.paths import FIXTURES
from tests.support.sse import envelope, is_event, of_type

if TYPE_CHECKING:
    from tests.support.server import Served

TASKS = FIXTURES / "tasks"
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def seed(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((TASKS / f"{name}.json").read_text(encoding="utf-8"))
    return data


class _Looks(HTMLParser):
    """What a reader of the card sees: its text, and each element's tag with its inline style."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.styles: list[tuple[str, str]] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        style = dict(attrs).get("style")
        if style is not None:
            self.styles.append((tag, style))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def declarations(style: str) -> list[tuple[str, str]]:
    """An inline style as (property, value) pairs, spelled the same however a sanitizer re-serializes
    it (spaces around commas and colons, quote style, a trailing semicolon)."""
    pairs = []
    for declaration in style.split(";"):
        name, _, value = declaration.partition(":")
        if name.strip():
            value = re.sub(r"\s*,\s*", ",", value.strip()).replace('"', "'")
            pairs.append((name.strip().lower(), value))
    return pairs


def looks(html: str) -> _Looks:
    parser = _Looks()
    parser.feed(html)
    parser.close()
    return parser


def test_create_fills_defaults_and_emits_task_created(server: Served) -> None:
    with server.stream("/api/stream/tasks") as stream:
        stream.read_until(of_type("stream.open"))
        response = server.http.post("/api/tasks", json={"title": "Check the build"})
        assert response.status_code == 201
        task = response.json()
        event = envelope(stream.read_until(of_type("task.created")))
    assert re.fullmatch(r"[0-9a-f-]{36}", task["id"])
    assert task | {"id": "", "createdAt": "", "updatedAt": ""} == {
        "id": "", "type": "general", "status": "pending", "title": "Check the build", "description": "",
        "scope": "", "tags": [], "createdBy": "agent", "targetUser": "", "session": None, "requestId": None,
        "createdAt": "", "updatedAt": "", "context": {"choices": []}}
    assert ISO.match(task["createdAt"]) and task["createdAt"] == task["updatedAt"]
    assert event["data"] == {"task": task} and event["seq"] == 1
    assert server.http.get(f"/api/tasks/{task['id']}").json() == task


def test_list_filters_pages_and_reports_the_head(server: Served) -> None:
    specs = [("a1", "pending", "web", ["ui"]), ("a2", "completed", "web", ["ui", "sse"]),
             ("a3", "completed", "cli", ["sse"]), ("a4", "failed", "cli", []), ("a5", "pending", "web", ["sse"])]
    for n, (task_id, status, scope, tags) in enumerate(specs):
        server.http.post("/api/tasks", json={"id": task_id, "title": task_id, "status": status, "scope": scope,
                                             "tags": tags, "createdAt": f"2026-01-0{n + 1}T00:00:00.000Z"}
                         ).raise_for_status()
    server.http.patch("/api/tasks/a4", json={"title": "a4!"}).raise_for_status()

    def ids(**params: Any) -> list[str]:
        body = server.http.get("/api/tasks", params=params).json()
        assert body["head"] == 6  # five creations and one update on the tasks stream
        return [task["id"] for task in body["tasks"]]

    assert ids() == ["a5", "a4", "a3", "a2", "a1"]  # newest first
    assert ids(status="completed") == ["a3", "a2"]
    assert ids(scope="cli") == ["a4", "a3"]
    assert ids(tag="sse") == ["a5", "a3", "a2"]
    assert ids(tag="sse", scope="web", status="pending") == ["a5"]
    assert ids(tag="nothing") == []
    assert ids(limit=2) == ["a5", "a4"]
    assert ids(limit=2, offset=2) == ["a3", "a2"]
    assert ids(offset=4) == ["a1"]
    page = server.http.get("/api/tasks", params={"limit": 2, "status": "pending"}).json()
    assert (page["total"], page["limit"], page["offset"], len(page["tasks"])) == (2, 2, 0, 2)


def test_snapshot_head_then_stream_from_head_plus_one_misses_nothing(server: Served) -> None:
    server.http.post("/api/tasks", json={"id": "before", "title": "before"}).raise_for_status()
    head = server.http.get("/api/tasks").json()["head"]
    server.http.post("/api/tasks", json={"id": "between", "title": "between"}).raise_for_status()
    with server.stream(f"/api/stream/tasks?from={head + 1}") as stream:
        event = envelope(stream.read_until(is_event))
    assert event["data"]["task"]["id"] == "between" and event["seq"] == head + 1


def test_patch_changes_fields_and_says_which(server: Served) -> None:
    task = server.http.post("/api/tasks", json={"id": "p1", "title": "t", "tags": ["x"], "createdAt":
                                                "2026-01-01T00:00:00.000Z", "context": {"output": "<b>v1</b>"}}
                            ).json()
    with server.stream("/api/stream/tasks") as stream:
        stream.read_until(of_type("stream.open"))
        patched = server.http.patch("/api/tasks/p1", json={"status": "in_progress", "tags": ["x", "y"],
                                                           "title": "t"}).json()
        event = envelope(stream.read_until(of_type("task.updated")))
        assert event["data"]["changed"] == ["status", "tags"]  # title was sent unchanged
        assert event["data"]["task"] == patched
        assert patched["status"] == "in_progress" and patched["tags"] == ["x", "y"]
        assert patched["createdAt"] == task["createdAt"] and patched["updatedAt"] != task["updatedAt"]
        # Context is merged, and new output sanitized like the first.
        merged = server.http.patch("/api/tasks/p1", json={"context": {
            "output": "<i onclick='x()'>v2</i>", "requestId": "r-1"}}).json()
        assert merged["context"]["output"] == "<i>v2</i>" and merged["context"]["requestId"] == "r-1"
        assert envelope(stream.read_until(lambda m: m.id == "3"))["data"]["changed"] == ["context"]
        # A patch that changes nothing emits nothing.
        head = server.tasks_head()
        same = server.http.patch("/api/tasks/p1", json={"status": "in_progress"})
        assert same.status_code == 200 and server.tasks_head() == head
        stream.read_for(0.2)
        assert [m.id for m in stream.events] == ["2", "3"]
    assert server.http.get("/api/tasks/p1").json() == merged


def test_a_null_context_empties_it_and_the_card_takes_a_context_again(server: Served) -> None:
    """(A fuzzed PATCH found it: `context: null` left the card with no object to merge the next into.)"""
    server.http.post("/api/tasks", json={"id": "c0", "title": "t", "session": "s",
                                         "context": {"choices": [{"label": "A", "value": "a"}]}}).raise_for_status()
    emptied = server.http.patch("/api/tasks/c0", json={"context": None})
    assert emptied.status_code == 200 and emptied.json()["context"] == {}
    again = server.http.patch("/api/tasks/c0", json={"context": {"output": "<b>back</b>"}})
    assert again.status_code == 200 and again.json()["context"] == {"output": "<b>back</b>", "choices": []}
    refused = server.http.post("/api/tasks/c0/choose", json={"value": "a"})
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "unknown_choice"


def test_delete_removes_the_card_and_emits_task_deleted(server: Served) -> None:
    server.http.post("/api/tasks", json={"id": "d1", "title": "bye"}).raise_for_status()
    with server.stream("/api/stream/tasks") as stream:
        stream.read_until(of_type("stream.open"))
        response = server.http.delete("/api/tasks/d1")
        assert response.status_code == 204 and response.content == b""
        event = envelope(stream.read_until(of_type("task.deleted")))
    assert event["data"] == {"id": "d1"} and event["seq"] == 2
    assert server.http.get("/api/tasks/d1").status_code == 404
    again = server.http.delete("/api/tasks/d1")
    assert again.status_code == 404 and again.json()["error"]["code"] == "task_not_found"
    assert server.http.get("/api/tasks").json()["tasks"] == []
    # The id is free again.
    assert server.http.post("/api/tasks", json={"id": "d1", "title": "again"}).status_code == 201


def test_an_existing_id_is_a_conflict_and_changes_nothing(server: Served) -> None:
    server.http.post("/api/tasks", json={"id": "dup", "title": "first"}).raise_for_status()
    response = server.http.post("/api/tasks", json={"id": "dup", "title": "second"})
    assert response.status_code == 409
    assert response.json()["error"] == {"code": "task_exists", "message": "a task with id 'dup' exists",
                                        "field": "id"}
    assert server.http.get("/api/tasks/dup").json()["title"] == "first"
    assert server.tasks_head() == 1


@pytest.mark.parametrize(("html", "kept", "gone"), [
    ('<div style="color:red;padding:4px">hi</div>', ["color:red", "padding:4px", "hi"], []),
    ('<div style="background:url(javascript:alert(1));color:red">s</div>', ["color:red"], ["url(", "javascript"]),
    ("<p>ok</p><script>alert(1)</script>", ["<p>ok</p>"], ["<script", "alert(1)"]),
    ('<img src="x.png" onerror="alert(1)">', ["<img", 'src="x.png"'], ["onerror", "alert"]),
    ('<a href="javascript:alert(1)" style="color:blue">x</a>', ['style="color:blue"', ">x</a>"], ["javascript"]),
    ('<a href="https://example.com/a">link</a>', ['href="https://example.com/a"'], []),
    ('<iframe src="https://evil.example"></iframe><b>after</b>', ["<b>after</b>"], ["iframe", "evil"]),
    ('<form action="/x"><input name="a"></form>text', ["text"], ["<form", "<input"]),
    ('<div onmouseover="steal()" class="card" title="t">c</div>', ['class="card"', 'title="t"'], ["onmouseover"]),
    ("<style>body{display:none}</style><p>visible</p>", ["<p>visible</p>"], ["<style", "display:none"]),
    ('<svg onload="alert(1)"><circle/></svg>ok', ["ok"], ["onload", "<svg"]),
    ("<table><tr><td style=\"padding:8px\">cell</td></tr></table>", ["padding:8px", "cell"], []),
])
def test_task_output_html_is_sanitized_on_the_server(server: Served, html: str, kept: list[str],
                                                     gone: list[str]) -> None:
    created = server.http.post("/api/tasks", json={"title": "html", "context": {"output": html}}).json()
    stored = server.http.get(f"/api/tasks/{created['id']}").json()["context"]["output"]
    with server.stream("/api/stream/tasks?from=1") as stream:
        streamed = envelope(stream.read_until(is_event))["data"]["task"]["context"]["output"]
    for output in (created["context"]["output"], stored, streamed):
        assert output == stored
        for piece in kept:
            assert piece in output, (piece, output)
        for piece in gone:
            assert piece.lower() not in output.lower(), (piece, output)


@pytest.mark.parametrize("name", ["seed_000", "seed_004"])
def test_original_kontask_cards_go_in_as_they_are_and_come_back_faithfully(server: Served, name: str) -> None:
    card = seed(name)
    response = server.http.post("/api/tasks", json=card)
    assert response.status_code == 201, response.text
    with server.stream("/api/stream/tasks?from=1") as stream:
        streamed = envelope(stream.read_until(of_type("task.created")))["data"]["task"]
    for got in (response.json(), server.http.get(f"/api/tasks/{card['id']}").json(), streamed):
        # Everything but the HTML comes back exactly as sent.
        for field in ("id", "type", "status", "title", "description", "scope", "tags", "createdBy",
                      "targetUser", "requestId", "createdAt", "updatedAt"):
            assert got[field] == card[field], field
        context, sent = got["context"], card["context"]
        assert {k: v for k, v in context.items() if k not in ("output", "choices")} == {
            k: v for k, v in sent.items() if k not in ("output", "choices")}  # requestedAt, requestId, turnTiming
        assert context.get("turnTiming") == sent.get("turnTiming")
        assert context["choices"] == [{"primary": False, **choice} for choice in sent.get("choices", [])]
        # The HTML is sanitized, yet reads and looks the same: same text, same elements, same styles.
        before, after = looks(sent["output"]), looks(context["output"])
        assert "".join(after.text) == "".join(before.text)
        assert [(tag, declarations(style)) for tag, style in after.styles] == [
            (tag, declarations(style)) for tag, style in before.styles]
        assert [tag for tag in after.tags if tag != "tbody"] == before.tags
    listed = server.http.get("/api/tasks", params={"scope": card["scope"], "tag": card["tags"][0]}).json()
    assert [task["id"] for task in listed["tasks"]] == [card["id"]]


def test_both_seed_cards_on_one_board(server: Served) -> None:
    for name in ("seed_000", "seed_004"):
        server.http.post("/api/tasks", json=seed(name)).raise_for_status()
    board = server.http.get("/api/tasks").json()
    # Ordered by their own createdAt (January 5 before January 2), not by when they were posted.
    assert [task["title"] for task in board["tasks"]] == [seed("seed_004")["title"], seed("seed_000")["title"]]
    assert board["head"] == 2 and board["total"] == 2
    assert [task["id"] for task in server.http.get("/api/tasks", params={"tag": "sse"}).json()["tasks"]] == [
        seed("seed_004")["id"], seed("seed_000")["id"]]


def test_choose_sends_the_answer_to_the_tasks_session(server: Served) -> None:
    server.http.post("/api/konsole", json={"name": "board-choice", "options": {
        "deltas": 2, "delay_ms": 0, "tool_calls": 0, "thinking": False}}).raise_for_status()
    card = seed("seed_004") | {"session": "board-choice"}
    server.http.post("/api/tasks", json=card).raise_for_status()
    value = card["context"]["choices"][1]["value"]
    unknown = server.http.post(f"/api/tasks/{card['id']}/choose", json={"value": "none of these"})
    assert unknown.status_code == 422 and unknown.json()["error"]["code"] == "unknown_choice"
    assert unknown.json()["error"]["field"] == "value"
    chosen = server.http.post(f"/api/tasks/{card['id']}/choose", json={"value": value})
    assert chosen.status_code == 200, chosen.text
    body = chosen.json()
    assert body["task"]["context"]["chosen"] == value and body["turn"]["session"] == "board-choice"
    with server.stream(f"/api/konsole/board-choice/events?from={body['turn']['seq']}") as stream:
        started = envelope(stream.read_until(of_type("turn.started")))
        assert started["data"]["message"] == value and started["turn"] == body["turn"]["id"]
        stream.read_until(of_type("turn.completed"))


def test_choose_on_a_card_without_a_session_says_why(server: Served) -> None:
    card = seed("seed_004")
    server.http.post("/api/tasks", json=card).raise_for_status()
    head = server.tasks_head()
    value = card["context"]["choices"][0]["value"]
    response = server.http.post(f"/api/tasks/{card['id']}/choose", json={"value": value})
    assert response.status_code == 409 and response.json()["error"]["code"] == "task_has_no_session"
    assert server.tasks_head() == head
    assert "chosen" not in server.http.get(f"/api/tasks/{card['id']}").json()["context"]
