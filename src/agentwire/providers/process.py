"""Every process an agent starts, found and stopped, whatever session or parent it ended up with.

Agent CLIs run their tools in sessions of their own (Claude Code `setsid`s each Bash command), so
signalling the agent's process group misses them, and once the agent exits they are re-parented to
PID 1, so walking the process tree misses them too. What every descendant does keep is the
environment it was started with: each agent gets a tag in its environment (`AGENTWIRE_AGENT_TAG`),
and stopping the agent signals every process whose environment carries that tag (Linux `/proc`).

`AgentProcess` is one tagged agent subprocess of a turn: a CLI that reads its prompt on stdin and prints
one JSON object per line (the `cli` provider's stream-json command, Codex, Gemini CLI). Following its
lines to the end of a turn is `jsonl_agent.follow`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable

import orjson

from agentwire.providers import ProviderError
from agentwire.types import JSON

log = logging.getLogger("agentwire.providers.process")

TAG_VARIABLE = "AGENTWIRE_AGENT_TAG"
LINE_LIMIT = 16 * 1024 * 1024  # one output line of an agent (a big tool result or file read fits)
STDERR_LINES = 20  # stderr lines an `AgentProcess` keeps for error messages
SKIPPED_KEPT = 3  # stdout lines that were not JSON events an `AgentProcess` keeps for error messages
_PROC = "/proc"


def new_tag() -> str:
    return secrets.token_hex(8)


def tagged_env(tag: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for an agent process: `base` (default: ours) with the tag added."""
    env = dict(os.environ if base is None else base)
    env[TAG_VARIABLE] = tag
    return env


def find_tagged(tag: str) -> list[int]:
    """Pids of live processes started with `tag` in their environment (not zombies; not us)."""
    marker = f"{TAG_VARIABLE}={tag}".encode()
    found = []
    me = os.getpid()
    try:
        entries = os.listdir(_PROC)
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"{_PROC}/{entry}/environ", "rb") as file:
                environ = file.read()
            with open(f"{_PROC}/{entry}/stat", "rb") as file:
                state = file.read().rsplit(b")", 1)[1].split()[0]
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if state != b"Z" and marker in environ.split(b"\0"):
            found.append(int(entry))
    return found


