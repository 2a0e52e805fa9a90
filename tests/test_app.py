"""The application's edges: health, Prometheus metrics, the OpenAPI schema, and bad input — every
malformed request gets a clear JSON error with a fitting status (naming the field where there is
one), the server keeps serving, and nothing was written."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.support.eventually import eventually
from tests.support.sse import of_type

if TYPE_CHECKING:
    from tests.support.server import Served, ServerFactory


def metric(server: Served, name: str, labels: str = "") -> float:
    text = server.http.get("/metrics").text
    found = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    return 0.0 if found is None else float(found.group(1))


def test_healthz_reports_the_journal_and_open_streams(server: Served) -> None:
    assert server.http.get("/healthz").json() == {"status": "ok", "journal": "sqlite", "streams_open": 0}
    with server.stream("/api/stream/tasks") as stream:
        stream.read_until(of_type("stream.open"))
        assert server.http.get("/healthz").json()["streams_open"] == 1
    eventually(lambda: server.http.get("/healthz").json()["streams_open"] == 0, 15,
               "a closed stream to stop counting as open")


def test_healthz_names_the_memory_journal(make_server: ServerFactory) -> None:
    server = make_server(journal="memory://")
    assert server.http.get("/healthz").json()["journal"] == "memory"


def test_metrics_count_streams_appends_deliveries_and_append_latency(server: Served) -> None:
    response = server.http.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    for name, kind in (("agentwire_open_streams", "gauge"), ("agentwire_events_appended_total", "counter"),
                       ("agentwire_events_delivered_total", "counter"),
                       ("agentwire_slow_consumer_disconnects_total", "counter"),
                       ("agentwire_append_latency_seconds", "histogram")):
        assert f"# TYPE {name} {kind}\n" in response.text, name
    appended = metric(server, "agentwire_events_appended_total")
    delivered = metric(server, "agentwire_events_delivered_total", '{transport="sse"}')
    latency_count = metric(server, "agentwire_append_latency_seconds_count")
    with server.stream("/api/stream/tasks") as one, server.stream("/api/stream/tasks") as two:
        one.read_until(of_type("stream.open"))
        two.read_until(of_type("stream.open"))
        assert metric(server, "agentwire_open_streams", '{transport="sse"}') == 2
        for n in range(3):
            server.http.post("/api/tasks", json={"title": f"m{n}"}).raise_for_status()
        one.read_until(lambda m: m.id == "3")
        two.read_until(lambda m: m.id == "3")
        assert metric(server, "agentwire_events_appended_total") == appended + 3
        assert metric(server, "agentwire_events_delivered_total", '{transport="sse"}') == delivered + 6
        assert metric(server, "agentwire_append_latency_seconds_count") == latency_count + 3
        assert metric(server, "agentwire_append_latency_seconds_sum") > 0
        assert metric(server, "agentwire_append_latency_seconds_bucket", '{le="+Inf"}') == latency_count + 3
        assert metric(server, "agentwire_slow_consumer_disconnects_total") == 0
    eventually(lambda: metric(server, "agentwire_open_streams", '{transport="sse"}') == 0, 15,
               "open_streams to fall back to 0")


def test_openapi_schema_and_docs(server: Served) -> None:
    schema = server.http.get("/openapi.json").json()
    assert schema["info"]["title"] == "agentwire"
    paths = schema["paths"]
    for path, methods in {"/api/tasks": {"get", "post"}, "/api/tasks/{task_id}": {"get", "patch", "delete"},
                          "/api/tasks/{task_id}/choose": {"post"}, "/api/stream/tasks": {"get"},
                          "/api/konsole": {"get", "post"}, "/api/konsole/{session}/stream": {"post"},
                          "/api/konsole/{session}/quick": {"post"}, "/api/konsole/{session}/events": {"get"},
                          "/api/konsole/{session}/state": {"get"}, "/api/konsole/{session}/cancel": {"post"},
                          "/healthz": {"get"}, "/metrics": {"get"}}.items():
        assert methods <= set(paths[path]), path
    task_in = schema["components"]["schemas"]["TaskIn"]
    assert task_in["required"] == ["title"]
    assert set(task_in["properties"]["status"]["anyOf"][0]["enum"] if "anyOf" in task_in["properties"]["status"]
               else task_in["properties"]["status"]["enum"]) == {
        "pending", "in_progress", "completed", "failed", "cancelled"}
    docs = server.http.get("/api/docs")
    assert docs.status_code == 200 and "text/html" in docs.headers["content-type"]


def test_openapi_declares_every_error_answer_with_the_error_schema(server: Served) -> None:
    schema = server.http.get("/openapi.json").json()
    error = schema["components"]["schemas"]["Error"]
    assert error["required"] == ["error"]
    assert schema["components"]["schemas"]["ErrorDetail"]["required"] == ["code", "message"]
    assert "HTTPValidationError" not in schema["components"]["schemas"]  # FastAPI's shape is not ours
    declared = {(method.upper(), path): set(operation["responses"])
                for path, methods in schema["paths"].items() for method, operation in methods.items()}
    for key, statuses in {
        ("POST", "/api/tasks"): {"201", "401", "403", "409", "413", "422", "503"},
        ("GET", "/api/tasks/{task_id}"): {"200", "401", "403", "404", "422", "503"},
        ("DELETE", "/api/tasks/{task_id}"): {"204", "401", "403", "404", "422", "503"},
        ("POST", "/api/tasks/{task_id}/choose"): {"200", "401", "403", "404", "409", "413", "422", "503"},
        ("GET", "/api/stream/tasks"): {"200", "400", "401", "403", "503"},
        ("POST", "/api/konsole/{session}/stream"): {"200", "401", "403", "404", "409", "413", "422", "503"},
        ("POST", "/api/konsole/{session}/cancel"): {"200", "401", "403", "404", "409", "413", "422", "503"},
        ("GET", "/healthz"): {"200", "403", "503"},
        ("GET", "/metrics"): {"200", "401", "403"},
    }.items():
        assert declared[key] == statuses, key
    for (method, path), statuses in declared.items():
        for status in statuses - {"200", "201", "204"}:
            content = schema["paths"][path][method.lower()]["responses"][status]["content"]
            expected = "HealthDown" if path == "/healthz" and status == "503" else "Error"
            assert content["application/json"]["schema"]["$ref"] == f"#/components/schemas/{expected}", (path, status)
    events = schema["paths"]["/api/konsole/{session}/events"]["get"]["responses"]["200"]["content"]
    assert set(events) == {"text/event-stream"}
    assert set(schema["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}


def test_unknown_routes_and_methods_are_json_errors(server: Served) -> None:
    missing = server.http.get("/api/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = server.http.put("/api/tasks", json={})
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"


# bad input


@pytest.fixture
def board(server: Served) -> Iterator[Served]:
    """A server with one task (with choices) and one session, to aim bad requests at."""
    server.http.post("/api/tasks", json={"id": "known", "title": "known", "context": {
        "choices": [{"label": "Yes", "value": "yes"}]}}).raise_for_status()
    server.http.post("/api/konsole", json={"name": "s1"}).raise_for_status()
    yield server


def _chunked(size: int) -> Iterator[bytes]:
    yield b'{"title": "'
    for _ in range(size // 65536 + 1):
        yield b"x" * 65536
    yield b'"}'


BIG = 1 << 20  # the default request body limit
JSON_BODY = {"content-type": "application/json"}
# Well-formed JSON numbers that no journal entry may hold: refused (422) before anything is written.
UNSTORABLE_NUMBERS = [("NaN", b"NaN"), ("-Infinity", b"-Infinity"), ("1e999", b"1e999"),
                      ("2^64", b"18446744073709551616"), ("-2^63-1", b"-9223372036854775809")]
# Where they hide: anywhere in a body, also where a model keeps unknown keys as sent (a task's context).
CARRIERS = [("POST", "/api/tasks", b'{"title": "x", "context": {"n": %s}}'),
            ("PATCH", "/api/tasks/known", b'{"context": {"turnTiming": {"totalMs": %s}}}'),
            ("POST", "/api/konsole", b'{"name": "s3", "options": {"temperature": %s}}'),
            ("POST", "/api/konsole/s1/stream", b'{"message": "hi", "extra": [%s]}')]
BAD_REQUESTS: list[tuple[str, str, str, dict[str, Any], int, str, str | None]] = [
    # (what, method, path, request arguments, status, error code, field)
    ("malformed Last-Event-ID", "GET", "/api/stream/tasks", {"headers": {"Last-Event-ID": "abc"}}, 400,
     "bad_position", "Last-Event-ID"),
    ("negative from", "GET", "/api/stream/tasks?from=-1", {}, 400, "bad_position", "from"),
    ("console from", "GET", "/api/konsole/s1/events?from=1e3", {}, 400, "bad_position", "from"),
    ("huge Last-Event-ID", "GET", "/api/konsole/s1/events", {"headers": {"Last-Event-ID": "9" * 400}}, 400,
     "bad_position", "Last-Event-ID"),
    ("unknown task", "GET", "/api/tasks/nope", {}, 404, "task_not_found", None),
    ("patch unknown task", "PATCH", "/api/tasks/nope", {"json": {"title": "x"}}, 404, "task_not_found", None),
    ("delete unknown task", "DELETE", "/api/tasks/nope", {}, 404, "task_not_found", None),
    ("choose on unknown task", "POST", "/api/tasks/nope/choose", {"json": {"value": "yes"}}, 404,
     "task_not_found", None),
    ("unknown choice", "POST", "/api/tasks/known/choose", {"json": {"value": "maybe"}}, 422, "unknown_choice",
     "value"),
    ("title of the wrong type", "POST", "/api/tasks", {"json": {"title": 5}}, 422, "validation_error", "title"),
    ("tags not a list", "POST", "/api/tasks", {"json": {"title": "x", "tags": "a"}}, 422, "validation_error",
     "tags"),
    ("unknown status", "POST", "/api/tasks", {"json": {"title": "x", "status": "bogus"}}, 422,
     "validation_error", "status"),
    ("choice without a value", "POST", "/api/tasks", {"json": {"title": "x", "context": {
        "choices": [{"label": "a"}]}}}, 422, "validation_error", "context.choices.0.value"),
    ("unknown field", "POST", "/api/tasks", {"json": {"title": "x", "colour": "red"}}, 422,
     "validation_error", "colour"),
    ("missing title", "POST", "/api/tasks", {"json": {}}, 422, "validation_error", "title"),
    ("bad id", "POST", "/api/tasks", {"json": {"id": "has space", "title": "x"}}, 422, "validation_error", "id"),
    ("not JSON", "POST", "/api/tasks", {"content": b"{not json", "headers": {"content-type": "application/json"}},
     422, "validation_error", "body"),
    ("patch status of the wrong type", "PATCH", "/api/tasks/known", {"json": {"status": 3}}, 422,
     "validation_error", "status"),
    ("limit out of range", "GET", "/api/tasks?limit=0", {}, 422, "validation_error", "query.limit"),
    ("unknown status filter", "GET", "/api/tasks?status=bogus", {}, 422, "validation_error", "query.status"),
    ("body over the limit", "POST", "/api/tasks", {"content": b'{"title": "' + b"x" * BIG + b'"}',
                                                   "headers": {"content-type": "application/json"}},
     413, "body_too_large", None),
    ("chunked body over the limit", "POST", "/api/tasks", {"content": _chunked(BIG),
                                                           "headers": {"content-type": "application/json"}},
     413, "body_too_large", None),
    ("task output over its limit", "POST", "/api/tasks", {"json": {"title": "x", "context": {
        "output": "<p>" + "y" * 600_000 + "</p>"}}}, 422, "validation_error", "context.output"),
    ("message over its limit", "POST", "/api/konsole/s1/stream", {"json": {"message": "m" * 100_001}}, 413,
     "message_too_large", "message"),
    ("empty message", "POST", "/api/konsole/s1/stream", {"json": {"message": "  \n"}}, 422, "empty_message",
     "message"),
    ("message of the wrong type", "POST", "/api/konsole/s1/quick", {"json": {"message": 5}}, 422,
     "validation_error", "message"),
    ("unknown if_busy", "POST", "/api/konsole/s1/stream?if_busy=maybe", {"json": {"message": "hi"}}, 422,
     "validation_error", "query.if_busy"),
    ("bad session name", "POST", "/api/konsole/bad%20name!/stream", {"json": {"message": "hi"}}, 422,
     "bad_session_name", "session"),
    ("bad session option", "POST", "/api/konsole", {"json": {"name": "s2", "options": {"deltas": "many"}}}, 422,
     "validation_error", "options.deltas"),
    ("existing session", "POST", "/api/konsole", {"json": {"name": "s1"}}, 409, "session_exists", None),
    ("existing task", "POST", "/api/tasks", {"json": {"id": "known", "title": "again"}}, 409, "task_exists",
     "id"),
    *[(f"{what} in {method} {path}", method, path, {"content": body % number, "headers": JSON_BODY}, 422,
       "validation_error", "body") for what, number in UNSTORABLE_NUMBERS for method, path, body in CARRIERS],
    ("a lone surrogate", "POST", "/api/tasks", {"content": b'{"title": "\\ud800"}', "headers": JSON_BODY},
     422, "validation_error", "body"),
    ("missing token", "POST", "/api/tasks", {"json": {"title": "x"}, "headers": {"authorization": ""}}, 401,
     "unauthorized", None),
    ("wrong token", "GET", "/api/stream/tasks", {"headers": {"authorization": "Bearer not-the-token"}}, 401,
     "unauthorized", None),
]


@pytest.mark.parametrize(("what", "method", "path", "kwargs", "status", "code", "field"), BAD_REQUESTS,
                         ids=[case[0] for case in BAD_REQUESTS])
def test_bad_input_is_refused_clearly_and_writes_nothing(board: Served, what: str, method: str, path: str,
                                                         kwargs: dict[str, Any], status: int, code: str,
                                                         field: str | None) -> None:
    def snapshot() -> tuple[Any, ...]:
        tasks = board.http.get("/api/tasks").json()
        state = board.http.get("/api/konsole/s1/state").json()
        return (tasks["head"], tasks["tasks"], state["head"],
                [s["name"] for s in board.http.get("/api/konsole").json()["sessions"]])

    before = snapshot()
    headers = {**board.auth, **kwargs.pop("headers", {})}
    headers = {name: value for name, value in headers.items() if value}
    with httpx.Client(base_url=board.url, timeout=httpx.Timeout(15)) as client:
        response = client.request(method, path, headers=headers, **kwargs)
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    if field is not None:
        assert error["field"] == field
    # The server keeps serving, and nothing was written.
    assert board.http.get("/healthz").status_code == 200
    assert snapshot() == before


def test_a_body_limit_below_the_default_is_enforced(make_server: ServerFactory) -> None:
    server = make_server(max_body=4096)
    ok = server.http.post("/api/tasks", json={"title": "x", "description": "d" * 3000})
    assert ok.status_code == 201
    for content in (b'{"title": "' + b"x" * 5000 + b'"}', _chunked(5000)):
        response = server.http.post("/api/tasks", content=content, headers={"content-type": "application/json"})
        assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"
    assert server.tasks_head() == 1
    # Requests without a body, and streams, are untouched by the limit.
    with server.stream("/api/stream/tasks?from=1") as stream:
        stream.read_until(of_type("task.created"))
