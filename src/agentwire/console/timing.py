"""Turn timing as the original kontask cards show it: TTFE, thinking and tool shares of the total."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from agentwire.types import JSON


def _pct(part: float, total: float) -> int:
    return round(100 * part / total) if total > 0 else 0


@dataclass
class TurnClock:
    started: float = field(default_factory=time.monotonic)
    first_event: float | None = None
    tool_ms: float = 0.0
    tool_count: int = 0

    def saw_output(self) -> None:
        """The agent produced something (thinking, text or a tool call): the first one ends TTFE."""
        if self.first_event is None:
            self.first_event = time.monotonic()

    def tool_ran(self, duration_ms: float) -> None:
        self.tool_ms += duration_ms
        self.tool_count += 1

    def timing(self) -> JSON:
        total = (time.monotonic() - self.started) * 1000
        ttfe = ((self.first_event or time.monotonic()) - self.started) * 1000
        tools = min(self.tool_ms, max(0.0, total - ttfe))
        # What is neither waiting for the first event nor running tools is the model at work.
        thinking = max(0.0, total - ttfe - tools)
        return {
            "totalMs": round(total), "ttfeMs": round(ttfe), "thinkingMs": round(thinking),
            "toolExecutionMs": round(tools), "toolCallCount": self.tool_count,
            "ttfePct": _pct(ttfe, total), "thinkingPct": _pct(thinking, total), "toolsPct": _pct(tools, total),
        }
