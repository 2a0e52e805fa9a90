#!/usr/bin/env python3
"""A fake `claude` CLI for tests: reads its prompt from stdin and prints the stream-json that
`claude -p --output-format stream-json [--include-partial-messages] --verbose` prints.

Run it as ``python tests/fakes/fake_claude.py -p --output-format stream-json --include-partial-messages
--verbose [fake options]``. Like the real CLI it insists on ``--verbose`` with stream-json output, reads
the whole of stdin as the prompt (an empty prompt is an error), and prints ``stream_event`` lines only
with ``--include-partial-messages``. It accepts ``--model``, ``--resume`` and ``--append-system-prompt``.

A turn (mode ``normal``): ``system``/``init``; a first API message with a thinking block, a sentence of
text and a ``TodoWrite`` call; its ``user`` tool result; a second message with two parallel tool calls
(``Bash``, answered with a string, and ``Grep``, answered with a list of text blocks); a third message
with a ``TodoWrite`` update; a last message with the answer in many text deltas; then ``result`` with
usage, ``total_cost_usd``, ``duration_ms``, ``num_turns``. With partial messages each API message is
``message_start``, per block ``content_block_start``/deltas/(the ``assistant`` line, mid-stream, as
Claude Code emits it)/``content_block_stop``, then ``message_delta`` and ``message_stop``.

Modes, by ``--fake-mode`` (or ``FAKE_CLAUDE_MODE``) or by a keyword in the prompt (the prompt wins):
``[malformed]`` mixes non-JSON, truncated JSON, a JSON array and an unknown ``type`` into the output;
``[crash]`` prints some output, then a message on stderr, and exits with code 3 without a ``result``.
Everything else about the CLI is shown with the real one (see ``tests/providers/test_cli_agent.py``).

Bookkeeping for tests, in ``--fake-dir DIR`` (or ``FAKE_CLAUDE_DIR``): ``<pid>.start`` (written at
start, before stdin is read: the start time).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

MODEL = "claude-sonnet-4-5-20250929"
VERSION = "2.0.14"
TOOLS = ["Task", "Bash", "Glob", "Grep", "LS", "Read", "Edit", "Write", "NotebookEdit", "WebFetch", "TodoWrite",
         "WebSearch", "BashOutput", "KillShell", "SlashCommand"]
ANSWER = ("The stream is journaled before delivery, so a client that reconnects resumes from its last "
          "sequence number and sees every event exactly once, in order. Slow viewers are cut loose instead "
          "of slowing the agent down.")
MODES = ("malformed", "crash")


class Fake:
    def __init__(self, args: argparse.Namespace, prompt: str, mode: str, fake_dir: Path | None) -> None:
        self.args = args
        self.prompt = prompt
        self.mode = mode
        self.dir = fake_dir
        self.partial = args.include_partial_messages
        self.session_id = str(uuid.uuid4())
        self.model = args.model or MODEL
        self.started = time.monotonic()
        self.api_ms = 0
        self.turns = 0
        self._tool_ids: list[str] = []
        self.usage = {"input_tokens": 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                      "output_tokens": 0}

    # output

    def emit(self, obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n")
        sys.stdout.flush()

    def raw(self, line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def envelope(self, kind: str, **fields: Any) -> dict[str, Any]:
        return {"type": kind, **fields, "parent_tool_use_id": None, "session_id": self.session_id,
                "uuid": str(uuid.uuid4())}

    def stream(self, event: dict[str, Any]) -> None:
        if self.partial:
            self.emit({"type": "stream_event", "event": event, "session_id": self.session_id,
                       "parent_tool_use_id": None, "uuid": str(uuid.uuid4())})

    def init(self) -> None:
        self.emit({
            "type": "system", "subtype": "init", "cwd": os.getcwd(), "session_id": self.session_id,
            "tools": TOOLS, "mcp_servers": [], "model": self.model, "permissionMode": "default",
            "slash_commands": ["compact", "context", "cost", "init", "review"], "apiKeySource": "none",
            "claude_code_version": VERSION, "output_style": "default", "agents": ["general-purpose"],
            "skills": [], "uuid": str(uuid.uuid4()),
        })

    def message(self, blocks: list[dict[str, Any]], stop_reason: str, *, chunks: int = 4) -> None:
        """One API message: stream events (with partial messages) and one `assistant` line per block."""
        self.turns += 1
        message_id = "msg_01" + uuid.uuid4().hex[:22]
        usage = {"input_tokens": 12, "cache_creation_input_tokens": 180, "cache_read_input_tokens": 14200,
                 "output_tokens": 1, "service_tier": "standard"}
        self.stream({"type": "message_start", "message": {
            "model": self.model, "id": message_id, "type": "message", "role": "assistant", "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": usage}})
        output_tokens = 0
        for index, block in enumerate(blocks):
            kind = block["type"]
            if kind == "text":
                self.stream({"type": "content_block_start", "index": index,
                             "content_block": {"type": "text", "text": ""}})
                for piece in _chunks(block["text"], chunks):
                    self.stream({"type": "content_block_delta", "index": index,
                                 "delta": {"type": "text_delta", "text": piece}})
                output_tokens += len(block["text"]) // 4 + 1
            elif kind == "thinking":
                self.stream({"type": "content_block_start", "index": index,
                             "content_block": {"type": "thinking", "thinking": "", "signature": ""}})
                for piece in _chunks(block["thinking"], chunks):
                    self.stream({"type": "content_block_delta", "index": index,
                                 "delta": {"type": "thinking_delta", "thinking": piece}})
                self.stream({"type": "content_block_delta", "index": index,
                             "delta": {"type": "signature_delta", "signature": block["signature"]}})
                output_tokens += len(block["thinking"]) // 4 + 1
            elif kind == "tool_use":
                self._tool_ids.append(block["id"])
                self.stream({"type": "content_block_start", "index": index, "content_block": {
                    "type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}})
                encoded = json.dumps(block["input"])
                self.stream({"type": "content_block_delta", "index": index,
                             "delta": {"type": "input_json_delta", "partial_json": ""}})
                for piece in _chunks(encoded, 3):
                    self.stream({"type": "content_block_delta", "index": index,
                                 "delta": {"type": "input_json_delta", "partial_json": piece}})
                output_tokens += len(encoded) // 4 + 1
            # Claude Code prints the complete block mid-stream: after its deltas, before its stop.
            self.emit(self.envelope("assistant", message={
                "model": self.model, "id": message_id, "type": "message", "role": "assistant",
                "content": [block], "stop_reason": None, "stop_sequence": None,
                "usage": usage, "context_management": None}))
            self.stream({"type": "content_block_stop", "index": index})
        self.stream({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                     "usage": {"input_tokens": 12, "cache_creation_input_tokens": 180,
                               "cache_read_input_tokens": 14200, "output_tokens": output_tokens}})
        self.stream({"type": "message_stop"})
        self.usage["input_tokens"] += 12
        self.usage["cache_creation_input_tokens"] += 180
        self.usage["cache_read_input_tokens"] += 14200
        self.usage["output_tokens"] += output_tokens
        self.api_ms += 400

    def tool_result(self, tool_use_id: str, content: Any, *, is_error: bool = False,
                    tool_use_result: Any = None) -> None:
        line = self.envelope("user", message={"role": "user", "content": [
            {"tool_use_id": tool_use_id, "type": "tool_result", "content": content, "is_error": is_error}]})
        if tool_use_result is not None:
            line["tool_use_result"] = tool_use_result
        self.emit(line)

    def result(self, text: str, *, subtype: str = "success", is_error: bool = False) -> None:
        line: dict[str, Any] = {
            "type": "result", "subtype": subtype, "is_error": is_error,
            "duration_ms": int((time.monotonic() - self.started) * 1000) + 1, "duration_api_ms": self.api_ms,
            "num_turns": self.turns, "session_id": self.session_id, "total_cost_usd": 0.0123 * max(1, self.turns),
            "usage": {**self.usage, "server_tool_use": {"web_search_requests": 0, "web_fetch_requests": 0},
                      "service_tier": "standard",
                      "cache_creation": {"ephemeral_1h_input_tokens": 0, "ephemeral_5m_input_tokens": 0}},
            "modelUsage": {self.model: {"inputTokens": self.usage["input_tokens"],
                                        "outputTokens": self.usage["output_tokens"],
                                        "costUSD": 0.0123 * max(1, self.turns)}},
            "permission_denials": [], "uuid": str(uuid.uuid4()),
        }
        if subtype == "success":
            line["result"] = text
        else:
            line["errors"] = [text]
        self.emit(line)

    # the turn

    def run(self) -> int:
        mode = self.mode
        self.init()
        topic = " ".join(self.prompt.split()[:8])
        if mode == "malformed":
            self.raw("this is not json")
        todos = [
            {"content": "Read the request", "status": "completed", "activeForm": "Reading the request"},
            {"content": "Look around the repository", "status": "in_progress",
             "activeForm": "Looking around the repository"},
            {"content": "Write the answer", "status": "pending", "activeForm": "Writing the answer"},
        ]
        self.message([
            {"type": "thinking", "thinking": f"The user asks: {topic}. Plan first, then look, then answer.",
             "signature": "EqQBCkYIBxgCKkB" + uuid.uuid4().hex},
            {"type": "text", "text": "I'll plan this with a todo list first."},
            {"type": "tool_use", "id": "toolu_01" + uuid.uuid4().hex[:22], "name": "TodoWrite",
             "input": {"todos": todos}},
        ], "tool_use")
        todo_call = self._last_tool_id
        if mode == "malformed":
            self.raw('{"type": "assistant", "message": {"content": [')
            self.raw("[1, 2, 3]")
            self.raw('{"type":"mystery_event","payload":{"x":1}}')
            self.raw("")
        self.tool_result(todo_call, "Todos have been modified successfully. Ensure that you continue to use the "
                         "todo list to track your progress. Please proceed with the current tasks if applicable",
                         tool_use_result={"oldTodos": [], "newTodos": todos})
        if mode == "crash":
            self.message([{"type": "text", "text": "Now let me look at the files, this will take"}], "end_turn")
            sys.stderr.write("Error: fake crash: the agent lost its way\n    at fakeMain (cli.js:1:1)\n")
            sys.stderr.flush()
            return 3
        bash_id, grep_id = "toolu_01" + uuid.uuid4().hex[:22], "toolu_01" + uuid.uuid4().hex[:22]
        self.message([
            {"type": "tool_use", "id": bash_id, "name": "Bash",
             "input": {"command": "ls", "description": "List files in the current directory"}},
            {"type": "tool_use", "id": grep_id, "name": "Grep",
             "input": {"pattern": "journal", "output_mode": "files_with_matches"}},
        ], "tool_use")
        self.tool_result(bash_id, "README.md\npyproject.toml\nsrc\ntests",
                         tool_use_result={"stdout": "README.md\npyproject.toml\nsrc\ntests", "stderr": "",
                                          "interrupted": False, "isImage": False})
        self.tool_result(grep_id, [{"type": "text", "text": "Found 2 files"},
                                   {"type": "text", "text": "src/journal.py\nsrc/hub.py"}])
        if mode == "malformed":
            self.raw("}{ not even close")
        todos = [dict(t, status="completed") for t in todos]
        todos[2]["status"] = "in_progress"
        self.message([{"type": "tool_use", "id": "toolu_01" + uuid.uuid4().hex[:22], "name": "TodoWrite",
                       "input": {"todos": todos}}], "tool_use")
        self.tool_result(self._last_tool_id, "Todos have been modified successfully.")
        answer = f"About {topic}: {ANSWER}"
        self.message([{"type": "text", "text": answer}], "end_turn", chunks=12)
        self.result(answer)
        return 0

    @property
    def _last_tool_id(self) -> str:
        return self._tool_ids[-1]


def _chunks(text: str, parts: int) -> list[str]:
    size = max(1, -(-len(text) // parts))
    return [text[i : i + size] for i in range(0, len(text), size)]


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="claude", add_help=False)
    parser.add_argument("-p", "--print", action="store_true")
    parser.add_argument("--output-format", default="text")
    parser.add_argument("--include-partial-messages", action="store_true")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--model")
    parser.add_argument("--resume")
    parser.add_argument("--append-system-prompt")
    parser.add_argument("--fake-mode", default=os.environ.get("FAKE_CLAUDE_MODE", "normal"))
    parser.add_argument("--fake-dir", default=os.environ.get("FAKE_CLAUDE_DIR"))
    parser.add_argument("prompt", nargs="?")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = _parse(argv)
    fake_dir = Path(args.fake_dir) if args.fake_dir else None
    pid = os.getpid()
    if fake_dir is not None:
        fake_dir.mkdir(parents=True, exist_ok=True)
        (fake_dir / f"{pid}.start").write_text(repr(time.time()))
    if not args.print:
        sys.stderr.write("fake claude only runs with -p\n")
        return 1
    if args.output_format == "stream-json" and not args.verbose:
        sys.stderr.write("Error: When using --print, --output-format=stream-json requires --verbose\n")
        return 1
    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    if not prompt.strip():
        sys.stderr.write("Error: Input must be provided either through stdin or as a prompt argument when "
                         "using --print\n")
        return 1
    mode = next((m for m in MODES if f"[{m}]" in prompt), args.fake_mode)
    return Fake(args, prompt, mode, fake_dir).run()


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except (BrokenPipeError, KeyboardInterrupt):
        sys.exit(1)
