"""`agentwire serve` as a process: a SIGTERM with streams open (one of them stalled) ends it within
2 s; each flag has an AGENTWIRE_* twin and the flag wins; unsafe or impossible settings are refused
before anything listens."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from websockets.sync.client import connect as sync_connect

from agentwire import cli
from agentwire.client import ws_url
from agentwire.config import ENV, Config
from tests.support.server import ServerProcess, free_port, served_in_thread, wait_healthy
from tests.support.sse import Follower, SseStream, envelope, is_event, of_type


def test_sigterm_with_open_streams_exits_within_two_seconds(tmp_path: Path) -> None:
    db = tmp_path / "journal.db"
    # A buffer big enough that the stalled client below is not cut as slow: its writer stays blocked.
    server = ServerProcess(f"sqlite:///{db}", token="term", args=["--heartbeat", "1", "--buffer-limit",
                                                                  str(64 << 20)]).start()
    auth = server.headers
    try:
        http = httpx.Client(base_url=server.url, headers=auth, timeout=30)
        http.post("/api/konsole", json={"name": "long", "options": {"deltas": 100_000, "delay_ms": 2}}
                  ).raise_for_status()
        reading = Follower(SseStream(server.port, "/api/stream/tasks", auth))
        turn = Follower(SseStream(server.port, "/api/konsole/long/stream", auth, method="POST",
                                  body=b'{"message": "go on for a long time"}'))
        idle = SseStream(server.port, "/api/konsole/long/events?from=999999", auth)  # reset, then quiet
        stalled = SseStream(server.port, "/api/stream/tasks", auth, rcvbuf=1024)  # never reads
        reading.start()
        turn.start()
        # Enough for the stalled client that the server's write to it is blocked on a full socket.
        output = "<p>" + "z" * 400_000 + "</p>"
        for n in range(8):
            http.post("/api/tasks", json={"title": f"big {n}", "context": {"output": output}}).raise_for_status()
        reading.wait_for(lambda events: len(events) >= 8)
        turn.wait_for(lambda events: len(events) >= 50)
        assert http.get("/healthz").json()["streams_open"] == 4

        took = server.terminate(timeout=10)
        assert took < 2.0, f"SIGTERM took {took:.2f}s with streams open"
        assert server.proc is not None and server.proc.returncode in (0, -signal.SIGTERM)
        # The streams were ended, not left hanging: the readers saw the end.
        for follower in (reading, turn):
            follower.join(10)
            assert not follower.is_alive() and follower.stream.eof
        idle.read_to_eof(10)
        stalled.read_to_eof(30)

        # The turn that was running is recorded as interrupted, right after its last event.
        server.start()
        state = http.get("/api/konsole/long/state").json()
        with SseStream(server.port, f"/api/konsole/long/events?from={state['head']}", auth) as stream:
            end = envelope(stream.read_until(is_event))
        assert end["type"] == "turn.failed" and end["data"]["error"] == "interrupted"
        assert int(turn.events[-1].id) < end["seq"]  # type: ignore[arg-type]
        http.close()
    finally:
        server.stop()


# flags and their environment twins

SAMPLES: dict[str, tuple[str, list[str], object, object]] = {
    # setting: (environment value, flag arguments, value from the environment, value from the flag)
    "host": ("localhost", ["--host", "::1"], "localhost", "::1"),
    "port": ("9001", ["--port", "9002"], 9001, 9002),
    "journal": ("memory://", ["--journal", "sqlite:///x.db"], "memory://", "sqlite:///x.db"),
    "token": ("from-env", ["--token", "from-flag"], "from-env", "from-flag"),
    "no_auth": ("1", ["--no-auth"], True, True),
    "heartbeat": ("2.5", ["--heartbeat", "0.5"], 2.5, 0.5),
    "retention": ("100", ["--retention", "7"], 100, 7),
    "workers": ("2", ["--workers", "3"], 2, 3),
    "provider": ("openai", ["--provider", "scripted"], "openai", "scripted"),
    "model": ("m-env", ["--model", "m-flag"], "m-env", "m-flag"),
    "cli_command": ("mycli --x 'a b'", ["--cli-command", "other -y"], ["mycli", "--x", "a b"], ["other", "-y"]),
    "log_level": ("debug", ["--log-level", "warning"], "debug", "warning"),
    "lease_seconds": ("3.5", ["--lease-seconds", "1.5"], 3.5, 1.5),
    "buffer_limit": ("65536", ["--buffer-limit", "4096"], 65536, 4096),
    "claude_bin": ("sh", ["--claude-bin", "true"], "sh", "true"),
    "agent_ttl": ("60", ["--agent-ttl", "5"], 60.0, 5.0),
    "permission_timeout": ("120", ["--permission-timeout", "30"], 120.0, 30.0),
    "allowed_hosts": ("a.example, *.b.example c.example",
                      ["--allowed-host", "x.example", "--allowed-host", "y.example"],
                      ["a.example", "*.b.example", "c.example"], ["x.example", "y.example"]),
    "allowed_origins": ("https://a.example,http://b.example:8080", ["--allowed-origin", "https://x.example:443"],
                        ["https://a.example", "http://b.example:8080"], ["https://x.example"]),
    "trust_forwarded": ("1", ["--trust-forwarded"], True, True),
    "allow_session_command": ("yes", ["--allow-session-command"], True, True),
    "codex_bin": ("/env/codex", ["--codex-bin", "/flag/codex"], "/env/codex", "/flag/codex"),
    "gemini_bin": ("/env/gemini", ["--gemini-bin", "/flag/gemini"], "/env/gemini", "/flag/gemini"),
}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for variable in ENV.values():
        monkeypatch.delenv(variable, raising=False)
    return monkeypatch


def parse(*argv: str) -> Config:
    return cli.config_from(cli.build_parser().parse_args(["serve", *argv]))


def test_every_twin_is_covered_here() -> None:
    assert set(SAMPLES) == set(ENV)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_each_setting_comes_from_its_env_twin_and_the_flag_wins(clean_env: pytest.MonkeyPatch, name: str) -> None:
    env_value, flag, from_env, from_flag = SAMPLES[name]
    if name == "workers":  # several workers need a journal they share
        clean_env.setenv("AGENTWIRE_JOURNAL", "redis://127.0.0.1:6379/0")
    assert getattr(parse(), name) != from_env
    clean_env.setenv(ENV[name], env_value)
    assert getattr(parse(), name) == from_env
    if isinstance(from_flag, bool):  # a switch: the flag can only turn it on; with the twin off, the flag wins
        clean_env.setenv(ENV[name], "0")
        assert getattr(parse(), name) is False
    assert getattr(parse(*flag), name) == from_flag


def environment(**variables: str) -> dict[str, str]:
    """This process's environment without any AGENTWIRE_* setting, plus `variables`."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("AGENTWIRE_")}, **variables}


