"""What an agent keeps for its session (`TurnIO.remember`): journaled as `agent.info`, stored as the
session's agent record, handed back as `resume` to the next main turn — also after a restart — and
never taken from, or given to, the quick lane. Session option `cwd` must name a directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agentwire import providers
from agentwire.providers import ProviderInfo
from agentwire.types import JSON
from tests.support.server import running_app
from tests.support.turns import create_session, run_turn


@pytest.fixture(autouse=True)
def remembering_provider(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setitem(providers.PROVIDERS, "remembering",
                        ProviderInfo("tests.support.remembering:RememberingProvider", None, "r-1"))
    yield


def _text(events: list[JSON]) -> str:
    return "".join(e["data"]["text"] for e in events if e["type"] == "text.done")


def test_the_record_survives_a_restart_and_the_quick_lane_keeps_its_own(tmp_path: Path) -> None:
    journal = f"sqlite:///{tmp_path}/j.db"
    with running_app(journal=journal) as (url, _):
        create_session(url, "s", provider="remembering", options={"cwd": str(tmp_path)})
        first = run_turn(url, "s", "one")
        assert _text(first) == "turn 1 of this context"
        info = next(e for e in first if e["type"] == "agent.info")
        assert info["data"] == {"name": "remembering", "version": "1", "cwd": str(tmp_path),
                                "resume_id": "ctx-1", "turns_seen": 1}
        assert _text(run_turn(url, "s", "quick one", lane="quick")) == "turn 1 of this context"
    with running_app(journal=journal) as (url, _):
        assert _text(run_turn(url, "s", "two")) == "turn 2 of this context"
        state = httpx.get(f"{url}/api/konsole/s/state").json()
        assert state["agent"]["resume_id"] == "ctx-2"


def test_cwd_must_be_a_directory(tmp_path: Path) -> None:
    with running_app() as (url, _):
        response = httpx.post(f"{url}/api/konsole", json={"name": "s", "options": {"cwd": str(tmp_path / "nope")}})
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "bad_cwd"
        assert response.json()["error"]["field"] == "options.cwd"
        assert httpx.get(f"{url}/api/konsole/s").status_code == 404
