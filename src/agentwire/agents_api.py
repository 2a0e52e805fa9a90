"""`GET /api/agents`: the agents this server can run sessions with — name, label, version, whether it
is available here and, if not, why (the same reason a session with it would be refused for)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from fastapi import APIRouter, Request

from agentwire.console.runtime import Console
from agentwire.providers import PROVIDERS, agents
from agentwire.types import JSON


def router(console_of: Callable[[Request], Console]) -> APIRouter:
    api = APIRouter(tags=["agents"])

    @api.get("/api/agents")
    async def list_agents(request: Request) -> JSON:
        console = console_of(request)
        listed = await asyncio.gather(*(agents.describe(name, console.settings(name), console.config.cli_command)
                                        for name in PROVIDERS))
        return {"agents": list(listed), "default": console.config.provider}

    return api
