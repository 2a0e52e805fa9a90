"""The `cli` provider: a subprocess agent speaking Claude Code's stream-json (`tests/fakes/fake_claude.py`
stands in for `claude`), alone through a recording TurnIO and end to end through a real server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentwire.providers import ProviderError, make_provider
from agentwire.providers.cli_agent import CliProvider
from tests.support.server import running_app
from tests.support.turn_io import RecordingTurnIO
from tests.support.turns import create_session, run_turn, wait_for

FAKE = str(Path(__file__).resolve().parent / "fakes" / "fake_claude.py")
CLAUDE_FLAGS = ["-p", "--output-format", "stream-json", "--include-partial-messages", "--verbose"]


def fake_command(fake_dir: Path, *extra: str, partial: bool = True) -> list[str]:
    flags = CLAUDE_FLAGS if partial else [f for f in CLAUDE_FLAGS if f != "--include-partial-messages"]
    return [sys.executable, FAKE, *flags, "--fake-dir", str(fake_dir), *extra]


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie (an orphan nobody reaped is as good as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def started(fake_dir: Path) -> dict[int, float]:
    """pid → start time (epoch seconds) of every fake that ran with this directory."""
    found = {}
    for path in fake_dir.glob("*.start"):
        try:
            found[int(path.stem)] = float(path.read_text())
        except ValueError:  # being written
            continue
    return found


def prompts(fake_dir: Path) -> dict[int, dict[str, Any]]:
    """pid → {argv, prompt, session_id, mode} of every fake that got a prompt."""
    found = {}
    for path in fake_dir.glob("*.prompt"):
        try:
            found[int(path.stem)] = json.loads(path.read_text())
        except ValueError:
            continue
    return found


def pid_with(fake_dir: Path, marker: str) -> int:
    matches = [pid for pid, info in prompts(fake_dir).items() if marker in info["prompt"]]
    assert len(matches) == 1, (marker, prompts(fake_dir))
    return matches[0]


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


def failing(io: RecordingTurnIO, command: list[str]) -> str:
    with pytest.raises(ProviderError) as error:
        run_provider(io, command)
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


# -- the provider alone ----------------------------------------------------------------------------------


def test_a_turn_maps_onto_text_thinking_tools_todos_and_usage(tmp_path: Path) -> None:
    io = run_provider(new_io("Explain the journal"), fake_command(tmp_path))

    assert_blocks_complete(io)
    assert io.done("thinking") == {0: "The user asks: Explain the journal. Plan first, then look, then answer."}
    texts = io.done("text")
    assert texts[0] == "I'll plan this with a todo list first."
    assert texts[1].startswith("About Explain the journal: The stream is journaled before delivery")
    assert len(io.of("text.delta")) > 12  # streamed in pieces, not in one
    assert [c["name"] for c in io.of("tool.call")] == ["TodoWrite", "Bash", "Grep", "TodoWrite"]
    results = {r["call_id"]: r for r in io.of("tool.result")}
    calls = {c["name"]: c["call_id"] for c in io.of("tool.call")}
    assert results[calls["Bash"]]["output"] == "README.md\npyproject.toml\nsrc\ntests"
    assert results[calls["Grep"]]["output"] == "Found 2 files\nsrc/journal.py\nsrc/hub.py"  # a list of blocks
    assert not any(r["is_error"] for r in results.values())
    todos = io.of("todo.updated")
    assert len(todos) == 2
    assert [t["status"] for t in todos[0]["todos"]] == ["completed", "in_progress", "pending"]
    assert set(todos[0]["todos"][0]) == {"content", "status", "activeForm"}
    assert [t["status"] for t in todos[1]["todos"]] == ["completed", "completed", "in_progress"]
    # The TodoWrite call comes first, then its todo.updated.
    kinds = io.kinds()
    assert kinds.index("todo.updated") == kinds.index("tool.call") + 1

    assert io.stop_reason == "end_turn"
    assert io.usage.input_tokens == 48 and io.usage.output_tokens > 0
    assert io.usage.cost_usd == pytest.approx(0.0492)
    extra = io.usage.extra
    assert extra["model"] == "claude-sonnet-4-5-20250929"
    assert extra["num_turns"] == 4 and extra["duration_ms"] > 0 and extra["cache_read_input_tokens"] == 56800
    assert extra["session_id"] == prompts(tmp_path)[next(iter(prompts(tmp_path)))]["session_id"]
    assert "malformed_lines" not in extra

    # One LLM call per model request, none open while a tool runs, all closed at the end.
    assert kinds.count("llm_call.start") == kinds.count("llm_call.end") == 4
    assert io.outstanding_llm_calls == 0
    depth = 0
    for kind, _ in io.events:
        depth += {"llm_call.start": 1, "llm_call.end": -1}.get(kind, 0)
        assert depth in (0, 1)
        if kind in ("tool.call", "tool.result"):
            assert depth == 0, kind


def test_without_partial_messages_the_transcript_is_the_same(tmp_path: Path) -> None:
    streamed = run_provider(new_io("Same answer please"), fake_command(tmp_path / "a"))
    whole = run_provider(new_io("Same answer please"), fake_command(tmp_path / "b", partial=False))

    assert_blocks_complete(whole)
    assert whole.done("text") == streamed.done("text") and whole.done("thinking") == streamed.done("thinking")
    # No stream events: each block is one delta, then its done.
    assert len(whole.of("text.delta")) == len(whole.done("text"))
    assert [c["name"] for c in whole.of("tool.call")] == [c["name"] for c in streamed.of("tool.call")]
    assert whole.of("todo.updated") == streamed.of("todo.updated")
    # The keyword forces it too, even with --include-partial-messages.
    forced = run_provider(new_io("Same answer please [no-partial]"), fake_command(tmp_path / "c"))
    assert len(forced.of("text.delta")) == len(forced.done("text")) == 2


def test_model_and_system_prompt_are_passed_as_flags(tmp_path: Path) -> None:
    io = run_provider(new_io("Which model?", system="Answer like a pirate."), fake_command(tmp_path),
                      model="claude-opus-4-1")
    argv = next(iter(prompts(tmp_path).values()))["argv"]
    assert argv[argv.index("--model") + 1] == "claude-opus-4-1"
    assert argv[argv.index("--append-system-prompt") + 1] == "Answer like a pirate."
    assert io.usage.extra["model"] == "claude-opus-4-1"
    assert io.done("text")[1].endswith("(system: Answer like a pirate.)")
    # The provider's placeholder model name is not passed on.
    run_provider(new_io("Default model"), fake_command(tmp_path / "b"))
    assert "--model" not in next(iter(prompts(tmp_path / "b").values()))["argv"]


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


def test_an_error_result_fails_with_its_message(tmp_path: Path) -> None:
    io = new_io("Go [error]")
    error = failing(io, fake_command(tmp_path))
    assert error.startswith("cli agent reported an error: API Error: 500")
    assert "Internal server error" in error
    assert io.usage.cost_usd is not None and io.usage.extra["num_turns"] == 1

    error = failing(new_io("Go [max-turns]"), fake_command(tmp_path))
    assert error == "cli agent stopped (error_max_turns): Reached maximum number of turns (4)"


def test_a_command_that_cannot_start(tmp_path: Path) -> None:
    error = failing(new_io("hello"), [str(tmp_path / "no-such-claude"), "-p"])
    assert error.startswith("cannot start cli agent: ") and "no-such-claude" in error

    # A CLI that refuses its flags (the real one wants --verbose with stream-json) fails with its stderr.
    command = [sys.executable, FAKE, "-p", "--output-format", "stream-json"]
    error = failing(new_io("hello"), command)
    assert "exited with code 1" in error and "requires --verbose" in error


def tool_running(fake_dir: Path, calls: list[dict[str, Any]]) -> bool:
    """The fake announced its Bash call and started the (60 s) command for it."""
    return any(c["name"] == "Bash" for c in calls) and any(
        path.read_text().strip() for path in fake_dir.glob("*.child"))


def _cancel_when(io: RecordingTurnIO, command: list[str], ready: Callable[[RecordingTurnIO], bool]) -> float:
    """Run a turn, cancel it once `ready(io)`; returns how long the cancel took."""
    took = 0.0

    async def turn() -> None:
        nonlocal took
        provider = CliProvider("cli", {"command": command})
        task = asyncio.create_task(provider.run(io))
        deadline = time.monotonic() + 20
        while not ready(io):
            assert not task.done(), task
            assert time.monotonic() < deadline, io.kinds()
            await asyncio.sleep(0.01)
        started_at = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        took = time.monotonic() - started_at
        await provider.close()

    asyncio.run(turn())
    return took


def test_cancel_during_text_kills_the_process(tmp_path: Path) -> None:
    io = new_io("Take your time [slow]")
    took = _cancel_when(io, fake_command(tmp_path), lambda io: len(io.of("text.delta")) >= 2)
    pid = pid_with(tmp_path, "Take your time")
    assert not alive(pid)
    assert took < 3
    assert io.outstanding_llm_calls == 0
    assert "llm_call.end" in io.kinds()


def test_cancel_during_a_tool_call_kills_the_process_and_its_tools(tmp_path: Path) -> None:
    io = new_io("Run the long command [slow-tool]")
    took = _cancel_when(io, fake_command(tmp_path), lambda io: tool_running(tmp_path, io.of("tool.call")))
    bash = next(c["call_id"] for c in io.of("tool.call") if c["name"] == "Bash")
    assert bash not in [r["call_id"] for r in io.of("tool.result")]
    pid = pid_with(tmp_path, "Run the long command")
    assert not alive(pid)
    assert took < 3
    # The command the tool ran went with the agent (it is in the agent's process group).
    wait_for(lambda: not alive(int((tmp_path / f"{pid}.child").read_text())), timeout=5)


def test_warm_starts_the_process_before_the_turn_and_run_uses_it(tmp_path: Path) -> None:
    io = new_io("Warm hello")

    async def turn() -> tuple[dict[int, float], float]:
        provider = CliProvider("cli", {"command": fake_command(tmp_path)})
        await provider.warm()
        deadline = time.monotonic() + 10
        while not started(tmp_path):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        before, asked_at = started(tmp_path), time.time()
        try:
            await provider.run(io)
        finally:
            await provider.close()
        return before, asked_at

    before, asked_at = asyncio.run(turn())
    assert len(before) == 1
    (pid, start_time), = before.items()
    assert pid_with(tmp_path, "Warm hello") == pid and start_time < asked_at
    assert started(tmp_path) == before  # no second process
    assert io.done("text")[1].startswith("About Warm hello")


def test_close_kills_a_warm_process_never_used(tmp_path: Path) -> None:
    async def warm_then_close() -> None:
        provider = CliProvider("cli", {"command": fake_command(tmp_path)})
        await provider.warm()
        await provider.warm()  # idempotent
        wait_until = time.monotonic() + 10
        while not started(tmp_path):
            assert time.monotonic() < wait_until
            await asyncio.sleep(0.01)
        await provider.close()

    asyncio.run(warm_then_close())
    (pid,) = started(tmp_path)
    assert not alive(pid)
    assert not prompts(tmp_path)  # it never got a prompt


def test_a_warm_process_that_cannot_serve_the_turn_is_replaced(tmp_path: Path) -> None:
    io = new_io("With a system prompt", system="Be brief.")

    async def turn() -> None:
        provider = CliProvider("cli", {"command": fake_command(tmp_path)})
        await provider.warm()
        deadline = time.monotonic() + 10
        while not started(tmp_path):  # the warm process is up (it notes its start before reading stdin)
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        try:
            await provider.run(io)
        finally:
            await provider.close()

    asyncio.run(turn())
    assert len(started(tmp_path)) == 2
    pid = pid_with(tmp_path, "With a system prompt")
    (warm,) = set(started(tmp_path)) - {pid}
    assert not alive(warm)
    assert io.done("text")[1].endswith("(system: Be brief.)")


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


def test_a_warm_process_that_died_is_replaced_by_a_fresh_one(tmp_path: Path) -> None:
    io = new_io("After the warm one died")

    async def turn() -> int:
        provider = CliProvider("cli", {"command": fake_command(tmp_path)})
        await provider.warm()
        deadline = time.monotonic() + 10
        while not started(tmp_path):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        (warm,) = started(tmp_path)
        os.kill(warm, signal.SIGKILL)
        while alive(warm):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        try:
            await provider.run(io)
        finally:
            await provider.close()
        return warm

    warm = asyncio.run(turn())
    assert pid_with(tmp_path, "After the warm one died") != warm
    assert io.done("text")[1].startswith("About After the warm one died")


def test_main_turns_of_a_session_resume_the_cli_session(tmp_path: Path) -> None:
    command = fake_command(tmp_path)

    def main_turn(message: str, lane: str = "main") -> RecordingTurnIO:
        io = new_io(message, lane=lane)
        io.session = f"resume-{id(tmp_path)}"  # type: ignore[attr-defined]  # as TurnRunner.turn.session
        return run_provider(io, command)

    first = main_turn("First question")
    session_id = first.usage.extra["session_id"]
    second = main_turn("Second question")
    argv = prompts(tmp_path)[pid_with(tmp_path, "Second question")]["argv"]
    assert argv[argv.index("--resume") + 1] == session_id
    assert second.done("text")[1].endswith(f"(resumed session {session_id})")

    quick = main_turn("A quick one", lane="quick")
    assert "--resume" not in prompts(tmp_path)[pid_with(tmp_path, "A quick one")]["argv"]
    assert quick.usage.extra["session_id"] != session_id

    # The CLI forgot the session: the turn starts a fresh one instead of failing.
    (tmp_path / f"session-{session_id}").unlink()
    third = main_turn("Third question")
    assert third.usage.extra["session_id"] != session_id
    assert "resumed session" not in third.done("text")[1]
    argv = prompts(tmp_path)[pid_with(tmp_path, "Third question")]["argv"]
    assert "--resume" not in argv
    fourth = main_turn("Fourth question")
    assert fourth.done("text")[1].endswith(f"(resumed session {third.usage.extra['session_id']})")


def test_registered_as_the_cli_provider(tmp_path: Path) -> None:
    provider = make_provider("cli", None, {"command": fake_command(tmp_path)})
    assert isinstance(provider, CliProvider) and provider.model == "cli"
    assert CliProvider("cli", {}).command[0] == "claude"  # the documented default


# -- end to end, through a server ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fake-claude")


@pytest.fixture(scope="module")
def served(fake_dir: Path) -> Iterator[str]:
    with running_app(provider="cli", cli_command=fake_command(fake_dir)) as (url, _):
        yield url
    # Shutting down stops every process it started, the warm ones included.
    assert [pid for pid in started(fake_dir) if alive(pid)] == []


def child_of(fake_dir: Path, marker: str) -> Path | None:
    """The file where the fake that got `marker` noted the pid of its tool's command (once it wrote it)."""
    pids = [pid for pid, info in prompts(fake_dir).items() if marker in info["prompt"]]
    path = fake_dir / f"{pids[0]}.child" if pids else None
    return path if path is not None and path.exists() and path.read_text().strip() else None


