"""The pieces of the `codex` and `gemini-cli` providers on their own: line mappings for what the fakes
cannot make the real CLIs print (web searches, retries, warnings, a rejected todo list), the shared
child process and its reader (`jsonl_agent.run_turn`) on lines that are not JSON, the MCP settings
each CLI gets, credential checks."""

from __future__ import annotations

import asyncio
import json
import sys
import tomllib
from pathlib import Path

import pytest

from agentwire.providers import ProviderError, agent_mcp, agents
from agentwire.providers.agent_mcp import McpServer
from agentwire.providers.codex import CodexMapping
from agentwire.providers.gemini_cli import GeminiMapping
from agentwire.providers.jsonl_agent import run_turn
from agentwire.types import JSON
from tests.support.turn_io import RecordingTurnIO

RECORD: JSON = {"name": "x"}


async def _feed(mapping: CodexMapping | GeminiMapping, lines: list[JSON]) -> None:
    for line in lines:
        await mapping.handle(line)
    await mapping.end()


def test_codex_items_searches_retries_and_warnings() -> None:
    io = RecordingTurnIO()
    mapping = CodexMapping(io, RECORD)
    asyncio.run(_feed(mapping, [
        {"type": "thread.started", "thread_id": "th-1"},
        {"type": "turn.started"},
        {"type": "error", "message": "Reconnecting... 1/5 (stream disconnected before completion)"},
        {"type": "item.completed", "item": {"id": "i0", "type": "error", "message": "model metadata missing"}},
        {"type": "item.completed", "item": {"id": "i1", "type": "reasoning", "text": "Look it up."}},
        {"type": "item.started", "item": {"id": "i2", "type": "web_search", "query": "agentwire"}},
        {"type": "item.completed", "item": {"id": "i2", "type": "web_search", "query": "agentwire"}},
        {"type": "item.completed", "item": {"id": "i3", "type": "mcp_tool_call", "server": "board",
                                            "tool": "task_create", "arguments": {"title": "t"}, "result": None,
                                            "error": {"message": "server went away"}, "status": "failed"}},
        {"type": "item.completed", "item": {"id": "i4", "type": "agent_message", "text": "Done."}},
        {"type": "turn.completed", "usage": {"input_tokens": 10, "cached_input_tokens": 4, "output_tokens": 3,
                                             "reasoning_output_tokens": 1}},
    ]))
    assert mapping.finished and mapping.error is None
    assert io.of("agent.info") == [{"name": "x", "resume_id": "th-1"}]
    assert io.of("state")[0] == {"agent_state": "retrying",
                                 "message": "Reconnecting... 1/5 (stream disconnected before completion)"}
    assert io.done("thinking") == {0: "Look it up."} and io.done("text") == {1: "Done."}
    assert io.of("tool.call") == [
        {"call_id": "i2", "name": "web_search", "input": {"query": "agentwire"}},
        {"call_id": "i3", "name": "mcp__board__task_create", "input": {"title": "t"}}]
    assert [(r["output"], r["is_error"]) for r in io.of("tool.result")] == [("", False), ("server went away", True)]
    assert io.usage.as_json() == {"input_tokens": 10, "output_tokens": 3, "warnings": ["model metadata missing"],
                                  "cached_input_tokens": 4, "reasoning_output_tokens": 1}
    # Model calls and tool calls alternate as the agent state.
    marks = [k for k in io.kinds() if k in ("llm_call.start", "llm_call.end", "tool.call", "tool.result")]
    assert marks == ["llm_call.start", "llm_call.end", "tool.call", "tool.result"] * 2 + [
        "llm_call.start", "llm_call.end"]


def test_codex_failure_is_its_own_message_once() -> None:
    io = RecordingTurnIO()
    mapping = CodexMapping(io, RECORD)
    asyncio.run(_feed(mapping, [
        {"type": "error", "message": "unexpected status 401 Unauthorized: bad key"},
        {"type": "turn.failed", "error": {"message": "unexpected status 401 Unauthorized: bad key"}}]))
    assert mapping.finished and mapping.error == "codex: unexpected status 401 Unauthorized: bad key"
    assert io.of("text.delta") == []


