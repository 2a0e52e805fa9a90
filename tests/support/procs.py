"""Processes as Linux `/proc` shows them: alive or not, when they started, which carry an environment
entry (how tests find what an agent started, wherever it was re-parented)."""

from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie (an orphan nobody reaped is as good as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            return file.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except FileNotFoundError:
        return False


def started_at(pid: int) -> int:
    """The process's start time (clock ticks since boot): tells a pid apart from a reused one."""
    with open(f"/proc/{pid}/stat", "rb") as file:
        return int(file.read().rsplit(b")", 1)[1].split()[19])


def with_environ(entry: str) -> dict[int, str]:
    """pid → command line of every live process whose environment has `entry` (`NAME=value`)."""
    marker = entry.encode()
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        try:
            with open(f"/proc/{pid}/environ", "rb") as file:
                if marker not in file.read().split(b"\0"):
                    continue
            with open(f"/proc/{pid}/cmdline", "rb") as file:
                command = file.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if alive(pid):
            found[pid] = command
    return found
