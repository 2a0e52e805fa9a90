"""What the coding-agent CLIs that print one JSON object per line share (Codex `exec --json`, Gemini
CLI `--output-format stream-json`): one child process per turn, its lines, its end, and the turn's
bookkeeping. Each CLI's own module says how to start it (`command`, `environment`) and how its lines
map onto our events (a `Mapping`).

The turn, as `run_turn` drives it:

- the child starts with a fresh process tag in its environment (`process.tagged_env`), its prompt
  on stdin, in the session's working directory;
- every stdout line that is a JSON object with a string `type` goes to the mapping; other lines are
  skipped and counted (`malformed_lines` in the usage), stderr keeps its last lines for errors;
- the mapping's final line (`Mapping.finished`) ends the turn: its error, if it has one, fails the
  turn once with the CLI's own message; then the child gets a few seconds to exit by itself;
- a child that ends without its final line fails the turn with its exit status, the last error line
  it printed and its stderr tail — unless the turn was cancelled, which the runtime reports as
  `turn.cancelled` (a cancelled CLI exits without its final line);
- cancel, failure, crash or server shutdown: every process carrying the tag is stopped (SIGTERM, then
  SIGKILL), so nothing the agent started (a `sleep` in a shell tool) outlives the turn.

A resumed run that prints nothing at all before it ends raises `NotResumed`: the CLI no longer knows
the session (its files were removed, another machine), and the provider starts a fresh one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Protocol

import orjson

from agentwire.providers import ProviderError, TurnIO, agents
from agentwire.providers._llm import BlockKind, Blocks
from agentwire.providers.process import exit_status, keep_tail, new_tag, stop_tagged, tagged_env
from agentwire.types import JSON

log = logging.getLogger("agentwire.providers.jsonl")

LINE_LIMIT = 16 * 1024 * 1024  # one stdout line (a big command output fits)
STDERR_LINES = 20
STOP_GRACE = 1.5  # seconds between SIGTERM and SIGKILL
AFTER_FINAL = 5.0  # seconds the CLI may take to exit after its final line
AFTER_EOF = 10.0  # seconds it may take to exit after closing its stdout without one
WARNINGS_KEPT = 10


class NotResumed(ProviderError):
    """A resumed run ended before printing anything: the CLI does not know that session any more."""


class Mapping(Protocol):
    """Turns one CLI's JSON lines into `TurnIO` calls."""

    finished: bool  # its final line was seen
    error: str | None  # the turn's failure as the CLI reported it (set with `finished`, or on its own)
    lines: int  # lines it understood

    async def handle(self, line: JSON) -> None: ...

    async def end(self) -> None:
        """The turn ends without a cancel: close what is still open (blocks, the model call)."""
        ...