def test_gemini_messages_tools_and_a_rejected_todo_list() -> None:
    io = RecordingTurnIO()
    mapping = GeminiMapping(io, RECORD)
    todos = {"todos": [{"description": "Plan", "status": "in_progress"}]}
    asyncio.run(_feed(mapping, [
        {"type": "init", "session_id": "se-1", "model": "gemini-2.5-flash"},
        {"type": "message", "role": "user", "content": "hi"},
        {"type": "message", "role": "assistant", "content": "Let me ", "delta": True},
        {"type": "message", "role": "assistant", "content": "plan.", "delta": True},
        {"type": "tool_use", "tool_name": "write_todos", "tool_id": "w1", "parameters": todos},
        {"type": "tool_result", "tool_id": "w1", "status": "error",
         "error": {"type": "invalid_tool_params", "message": "Only one task can be in_progress"}},
        {"type": "error", "severity": "warning", "message": "Loop detected"},
        {"type": "message", "role": "assistant", "content": "Whole answer."},
        {"type": "result", "status": "success", "stats": {"input_tokens": 7, "output_tokens": 2, "cached": 1,
                                                          "duration_ms": 90, "tool_calls": 1}},
    ]))
    assert io.of("agent.info") == [{"name": "x", "model": "gemini-2.5-flash", "resume_id": "se-1"}]
    assert io.deltas() == {0: "Let me plan.", 1: "Whole answer."} and io.done() == io.deltas()
    assert io.of("tool.result") == [{"call_id": "w1", "output": "Only one task can be in_progress", "is_error": True}]
    assert io.of("todo.updated") == []  # the CLI refused the list: nothing changed
    assert io.usage.as_json() == {"input_tokens": 7, "output_tokens": 2, "warnings": ["Loop detected"],
                                  "cached_input_tokens": 1, "duration_ms": 90, "num_tool_calls": 1}


@pytest.mark.parametrize(("message", "readable"), [
    ('[API Error: {"error":{"code":400,"message":"API key not valid.","status":"INVALID_ARGUMENT"}}]',
     "API error 400 INVALID_ARGUMENT: API key not valid."),
    ("[API Error: not json]", "not json"),
    ("Quota exceeded", "Quota exceeded"),
])
def test_gemini_api_errors_read_as_their_message(message: str, readable: str) -> None:
    mapping = GeminiMapping(RecordingTurnIO(), RECORD)
    asyncio.run(_feed(mapping, [{"type": "result", "status": "error", "error": {"message": message}}]))
    assert mapping.error == f"gemini-cli: {readable}"


class _Counting:
    def __init__(self) -> None:
        self.finished, self.error, self.started, self.lines = False, None, False, 0
        self.seen: list[JSON] = []

    async def handle(self, line: JSON) -> None:
        self.lines += 1
        self.seen.append(line)
        self.finished = line["type"] == "done"

    async def end(self) -> None:
        pass


def _run(script: str, tmp_path: Path, *, resuming: bool = False) -> tuple[RecordingTurnIO, _Counting, str]:
    io = RecordingTurnIO(cwd=str(tmp_path), message="the prompt")
    mapping = _Counting()
    try:
        asyncio.run(run_turn(io, mapping, [sys.executable, "-c", script], label="probe", resuming=resuming))
    except ProviderError as exc:
        return io, mapping, f"{type(exc).__name__}: {exc}"
    return io, mapping, ""


def test_lines_that_are_not_json_events_are_skipped_and_counted(tmp_path: Path) -> None:
    script = ("import sys, os; p = sys.stdin.read(); print('hello'); print('[1]'); "
              "print('{\"type\": \"msg\", \"prompt\": \"' + p + '\", \"cwd\": \"' + os.getcwd() + '\"}'); "
              "print('{\"type\": \"done\"}')")
    io, mapping, error = _run(script, tmp_path)
    assert error == "" and mapping.seen[0] == {"type": "msg", "prompt": "the prompt", "cwd": str(tmp_path)}
    assert io.usage.extra["malformed_lines"] == 2


def test_an_exit_without_the_final_line_names_status_and_stderr(tmp_path: Path) -> None:
    script = "import sys; print('{\"type\": \"msg\"}'); sys.stderr.write('boom\\n'); sys.exit(7)"
    _, _, error = _run(script, tmp_path)
    assert error == "ProviderError: probe exited with code 7 before finishing the turn; stderr: boom"
    _, _, error = _run("import sys; sys.stderr.write('no such session\\n'); sys.exit(1)", tmp_path, resuming=True)
    assert error == ("NotResumed: probe exited with code 1 before finishing the turn; it printed no JSON events; "
                     "stderr: no such session")


