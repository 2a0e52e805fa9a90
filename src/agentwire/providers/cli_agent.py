"""The `cli` provider: a subprocess agent speaking Claude Code's stream-json (`claude -p --output-format
stream-json --include-partial-messages --verbose`), mapped onto our events.

The command line is the session option `command` (the server fills in its default). The user's message
is written to the child's stdin, which is then closed (that is how `claude -p` reads a prompt given
without an argument), so a process can be started before its turn arrives: `warm()` starts it and
checks it is alive, and `run()` uses that process if there is one (the quick lane's warm pool).

Mapping, one JSON object per stdout line:

- `system`/`init`: `session_id`, `model` → `usage.extra` (`model`, `session_id`);
- `stream_event` (Anthropic raw stream events, only with `--include-partial-messages`): text and
  thinking deltas as they arrive. Content-block indexes restart with each API message, so blocks get
  our own per-turn counter (one for text, one for thinking);
- `assistant`: the complete blocks. A block already streamed gets only its `*.done` (with the full
  text); one never streamed (no partial messages) gets the whole text as one delta, then the done, so
  the transcript is complete either way. `tool_use` → `tool.call` (and a `TodoWrite` also
  `todo.updated`);
- `user`: `tool_result` → `tool.result` (string content, or a list of text blocks joined);
- `result`: usage, `total_cost_usd`, `duration_ms`, `num_turns`; an error result (`is_error`, or a
  subtype other than `success`) fails the turn with its message.

The agent state follows the conversation: an LLM call is outstanding (`io.llm_call()`) whenever no
tool call is, so viewers see "waiting for model" and "running tool" alternate.

Lines that are not JSON objects, or of an unknown type, are skipped and counted (`malformed_lines` in
the usage); if the process then ends without a `result`, the error says so. A process that exits
without a `result` fails the turn with its exit code and the last lines of its stderr; a command that
cannot be started fails it with "cannot start cli agent: …".

Cancel: the child (started in its own process group, so the tools it runs go with it) gets SIGTERM,
then SIGKILL after a short grace, and is reaped before `CancelledError` goes on.

Extra flags, each only when asked for, appended to the command: `--model <m>` when the session names a
model (not the provider's placeholder "cli"); `--append-system-prompt <s>` when the session has a system
prompt; `--resume <session_id>` on the main lane when an earlier main turn of the same agentwire session
(same command) reported a `session_id` in its `system`/`init` line. That memory is per server process
(lost on restart: the next turn then starts a fresh CLI session); if a resumed run dies before printing
anything (e.g. the CLI no longer knows that session), the turn is retried once without `--resume`.
Quick turns never resume: each has its own context. A warm process is started without a system prompt,
so a session with one starts a fresh process for its turn instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections import OrderedDict, deque
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import orjson

from agentwire.providers import ProviderError, TurnIO
from agentwire.providers.jsonl_agent import json_events
from agentwire.providers.process import exit_status, keep_tail
from agentwire.types import JSON

log = logging.getLogger("agentwire.providers.cli")

DEFAULT_COMMAND = ("claude", "-p", "--output-format", "stream-json", "--include-partial-messages", "--verbose")
LINE_LIMIT = 16 * 1024 * 1024  # one stdout line (a big tool result or file read fits)
TERM_GRACE = 1.5  # seconds between SIGTERM and SIGKILL
AFTER_RESULT = 5.0  # seconds a child may take to exit after its `result` line
AFTER_EOF = 10.0  # seconds a child may take to exit after closing its stdout without a result
WARM_CHECK = 0.05  # seconds `warm()` watches a new child for an immediate exit
STDERR_LINES = 20  # stderr lines kept for error messages
_MODEL_PLACEHOLDER = "cli"  # the registry's default model name for this provider: pass no --model
_IGNORED_TYPES = frozenset({"rate_limit_event", "keep_alive", "control_request", "control_response",
                            "control_cancel_request", "tool_progress", "auth_status"})
_RESUME_MAX = 1000
_resume_ids: OrderedDict[tuple[str, ...], str] = OrderedDict()  # (session, *command) → CLI session id


class CliProvider:
    name = "cli"

    def __init__(self, model: str, options: JSON) -> None:
        self.model = model
        command = options.get("command")
        self.command: list[str] = [str(part) for part in command] if command else list(DEFAULT_COMMAND)
        self._warm: _Child | None = None

    def _base_args(self) -> list[str]:
        args = list(self.command)
        if self.model and self.model != _MODEL_PLACEHOLDER and "--model" not in args:
            args += ["--model", self.model]
        return args

    async def warm(self) -> None:
        """Start the child now (it waits for its prompt on stdin); fail if it dies at once."""
        if self._warm is not None and self._warm.alive:
            return
        child = await _Child.start(self._base_args())
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(child.exited(), WARM_CHECK)
        except BaseException:  # cancelled (e.g. the pool closing while it fills): leave nothing running
            await child.stop()
            raise
        if not child.alive:
            message = child.died_message("exited while warming up")
            await child.stop()
            raise ProviderError(message)
        self._warm = child

    async def close(self) -> None:
        child, self._warm = self._warm, None
        if child is not None:
            await child.stop()

    async def run(self, io: TurnIO) -> None:
        key = _resume_key(io, self.command)
        resume = _resume_ids.get(key) if key is not None else None
        try:
            await self._run_once(io, key, resume)
        except _ResumeFailed as failed:
            log.info("cli agent could not resume session %s (%s); starting a fresh one", resume, failed)
            if key is not None:
                _resume_ids.pop(key, None)
            await self._run_once(io, key, None)

    async def _run_once(self, io: TurnIO, key: tuple[str, ...] | None, resume: str | None) -> None:
        args = self._base_args()
        if io.system and "--append-system-prompt" not in args and "--system-prompt" not in args:
            args += ["--append-system-prompt", io.system]
        if resume is not None:
            args += ["--resume", resume]
        child = await self._take_warm(args)
        if child is None:
            child = await _Child.start(args)
        conversation = _Conversation(child, io)
        try:
            await conversation.run()
        except ProviderError as exc:
            if resume is not None and conversation.lines == 0:
                raise _ResumeFailed(str(exc)) from exc
            raise
        finally:
            if key is not None and conversation.session_id:
                _remember(key, conversation.session_id)

    async def _take_warm(self, args: list[str]) -> _Child | None:
        child, self._warm = self._warm, None
        if child is None:
            return None
        if child.alive and child.args == args:
            return child
        if not child.alive:
            log.info("warm cli agent (pid %s) had exited (%s); starting another", child.pid, child.returncode)
        await child.stop()
        return None


class _ResumeFailed(Exception):
    pass


def _resume_key(io: TurnIO, command: list[str]) -> tuple[str, ...] | None:
    """Main-lane turns of one agentwire session continue one CLI session; quick turns never do."""
    if io.lane != "main":
        return None
    session = io.session
    if not isinstance(session, str) or not session:
        return None
    return (session, *command)


def _remember(key: tuple[str, ...], session_id: str) -> None:
    _resume_ids[key] = session_id
    _resume_ids.move_to_end(key)
    while len(_resume_ids) > _RESUME_MAX:
        _resume_ids.popitem(last=False)


class _Child:
    """One agent subprocess in its own process group, with its stderr drained in the background."""

    def __init__(self, proc: asyncio.subprocess.Process, args: list[str]) -> None:
        self.proc = proc
        self.args = args
        self.pid = proc.pid
        self.started = time.monotonic()
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_LINES)
        self._stderr_task = asyncio.create_task(self._drain_stderr(), name=f"cli stderr {proc.pid}")

    @classmethod
    async def start(cls, args: list[str]) -> _Child:
        try:
            proc = await asyncio.create_subprocess_exec(
                *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, limit=LINE_LIMIT, start_new_session=os.name == "posix")
        except (OSError, ValueError) as exc:
            raise ProviderError(f"cannot start cli agent: {args[0]}: {exc.strerror or exc}"
                                if isinstance(exc, OSError) else f"cannot start cli agent: {exc}") from exc
        log.debug("started cli agent pid %s: %s", proc.pid, args)
        return cls(proc, args)

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    async def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        await keep_tail(self.proc.stderr, self.stderr_tail,
                        lambda line: log.debug("cli agent %s stderr: %s", self.pid, line))

    async def exited(self) -> int:
        """Wait for the process itself to exit. Polled: before Python 3.12 `Process.wait()` also waits
        for every pipe to close, which a grandchild that outlives the agent may never do."""
        while self.proc.returncode is None:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        return self.proc.returncode

    async def stderr_settled(self, timeout: float = 0.5) -> None:
        """Let the stderr reader catch up with what the (exited) child wrote last."""
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self._stderr_task), timeout)

    def signal(self, sig: signal.Signals) -> None:
        if self.proc.returncode is not None:
            return
        try:
            if os.name == "posix":
                os.killpg(self.proc.pid, sig)
            elif sig == signal.SIGTERM:
                self.proc.terminate()
            else:
                self.proc.kill()
        except ProcessLookupError:
            pass
        except PermissionError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def close_stdin(self) -> None:
        stdin = self.proc.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.close()

    async def stop(self, grace: float = TERM_GRACE) -> None:
        """SIGTERM the process group, SIGKILL after `grace`, reap. Safe to call twice, and when cancelled."""
        self.close_stdin()
        try:
            if self.alive:
                self.signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(self.exited(), grace)
                except TimeoutError:
                    log.info("cli agent %s ignored SIGTERM for %.1f s; killing it", self.pid, grace)
                    self.signal(signal.SIGKILL)
                    await asyncio.wait_for(self.exited(), 10)
        except BaseException:
            self.signal(signal.SIGKILL)
            raise
        finally:
            if not self._stderr_task.done():
                # A killed group closes its pipes; give the reader a moment, then stop it.
                await self.stderr_settled(0.2)
                self._stderr_task.cancel()

    def died_message(self, what: str) -> str:
        message = f"cli agent {exit_status(self.proc.returncode)} ({what})"
        if self.stderr_tail:
            message += "; stderr: " + " | ".join(list(self.stderr_tail)[-5:])
        return message


@dataclass(slots=True)
class _Block:
    kind: str  # "text" | "thinking"
    index: int  # our per-turn block number
    text: str = ""
    done: bool = False
    matched: bool = False  # an `assistant` message has covered it


class _Conversation:
    """Feeds one prompt to one child and maps its stream-json output onto the turn."""

    def __init__(self, child: _Child, io: TurnIO) -> None:
        self.child = child
        self.io = io
        self.lines = 0  # JSON lines understood
        self.malformed = 0
        self.malformed_samples: list[str] = []
        self.unknown_types: set[str] = set()
        self.session_id: str | None = None
        self.result: JSON | None = None
        self._next_block = {"text": 0, "thinking": 0}
        self._messages: dict[str, list[_Block]] = {}  # streamed blocks per API message id
        self._open: dict[int, _Block] = {}  # content-block index → block, in the current message
        self._current: str | None = None
        self._message_count = 0
        self._tools: set[str] = set()  # outstanding tool calls
        self._called: set[str] = set()  # every tool call shown
        self._seen: set[tuple[str, str, str]] = set()  # (message id, kind, text) of completed blocks
        self._llm: AsyncExitStack | None = None

    async def run(self) -> None:
        writer = asyncio.create_task(self._write_prompt(), name=f"cli stdin {self.child.pid}")
        try:
            await self._open_llm()
            await self._read()
            await self._finish()
        except BaseException:
            writer.cancel()
            await self.child.stop()
            raise
        finally:
            with contextlib.suppress(BaseException):
                await self._close_llm()
            if not writer.done():
                writer.cancel()

    async def _write_prompt(self) -> None:
        stdin = self.child.proc.stdin
        assert stdin is not None
        try:
            stdin.write(self.io.message.encode())
            await stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the child is gone: its exit code and stderr tell why
        finally:
            self.child.close_stdin()

    async def _read(self) -> None:
        assert self.child.proc.stdout is not None
        async for obj in json_events(self.child.proc.stdout, self._bad):
            await self._handle(obj)
            if self.result is not None:
                return

    def _bad(self, line: str) -> None:
        self.malformed += 1
        if len(self.malformed_samples) < 3:
            self.malformed_samples.append(line[:200])
        log.log(logging.WARNING if self.malformed <= 3 else logging.DEBUG,
                "cli agent %s: skipped a malformed output line: %.200s", self.child.pid, line)
        self.io.usage.extra["malformed_lines"] = self.malformed

    async def _finish(self) -> None:
        child = self.child
        stdout = child.proc.stdout
        assert stdout is not None
        if self.result is not None:
            # Done: let it exit on its own (reading whatever else it prints), else stop it.
            try:
                await asyncio.wait_for(self._drain_and_exit(stdout), AFTER_RESULT)
            except TimeoutError:
                log.info("cli agent %s did not exit after its result; stopping it", child.pid)
            await child.stop()
            self._apply_result(self.result)
            return
        try:
            await asyncio.wait_for(child.exited(), AFTER_EOF)
        except TimeoutError:
            await child.stop()
            raise ProviderError(child.died_message("closed its output without a result line")) from None
        await child.stderr_settled()
        await child.stop()
        what = "before finishing the turn"
        if self.malformed:
            what += (f"; {self.malformed} malformed output line(s) skipped, first: "
                     f"{self.malformed_samples[0][:120]!r}")
        elif self.lines == 0:
            what += "; it printed no stream-json output"
        raise ProviderError(child.died_message(what))

    async def _drain_and_exit(self, stdout: asyncio.StreamReader) -> None:
        while True:
            try:
                if not await stdout.readline():
                    break
            except ValueError:
                continue
        await self.child.exited()

    def _apply_result(self, result: JSON) -> None:
        io = self.io
        usage = _dict(result.get("usage"))
        cost = result.get("total_cost_usd", result.get("cost_usd"))
        io.usage.add(_int(usage.get("input_tokens")), _int(usage.get("output_tokens")),
                     float(cost) if isinstance(cost, int | float) and not isinstance(cost, bool) else None)
        for name in ("cache_creation_input_tokens", "cache_read_input_tokens"):
            if name in usage:
                io.usage.extra[name] = _int(usage.get(name))
        for name in ("duration_ms", "duration_api_ms", "num_turns"):
            value = result.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                io.usage.extra[name] = value
        if isinstance(result.get("session_id"), str):
            self.session_id = result["session_id"]
            io.usage.extra["session_id"] = self.session_id
        if isinstance(result.get("stop_reason"), str):
            io.stop_reason = result["stop_reason"]
        subtype = _str(result.get("subtype")) or "unknown"
        if result.get("is_error") is True or subtype != "success":
            raise ProviderError(_result_error(result, subtype))

    # the stream-json lines

    async def _handle(self, obj: JSON) -> None:
        kind = obj["type"]
        if kind == "stream_event":
            self.lines += 1
            if obj.get("parent_tool_use_id"):
                return  # a subagent's partial output: its tool calls show up in full below
            await self._stream_event(_dict(obj.get("event")))
        elif kind == "assistant":
            self.lines += 1
            await self._assistant(_dict(obj.get("message")), nested=bool(obj.get("parent_tool_use_id")))
        elif kind == "user":
            self.lines += 1
            await self._user(_dict(obj.get("message")))
        elif kind == "system":
            self.lines += 1
            if obj.get("subtype") == "init":
                await self._init(obj)
        elif kind == "result":
            self.lines += 1
            self.result = obj
            await self._flush_blocks()
        elif kind in _IGNORED_TYPES:
            self.lines += 1
        else:
            if kind not in self.unknown_types:
                self.unknown_types.add(kind)
            self._bad(orjson.dumps(obj).decode()[:200])

    async def _init(self, obj: JSON) -> None:
        extra = self.io.usage.extra
        if isinstance(obj.get("model"), str):
            extra["model"] = obj["model"]
        if isinstance(obj.get("session_id"), str):
            self.session_id = obj["session_id"]
            extra["session_id"] = self.session_id

    async def _stream_event(self, event: JSON) -> None:
        kind = event.get("type")
        if kind == "message_start":
            message = _dict(event.get("message"))
            self._message_count += 1
            self._current = _str(message.get("id")) or f"#{self._message_count}"
            self._messages.setdefault(self._current, [])
            self._open = {}
        elif kind == "content_block_start":
            block_json = _dict(event.get("content_block"))
            block_kind = block_json.get("type")
            if block_kind in ("text", "thinking"):
                block = self._new_streamed(str(block_kind), _int(event.get("index")))
                initial = _str(block_json.get(str(block_kind)))
                if initial:
                    await self._delta(block, initial)
        elif kind == "content_block_delta":
            delta = _dict(event.get("delta"))
            delta_kind = delta.get("type")
            index = _int(event.get("index"))
            if delta_kind == "text_delta":
                await self._delta(self._streamed(index, "text"), _str(delta.get("text")))
            elif delta_kind == "thinking_delta":
                await self._delta(self._streamed(index, "thinking"), _str(delta.get("thinking")))
            # input_json_delta, signature_delta, citations_delta: the complete block comes later.
        elif kind == "message_delta":
            stop = _dict(event.get("delta")).get("stop_reason")
            if isinstance(stop, str):
                self.io.stop_reason = stop
        elif kind == "message_stop":
            await self._flush_blocks()

    def _new_streamed(self, kind: str, index: int) -> _Block:
        if self._current is None:  # deltas without a message_start: still show them
            self._message_count += 1
            self._current = f"#{self._message_count}"
            self._messages.setdefault(self._current, [])
        block = _Block(kind, self._take_index(kind))
        self._messages[self._current].append(block)
        self._open[index] = block
        return block

    def _streamed(self, index: int, kind: str) -> _Block:
        block = self._open.get(index)
        if block is None or block.kind != kind:
            block = self._new_streamed(kind, index)
        return block

    def _take_index(self, kind: str) -> int:
        index = self._next_block[kind]
        self._next_block[kind] = index + 1
        return index

    async def _delta(self, block: _Block, text: str) -> None:
        if not text or block.done:
            return
        block.text += text
        if block.kind == "text":
            await self.io.text(block.index, text)
        else:
            await self.io.thinking(block.index, text)

    async def _done(self, block: _Block, text: str) -> None:
        block.text, block.done = text, True
        if block.kind == "text":
            await self.io.text_done(block.index, text)
        else:
            await self.io.thinking_done(block.index, text)

    async def _flush_blocks(self) -> None:
        """Streamed blocks no `assistant` message completed (yet): done with what was streamed."""
        for blocks in self._messages.values():
            for block in blocks:
                if not block.done:
                    await self._done(block, block.text)

    async def _assistant(self, message: JSON, *, nested: bool) -> None:
        message_id = _str(message.get("id")) or self._current or ""
        streamed = self._messages.get(message_id, [])
        stop = message.get("stop_reason")
        if isinstance(stop, str) and not nested:
            self.io.stop_reason = stop
        for item in _list(message.get("content")):
            content = _dict(item)
            kind = content.get("type")
            if kind in ("text", "thinking"):
                if nested:
                    continue  # a subagent's prose is its own; its result reaches the parent's tool result
                full = _str(content.get(str(kind)))
                if (message_id, str(kind), full) in self._seen:
                    continue  # a message repeated with the blocks it had so far: shown already
                self._seen.add((message_id, str(kind), full))
                block = next((b for b in streamed if b.kind == kind and not b.matched), None)
                if block is not None:
                    block.matched = True
                    if not block.done or block.text != full:
                        await self._done(block, full)
                    continue
                if not full:
                    continue
                block = _Block(str(kind), self._take_index(str(kind)), matched=True)
                self._messages.setdefault(message_id, []).append(block)
                await self._delta(block, full)
                await self._done(block, full)
            elif kind in ("tool_use", "server_tool_use", "mcp_tool_use"):
                call_id = _str(content.get("id"))
                name = _str(content.get("name")) or "tool"
                tool_input = content.get("input")
                tool_input = tool_input if isinstance(tool_input, dict) else {"input": tool_input}
                if not call_id or call_id in self._called:
                    continue
                self._called.add(call_id)
                if not self._tools:
                    await self._close_llm()
                self._tools.add(call_id)
                await self.io.tool_call(call_id, name, tool_input)
                todos = tool_input.get("todos")
                if name == "TodoWrite" and isinstance(todos, list):
                    await self.io.todos([t for t in todos if isinstance(t, dict)])

    async def _user(self, message: JSON) -> None:
        for item in _list(message.get("content")):
            content = _dict(item)
            if content.get("type") not in ("tool_result", "web_search_tool_result", "mcp_tool_result"):
                continue
            call_id = _str(content.get("tool_use_id"))
            if not call_id:
                continue
            self._tools.discard(call_id)
            await self.io.tool_result(call_id, _tool_output(content.get("content")),
                                      content.get("is_error") is True)
            if not self._tools and self.result is None:
                await self._open_llm()

    async def _open_llm(self) -> None:
        if self._llm is None:
            stack = AsyncExitStack()
            await stack.enter_async_context(self.io.llm_call())
            self._llm = stack

    async def _close_llm(self) -> None:
        stack, self._llm = self._llm, None
        if stack is not None:
            await stack.aclose()


def _result_error(result: JSON, subtype: str) -> str:
    detail = _str(result.get("result")).strip()
    if not detail:
        errors = [e if isinstance(e, str) else orjson.dumps(e).decode() for e in _list(result.get("errors"))]
        detail = "; ".join(errors)
    if subtype == "error_max_turns":
        detail = detail or f"reached the maximum number of turns ({result.get('num_turns', '?')})"
    if subtype == "success":
        return f"cli agent reported an error: {detail or 'no details'}"
    return f"cli agent stopped ({subtype}): {detail or 'no details'}"


def _tool_output(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for item in content:
            if isinstance(item, dict) and item.get("type") == "text":
                parts.append(_str(item.get("text")))
            elif isinstance(item, dict) and item.get("type") == "image":
                parts.append("[image]")
            elif isinstance(item, str):
                parts.append(item)
            else:
                parts.append(orjson.dumps(item).decode())
        return "\n".join(parts)
    return orjson.dumps(content).decode()


def _dict(value: Any) -> JSON:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0