class AgentProcess:
    """One CLI run: the child, its tag, its stdout as JSON objects and the tail of its stderr."""

    def __init__(self, label: str, proc: asyncio.subprocess.Process, tag: str) -> None:
        self.label = label
        self.proc = proc
        self.tag = tag
        self.skipped: list[str] = []  # stdout lines that were not JSON objects (first few kept)
        self.skipped_count = 0
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_LINES)
        self._stderr = asyncio.create_task(self._drain_stderr(), name=f"{label} stderr {proc.pid}")

    @classmethod
    async def start(cls, label: str, args: list[str], *, cwd: str, env: dict[str, str],
                    prompt: str) -> AgentProcess:
        tag = new_tag()
        try:
            # A session of its own: a Ctrl-C meant for the server must not reach it; stopping goes by tag.
            proc = await asyncio.create_subprocess_exec(
                *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, cwd=cwd, env=tagged_env(tag, env), limit=LINE_LIMIT,
                start_new_session=True)
        except OSError as exc:
            raise ProviderError(f"cannot start {label}: {args[0]}: {exc.strerror or exc}") from exc
        log.debug("started %s pid %s: %s", label, proc.pid, args)
        child = cls(label, proc, tag)
        child._feed(prompt)
        return child

    def _feed(self, prompt: str) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        try:  # the pipe takes what it can now; asyncio writes the rest as the child reads
            stdin.write(prompt.encode())
            stdin.write_eof()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the child is gone already: its exit status and stderr tell why

    def lines(self) -> AsyncIterator[JSON]:
        assert self.proc.stdout is not None
        return json_events(self.proc.stdout, self._skip)

    def _skip(self, line: str) -> None:
        self.skipped_count += 1
        if len(self.skipped) < 3:
            self.skipped.append(line[:200])
        log.debug("%s %s: skipped a line that is not a JSON event: %.200s", self.label, self.proc.pid, line)

    async def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        await keep_tail(self.proc.stderr, self.stderr_tail)

    async def exited(self, timeout: float) -> bool:
        """Wait for the child itself to exit. Polled: before Python 3.12 `Process.wait()` also waits for
        its pipes to close, which a grandchild that outlives it may never do."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.proc.returncode is None and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        if self.proc.returncode is not None:
            with contextlib.suppress(TimeoutError):  # let the stderr reader catch the last lines
                await asyncio.wait_for(asyncio.shield(self._stderr), 0.5)
        return self.proc.returncode is not None

    async def stop(self) -> None:
        """Stop the child and everything that carries its tag; reap it. Safe to call twice."""
        await stop_tagged(self.tag, grace=STOP_GRACE, first=signal.SIGTERM)
        if self.proc.returncode is None:  # not found by its tag (it changed its environment): by pid
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        await self.exited(10)

    def close(self) -> None:
        self._stderr.cancel()

    def failure(self, what: str) -> str:
        message = f"{self.label} {exit_status(self.proc.returncode)} {what}"
        if self.stderr_tail:
            message += "; stderr: " + " | ".join(list(self.stderr_tail)[-5:])
        return message


async def json_events(stream: asyncio.StreamReader, skip: Callable[[str], None]) -> AsyncIterator[JSON]:
    """The JSON objects with a string `type` a child prints, one per line; every other line goes to `skip`."""
    while True:
        try:
            raw = await stream.readline()
        except ValueError:
            skip(f"<a line over {LINE_LIMIT} bytes>")
            continue
        if not raw:
            return
        line = raw.strip()
        if not line:
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("type"), str):
            yield obj
        else:
            skip(line.decode(errors="replace"))


async def run_turn(io: TurnIO, label: str, args: list[str], env: dict[str, str], mapping: Mapping, *,
                   resuming: bool) -> None:
    """Run one CLI turn to its end (see the module docstring)."""
    child = await AgentProcess.start(label, args, cwd=io.cwd, env=env, prompt=io.message)
    try:
        await _follow(io, child, mapping, resuming)
    except BaseException:
        await asyncio.shield(child.stop())
        raise
    finally:
        child.close()


async def _follow(io: TurnIO, child: AgentProcess, mapping: Mapping, resuming: bool) -> None:
    async for line in child.lines():
        await mapping.handle(line)
        if mapping.finished:
            break
    if child.skipped_count:
        io.usage.extra["malformed_lines"] = child.skipped_count
    await mapping.end()
    if mapping.finished:
        if mapping.error:
            raise ProviderError(mapping.error)
        if not await child.exited(AFTER_FINAL):
            log.info("%s %s did not exit after its final line; stopping it", child.label, child.proc.pid)
            await child.stop()
        return
    await child.exited(AFTER_EOF)
    if resuming and mapping.lines == 0 and not child.skipped_count:
        raise NotResumed(child.failure("while resuming its session"))
    what = "before finishing the turn"
    if mapping.error:
        what += f" (its last error: {mapping.error})"
    elif child.skipped_count:
        what += f"; {child.skipped_count} line(s) were not JSON events, the first: {child.skipped[0][:120]!r}"
    raise ProviderError(child.failure(what))


class CliAgentProvider:
    """What the CLI providers share: the session's approval, resuming the CLI's own session (a fresh one
    when it forgot it), the agent record, and one `run_turn`. A subclass says how to call its CLI."""

    name = ""
    label = ""
    default_model = "default"  # the model the user's own CLI configuration picks

    def __init__(self, model: str, options: JSON) -> None:
        self.model = model
        self.approval = str(options.get("approval") or "read-only")

    @property
    def named_model(self) -> str | None:
        """The model the session names (passed to the CLI), or None: the CLI's configuration decides."""
        return self.model if self.model and self.model != self.default_model else None

    def shown_model(self) -> str | None:
        """The model for the agent record, as far as it is known before the CLI says."""
        return self.named_model

    async def close(self) -> None:
        pass

    async def run(self, io: TurnIO) -> None:
        resume = io.resume.get("resume_id") if io.resume.get("name") == self.name else None
        try:
            await self._turn(io, str(resume) if resume else None)
        except NotResumed as exc:
            log.warning("%s could not resume session %s (%s); starting a new one", self.name, resume, exc)
            await self._turn(io, None)

    async def _turn(self, io: TurnIO, resume: str | None) -> None:
        path = agents.find(self.name)
        if path is None:
            raise ProviderError(agents.cli_missing(self.name) or f"{self.name}: not found")
        record: JSON = {"name": self.name, "label": self.label, "version": await agents.version(self.name),
                        "model": self.shown_model(), "cwd": io.cwd, "approval": self.approval}
        with self.environment(io) as env:
            await run_turn(io, self.name, self.command(path, io, resume), env, self.mapping(io, record),
                           resuming=resume is not None)

    def command(self, path: str, io: TurnIO, resume: str | None) -> list[str]:
        raise NotImplementedError

    def mapping(self, io: TurnIO, record: JSON) -> Mapping:
        raise NotImplementedError

    def environment(self, io: TurnIO) -> contextlib.AbstractContextManager[dict[str, str]]:
        return contextlib.nullcontext(dict(os.environ))