def _session(prefix: str) -> str:
    return f"{prefix}-{time.monotonic_ns() % 10**9}"


def test_e2e_a_turn_streams_every_kind_of_event(served: str) -> None:
    session = _session("cli")
    events = run_turn(served, session, "Explain the journal end to end")
    kinds = [e["type"] for e in events]
    for kind in ("turn.started", "state", "thinking.delta", "thinking.done", "text.delta", "text.done",
                 "tool.call", "tool.result", "todo.updated", "turn.completed"):
        assert kind in kinds, kind
    assert events[0]["data"]["provider"] == "cli"
    done = events[-1]["data"]
    assert done["stop_reason"] == "end_turn"
    usage = done["usage"]
    assert usage["output_tokens"] > 0 and usage["cost_usd"] > 0
    assert usage["model"] == "claude-sonnet-4-5-20250929" and usage["num_turns"] == 4
    timing = done["timing"]
    assert timing["toolCallCount"] == 4 and timing["totalMs"] > 0 and timing["ttfeMs"] is not None
    assert [e["data"]["name"] for e in events if e["type"] == "tool.call"] == ["TodoWrite", "Bash", "Grep",
                                                                              "TodoWrite"]
    states = {e["data"]["agent_state"] for e in events if e["type"] == "state"}
    assert {"waiting_for_model", "running_tool", "thinking", "writing"} <= states
    # The folded transcript has the whole answer.
    messages = httpx.get(f"{served}/api/konsole/{session}/messages", timeout=10).json()
    entries = messages["messages"]
    texts = [e["text"] for e in entries if e.get("kind") == "text"]
    assert texts[-1].startswith("About Explain the journal end to end: The stream is journaled")
    state = httpx.get(f"{served}/api/konsole/{session}/state", timeout=10).json()
    assert [t["status"] for t in state["todos"]] == ["completed", "completed", "in_progress"]


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


