"""A provider that remembers across turns through `TurnIO.remember`, as agent CLIs keep their session
id: each turn reports how many turns its resumed context has seen."""

from __future__ import annotations

from agentwire.providers import TurnIO
from agentwire.types import JSON


class RememberingProvider:
    name = "remembering"

    def __init__(self, model: str, options: JSON) -> None:
        self.model = model

    async def run(self, io: TurnIO) -> None:
        seen = int(io.resume.get("turns_seen", 0)) + 1
        await io.remember({"name": "remembering", "version": "1", "cwd": io.cwd,
                           "resume_id": f"ctx-{seen}", "turns_seen": seen})
        await io.text(0, f"turn {seen} of this context")
        await io.text_done(0, f"turn {seen} of this context")

    async def close(self) -> None:
        pass
