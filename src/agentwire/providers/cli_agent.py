"""The `cli` provider: a subprocess agent speaking Claude Code's stream-json (`claude -p --output-format
stream-json --include-partial-messages --verbose`), one process per turn. Its lines are mapped onto our
events by `stream_json.StreamJsonTurn`, which the `claude` provider shares.

The command line is the session option `command` (the server fills in its default). The user's message
is written to the child's stdin, which is then closed (that is how `claude -p` reads a prompt given
without an argument), so a process can be started before its turn arrives: `warm()` starts it and
checks it is alive, and `run()` uses that process if it is still alive (the quick lane's warm pool).
The real `claude -p` gives up after ~3 s without input (for Claude Code, use the `claude` provider): a
warm process that serves nothing is replaced by a new one for the same turn.

Lines that are not JSON objects, or of an unknown type, are skipped and counted (`malformed_lines` in
the usage); if the process then ends without a `result`, the error says so. A process that exits
without a `result` fails the turn with its exit code and the last lines of its stderr; a command that
cannot be started fails it with "cannot start cli agent: …".

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

import asyncio
import contextlib
import logging
import os

import orjson

from agentwire.providers import ProviderError, TurnIO
from agentwire.providers.process import LINE_LIMIT, AgentProcess
from agentwire.providers.stream_json import StreamJsonTurn
from agentwire.types import JSON

log = logging.getLogger("agentwire.providers.cli")

DEFAULT_COMMAND = ("claude", "-p", "--output-format", "stream-json", "--include-partial-messages", "--verbose")
AGENT_NAME = "cli"  # its name in the session's agent record
LABEL = "cli agent"  # in error messages
AFTER_RESULT = 5.0  # seconds a child may take to exit after its `result` line
AFTER_EOF = 10.0  # seconds a child may take to exit after closing its stdout without a result
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
        # Main-lane turns of one agentwire session continue one CLI session; quick turns never do.
        record = io.resume if io.lane == "main" and io.resume.get("name") == AGENT_NAME else {}
        resume = record.get("resume_id") if isinstance(record.get("resume_id"), str) else None
        try:
            await self._run_once(io, resume, float(record.get("cost_usd_total") or 0.0))
        except _ResumeFailed as failed:
            log.info("cli agent could not resume session %s (%s); starting a fresh one", resume, failed)
            await self._run_once(io, None, 0.0)

    async def _run_once(self, io: TurnIO, resume: str | None, cost_before: float) -> None:
        args = self._base_args()
        if io.system and "--append-system-prompt" not in args and "--system-prompt" not in args:
            args += ["--append-system-prompt", io.system]
        if resume is not None:
            args += ["--resume", resume]
        child = await self._take_warm(args, io.cwd)
        warm = child is not None
        if child is None:
            child = await AgentProcess.start(args, io.cwd, label=LABEL)
        conversation = _Conversation(child, io, cost_before)
        try:
            await conversation.run()
        except ProviderError as exc:
            if warm and conversation.lines == 0:
                # It had given up waiting as we took it (`claude -p`: after ~3 s without input).
                log.info("warm cli agent %s served nothing (%s); starting another", child.pid, exc)
                await self._run_once(io, resume, cost_before)
                return
            if resume is not None and not conversation.turn.init:  # it failed before the session started
                raise _ResumeFailed(str(exc)) from exc
            raise

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


class _ResumeFailed(Exception):
    pass


class _Conversation:
    """Feeds one prompt to one child and hands its stream-json lines to the shared mapping."""

    def __init__(self, child: AgentProcess, io: TurnIO, cost_before: float) -> None:
        self.child = child
        self.io = io
        self.turn = StreamJsonTurn(io, AGENT_NAME, LABEL, cost_before=cost_before)
        self.lines = 0  # JSON lines understood
        self.malformed = 0
        self.malformed_samples: list[str] = []

    async def run(self) -> None:
        writer = asyncio.create_task(self._write_prompt(), name=f"cli stdin {self.child.pid}")
        try:
            await self.turn.start()
            await self._read()
            await self._finish()
        except BaseException:
            writer.cancel()
            await self.child.stop()
            raise
        finally:
            with contextlib.suppress(Exception):
                await self.turn.stop()
            writer.cancel()
            await asyncio.wait({writer})

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
        stdout = self.child.proc.stdout
        assert stdout is not None
        while True:
            try:
                raw = await stdout.readline()
            except ValueError:
                self._bad(f"<a line over {LINE_LIMIT} bytes>")
                continue
            if not raw:
                return
            line = raw.strip()
            if not line:
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                self._bad(line.decode(errors="replace"))
                continue
            if not isinstance(obj, dict) or not isinstance(obj.get("type"), str) or not await self.turn.handle(obj):
                self._bad(line.decode(errors="replace"))
                continue
            self.lines += 1
            if self.turn.result is not None:
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
        if self.turn.result is not None:
            # Done: let it exit on its own (reading whatever else it prints), else stop it.
            try:
                await asyncio.wait_for(self._drain_and_exit(stdout), AFTER_RESULT)
            except TimeoutError:
                log.info("cli agent %s did not exit after its result; stopping it", child.pid)
            await child.stop()
            await self.turn.complete()
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
