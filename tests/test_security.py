"""Who may reach the server (security.py) and what an API client may make it do.

Host: every request, HTTP and WebSocket, with or without auth, must name the server by a loopback
name, its listen address or an --allowed-host, so a DNS-rebinding page cannot reach a `--no-auth`
server. Origin: a browser's WebSocket handshake or state-changing request must come from the
server's own origin (as the request reached it, or as a trusted proxy says) or an --allowed-origin;
requests without an Origin (curl, the Python client) pass. A session may choose the program its
cli agent runs only on a server started with --allow-session-command. Refusals are 403 with a JSON
error, logged, and write nothing.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

import httpx
import orjson
import pytest

from agentwire.security import host_name, host_pattern, normalize_origin
from tests.support.server import TOKEN

if TYPE_CHECKING:
    from tests.support.server import Served, ServerFactory


def handshake(port: int, headers: dict[str, str], path: str = "/api/ws") -> tuple[int, dict[str, str], bytes]:
    """A WebSocket opening handshake over a raw socket, with exactly these headers (Host included):
    the status, the response headers and whatever body came with a refusal."""
    lines = [f"GET {path} HTTP/1.1", "Upgrade: websocket", "Connection: Upgrade",
             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13",
             *(f"{name}: {value}" for name, value in headers.items())]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        raw = b""
        while b"\r\n\r\n" not in raw:
            chunk = sock.recv(65536)
            if not chunk:
                break
            raw += chunk
        head, _, body = raw.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        response_headers = {name.lower(): value.strip() for name, _, value in
                            (line.partition(":") for line in header_lines)}
        status = int(status_line.split()[1])
        length = int(response_headers.get("content-length", "0"))
        while status != 101 and len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    return status, response_headers, body


def error_of(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"].startswith("application/json"), response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["message"]
    return error


def board_head(served: Served) -> tuple[int, int]:
    tasks = served.http.get("/api/tasks").json()
    return tasks["head"], len(served.http.get("/api/konsole").json()["sessions"])


# Host


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8765", "127.0.0.1.nip.io", "localhost.evil.example",
                                  "[::2]:80", "", "bad host"])
def test_a_foreign_host_is_refused_on_a_no_auth_server(make_server: ServerFactory, host: str,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    served = make_server(no_auth=True, token=None)
    before = board_head(served)
    for method, path, body in (("GET", "/api/tasks", None), ("POST", "/api/tasks", {"title": "rebound"}),
                               ("POST", "/api/konsole", {"name": "rebound"}), ("GET", "/", None),
                               ("GET", "/healthz", None)):
        response = served.http.request(method, path, json=body, headers={"host": host})
        assert response.status_code == 403, (method, path, response.text)
        assert error_of(response)["code"] == "host_not_allowed"
    status, _, refusal = handshake(served.port, {"Host": host} if host else {})
    assert status == 403 and orjson.loads(refusal)["error"]["code"] == "host_not_allowed"
    assert board_head(served) == before
    assert any("refused" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "LOCALHOST:1", "[::1]:9999", "127.0.0.1:80"])
def test_loopback_names_with_any_port_are_served(make_server: ServerFactory, host: str) -> None:
    served = make_server(no_auth=True, token=None)
    assert served.http.get("/api/tasks", headers={"host": host}).status_code == 200
    assert served.http.post("/api/tasks", json={"title": "ok"}, headers={"host": host}).status_code == 201
    assert handshake(served.port, {"Host": host})[0] == 101


def test_allowed_hosts_are_served_and_others_still_refused(make_server: ServerFactory) -> None:
    served = make_server(allowed_hosts=["agents.example.org", "*.tail.example"])
    for host in ("agents.example.org", "Agents.Example.Org:443", "box.tail.example", "a.b.tail.example:8765"):
        assert served.http.get("/api/tasks", headers={"host": host}).status_code == 200, host
        assert handshake(served.port, {"Host": host, "Authorization": f"Bearer {TOKEN}"})[0] == 101
    for host in ("tail.example", "example.org", "agents.example.org.evil.example"):
        response = served.http.get("/api/tasks", headers={"host": host})
        assert response.status_code == 403 and error_of(response)["code"] == "host_not_allowed", host


# Origin


def test_a_websocket_from_a_foreign_origin_with_a_valid_cookie_is_refused(make_server: ServerFactory) -> None:
    served = make_server()
    host = f"127.0.0.1:{served.port}"
    cookie = f"agentwire_token={TOKEN}"
    # Another port of the same host is the same *site*: a SameSite=Strict cookie is sent along.
    for origin in (f"http://127.0.0.1:{served.port + 1}", "http://evil.example", "null",
                   f"https://127.0.0.1:{served.port}", f"http://localhost:{served.port}"):
        status, _, body = handshake(served.port, {"Host": host, "Origin": origin, "Cookie": cookie})
        assert status == 403, origin
        assert orjson.loads(body)["error"]["code"] == "origin_not_allowed"
    # The dashboard's own page, as the browser names it.
    assert handshake(served.port, {"Host": host, "Origin": f"http://{host}", "Cookie": cookie})[0] == 101
    assert handshake(served.port, {"Host": f"localhost:{served.port}", "Origin": f"http://localhost:{served.port}",
                                   "Cookie": cookie})[0] == 101
    # No Origin: not a browser (the Python client, curl); the token decides.
    assert handshake(served.port, {"Host": host, "Cookie": cookie})[0] == 101
    assert handshake(served.port, {"Host": host})[0] == 403  # no token: refused by auth, as before


def test_a_page_behind_a_configured_proxy_origin_is_accepted(make_server: ServerFactory) -> None:
    public = "https://agents.example.org"
    cookie = f"agentwire_token={TOKEN}"
    listed = make_server(allowed_origins=[public + ":443/"])  # normalized to the browser's form
    # A proxy that passes the client's Host on (nginx `proxy_set_header Host $host`).
    headers = {"Host": "127.0.0.1", "Origin": public, "Cookie": cookie}
    assert handshake(listed.port, headers)[0] == 101
    assert handshake(listed.port, {**headers, "Origin": "https://evil.example.org"})[0] == 403
    # A proxy that rewrites Host and says what it was asked for in X-Forwarded-Host/-Proto.
    forwarded = {"Host": f"127.0.0.1:{listed.port}", "X-Forwarded-Host": "agents.example.org",
                 "X-Forwarded-Proto": "https", "Origin": public, "Cookie": cookie}
    untrusting = make_server(allowed_hosts=["agents.example.org"])
    assert handshake(untrusting.port, forwarded)[0] == 403  # forwarded headers ignored unless configured
    trusting = make_server(allowed_hosts=["agents.example.org"], trust_forwarded=True)
    assert handshake(trusting.port, forwarded)[0] == 101
    # Trusted forwarded names are held to --allowed-host too.
    assert handshake(trusting.port, {**forwarded, "X-Forwarded-Host": "evil.example"})[0] == 403


def test_state_changing_requests_from_a_foreign_origin_are_refused_and_write_nothing(
        make_server: ServerFactory) -> None:
    served = make_server(no_auth=True, token=None)
    own = f"http://127.0.0.1:{served.port}"
    before = board_head(served)
    task = served.http.post("/api/tasks", json={"id": "t1", "title": "mine"}, headers={"origin": own})
    assert task.status_code == 201
    before = board_head(served)
    for method, path, body in (("POST", "/api/tasks", {"title": "theirs"}), ("PATCH", "/api/tasks/t1", {"title": "x"}),
                               ("DELETE", "/api/tasks/t1", None), ("POST", "/api/konsole", {"name": "theirs"}),
                               ("POST", "/api/konsole/theirs/stream", {"message": "run"})):
        response = served.http.request(method, path, json=body, headers={"origin": "http://evil.example"})
        assert response.status_code == 403, (method, path)
        assert error_of(response)["code"] == "origin_not_allowed"
    assert board_head(served) == before
    # Reading is not changing state; and a request without Origin is no browser's.
    assert served.http.get("/api/tasks", headers={"origin": "http://evil.example"}).status_code == 200
    assert served.http.patch("/api/tasks/t1", json={"title": "renamed"}).status_code == 200


# the session command


def test_a_session_command_is_refused_without_the_flag(make_server: ServerFactory) -> None:
    served = make_server()
    before = board_head(served)
    response = served.http.post("/api/konsole", json={"name": "runner", "provider": "cli",
                                                      "options": {"command": ["sh", "-c", "id > /dev/null"]}})
    assert response.status_code == 403
    error = error_of(response)
    assert error["code"] == "session_command_not_allowed" and "--allow-session-command" in error["message"]
    assert error["field"] == "options.command"
    assert board_head(served) == before
    # The server's own default command stays usable: a cli session without a command of its own.
    plain = served.http.post("/api/konsole", json={"name": "plain-cli", "provider": "cli"})
    assert plain.status_code == 201 and plain.json()["options"]["command"] == served.config.cli_command


def test_a_session_command_is_accepted_with_the_flag(make_server: ServerFactory) -> None:
    served = make_server(allow_session_command=True)
    response = served.http.post("/api/konsole", json={"name": "runner", "provider": "cli",
                                                      "options": {"command": ["my-agent", "--json"]}})
    assert response.status_code == 201 and response.json()["options"]["command"] == ["my-agent", "--json"]


# headers


def test_the_dashboard_sends_its_csp_and_nosniff(make_server: ServerFactory) -> None:
    served = make_server(no_auth=True, token=None)
    for path in ("/", "/static/app.js"):
        response = served.http.get(path)
        assert response.status_code == 200
        csp = response.headers["content-security-policy"]
        assert "frame-ancestors 'self'" in csp and "script-src 'self'" in csp and "img-src 'self' data:" in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "SAMEORIGIN"
    for path in ("/api/tasks", "/healthz", "/metrics", "/api/nothing-here"):
        assert served.http.get(path).headers["x-content-type-options"] == "nosniff"


# the parsing helpers


@pytest.mark.parametrize(("value", "name"), [
    ("Example.COM:8765", "example.com"), ("[::1]:80", "::1"), ("[0:0::1]", "::1"), ("localhost.", "localhost"),
    ("a b", None), ("x:y", None), ("[::1", None), ("", None), ("*.example.com", None), ("ex/ample", None),
])
def test_host_name(value: str, name: str | None) -> None:
    assert host_name(value) == name


def test_host_patterns_and_origins_are_normalized_or_refused() -> None:
    assert host_pattern("*.Example.com") == "*.example.com" and host_pattern("*") == "*"
    assert host_pattern("agents.example.org:443") == "agents.example.org"
    with pytest.raises(ValueError):
        host_pattern("http://agents.example.org")
    assert normalize_origin("HTTPS://Agents.Example.org:443/") == "https://agents.example.org"
    assert normalize_origin("http://[::1]:8765") == "http://[::1]:8765"
    assert normalize_origin("wss://a.example") == "https://a.example"
    for bad in ("agents.example.org", "ftp://a.example", "https://a.example/path", "null", "https://u@a.example",
                "http://a.example:99999"):
        with pytest.raises(ValueError):
            normalize_origin(bad)
