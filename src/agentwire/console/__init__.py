"""The agent console: sessions, turns on two lanes, built-in tools, transcript folding."""

from agentwire.console.runtime import Console

__all__ = ["Console"]
