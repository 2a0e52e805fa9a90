"""The `cli` provider: a subprocess agent speaking Claude Code's stream-json. Its turns, todos, resume,
cancel and warm processes are shown with the real Claude Code (`claude -p`, the CLI claude-agent-sdk
bundles) against the project's Anthropic fake; `tests/fakes/fake_claude.py` stands in for it only
where the real one cannot be made to misbehave: malformed output and crashes."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentwire.providers import ProviderError, make_provider
from agentwire.providers.cli_agent import CliProvider
from tests.fakes import llm_servers as fake
from tests.support import claude_code as cc
from tests.support.eventually import eventually_async
from tests.support.paths import TESTS
from tests.support.procs import alive
from tests.support.server import running_app
from tests.support.turn_io import RecordingTurnIO
from tests.support.turns import run_turn

FAKE = str(TESTS / "fakes" / "fake_claude.py")
CLAUDE_FLAGS = ["-p", "--output-format", "stream-json", "--include-partial-messages", "--verbose"]
REAL = [str(cc.BUNDLED), *CLAUDE_FLAGS]


def fake_command(fake_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, FAKE, *CLAUDE_FLAGS, "--fake-dir", str(fake_dir), *extra]


def run_provider(io: RecordingTurnIO, command: list[str], model: str = "cli",
                 provider: CliProvider | None = None) -> RecordingTurnIO:
    async def turn() -> None:
        agent = provider or CliProvider(model, {"command": command})
        try:
            await agent.run(io)
        finally:
            await agent.close()

    asyncio.run(turn())
    return io


def failing(io: RecordingTurnIO, command: list[str], model: str = "cli") -> str:
    with pytest.raises(ProviderError) as error:
        run_provider(io, command, model)
    return str(error.value)


def new_io(message: str, **fields: Any) -> RecordingTurnIO:
    fields.setdefault("system", "")
    return RecordingTurnIO(message=message, **fields)


def assert_blocks_complete(io: RecordingTurnIO) -> None:
    """Every text and thinking block: its deltas add up to its one `*.done`, which comes last."""
    for kind in ("text", "thinking"):
        dones = io.of(f"{kind}.done")
        assert len({d["block"] for d in dones}) == len(dones), f"a {kind} block was done twice"
        assert io.deltas(kind) == io.done(kind), kind
        for block in io.done(kind):
            positions = [i for i, (k, d) in enumerate(io.events) if k.startswith(kind) and d["block"] == block]
            assert io.events[positions[-1]][0] == f"{kind}.done"


# -- the real Claude Code --------------------------------------------------------------------------------


class Real:
    def __init__(self, server: fake.FakeLLMServer, home: Path) -> None:
        self.fake = server
        self.home = home

    def bodies(self, since: int) -> list[dict[str, Any]]:
        return [r.json for r in self.fake.requests[since:]]


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Real]:
    home = cc.make_home(tmp_path_factory.mktemp("cli-home"))
    with fake.FakeLLMServer() as server, cc.patched_env(cc.claude_env(server, home)):
        yield Real(server, home)
    assert not cc.processes(home)


@pytest.fixture(autouse=False)
def queue_used(real: Real) -> Iterator[Real]:
    yield real
    assert not real.fake.pending(), "the test queued answers its turns did not ask for"


def test_real_a_turn_streams_its_text_todos_model_and_system_prompt(queue_used: Real,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    real = queue_used
    monkeypatch.setenv("CLAUDE_CODE_ENABLE_TASKS", "0")  # Claude Code 2.x then offers TodoWrite again
    plan = fake.Reply(blocks=(fake.Text("I'll plan this first."), fake.ToolCall("TodoWrite", fake.TODO_INPUT)))
    real.fake.enqueue(plan, fake.text("The parser is fixed; the report is next."))
    since = len(real.fake.requests)
    io = run_provider(new_io("Fix the parser", system="Answer like a pirate."), REAL, model=cc.MODEL)

    assert_blocks_complete(io)
    assert io.done("text") == {0: "I'll plan this first.", 1: "The parser is fixed; the report is next."}
    assert len(io.of("text.delta")) > 2
    (call,), (result,) = io.of("tool.call"), io.of("tool.result")
    assert call["name"] == "TodoWrite" and not result["is_error"]
    assert io.of("todo.updated") == [{"todos": fake.TODO_INPUT["todos"]}]
    kinds = io.kinds()
    assert kinds.index("todo.updated") > kinds.index("tool.result")
    body = real.bodies(since)[0]
    assert body["model"] == cc.MODEL  # --model
    assert "Answer like a pirate." in json.dumps(body["system"])  # --append-system-prompt
    assert io.usage.output_tokens > 0 and io.usage.cost_usd is not None and io.usage.cost_usd > 0
    assert io.outstanding_llm_calls == 0 and kinds.count("llm_call.start") == kinds.count("llm_call.end") == 2
    info = io.of("agent.info")[-1]
    assert (info["name"], info["version"], info["model"]) == ("cli", cc.VERSION, cc.MODEL)


def test_real_main_turns_resume_from_the_agent_record(queue_used: Real) -> None:
    real = queue_used
    real.fake.enqueue(fake.text("Noted: 42."), fake.text("You noted 42."), fake.text("A quick one."),
                      fake.text("Fresh start."))
    first = run_provider(new_io("Note 42"), REAL, model=cc.MODEL)
    since = len(real.fake.requests)
    second = run_provider(new_io("What did I note?", resume=first.resume), REAL, model=cc.MODEL)
    assert {"Note 42", "Noted: 42."} <= set(cc.user_texts(real.bodies(since)[0]))
    assert second.resume["resume_id"] == first.resume["resume_id"]
    # Its cost is the turn's, not the resumed session's running total.
    assert second.usage.cost_usd is not None and second.usage.cost_usd < second.resume["cost_usd_total"]

    since = len(real.fake.requests)
    quick = run_provider(new_io("Quick?", lane="quick", resume=first.resume), REAL, model=cc.MODEL)
    assert "Note 42" not in cc.user_texts(real.bodies(since)[0])
    assert quick.usage.extra["session_id"] != first.resume["resume_id"]

    # A session the CLI no longer knows: the turn starts a fresh one instead of failing.
    gone = {**first.resume, "resume_id": "00000000-0000-4000-8000-000000000000"}
    fresh = run_provider(new_io("Hello again", resume=gone), REAL, model=cc.MODEL)
    assert fresh.done("text") == {0: "Fresh start."}
    assert fresh.resume["resume_id"] not in (gone["resume_id"], first.resume["resume_id"])


def test_real_an_api_error_fails_the_turn_once(queue_used: Real) -> None:
    real = queue_used
    real.fake.enqueue(fake.auth_error())
    io = new_io("Hello?")
    error = failing(io, REAL, model=cc.MODEL)
    assert error.startswith("cli agent reported an error: API error 401: ") and "Invalid API key" in error
    assert io.of("text.delta") == io.of("text.done") == []


def test_real_cancel_during_a_bash_sleep_leaves_no_process(queue_used: Real) -> None:
    real = queue_used
    real.fake.enqueue(fake.tool_call("Bash", {"command": cc.SLEEP, "description": "Wait"}))
    io = new_io("Wait for it")

    async def turn() -> float:
        provider = CliProvider(cc.MODEL, {"command": REAL})
        task = asyncio.create_task(provider.run(io))

        def sleeping() -> bool:
            assert not task.done(), io.kinds()
            return bool(cc.sleeping(real.home))

        await eventually_async(sleeping, 30, "the agent's tool to sleep", interval=0.05)
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await provider.close()
        return time.monotonic() - started

    took = asyncio.run(turn())
    assert took < 5
    assert cc.processes(real.home) == {}  # the agent and the command its Bash tool ran
    assert io.outstanding_llm_calls == 0


def test_real_a_warm_process_serves_the_turn_or_is_replaced_once_it_gave_up(queue_used: Real) -> None:
    real = queue_used
    real.fake.enqueue(fake.text("Warm answer."), fake.text("Cold answer."))

    async def turns() -> tuple[set[int], set[int], RecordingTurnIO, RecordingTurnIO]:
        provider = CliProvider(cc.MODEL, {"command": REAL})
        try:
            await provider.warm()
            warm = set(cc.agents(real.home))
            soon = new_io("Right away")
            await provider.run(soon)  # within the ~3 s `claude -p` waits for its prompt
            await provider.warm()
            given_up = set(cc.agents(real.home))
            # "no stdin data received in 3s": it exits
            await eventually_async(lambda: not cc.agents(real.home), 30, "the unused agent to exit", interval=0.1)
            later = new_io("Later")
            await provider.run(later)
            return warm, given_up, soon, later
        finally:
            await provider.close()

    warm, given_up, soon, later = asyncio.run(turns())
    assert len(warm) == 1 and len(given_up) == 1 and warm != given_up
    assert soon.done("text") == {0: "Warm answer."} and later.done("text") == {0: "Cold answer."}
    assert soon.of("agent.info")[-1]["resume_id"] != later.of("agent.info")[-1]["resume_id"]
    assert cc.processes(real.home) == {}


# -- the fake CLI: malformed output and crashes -------------------------------------------------------------

def test_malformed_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    io = run_provider(new_io("Please [malformed]"), fake_command(tmp_path))

    assert_blocks_complete(io)
    assert io.usage.extra["malformed_lines"] == 5  # not JSON ×2, cut JSON, an array, an unknown type
    assert io.done("text")[1].startswith("About Please [malformed]:")
    assert len(io.of("tool.result")) == 4


def replay(tmp_path: Path, lines: list[dict[str, Any]]) -> list[str]:
    """A command that reads its prompt, then prints these stream-json lines and exits 0."""
    path = tmp_path / "stream.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return [sys.executable, "-c", "import sys; sys.stdin.read(); sys.stdout.write(open(sys.argv[1]).read())",
            str(path)]


def _event(event: dict[str, Any], parent: str | None = None) -> dict[str, Any]:
    return {"type": "stream_event", "event": event, "parent_tool_use_id": parent, "session_id": "s"}


def _assistant(message_id: str, content: list[dict[str, Any]], parent: str | None = None) -> dict[str, Any]:
    return {"type": "assistant", "message": {"id": message_id, "role": "assistant", "content": content},
            "parent_tool_use_id": parent, "session_id": "s"}


def test_replayed_edge_cases_show_each_block_and_call_once(tmp_path: Path) -> None:
    text = {"type": "text", "text": "Hello there."}
    task = {"type": "tool_use", "id": "toolu_task", "name": "Task", "input": {"prompt": "look"}}
    lines: list[dict[str, Any]] = [
        {"type": "system", "subtype": "init", "session_id": "s", "model": "m-1", "tools": []},
        {"type": "system", "subtype": "hook_response", "session_id": "s"},  # known, not shown
        {"type": "rate_limit_event", "rate_limit_info": {}},
        # Streamed text whose assistant line never comes: done at message_stop with what was streamed.
        _event({"type": "message_start", "message": {"id": "msg_a"}}),
        _event({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        _event({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Stre"}}),
        _event({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "amed."}}),
        _event({"type": "content_block_stop", "index": 0}),
        _event({"type": "message_delta", "delta": {"stop_reason": "end_turn"}}),
        _event({"type": "message_stop"}),
        # A message repeated with the blocks it had so far (older CLIs): each block shown once.
        _assistant("msg_b", [text]),
        _assistant("msg_b", [text, task]),
        # A subagent's own text and tool call (parent_tool_use_id set): its tools show, its prose not.
        _event({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "sub"}},
               parent="toolu_task"),
        _assistant("msg_sub", [{"type": "text", "text": "subagent prose"},
                               {"type": "tool_use", "id": "toolu_sub", "name": "Read", "input": {"file": "x"}}],
                   parent="toolu_task"),
        {"type": "user", "message": {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_sub", "content": "file body", "is_error": False}]},
         "parent_tool_use_id": "toolu_task"},
        {"type": "user", "message": {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_task", "is_error": True,
             "content": [{"type": "text", "text": "agent failed"}, {"type": "image", "source": {}}]}]}},
        {"type": "user", "message": {"role": "user", "content": "a replayed user message"}},
        {"type": "result", "subtype": "success", "is_error": False, "result": "done", "session_id": "s",
         "usage": {"input_tokens": 3, "output_tokens": 4}, "total_cost_usd": 0.5},
    ]
    io = run_provider(new_io("replay"), replay(tmp_path, lines))

    assert_blocks_complete(io)
    assert io.done("text") == {0: "Streamed.", 1: "Hello there."}
    assert [(c["call_id"], c["name"]) for c in io.of("tool.call")] == [("toolu_task", "Task"), ("toolu_sub", "Read")]
    results = {r["call_id"]: (r["output"], r["is_error"]) for r in io.of("tool.result")}
    assert results == {"toolu_sub": ("file body", False), "toolu_task": ("agent failed\n[image]", True)}
    assert io.usage.extra["model"] == "m-1" and "malformed_lines" not in io.usage.extra
    assert (io.usage.input_tokens, io.usage.output_tokens, io.usage.cost_usd) == (3, 4, 0.5)
    assert io.outstanding_llm_calls == 0


def test_long_lines_are_read_whole(tmp_path: Path) -> None:
    big = "x" * (3 << 20)  # far over asyncio's default 64 KiB line limit
    lines: list[dict[str, Any]] = [
        _assistant("msg_a", [{"type": "tool_use", "id": "toolu_read", "name": "Read", "input": {"f": "big"}}]),
        {"type": "user", "message": {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_read", "content": big}]}},
        _assistant("msg_b", [{"type": "text", "text": "Read it."}]),
        {"type": "result", "subtype": "success", "is_error": False, "result": "Read it."},
    ]
    io = run_provider(new_io("read"), replay(tmp_path, lines))
    assert io.of("tool.result")[0]["output"] == big and io.done("text") == {0: "Read it."}


def test_output_that_is_never_stream_json_fails_readably(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "print('Welcome to some other tool!'); print('{broken')"]
    error = failing(new_io("hello"), command)
    assert "exited with code 0" in error
    assert "2 malformed output line(s)" in error and "Welcome to some other tool!" in error


def test_a_crash_mid_turn_fails_with_exit_code_and_stderr(tmp_path: Path) -> None:
    io = new_io("Go [crash]")
    error = failing(io, fake_command(tmp_path))

    assert "exited with code 3" in error
    assert "Error: fake crash: the agent lost its way" in error
    assert io.deltas()[1] == "Now let me look at the files, this will take"  # what came before the crash
    assert io.outstanding_llm_calls == 0


def test_a_command_that_cannot_start(tmp_path: Path) -> None:
    error = failing(new_io("hello"), [str(tmp_path / "no-such-claude"), "-p"])
    assert error.startswith("cannot start cli agent: ") and "no-such-claude" in error

    # A CLI that refuses its flags (the real one wants --verbose with stream-json) fails with its stderr.
    command = [sys.executable, FAKE, "-p", "--output-format", "stream-json"]
    error = failing(new_io("hello"), command)
    assert "exited with code 1" in error and "requires --verbose" in error



def test_a_command_that_dies_at_once_fails_warm_or_its_turn(tmp_path: Path) -> None:
    command = ["sh", "-c", "echo 'error: unknown option --bad' >&2; exit 2"]

    async def warm_then_run() -> str:
        provider = CliProvider("cli", {"command": command})
        try:
            try:
                await provider.warm()
            except ProviderError as exc:  # it died while warm() watched
                return str(exc)
            with pytest.raises(ProviderError) as error:  # it died a moment later: the turn says why
                await provider.run(new_io("hello"))
            return str(error.value)
        finally:
            await provider.close()

    error = asyncio.run(warm_then_run())
    assert "exited with code 2" in error and "error: unknown option --bad" in error




def test_registered_as_the_cli_provider(tmp_path: Path) -> None:
    provider = make_provider("cli", None, {"command": fake_command(tmp_path)})
    assert isinstance(provider, CliProvider) and provider.model == "cli"
    assert CliProvider("cli", {}).command[0] == "claude"  # the documented default


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    fake_dir = tmp_path_factory.mktemp("fake-claude")
    with running_app(provider="cli", cli_command=fake_command(fake_dir)) as (url, _):
        yield url
    # Shutting down stops every process it started, the warm ones included.
    assert not [path for path in fake_dir.glob("*.start") if alive(int(path.stem))]


def _session(prefix: str) -> str:
    return f"{prefix}-{time.monotonic_ns() % 10**9}"


def test_e2e_malformed_lines_do_not_stop_the_turn(served: str) -> None:
    events = run_turn(served, _session("cli-bad"), "Cope with this [malformed]")
    assert events[-1]["type"] == "turn.completed"
    assert events[-1]["data"]["usage"]["malformed_lines"] == 5


def test_e2e_a_crash_fails_the_turn_and_the_server_keeps_serving(served: str) -> None:
    session = _session("cli-crash")
    events = run_turn(served, session, "Fall over [crash]")
    assert events[-1]["type"] == "turn.failed"
    error = events[-1]["data"]["error"]
    assert "exited with code 3" in error and "fake crash" in error
    assert any(e["type"] == "text.delta" for e in events)
    again = run_turn(served, session, "Are you back?")
    assert again[-1]["type"] == "turn.completed"
    assert httpx.get(f"{served}/healthz", timeout=5).status_code == 200