def run_serve(*argv: str, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agentwire", "serve", *argv], capture_output=True, text=True,
                          timeout=timeout, env=environment(**env))


def nothing_listens(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize(("argv", "env", "message"), [
    (["--no-auth", "--host", "0.0.0.0"], {}, "--no-auth is refused on a non-loopback address (0.0.0.0)"),
    ([], {"AGENTWIRE_NO_AUTH": "1", "AGENTWIRE_HOST": "0.0.0.0"}, "refused on a non-loopback address"),
    (["--no-auth"], {"AGENTWIRE_HOST": "::"}, "refused on a non-loopback address"),
    (["--workers", "2", "--journal", "sqlite:///{tmp}/j.db"], {}, "needs a journal every worker shares"),
    (["--workers", "2", "--journal", "memory://"], {}, "the memory journal belongs to one process"),
    ([], {"AGENTWIRE_WORKERS": "4", "AGENTWIRE_JOURNAL": "memory://"}, "needs a journal every worker shares"),
    (["--heartbeat", "0"], {}, "--heartbeat must be a positive"),
    (["--retention", "-5"], {}, "--retention"),
    (["--journal", "postgres://db/x"], {}, "unknown journal URL"),
    (["--allowed-origin", "agents.example.org"], {}, "--allowed-origin: not an origin"),
    ([], {"AGENTWIRE_ALLOWED_HOSTS": "http://a.example/"}, "--allowed-host: not a host name"),
])
def test_unsafe_or_impossible_settings_are_refused_before_listening(tmp_path: Path, argv: list[str],
                                                                   env: dict[str, str], message: str) -> None:
    port = free_port()
    result = run_serve("--port", str(port), *(arg.replace("{tmp}", str(tmp_path)) for arg in argv), env=env)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert nothing_listens(port)


def test_a_real_server_takes_its_settings_from_the_environment(tmp_path: Path) -> None:
    port = free_port()
    env = environment(AGENTWIRE_PORT=str(port), AGENTWIRE_TOKEN="env-token",
                      AGENTWIRE_JOURNAL=f"sqlite:///{tmp_path}/env.db", AGENTWIRE_HEARTBEAT="0.2",
                      AGENTWIRE_RETENTION="3", AGENTWIRE_LOG_LEVEL="warning")
    process = subprocess.Popen([sys.executable, "-m", "agentwire", "serve"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        auth = {"authorization": "Bearer env-token"}
        wait_healthy(url, headers=auth)
        assert httpx.get(url + "/api/tasks", timeout=10).status_code == 401
        for n in range(10):
            httpx.post(url + "/api/tasks", json={"title": f"t{n}"}, headers=auth, timeout=10).raise_for_status()
        assert (tmp_path / "env.db").is_file()
        with SseStream(port, "/api/stream/tasks?from=1", auth) as stream:
            reset = envelope(stream.read_until(of_type("stream.reset")))
            assert reset["data"]["reason"] == "trimmed"  # only the last few are kept
            started = time.monotonic()
            while bytes(stream.body).count(b": ping\n\n") < 2:  # heartbeats every 0.2 s, not 15 s
                assert time.monotonic() - started < 10
                stream.read_some(0.5)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            out, _ = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            out, _ = process.communicate()
    assert f"agentwire serving on http://127.0.0.1:{port}/?token=env-token" in out.decode()


def test_shutdown_of_a_busy_server_leaves_no_task_behind(tmp_path: Path) -> None:
    """Every task the server starts is owned and ended at shutdown: with streams open (one stalled),
    a WebSocket subscribed, a long main turn running, one queued, a quick turn and warm workers,
    stopping leaves no task pending and nothing "never retrieved" (`ThreadServer.check_shutdown`)."""
    config = Config(port=free_port(), journal=f"sqlite:///{tmp_path}/journal.db", token="t", heartbeat=0.2,
                    quick_pool=2)
    auth = {"authorization": "Bearer t"}
    with served_in_thread(config) as served, httpx.Client(base_url=served.url, headers=auth, timeout=30) as http:
        http.post("/api/konsole", json={"name": "long", "options": {"deltas": 100_000, "delay_ms": 2}}
                  ).raise_for_status()
        reading = Follower(SseStream(config.port, "/api/konsole/long/events", auth))
        reading.start()
        stalled = SseStream(config.port, "/api/stream/tasks", auth, rcvbuf=1024)
        with sync_connect(ws_url(served.url), additional_headers=auth, open_timeout=20, max_queue=None) as ws:
            ws.send(orjson.dumps({"op": "subscribe", "stream": "konsole/long", "ref": 1}).decode())
            for message in ("run long", "wait in the queue"):
                with http.stream("POST", "/api/konsole/long/stream", json={"message": message}) as response:
                    assert response.status_code == 200
            with http.stream("POST", "/api/konsole/long/quick", json={"message": "quick one"}) as response:
                assert response.status_code == 200
            reading.wait_for(lambda events: len(events) >= 50)
            ws.recv(10)
            assert http.get("/healthz").json()["streams_open"] == 3
    reading.join(10)
    stalled.close()
    # served_in_thread checked the shutdown on leaving; the turn was recorded as interrupted.
    with served_in_thread(config) as again, httpx.Client(base_url=again.url, headers=auth, timeout=30) as http:
        state = http.get("/api/konsole/long/state").json()
        assert state["running"] == [] and state["queued"] == []


async def _fail_unseen() -> None:
    raise RuntimeError("nobody reads this")


@pytest.mark.parametrize(("task", "report"), [
    (lambda: asyncio.sleep(3600), "tasks left pending at shutdown"),
    (_fail_unseen, "Task exception was never retrieved"),
])
def test_the_shutdown_check_fails_on_a_loose_task(task: Callable[[], Coroutine[Any, Any, None]],
                                                  report: str) -> None:
    """What every in-thread server of the suite is checked for when it stops (the check above)."""
    with pytest.raises(AssertionError, match=report):
        with served_in_thread() as served:
            served.loop.call_soon_threadsafe(lambda: served.loop.create_task(task(), name="loose"))
