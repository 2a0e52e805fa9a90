"""Provider turns through the whole server: official SDK → local fake of the vendor's streaming API →
journal → SSE. What the user saw is in the journal, failures read well, the server stays up, and a
provider turn survives the console's reconnect test unchanged."""

from __future__ import annotations

import random
from collections.abc import Iterator

import httpx
import pytest

from agentwire.console.transcript import TERMINAL
from tests.fakes import llm_servers as fake
from tests.fakes.llm_servers import FakeLLMServer
from tests.support.server import running_app
from tests.support.turns import comparable, create_session, follow_until, post_turn_cut, run_turn, transcript_of

PROVIDERS = ["anthropic", "openai", "gemini"]


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        yield server


@pytest.fixture(scope="module")
def server(llm: FakeLLMServer) -> Iterator[str]:
    patch = pytest.MonkeyPatch()
    llm_env = llm.env()
    for name, value in llm_env.items():
        patch.setenv(name, value)
    for name in ("GOOGLE_API_KEY", "GOOGLE_GEMINI_BASE_URL"):
        patch.delenv(name, raising=False)
    try:
        with running_app(journal="memory://") as (url, _):
            yield url
    finally:
        patch.undo()


def _session(url: str, provider: str, **options: object) -> str:
    name = f"{provider}-{random.randrange(10**9)}"
    create_session(url, name, provider=provider, options={"rate_limit_max_wait_s": 0.05, **options})
    return name


@pytest.mark.parametrize("provider", PROVIDERS)
def test_text_turn(server: str, llm: FakeLLMServer, provider: str) -> None:
    name = _session(server, provider)
    llm.enqueue(fake.text(), provider=provider)
    events = run_turn(server, name, "Say hello")
    assert events[0]["data"]["provider"] == provider and events[0]["data"]["model"]
    text = "".join(e["data"]["text"] for e in events if e["type"] == "text.delta")
    done = [e["data"]["text"] for e in events if e["type"] == "text.done"]
    assert text and done == [text]
    end = events[-1]
    assert end["type"] == "turn.completed" and end["data"]["stop_reason"] == "end_turn"
    assert end["data"]["usage"]["output_tokens"] > 0
    listed = {s["name"]: s for s in httpx.get(f"{server}/api/konsole").json()["sessions"]}
    assert listed[name]["provider"] == provider and listed[name]["model"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_tool_loop_runs_our_tools_and_the_model_finishes(server: str, llm: FakeLLMServer, provider: str) -> None:
    name = _session(server, provider)
    before = len(llm.requests_for(provider))
    llm.enqueue(*fake.tool_use_sequence(), provider=provider)
    events = run_turn(server, name, "Plan and report")
    kinds = [e["type"] for e in events]
    calls = [e["data"]["name"] for e in events if e["type"] == "tool.call"]
    assert calls == ["todo_write", "task_create"]
    assert "todo.updated" in kinds
    results = [e["data"] for e in events if e["type"] == "tool.result"]
    assert len(results) == 2 and not any(r["is_error"] for r in results)
    assert kinds[-1] == "turn.completed" and events[-1]["data"]["timing"]["toolCallCount"] == 2
    # The model got our tool results back, in its own wire format.
    requests = llm.requests_for(provider)[before:]
    assert len(requests) == 3
    assert requests[1].tool_results() and requests[2].tool_results()
    # The card it created is on the board, linked to the session.
    tasks = httpx.get(f"{server}/api/tasks", params={"limit": 1000}).json()["tasks"]
    assert any(t["session"] == name for t in tasks)


@pytest.mark.parametrize("provider", ["anthropic", "gemini"])
def test_thinking_blocks(server: str, llm: FakeLLMServer, provider: str) -> None:
    name = _session(server, provider, thinking=True)
    llm.enqueue(fake.thinking(), provider=provider)
    events = run_turn(server, name, "Think first")
    thought = "".join(e["data"]["text"] for e in events if e["type"] == "thinking.delta")
    assert thought and [e["data"]["text"] for e in events if e["type"] == "thinking.done"] == [thought]
    assert events[-1]["type"] == "turn.completed"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_rate_limit_is_retried_and_shown_as_state(server: str, llm: FakeLLMServer, provider: str) -> None:
    name = _session(server, provider)
    llm.enqueue(fake.rate_limited(0), fake.text(), provider=provider)
    events = run_turn(server, name, "Busy?")
    states = [e["data"] for e in events if e["type"] == "state"]
    assert any(s["agent_state"] == "rate_limited" for s in states)
    assert events[-1]["type"] == "turn.completed"


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize(("scenario", "expect"), [
    (fake.auth_error, ""),
    (fake.server_error, ""),
    (fake.error_mid_stream, "partial"),
    (fake.malformed_chunk, "partial"),
    (fake.dropped_connection, "partial"),
])
def test_failures_end_the_turn_readably_and_keep_what_was_shown(server: str, llm: FakeLLMServer, provider: str,
                                                                 scenario: object, expect: str) -> None:
    name = _session(server, provider, rate_limit_retries=0)
    llm.enqueue(scenario(), provider=provider)  # type: ignore[operator]
    events = run_turn(server, name, "This will go wrong")
    end = events[-1]
    assert end["type"] == "turn.failed"
    assert end["data"]["error"].startswith(f"{provider}: ")
    shown = "".join(e["data"]["text"] for e in events if e["type"] == "text.delta")
    if expect == "partial":
        assert shown, "the text streamed before the failure is in the journal"
        assert [e["data"]["text"] for e in events if e["type"] == "text.done"] == [shown]
    # The journal has the same record a late viewer replays, and the server keeps serving.
    replay = follow_until(server, name, 0, lambda e: e.get("seq") is not None and e["type"] in TERMINAL)
    assert [e for e in replay if e.get("seq") is not None and e.get("turn")] == events
    assert httpx.get(f"{server}/healthz").status_code == 200


@pytest.mark.parametrize("provider", PROVIDERS)
def test_provider_turn_survives_the_reconnect_test(server: str, llm: FakeLLMServer, provider: str) -> None:
    reference = _session(server, provider)
    llm.enqueue(*fake.tool_use_sequence(), provider=provider)
    expected = comparable(transcript_of(run_turn(server, reference, "Plan and report")))
    for cut_at in (700, 2500, 6000):
        name = _session(server, provider)
        llm.enqueue(*fake.tool_use_sequence(), provider=provider)
        before = [e for e in post_turn_cut(server, name, "Plan and report", cut_at) if e.get("seq") is not None]
        if before and before[-1]["type"] in TERMINAL:
            rest = []
        else:
            rest = follow_until(server, name, before[-1]["seq"] if before else 0,
                                lambda e: e.get("seq") is not None and e["type"] in TERMINAL)
        events = before + [e for e in rest if e.get("seq") is not None and e.get("turn")]
        assert [e["seq"] for e in events] == sorted({e["seq"] for e in events})
        assert comparable(transcript_of(events)) == expected, f"{provider} transcript differs at cut {cut_at}"