def test_e2e_an_error_result_fails_the_turn(served: str) -> None:
    events = run_turn(served, _session("cli-err"), "Hit an API error [error]")
    assert events[-1]["type"] == "turn.failed"
    assert events[-1]["data"]["error"].startswith("cli agent reported an error: API Error: 500")


@pytest.mark.parametrize(("mode", "when"), [("slow", "text.delta"), ("slow-tool", "Bash")])
def test_e2e_cancel_ends_the_turn_and_the_process(served: str, fake_dir: Path, mode: str, when: str) -> None:
    """`when`: cancel at the first text delta, or once the Bash call (a 60 s command) is announced."""
    session = _session(f"cli-cancel-{mode}")
    marker = f"cancel me {session}"
    cancelled: list[float] = []

    def on_event(envelope: dict[str, Any]) -> None:
        hit = envelope["type"] == when or (envelope["type"] == "tool.call" and envelope["data"]["name"] == when)
        if hit and not cancelled:
            if mode == "slow-tool":  # wait until the command the Bash call runs is up
                wait_for(lambda: child_of(fake_dir, marker) is not None, timeout=20)
            cancelled.append(time.monotonic())
            response = httpx.post(f"{served}/api/konsole/{session}/cancel", timeout=10)
            assert response.status_code == 200, response.text

    events = run_turn(served, session, f"{marker} [{mode}]", on_event=on_event)
    assert cancelled, [e["type"] for e in events]
    assert events[-1]["type"] == "turn.cancelled"
    assert time.monotonic() - cancelled[0] < 5
    pid = pid_with(fake_dir, marker)
    assert not alive(pid)
    child = child_of(fake_dir, marker)
    if mode == "slow-tool":
        assert child is not None
        wait_for(lambda: not alive(int(child.read_text())), timeout=5)
    # The session goes on.
    assert run_turn(served, session, "And now a normal one")[-1]["type"] == "turn.completed"


