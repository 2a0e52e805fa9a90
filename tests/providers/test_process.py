"""Finding and stopping every process an agent started, also those in sessions of their own whose
parent is gone (re-parented to PID 1), by the tag in their environment."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time

from agentwire.providers.process import find_tagged, new_tag, stop_tagged, tagged_env
from tests.support.eventually import eventually
from tests.support.procs import alive


def test_an_orphan_in_its_own_session_is_found_and_stopped(tmp_path: object) -> None:
    tag = new_tag()
    # The "agent" starts a "tool" in a session of its own (as Claude Code does), then dies by SIGKILL.
    agent = subprocess.Popen(["sh", "-c", "setsid sleep 300 & echo $! ; wait"], env=tagged_env(tag),
                             stdout=subprocess.PIPE, start_new_session=True)
    assert agent.stdout is not None
    tool = int(agent.stdout.readline())
    # Once the tool leads a session of its own, it is outside the agent's process group.
    eventually(lambda: os.getsid(tool) == tool and set(find_tagged(tag)) >= {agent.pid, tool})
    agent.kill()
    agent.wait(5)
    assert alive(tool)
    assert find_tagged(tag) == [tool]  # the dead agent is not listed; its orphan is

    found = asyncio.run(stop_tagged(tag, grace=1.0))
    assert found == [tool]
    eventually(lambda: not alive(tool), timeout=5)
    assert find_tagged(tag) == []


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace() -> None:
    tag = new_tag()
    stubborn = subprocess.Popen(["sh", "-c", "trap '' TERM; while :; do sleep 0.05; done"], env=tagged_env(tag))
    eventually(lambda: stubborn.pid in find_tagged(tag))
    started = time.monotonic()
    asyncio.run(stop_tagged(tag, grace=0.3))
    assert stubborn.wait(5) == -signal.SIGKILL
    assert time.monotonic() - started < 5


def test_untagged_processes_are_left_alone() -> None:
    other = subprocess.Popen(["sleep", "30"], env=tagged_env(new_tag()))
    try:
        assert asyncio.run(stop_tagged(new_tag(), grace=0.1)) == []
        assert other.poll() is None
    finally:
        other.kill()
        other.wait(5)