def test_a_binary_that_cannot_start_is_a_readable_failure(tmp_path: Path) -> None:
    io = RecordingTurnIO(cwd=str(tmp_path))
    with pytest.raises(ProviderError, match=r"cannot start probe: .*/missing: No such file"):
        asyncio.run(run_turn(io, _Counting(), [str(tmp_path / "missing")], label="probe"))


def test_codex_overrides_are_toml_that_survives_any_text() -> None:
    server = McpServer("board", ["/opt/x y/python", "-m", 'say "hi"\\', "naïve 🚀\x7f"], {"TOKEN": "a\nb"})
    args = agent_mcp.codex_overrides(server)
    assert args[::2] == ["-c"] * 5
    parsed = {a.split("=", 1)[0]: tomllib.loads("v = " + a.split("=", 1)[1])["v"] for a in args[1::2]}
    assert parsed == {"mcp_servers.board.command": "/opt/x y/python",
                      "mcp_servers.board.args": ["-m", 'say "hi"\\', "naïve 🚀\x7f"],
                      "mcp_servers.board.required": True, "mcp_servers.board.default_tools_approval_mode": "approve",
                      "mcp_servers.board.env_vars": ["TOKEN"]}
    assert "a\nb" not in " ".join(args)  # the value travels in Codex's environment, not on its command line
    assert agent_mcp.codex_environment(server) == {"TOKEN": "a\nb"} and agent_mcp.codex_environment(None) == {}


def test_gemini_settings_keep_the_machine_defaults_and_go_away(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    machine = tmp_path / "defaults.json"
    machine.write_text(json.dumps({"ui": {"theme": "x"}, "mcpServers": {"theirs": {"command": "t"}}}))
    with agent_mcp.gemini_settings(McpServer("agentwire", ["run", "me"]),
                                   {"GEMINI_CLI_SYSTEM_DEFAULTS_PATH": str(machine)}) as env:
        path = Path(env["GEMINI_CLI_SYSTEM_DEFAULTS_PATH"])
        assert json.loads(path.read_text()) == {"ui": {"theme": "x"}, "mcpServers": {
            "theirs": {"command": "t"}, "agentwire": {"command": "run", "args": ["me"], "env": {}, "trust": True}}}
        assert path.stat().st_mode & 0o077 == 0 and path.parent.stat().st_mode & 0o077 == 0
    assert not path.exists()


def test_settings_where_others_may_write_are_named_as_gemini_cli_would_refuse_them(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    private = tmp_path / "a" / "b"
    private.mkdir(parents=True)
    for directory in (tmp_path, tmp_path / "a", private):
        directory.chmod(0o700)
    shared = private / "shared"
    shared.mkdir(mode=0o700)
    shared.chmod(0o777)
    found = agent_mcp.writable_by_others(private)
    # Above the test's own directories, only what the machine has (pytest's base is under /tmp).
    assert found is None or found not in (tmp_path, tmp_path / "a", private)
    assert agent_mcp.writable_by_others(shared / "cache") == shared  # a missing leaf is skipped
    monkeypatch.setenv("XDG_CACHE_HOME", str(shared))
    with agent_mcp.gemini_settings(McpServer("agentwire", ["run"]), {}):
        pass
    assert f"others may write to {shared}" in caplog.text


def test_codex_credentials_follow_its_configuration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CODEX_HOME", str(tmp_path))
    for name in ("OPENAI_API_KEY", "CODEX_API_KEY", "MY_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert "run `codex login`, or set OPENAI_API_KEY" in (agents.codex_credentials() or "")
    (tmp_path / "auth.json").write_text("{}")
    assert agents.codex_credentials() is None
    (tmp_path / "config.toml").write_text('model_provider = "mine"\n[model_providers.mine]\nenv_key = "MY_KEY"\n')
    assert "set MY_KEY" in (agents.codex_credentials() or "")
    monkeypatch.setenv("MY_KEY", "k")
    assert agents.codex_credentials() is None
    (tmp_path / "config.toml").write_text("model_provider = [")
    assert "cannot use its configuration" in (agents.codex_credentials() or "")


def test_gemini_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_GENAI_USE_GCA",
                 "GEMINI_CLI_HOME"):
        monkeypatch.delenv(name, raising=False)
    assert "set GEMINI_API_KEY" in (agents.gemini_credentials() or "")
    (tmp_path / ".gemini").mkdir()
    (tmp_path / ".gemini" / ".env").write_text("export GEMINI_API_KEY=abc\n")
    assert agents.gemini_credentials() is None
