"""What the agent CLIs that print one JSON object per line share: the `cli` provider's stream-json
command, Codex (`exec --json`) and Gemini CLI (`--output-format stream-json`). Each turn is one child
(`process.AgentProcess`) that `follow` reads to the turn's end; a `Mapping` turns its lines into our
events (`stream_json.StreamJsonTurn` for the `cli` provider, a `LineMapping` for Codex and Gemini CLI,
which also share their provider base, `CliAgentProvider`). Each CLI's own module says how to start it
and how its lines map.

A turn, as `follow` drives it:

- every stdout line that is a JSON object with a string `type` goes to the mapping; other lines are
  skipped and counted (`malformed_lines` in the usage), stderr keeps its last lines for errors;
- the mapping's final line (`Mapping.finished`) ends the turn: `end()` closes what is open, and the
  CLI's own error, if it reported one, fails the turn once; then the child gets a few seconds to exit
  by itself (what it prints meanwhile is read and dropped, so a full pipe cannot hold it up);
- a child that ends without its final line fails the turn with its exit status, the last error line
  it printed or the lines that were not events, and its stderr tail — unless the turn was cancelled,
  which the runtime reports as `turn.cancelled` (a cancelled CLI exits without its final line);
- however the turn ends (done, failed, cancelled, the server shutting down), the child and every
  process carrying its tag are stopped (`AgentProcess.stop`), so nothing the agent started (a `sleep`
  in a shell tool) outlives the turn.

A resumed run that fails before the CLI has started its session raises `NotResumed`: the CLI no longer
knows the session (its files were removed, another machine), and the provider starts a fresh one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

import orjson

from agentwire.providers import ProviderError, TurnIO, agents
from agentwire.providers._llm import BlockKind, Blocks, ModelWait
from agentwire.providers.process import AgentProcess
from agentwire.types import JSON

log = logging.getLogger("agentwire.providers.jsonl")

AFTER_FINAL = 5.0  # seconds the CLI may take to exit after its final line
AFTER_EOF = 10.0  # seconds it may take to exit after closing its stdout without one
WARNINGS_KEPT = 10


class NotResumed(ProviderError):
    """A resumed run failed before its session started: the CLI does not know that session any more."""


class Mapping(Protocol):
    """Turns one CLI's JSON lines into `TurnIO` calls."""

    @property
    def finished(self) -> bool:
        """Its final line was seen."""
        ...

    @property
    def error(self) -> str | None:
        """The turn's failure as the CLI reported it (set with `finished`, or on its own)."""
        ...

    @property
    def started(self) -> bool:
        """The CLI has started (or resumed) its session."""
        ...

    @property
    def lines(self) -> int:
        """Lines it understood."""
        ...

    async def handle(self, line: JSON) -> None: ...

    async def end(self) -> None:
        """The turn ends without a cancel: close what is still open (blocks, the model call)."""
        ...


async def run_turn(io: TurnIO, mapping: Mapping, args: list[str], *, label: str,
                   env: dict[str, str] | None = None, resuming: bool = False) -> None:
    """One CLI run for one turn: the child started in the turn's working directory (`env` added to
    ours), the prompt on its stdin, followed to its end."""
    child = await AgentProcess.start(args, io.cwd, label=label, env=env)
    child.send(io.message)
    await follow(io, child, mapping, resuming=resuming)


async def follow(io: TurnIO, child: AgentProcess, mapping: Mapping, *, resuming: bool) -> None:
    """Read a child that has its prompt to the end of the turn (see the module docstring)."""
    try:
        await _read(io, child, mapping)
    except ProviderError as exc:
        if resuming and not mapping.started and not isinstance(exc, NotResumed):
            raise NotResumed(str(exc)) from exc
        raise
    finally:
        await child.stop()


async def _read(io: TurnIO, child: AgentProcess, mapping: Mapping) -> None:
    async for line in child.events():
        await mapping.handle(line)
        if mapping.finished:
            break
    if child.skipped_count:
        io.usage.extra["malformed_lines"] = child.skipped_count
    await mapping.end()
    if mapping.finished:
        if mapping.error:
            raise ProviderError(mapping.error)
        try:
            async with asyncio.timeout(AFTER_FINAL):
                await _drain(child)
        except TimeoutError:
            log.info("%s %s did not exit after its final line; stopping it", child.label, child.pid)
        return
    if not await child.exited(AFTER_EOF):
        await child.stop()
        raise ProviderError(child.failure("after closing its output without finishing the turn"))
    what = "before finishing the turn"
    if mapping.error:
        what += f" (its last error: {mapping.error})"
    elif child.skipped_count:
        what += f"; {child.skipped_count} malformed output line(s) skipped, first: {child.skipped[0][:120]!r}"
    elif mapping.lines == 0:
        what += "; it printed no JSON events"
    raise ProviderError(child.failure(what))


async def _drain(child: AgentProcess) -> None:
    """Read what the child prints after its final line (not ours) until it exits."""
    stdout = child.proc.stdout
    assert stdout is not None
    while True:
        try:
            if not await stdout.readline():
                break
        except ValueError:  # a line over the limit
            continue
    await child.exited(AFTER_FINAL)


class CliAgentProvider:
    """What the CLI providers share: the session's approval, resuming the CLI's own session (a fresh one
    when it forgot it), the agent record, and one `run_turn`. A subclass says how to call its CLI."""

    name = ""
    label = ""
    default_model = "default"  # the model the user's own CLI configuration picks

    def __init__(self, model: str, options: JSON) -> None:
        """`options`: the session's, with the server's settings for it (`Console._options`: the binary
        named by `--codex-bin` / `--gemini-bin`)."""
        self.model = model
        self.options = dict(options)
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
        path = agents.find(self.name, self.options)
        if path is None:  # it was there when the session was created
            raise ProviderError(agents.cli_missing(self.name, self.options) or f"{self.name}: not found")
        record: JSON = {"name": self.name, "label": self.label,
                        "version": await agents.version(self.name, self.options),
                        "model": self.shown_model(), "cwd": io.cwd, "approval": self.approval}
        with self.environment(io) as env:
            await run_turn(io, self.mapping(io, record), self.command(path, io, resume), label=self.name, env=env,
                           resuming=resume is not None)

    def command(self, path: str, io: TurnIO, resume: str | None) -> list[str]:
        raise NotImplementedError

    def mapping(self, io: TurnIO, record: JSON) -> Mapping:
        raise NotImplementedError

    def environment(self, io: TurnIO) -> contextlib.AbstractContextManager[dict[str, str]]:
        """What the CLI's environment adds to the server's, for the length of the run."""
        return contextlib.nullcontext({})


class LineMapping:
    """The state every `Mapping` keeps; a CLI's own mapping adds `handle`."""

    def __init__(self, io: TurnIO, record: JSON) -> None:
        self.io = io
        self.record = record  # the agent record, completed from the CLI's first line
        self.say = Narration(io)
        self.finished = False
        self.error: str | None = None
        self.started = False  # set by the CLI's first line, which names its session
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
        self._model = ModelWait(io)

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
        await self._model.begin()

    async def model_done(self) -> None:
        await self._model.end()

    async def finish(self) -> None:
        await self.blocks.close_all()
        await self.model_done()


def as_text(value: object) -> str:
    return value if isinstance(value, str) else ("" if value is None else orjson.dumps(value).decode())


def count(value: object) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0
