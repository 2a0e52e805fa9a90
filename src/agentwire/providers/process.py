"""Every process an agent starts, found and stopped, whatever session or parent it ended up with.

Agent CLIs run their tools in sessions of their own (Claude Code `setsid`s each Bash command), so
signalling the agent's process group misses them, and once the agent exits they are re-parented to
PID 1, so walking the process tree misses them too. What every descendant does keep is the
environment it was started with: each agent gets a tag in its environment (`AGENTWIRE_AGENT_TAG`),
and stopping the agent signals every process whose environment carries that tag (Linux `/proc`).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
from collections import deque
from collections.abc import Callable, Iterable

TAG_VARIABLE = "AGENTWIRE_AGENT_TAG"
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
