"""The `claude` provider: Claude Code itself, through the official `claude-agent-sdk`. Its
`ClaudeSDKClient` runs the CLI with `--input-format stream-json` and speaks the control protocol
(streaming input, `interrupt`, resume); by default it runs the CLI the SDK bundles (so the lock pins
it), and the server's `--claude-bin` names another.

One live process per session: the console keeps one `ClaudeProvider` per session between main turns
(`ProviderInfo.live`, `console/agents.py`). Each turn is one user message into the live process and
ends with Claude Code's `result`; the process then waits for the next message. It is replaced, and
the new one resumes the session's Claude session (`resume=`, from `io.resume`, which the mapping keeps
with `io.remember` after every turn), when it is gone (idle reaping, a crash, a restart of the server)
or its context is not the session's latest (the last turn ran on another node): the record names the
last turn that ran, and the process remembers the last one it ran.

Quick turns run on warm clients (`warm()`: the process is up and waits for input, for as long as it
takes) with a context of their own; the console closes each after its turn.

Cancel: the `interrupt` control request; Claude Code stops the running tool and ends the turn with a
`result`, and the process stays for the next turn. If it does not within `INTERRUPT_GRACE`, or the
process is broken: SIGINT to it, then SIGTERM/SIGKILL to every process carrying its tag
(`process.py`), so that no tool survives, not even one Claude Code started in a session of its own.
`close()` ends the process by closing its input, then stops whatever it left running the same way.

The messages are mapped by `stream_json.StreamJsonTurn`, shared with the `cli` provider.

Where this steps outside the SDK, and why: stopping goes by the process tag, because the SDK's own
close ends only the CLI (SIGTERM), and Claude Code leaves the tools it runs in sessions of their own
running when it gets SIGTERM; and the SDK's typed messages are turned back into the stream-json lines
they were parsed from (`_wire`), because the mapping is shared with the `cli` provider, which reads
the lines themselves (the SDK's raw messages are not public).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from collections import deque
from typing import Any

from claude_agent_sdk import (
    AssistantMessage,
    ClaudeAgentOptions,
    ClaudeSDKClient,
    ClaudeSDKError,
    CLIConnectionError,
    Message,
    ResultMessage,
    ServerToolResultBlock,
    ServerToolUseBlock,
    StreamEvent,
    SystemMessage,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
    UserMessage,
)

from agentwire.providers import ProviderError, TurnIO
from agentwire.providers.process import LINE_LIMIT, STDERR_LINES, TAG_VARIABLE, kill_tagged, new_tag, stop_agent
from agentwire.providers.stream_json import StreamJsonTurn
from agentwire.types import JSON

log = logging.getLogger("agentwire.providers.claude")

AGENT_NAME = "claude-code"  # its name in the session's agent record
LABEL = "Claude Code"
DEFAULT_MODEL = "default"  # the registry's placeholder: Claude Code's own default model (no --model)
INTERRUPT_GRACE = 3.0  # seconds for Claude Code to end an interrupted turn with its result
SIGINT_GRACE = 2.0  # seconds for it to exit after SIGINT, before SIGTERM/SIGKILL to all it started
CLOSE_GRACE = 10.0  # seconds for it to exit once its input is closed


@dataclasses.dataclass(eq=False)
class _Live:
    """A connected client: one Claude Code process, waiting for input or running a turn."""

    client: ClaudeSDKClient
    tag: str
    pid: int | None
    system: str
    cwd: str
    stderr: deque[str]
    last_turn: str | None = None  # the last main turn it ran
    cost_total: float = 0.0  # Claude Code's running cost of its session, as of its last result
    resume_failed: str | None = None  # the session id it could not resume (it started a new one)


class ClaudeProvider:
    name = "claude"

    def __init__(self, model: str, options: JSON) -> None:
        self.model = model
        self.options = dict(options)
        self._live: _Live | None = None

    async def warm(self) -> None:
        """Start Claude Code now, with no context, so a quick turn does not wait for it."""
        if self._live is None:
            cwd = str(self.options.get("cwd") or os.getcwd())
            self._live = await self._connect("", cwd, None, 0.0)

    async def close(self) -> None:
        live, self._live = self._live, None
        if live is None:
            return
        try:
            # Closing its input ends Claude Code cleanly (its session file is complete).
            await asyncio.wait_for(live.client.disconnect(), CLOSE_GRACE)
        except (TimeoutError, ClaudeSDKError) as exc:
            log.info("Claude Code %s did not close cleanly: %s", live.pid, exc)
        finally:
            await stop_agent(None, live.tag)  # what it left running (a background shell, say)

    async def run(self, io: TurnIO) -> None:
        try:
            live = await self._send(await self._ready(io), io)
        except asyncio.CancelledError:  # the message may be on its way: this process's next output is not ours
            await self._discard()
            raise
        turn = StreamJsonTurn(io, AGENT_NAME, LABEL, cost_before=live.cost_total, info=_info(live))
        try:
            await turn.start()
            async for message in live.client.receive_response():
                if (obj := _wire(message)) is not None:
                    await turn.handle(obj)
        except asyncio.CancelledError:
            await self._interrupt(live, turn)
            raise
        except ClaudeSDKError as exc:
            await turn.stop()
            await self._discard()
            raise ProviderError(f"{LABEL} stopped: {exc}{_stderr(live)}") from exc
        if turn.result is None:
            await turn.stop()
            await self._discard()
            raise ProviderError(f"{LABEL} ended its output without a result{_stderr(live)}")
        try:
            await turn.complete()
        finally:
            self._ran(live, turn, io)

    # the live process

    async def _ready(self, io: TurnIO) -> _Live:
        live = self._live
        if live is not None and not self._fits(live, io):
            await self._discard()
            live = None
        if live is None:
            record = _record(io)
            resume = record.get("resume_id") if isinstance(record.get("resume_id"), str) else None
            live = self._live = await self._connect(io.system, io.cwd, resume,
                                                    float(record.get("cost_usd_total") or 0.0))
        return live

    def _fits(self, live: _Live, io: TurnIO) -> bool:
        if live.system != io.system or live.cwd != io.cwd:
            return False  # both are fixed when the process starts
        # The main lane's context must be the session's latest: another node, or this one before a
        # restart, may have run the turns since. The record names the last turn that ran.
        return io.lane != "main" or _record(io).get("last_turn") == live.last_turn

    async def _send(self, live: _Live, io: TurnIO) -> _Live:
        try:
            await live.client.query(io.message)
            return live
        except CLIConnectionError as exc:  # the process died since its last turn
            log.info("Claude Code %s is gone (%s); starting it again", live.pid, exc)
        await self._discard()
        live = await self._ready(io)
        try:
            await live.client.query(io.message)
        except ClaudeSDKError as exc:
            await self._discard()
            raise ProviderError(f"{LABEL} stopped: {exc}{_stderr(live)}") from exc
        return live

    def _ran(self, live: _Live, turn: StreamJsonTurn, io: TurnIO) -> None:
        live.cost_total = turn.cost_total
        if io.lane == "main" and turn.session_id and turn.result is not None:
            live.last_turn = io.turn_id  # as the record now says (`StreamJsonTurn.complete`)

    async def _connect(self, system: str, cwd: str, resume: str | None, cost: float) -> _Live:
        tag = new_tag()
        stderr: deque[str] = deque(maxlen=STDERR_LINES)
        client = ClaudeSDKClient(self._options(system, cwd, resume, tag, stderr))
        try:
            await client.connect()
            info = await client.get_server_info() or {}
        except ClaudeSDKError as exc:
            await _stop(client, tag, None)
            if resume is None:
                raise ProviderError(f"cannot start {LABEL}: {exc}{_tail(stderr)}") from exc
            # Claude Code no longer knows the session (e.g. its config directory is not shared with
            # the node that ran it): a new session beats failing every turn from now on.
            log.warning("%s could not resume session %s (%s); starting a new one", LABEL, resume, exc)
            live = await self._connect(system, cwd, None, 0.0)
            live.resume_failed = resume
            return live
        except BaseException:  # cancelled while starting: leave nothing running
            kill_tagged(tag)
            raise
        pid = info.get("pid")
        log.debug("%s %s started (pid %s, resume %s)", LABEL, info.get("claude_code_version"), pid, resume)
        return _Live(client, tag, pid if isinstance(pid, int) else None, system, cwd, stderr, cost_total=cost)

    def _options(self, system: str, cwd: str, resume: str | None, tag: str,
                 stderr: deque[str]) -> ClaudeAgentOptions:
        """How Claude Code is started: its own system prompt (the session's appended), the user's own
        settings, partial messages for live text, and the tag in its environment (the SDK adds the
        server's environment to it)."""
        prompt: Any = {"type": "preset", "preset": "claude_code", **({"append": system} if system else {})}
        return ClaudeAgentOptions(
            cli_path=self.options.get("claude_bin") or None, model=None if self.model == DEFAULT_MODEL else self.model,
            cwd=cwd, system_prompt=prompt, include_partial_messages=True, resume=resume,
            env={TAG_VARIABLE: tag}, stderr=stderr.append, max_buffer_size=LINE_LIMIT)

    async def _interrupt(self, live: _Live, turn: StreamJsonTurn) -> None:
        """Cancelled mid-turn: ask Claude Code to stop, keep the process if it does."""
        try:
            async with asyncio.timeout(INTERRUPT_GRACE):
                await live.client.interrupt()
                async for message in live.client.receive_response():  # the stopped tool's result, then the end
                    if (obj := _wire(message)) is not None:
                        await turn.handle(obj)
        except (TimeoutError, ClaudeSDKError) as exc:
            log.info("%s %s did not stop on interrupt (%s); stopping it", LABEL, live.pid, exc or "timeout")
        except BaseException:  # cancelled again (shutdown): nothing may keep running
            kill_tagged(live.tag)
            self._live = None
            raise
        if turn.result is None:
            await turn.stop()
            await self._discard()
            return
        with contextlib.suppress(ProviderError):  # its result says "interrupted": what we asked for
            await turn.complete()
        self._ran(live, turn, turn.io)

    async def _discard(self) -> None:
        live, self._live = self._live, None
        if live is not None:
            await _stop(live.client, live.tag, live.pid)


async def _stop(client: ClaudeSDKClient, tag: str, pid: int | None) -> None:
    """SIGINT, then SIGTERM/SIGKILL to everything tagged (`process.stop_agent`), then let the SDK
    reap what is left of the process and its pipes."""
    await stop_agent(pid, tag, interrupt_grace=SIGINT_GRACE)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.disconnect(), CLOSE_GRACE)


def _record(io: TurnIO) -> JSON:
    """The session's agent record, if this provider wrote it (the quick lane has none)."""
    return io.resume if io.lane == "main" and io.resume.get("name") == AGENT_NAME else {}


def _info(live: _Live) -> JSON:
    info: JSON = {"pid": live.pid}
    if live.resume_failed:
        info["resume_failed"] = live.resume_failed
    return info


def _stderr(live: _Live) -> str:
    return _tail(live.stderr)


def _tail(lines: deque[str]) -> str:
    return "; stderr: " + " | ".join(list(lines)[-5:]) if lines else ""


# The SDK's public API gives typed messages; the mapping is shared with the `cli` provider, which reads
# the lines themselves, so each message goes back to the shape of the line it was parsed from.
_BLOCK_TYPES: dict[type, str] = {TextBlock: "text", ThinkingBlock: "thinking", ToolUseBlock: "tool_use",
                                 ToolResultBlock: "tool_result", ServerToolUseBlock: "server_tool_use",
                                 ServerToolResultBlock: "advisor_tool_result"}


def _wire(message: Message) -> JSON | None:
    if isinstance(message, StreamEvent):
        return {"type": "stream_event", "event": message.event, "parent_tool_use_id": message.parent_tool_use_id}
    if isinstance(message, AssistantMessage):
        return {"type": "assistant", "parent_tool_use_id": message.parent_tool_use_id, "error": message.error,
                "message": {"id": message.message_id, "model": message.model, "stop_reason": message.stop_reason,
                            "content": [_block(block) for block in message.content]}}
    if isinstance(message, UserMessage):
        content = message.content if isinstance(message.content, str) else [_block(b) for b in message.content]
        return {"type": "user", "parent_tool_use_id": message.parent_tool_use_id,
                "tool_use_result": message.tool_use_result, "message": {"role": "user", "content": content}}
    if isinstance(message, SystemMessage):
        return message.data
    if isinstance(message, ResultMessage):
        return {**dataclasses.asdict(message), "type": "result"}
    return None  # rate-limit notices and the like: nothing to show


def _block(block: Any) -> JSON:
    return {**dataclasses.asdict(block), "type": _BLOCK_TYPES.get(type(block), "unknown")}
