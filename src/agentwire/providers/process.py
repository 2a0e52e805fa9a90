"""Every process an agent starts, found and stopped, whatever session or parent it ended up with.

Agent CLIs run their tools in sessions of their own (Claude Code `setsid`s each Bash command), so
signalling the agent's process group misses them, and once the agent exits they are re-parented to
PID 1, so walking the process tree misses them too. What every descendant does keep is the
environment it was started with: each agent gets a tag in its environment (`AGENTWIRE_AGENT_TAG`),
and stopping the agent signals every process whose environment carries that tag (Linux `/proc`).

`AgentProcess` is one tagged agent subprocess of a turn (the `cli` provider's; the shape of any CLI
agent run once per prompt that prints JSON lines).
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
from collections.abc import Iterable

from agentwire.providers import ProviderError

log = logging.getLogger("agentwire.providers.process")

TAG_VARIABLE = "AGENTWIRE_AGENT_TAG"
LINE_LIMIT = 16 * 1024 * 1024  # one output line of an agent (a big tool result or file read fits)
STDERR_LINES = 20  # stderr lines an `AgentProcess` keeps for error messages
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
    in a session of its own, tagged, its stderr drained in the background (the last lines kept for
    error messages), stopped with everything it started (`stop_agent`)."""

    def __init__(self, proc: asyncio.subprocess.Process, args: list[str], cwd: str, tag: str, label: str) -> None:
        self.proc = proc
        self.label = label
        self.args = args
        self.cwd = cwd
        self.tag = tag
        self.pid = proc.pid
        self.started = time.monotonic()
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_LINES)
        self._stderr_task = asyncio.create_task(self._drain_stderr(), name=f"agent stderr {proc.pid}")

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

    async def _drain_stderr(self) -> None:
        stream = self.proc.stderr
        assert stream is not None
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line over the limit: its start is dropped, keep reading
                continue
            if not raw:
                return
            line = raw.decode(errors="replace").rstrip()
            if line:
                self.stderr_tail.append(line[:2000])
                log.debug("%s %s stderr: %s", self.label, self.pid, line[:2000])

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

    def close_stdin(self) -> None:
        stdin = self.proc.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.close()

    async def stop(self) -> None:
        """Stop the child and every process it started (`process.stop_agent`), and reap it. Safe to
        call twice, and when cancelled."""
        self.close_stdin()
        try:
            await stop_agent(self.pid if self.alive else None, self.tag)
            await asyncio.wait_for(self.exited(), 10)
        finally:
            if not self._stderr_task.done():
                # A killed child closes its pipes; give the reader a moment, then stop it.
                await self.stderr_settled(0.2)
                self._stderr_task.cancel()

    def died_message(self, what: str) -> str:
        code = self.proc.returncode
        if code is None:
            status = "is still running"
        elif code < 0:
            try:
                status = f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                status = f"was killed by signal {-code}"
        else:
            status = f"exited with code {code}"
        message = f"{self.label} {status} ({what})"
        if self.stderr_tail:
            message += "; stderr: " + " | ".join(list(self.stderr_tail)[-5:])
        return message