def signal_all(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def exit_status(returncode: int | None) -> str:
    """How a child ended, in words for an error message: "exited with code 1", "was killed by SIGKILL"."""
    if returncode is None:
        return "is still running"
    if returncode >= 0:
        return f"exited with code {returncode}"
    try:
        return f"was killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"was killed by signal {-returncode}"


async def keep_tail(stream: asyncio.StreamReader, tail: deque[str],
                    on_line: Callable[[str], None] | None = None) -> None:
    """Read a child's stream (its stderr) to the end, keeping its last lines in `tail` for error messages."""
    while True:
        try:
            raw = await stream.readline()
        except ValueError:  # a line over the reader's limit: its start is dropped, keep reading
            continue
        if not raw:
            return
        line = raw.decode(errors="replace").rstrip()[:2000]
        if line:
            tail.append(line)
            if on_line is not None:
                on_line(line)


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


async def stop_tagged(tag: str, *, grace: float = 1.5, first: signal.Signals = signal.SIGTERM) -> list[int]:
    """Signal every process carrying `tag` with `first`, then SIGKILL what is left after `grace`
    seconds. Returns the pids that were found at first (for logs and tests)."""
    pids = find_tagged(tag)
    if not pids:
        return []
    signal_all(pids, first)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    # Polled: /proc offers no notification when an unrelated process (not our child) exits.
    while (left := find_tagged(tag)) and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    if left:
        signal_all(left, signal.SIGKILL)
        deadline = loop.time() + 5
        while find_tagged(tag) and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    return pids


async def stop_agent(pid: int | None, tag: str, *, interrupt_grace: float = 2.0, grace: float = 1.5) -> None:
    """Stop an agent and everything it started. SIGINT first, to the agent alone: Claude Code then
    stops the tools it runs and exits (on SIGTERM it exits at once and leaves them running). After
    `interrupt_grace` seconds, SIGTERM then SIGKILL to every process still carrying the tag."""
    try:
        if pid is not None and pid in find_tagged(tag):
            signal_all([pid], signal.SIGINT)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + interrupt_grace
            while pid in find_tagged(tag) and loop.time() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        await stop_tagged(tag, grace=grace)
    except BaseException:  # cancelled half-way (e.g. a second cancel at shutdown): leave nothing running
        kill_tagged(tag)
        raise


def kill_tagged(tag: str) -> None:
    """SIGKILL every process carrying `tag`, without waiting: the last resort where nothing may await."""
    signal_all(find_tagged(tag), signal.SIGKILL)


class AgentProcess:
    """One agent subprocess of a turn (a CLI reading its prompt from stdin and printing JSON lines):
    in a session of its own (a Ctrl-C meant for the server must not reach it), tagged, its stderr
    drained in the background (the last lines kept for error messages), its stdout read as JSON events
    (the other lines counted and the first few kept), stopped with everything it started (`stop_agent`)."""

    def __init__(self, proc: asyncio.subprocess.Process, args: list[str], cwd: str, tag: str, label: str) -> None:
        self.proc = proc
        self.label = label
        self.args = args
        self.cwd = cwd
        self.tag = tag
        self.pid = proc.pid
        self.started = time.monotonic()
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_LINES)
        self.skipped: list[str] = []  # the first stdout lines that were not events (`skip`)
        self.skipped_count = 0
        self._stderr_task = asyncio.create_task(self._drain_stderr(), name=f"{label} stderr {proc.pid}")

    @classmethod
    async def start(cls, args: list[str], cwd: str, *, label: str, env: dict[str, str] | None = None) -> AgentProcess:
        """`label`: the agent in messages ("cannot start <label>: …"); `env`: added to ours."""
        tag = new_tag()
        try:
            proc = await asyncio.create_subprocess_exec(
                *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, limit=LINE_LIMIT, start_new_session=True, cwd=cwd,
                env=tagged_env(tag, {**os.environ, **(env or {})}))
        except (OSError, ValueError) as exc:
            raise ProviderError(f"cannot start {label}: {args[0]}: {exc.strerror or exc}"
                                if isinstance(exc, OSError) else f"cannot start {label}: {exc}") from exc
        log.debug("started %s pid %s: %s", label, proc.pid, args)
        return cls(proc, args, cwd, tag, label)

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def send(self, prompt: str) -> None:
        """The turn's prompt, then the end of its input. Not awaited: the pipe takes what it can now and
        asyncio writes the rest as the child reads, so a long prompt cannot block against its output."""
        stdin = self.proc.stdin
        assert stdin is not None
        try:
            stdin.write(prompt.encode())
        except (BrokenPipeError, ConnectionResetError):
            pass  # the child is gone already: its exit status and stderr tell why
        self.close_stdin()

    def events(self) -> AsyncIterator[JSON]:
        """Its stdout's JSON events, to the end of its output; other lines go to `skip`."""
        assert self.proc.stdout is not None
        return json_events(self.proc.stdout, self.skip)

    def skip(self, line: str) -> None:
        """A line that is not an event this agent sends: counted, the first few kept for the error."""
        self.skipped_count += 1
        if len(self.skipped) < SKIPPED_KEPT:
            self.skipped.append(line[:200])
        log.log(logging.WARNING if self.skipped_count <= SKIPPED_KEPT else logging.DEBUG,
                "%s %s: skipped a line that is not a JSON event: %.200s", self.label, self.pid, line)

    async def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        await keep_tail(self.proc.stderr, self.stderr_tail,
                        lambda line: log.debug("%s %s stderr: %s", self.label, self.pid, line))

    async def exited(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the process itself to exit, then for its last stderr lines.
        Polled: before Python 3.12 `Process.wait()` also waits for every pipe to close, which a
        grandchild that outlives the agent may never do."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.proc.returncode is None and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        if self.proc.returncode is None:
            return False
        if not self._stderr_task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._stderr_task), 0.5)
        return True

    def close_stdin(self) -> None:
        stdin = self.proc.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.close()

    async def stop(self) -> None:
        """Stop the child and every process it started (`stop_agent`), and reap it. Safe to call
        twice, and when cancelled."""
        self.close_stdin()
        try:
            await stop_agent(self.pid if self.alive else None, self.tag)
            if self.alive:  # not found by its tag (it rewrote its environment): by its process group
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.pid, signal.SIGKILL)
            await self.exited(10)
        finally:
            # A killed child closes its pipes, and `exited` gave the reader a moment: stop it.
            self._stderr_task.cancel()

    def failure(self, what: str) -> str:
        """Why the turn failed: "<label> exited with code 1 <what>; stderr: <its last lines>"."""
        message = f"{self.label} {exit_status(self.proc.returncode)} {what}"
        if self.stderr_tail:
            message += "; stderr: " + " | ".join(list(self.stderr_tail)[-5:])
        return message
