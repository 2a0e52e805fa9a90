"""The agent console: sessions, turns on two lanes, built-in tools, transcript folding.

Nothing is imported here eagerly: the Python client imports the transcript fold (`transcript.py`)
without loading the server (`runtime.py` and what it needs). `Console` is loaded on first use."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentwire.console.runtime import Console

__all__ = ["Console"]


def __getattr__(name: str) -> Any:
    if name == "Console":
        from agentwire.console.runtime import Console

        return Console
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
