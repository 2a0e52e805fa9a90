"""Token auth (§9): a bearer header, or the HttpOnly cookie that opening the printed `/?token=` link
sets (so EventSource, which cannot send headers, is authorized too); /healthz is open."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

from tests.support.sse import SseStream, envelope, of_type

if TYPE_CHECKING:
    from tests.support.server import Served, ServerFactory

PROTECTED = [("GET", "/api/tasks"), ("POST", "/api/tasks"), ("GET", "/api/tasks/x"), ("GET", "/api/konsole"),
             ("GET", "/api/stream/tasks"), ("GET", "/metrics"), ("GET", "/openapi.json"), ("GET", "/"),
             ("GET", "/api/konsole/s/events"), ("POST", "/api/konsole/s/stream")]


def unauthorized(response: httpx.Response) -> None:
    assert response.status_code == 401, (response.request.url, response.text)
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == "unauthorized"
    assert "set-cookie" not in response.headers


def bad_authorizations(token: str) -> list[str | None]:
    return [None, f"Bearer {token}x", f"Bearer {token[:-1]}", "Bearer", f"Basic {token}", token, f"Token {token}",
            f"Bearer  {token.upper()}"]


def test_missing_or_wrong_token_is_401_and_nothing_happens(server: Served) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as anonymous:
        for method, path in PROTECTED:
            for authorization in bad_authorizations(server.token):
                headers = {} if authorization is None else {"authorization": authorization}
                unauthorized(anonymous.request(method, path, headers=headers, json={"title": "x", "message": "hi"}))
    assert server.tasks_head() == 0
    assert server.http.get("/api/konsole").json()["sessions"] == []


def test_bearer_token_is_accepted_case_insensitively_by_scheme(server: Served) -> None:
    token = server.token
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for scheme in ("Bearer", "bearer", "BEARER"):
            response = client.post("/api/tasks", json={"title": scheme}, headers={"authorization": f"{scheme} {token}"})
            assert response.status_code == 201
    assert server.tasks_head() == 3


def test_healthz_is_open(server: Served) -> None:
    response = httpx.get(server.url + "/healthz", timeout=10)
    assert response.status_code == 200 and response.json()["status"] == "ok"


def test_the_login_link_sets_an_httponly_cookie_and_redirects(server: Served) -> None:
    token = server.token
    with httpx.Client(base_url=server.url, timeout=10) as browser:
        response = browser.get("/", params={"token": token})
        assert response.status_code == 303 and response.headers["location"] == "/"
        cookie = response.headers["set-cookie"]
        attributes = [part.strip() for part in cookie.split(";")]
        assert attributes[0] == f"agentwire_token={token}"
        assert {"HttpOnly", "Path=/", "SameSite=Strict"} <= set(attributes)
        assert browser.cookies.get("agentwire_token") == token
        # From now on the cookie alone authorizes, as in a browser: REST, the dashboard, and streams.
        assert browser.get("/api/tasks").status_code == 200
        assert browser.get("/").status_code != 401
        assert browser.post("/api/tasks", json={"title": "by cookie"}).status_code == 201


def test_the_cookie_authorizes_an_event_stream_without_headers(server: Served) -> None:
    token = server.token
    server.http.post("/api/tasks", json={"title": "one"}).raise_for_status()
    # An EventSource sends only the cookie (no Authorization header it could set).
    with SseStream(server.port, "/api/stream/tasks?from=1", {"Cookie": f"agentwire_token={token}"}) as stream:
        assert stream.read_headers() == 200
        event = envelope(stream.read_until(of_type("task.created")))
        assert event["data"]["task"]["title"] == "one"
    for cookie in (f"agentwire_token={token}x", "agentwire_token=", f"other={token}"):
        with SseStream(server.port, "/api/stream/tasks", {"Cookie": cookie}) as stream:
            assert stream.read_headers() == 401
            stream.read_to_eof()
            assert stream.json()["error"]["code"] == "unauthorized"
    # Among other cookies, too.
    with httpx.Client(base_url=server.url, timeout=10) as client:
        response = client.get("/api/tasks", headers={"Cookie": f"theme=dark; agentwire_token={token}; x=1"})
        assert response.status_code == 200


def test_a_wrong_login_link_sets_no_cookie(server: Served) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as browser:
        response = browser.get("/", params={"token": "guess"})
        assert response.status_code == 401 and "set-cookie" not in response.headers
        assert browser.cookies.get("agentwire_token") is None
        assert browser.get("/api/tasks").status_code == 401


def test_a_token_in_an_api_url_is_not_accepted(server: Served) -> None:
    token = server.token
    # Only the login link takes the token from the URL (it trades it for a cookie at once); API URLs
    # end up in logs and histories, so a token there must not work.
    with httpx.Client(base_url=server.url, timeout=10) as client:
        unauthorized(client.get("/api/tasks", params={"token": token}))
        unauthorized(client.get("/api/stream/tasks", params={"token": token}))


def test_no_auth_on_loopback_needs_no_token(make_server: ServerFactory) -> None:
    server = make_server(no_auth=True, token=None)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        assert client.post("/api/tasks", json={"title": "open"}).status_code == 201
        assert client.get("/metrics").status_code == 200
    with SseStream(server.port, "/api/stream/tasks?from=1") as stream:
        assert stream.read_headers() == 200
        stream.read_until(of_type("task.created"))