def test_e2e_a_quick_turn_runs_on_a_process_started_before_it(tmp_path: Path) -> None:
    # The default provider is scripted: this session asks for cli, and chooses its command (so the flag).
    with running_app(allow_session_command=True) as (url, config):
        create_session(url, "quick-cli", provider="cli", options={"command": fake_command(tmp_path)})
        wait_for(lambda: len(started(tmp_path)) >= config.quick_pool, timeout=20)
        warm = started(tmp_path)
        asked_at = time.time()
        events = run_turn(url, "quick-cli", "A quick question", lane="quick")
        assert events[-1]["type"] == "turn.completed"
        assert {e["lane"] for e in events} == {"quick"}
        pid = pid_with(tmp_path, "A quick question")
        assert pid in warm and warm[pid] < asked_at  # it was running before the request
        # The pool refills; the worker that served the turn is gone.
        wait_for(lambda: len(started(tmp_path)) >= config.quick_pool + 1, timeout=20)
        wait_for(lambda: not alive(pid), timeout=5)
        # While a main turn runs, a quick turn still starts at once.
        results: dict[str, list[dict[str, Any]]] = {}
        main = threading.Thread(target=lambda: results.setdefault(
            "main", run_turn(url, "quick-cli", "A long main turn [slow]")))
        main.start()
        wait_for(lambda: any("A long main turn" in p["prompt"] for p in prompts(tmp_path).values()), timeout=20)
        quick = run_turn(url, "quick-cli", "Quick while main runs", lane="quick")
        assert quick[-1]["type"] == "turn.completed"
        assert main.is_alive()  # the main turn is still running
        httpx.post(f"{url}/api/konsole/quick-cli/cancel", timeout=10).raise_for_status()
        main.join(30)
        assert results["main"][-1]["type"] == "turn.cancelled"
        assert quick[-1]["seq"] < results["main"][-1]["seq"]
    assert [p for p in started(tmp_path) if alive(p)] == []  # the pool's idle processes were stopped