class LineMapping:
    """The state every `Mapping` keeps; a CLI's own mapping adds `handle`."""

    def __init__(self, io: TurnIO, record: JSON) -> None:
        self.io = io
        self.record = record  # the agent record, completed from the CLI's first line
        self.say = Narration(io)
        self.finished = False
        self.error: str | None = None
        self.lines = 0

    async def end(self) -> None:
        await self.say.finish()

    def warn(self, message: str) -> None:
        """A warning the CLI printed, kept (the first few) in the usage."""
        warnings = self.io.usage.extra.setdefault("warnings", [])
        if len(warnings) < WARNINGS_KEPT:
            warnings.append(message)


class Narration:
    """The turn as the user sees it: numbered text and thinking blocks (`_llm.Blocks`), tool calls in
    flight, and the model call that is outstanding whenever no tool call is."""

    def __init__(self, io: TurnIO) -> None:
        self.io = io
        self.blocks = Blocks(io)
        self.tools: dict[str, str] = {}  # call id → name, while running
        self.shown: set[str] = set()  # every call id shown
        self._llm: AsyncExitStack | None = None

    async def delta(self, kind: BlockKind, text: str) -> None:
        """Text that streams: into the open block of its kind."""
        await self.blocks.delta(kind, kind, text)

    async def whole(self, kind: BlockKind, text: str) -> None:
        """A block the CLI sends complete: one delta, then its done."""
        await self.blocks.close(kind)
        await self.blocks.delta(kind, kind, text)
        await self.blocks.close(kind)

    async def call(self, call_id: str, name: str, input: JSON) -> bool:
        """A tool call starts (shown once per id); returns whether it was new."""
        if call_id in self.shown:
            return False
        self.shown.add(call_id)
        await self.blocks.close_all()
        if not self.tools:
            await self.model_done()
        self.tools[call_id] = name
        await self.io.tool_call(call_id, name, input)
        return True

    async def result(self, call_id: str, output: str, is_error: bool) -> None:
        if self.tools.pop(call_id, None) is None:
            return
        await self.io.tool_result(call_id, output, is_error)
        if not self.tools:
            await self.model_waiting()

    async def model_waiting(self) -> None:
        if self._llm is None:
            stack = AsyncExitStack()
            await stack.enter_async_context(self.io.llm_call())
            self._llm = stack

    async def model_done(self) -> None:
        stack, self._llm = self._llm, None
        if stack is not None:
            await stack.aclose()

    async def finish(self) -> None:
        await self.blocks.close_all()
        await self.model_done()


def as_text(value: object) -> str:
    return value if isinstance(value, str) else ("" if value is None else orjson.dumps(value).decode())


def count(value: object) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0
