"""The `cli` provider: a subprocess agent speaking Claude Code's stream-json (`claude -p --output-format
stream-json --include-partial-messages --verbose`), one process per turn. Its lines are mapped onto our
events by `stream_json.StreamJsonTurn`, which the `claude` provider shares.

The command line is the session option `command` (the server fills in its default). The user's message
is written to the child's stdin, which is then closed (that is how `claude -p` reads a prompt given
without an argument), so a process can be started before its turn arrives: `warm()` starts it and
checks it is alive, and `run()` uses that process if it is still alive (the quick lane's warm pool).
The real `claude -p` gives up after ~3 s without input (for Claude Code, use the `claude` provider): a
warm process that serves nothing is replaced by a new one for the same turn.

The child is a `process.AgentProcess` and `jsonl_agent.follow` reads it to the end of the turn, as for
Codex and Gemini CLI: lines that are not JSON objects, or of a type Claude Code does not send, are
skipped and counted (`malformed_lines` in the usage); a process that exits without a `result` fails the
turn with its exit code, the skipped lines and the last lines of its stderr; a command that cannot be
started fails it with "cannot start cli agent: …".

Every child carries a tag in its environment (`process.py`). Cancel: SIGINT to the child (Claude Code
then stops its tools and exits), then SIGTERM/SIGKILL to every process with the tag — also the tools
it ran in sessions of their own — and the child is reaped before `CancelledError` goes on.

Extra flags, each only when asked for, appended to the command: `--model <m>` when the session names a
model (not the provider's placeholder "cli"); `--append-system-prompt <s>` when the session has a system
prompt; `--resume <session_id>` on the main lane when the session's agent record (`io.resume`, which
the mapping keeps with `io.remember`, so it survives restarts) has this provider's session id. If a
resumed run fails before its session starts (Claude Code: "No conversation found with session ID"),
the turn is retried once without `--resume`. Quick turns never resume: each has its own context. A warm process is
started without a system prompt, so a session with one starts a fresh process for its turn instead.
"""

from __future__ import annotations

import contextlib
import logging
import os

import orjson

from agentwire.providers import ProviderError, TurnIO
from agentwire.providers.jsonl_agent import NotResumed, follow
from agentwire.providers.process import AgentProcess
from agentwire.providers.stream_json import StreamJsonTurn
from agentwire.types import JSON

log = logging.getLogger("agentwire.providers.cli")

DEFAULT_COMMAND = ("claude", "-p", "--output-format", "stream-json", "--include-partial-messages", "--verbose")
AGENT_NAME = "cli"  # its name in the session's agent record
LABEL = "cli agent"  # in error messages
WARM_CHECK = 0.05  # seconds `warm()` watches a new child for an immediate exit
_MODEL_PLACEHOLDER = "cli"  # the registry's default model name for this provider: pass no --model


class CliProvider:
    name = "cli"

    def __init__(self, model: str, options: JSON) -> None:
        self.model = model
        command = options.get("command")
        self.command: list[str] = [str(part) for part in command] if command else list(DEFAULT_COMMAND)
        self.cwd = str(options.get("cwd") or os.getcwd())  # where a warm child starts (a turn's: io.cwd)
        self._warm: AgentProcess | None = None

    def _base_args(self) -> list[str]:
        args = list(self.command)
        if self.model and self.model != _MODEL_PLACEHOLDER and "--model" not in args:
            args += ["--model", self.model]
        return args

    async def warm(self) -> None:
        """Start the child now (it waits for its prompt on stdin); fail if it dies at once."""
        if self._warm is not None and self._warm.alive:
            return
        child = await AgentProcess.start(self._base_args(), self.cwd, label=LABEL)
        try:
            await child.exited(WARM_CHECK)
        except BaseException:  # cancelled (e.g. the pool closing while it fills): leave nothing running
            await child.stop()
            raise
        if not child.alive:
            message = child.failure("while warming up")
            await child.stop()
            raise ProviderError(message)
        self._warm = child

    async def close(self) -> None:
        child, self._warm = self._warm, None
        if child is not None:
            await child.stop()

    async def run(self, io: TurnIO) -> None:
        # Main-lane turns of one agentwire session continue one CLI session; quick turns never do.
        record = io.resume if io.lane == "main" and io.resume.get("name") == AGENT_NAME else {}
        resume = record.get("resume_id") if isinstance(record.get("resume_id"), str) else None
        try:
            await self._run_once(io, resume, float(record.get("cost_usd_total") or 0.0))
        except NotResumed as failed:
            log.info("cli agent could not resume session %s (%s); starting a fresh one", resume, failed)
            await self._run_once(io, None, 0.0)

    async def _run_once(self, io: TurnIO, resume: str | None, cost_before: float) -> None:
        args = self._base_args()
        if io.system and "--append-system-prompt" not in args and "--system-prompt" not in args:
            args += ["--append-system-prompt", io.system]
        if resume is not None:
            args += ["--resume", resume]
        turn = StreamJsonTurn(io, AGENT_NAME, LABEL, cost_before=cost_before)
        try:
            await turn.start()
            child = await self._take_warm(args, io.cwd)
            warm = child is not None
            if child is None:
                child = await AgentProcess.start(args, io.cwd, label=LABEL)
            lines = _StreamJsonLines(turn, child)
            child.send(io.message)
            try:
                await follow(io, child, lines, resuming=resume is not None)
                return
            except ProviderError as exc:
                if not warm or lines.lines:
                    raise
                # It had given up waiting as we took it (`claude -p`: after ~3 s without input).
                log.info("warm cli agent %s served nothing (%s); starting another", child.pid, exc)
        finally:
            with contextlib.suppress(Exception):
                await turn.stop()  # no model call stays open, however the turn ended
        await self._run_once(io, resume, cost_before)

    async def _take_warm(self, args: list[str], cwd: str) -> AgentProcess | None:
        child, self._warm = self._warm, None
        if child is None:
            return None
        if child.alive and child.args == args and child.cwd == cwd:
            return child
        if not child.alive:
            log.info("warm cli agent (pid %s) had exited (%s); starting another", child.pid, child.returncode)
        await child.stop()
        return None


class _StreamJsonLines:
    """The stream-json mapping as `jsonl_agent.follow` drives it: the turn ends with the `result` line,
    the session has started with `system/init`, and a line of a type Claude Code does not send is
    skipped like one that is not JSON."""

    error = None  # an error `result` fails the turn from `end()` (`StreamJsonTurn.complete`)

    def __init__(self, turn: StreamJsonTurn, child: AgentProcess) -> None:
        self.turn = turn
        self.child = child
        self.lines = 0

    @property
    def finished(self) -> bool:
        return self.turn.result is not None

    @property
    def started(self) -> bool:
        return bool(self.turn.init)

    async def handle(self, line: JSON) -> None:
        if await self.turn.handle(line):
            self.lines += 1
        else:
            self.child.skip(orjson.dumps(line).decode())

    async def end(self) -> None:
        if self.finished:
            await self.turn.complete()
