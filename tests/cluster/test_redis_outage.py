"""Redis stopped and started again under two running `agentwire serve` nodes, mid-stream.

While Redis is down, appends answer 503 with `{"error": {"code": "journal_unavailable"}}` at once (no
hang), `/healthz` answers 503, and open SSE streams stay open (heartbeats go on). Once Redis is back
(appendonly yes, appendfsync always: nothing it acknowledged is lost), the very same connections go on
receiving new events without reconnecting, and every task whose POST answered 201 is in the stream with
the seq the clients saw before the outage. A turn that was streaming when Redis went away ends as
`turn.failed {"error": "interrupted"}` once Redis is back, so no viewer waits forever.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest

from tests.support.cluster import AUTH, LEASE_SECONDS, TOKEN, Node, ends_turn, follower, journal_events, wire
from tests.support.eventually import eventually
from tests.support.redis_server import RedisServer
from tests.support.sse import Follower, SseStream, is_event

pytestmark = [pytest.mark.redis]


@dataclass
class Writer:
    """Creates tasks on one node as fast as it answers, remembering what was acknowledged and how
    every refusal looked."""

    node: Node
    name: str
    acknowledged: list[str] = field(default_factory=list)
    refused: list[tuple[float, int, dict[str, object] | str, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    halt: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> Writer:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        with httpx.Client(base_url=self.node.url, headers=AUTH, timeout=10) as http:
            n = 0
            while not self.halt.is_set():
                task_id = f"{self.name}-{n}"
                n += 1
                began = time.monotonic()
                try:
                    response = http.post("/api/tasks", json={"id": task_id, "title": f"outage {task_id}"})
                except httpx.HTTPError as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                    time.sleep(0.05)
                    continue
                took = time.monotonic() - began
                if response.status_code == 201:
                    self.acknowledged.append(task_id)
                else:
                    try:
                        body: dict[str, object] | str = response.json()
                    except ValueError:
                        body = response.text
                    self.refused.append((time.monotonic(), response.status_code, body, took))
                    time.sleep(0.05)

    def stop(self) -> None:
        self.halt.set()
        if self.thread is not None:
            self.thread.join(30)


@pytest.fixture
def outage(tmp_path: Path) -> Iterator[tuple[RedisServer, list[Node]]]:
    redis = RedisServer(tmp_path / "redis", appendonly=True, appendfsync="always").start()
    nodes = [Node(redis.url, token=TOKEN, log_path=tmp_path / f"node-{i}.log",
                  args=["--lease-seconds", str(LEASE_SECONDS), "--heartbeat", "0.5"]) for i in range(2)]
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(Node.start, nodes))
        yield redis, nodes
    finally:
        for node in nodes:
            node.stop()
        redis.stop()


def waited(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """`eventually(condition)`; returns the seconds it took (reported, not asserted)."""
    began = time.monotonic()
    eventually(condition, timeout, what)
    return time.monotonic() - began


def healthz(node: Node) -> int:
    try:
        return httpx.get(f"{node.url}/healthz", headers=AUTH, timeout=5).status_code
    except httpx.HTTPError:
        return 0


def test_redis_restart_mid_stream_loses_nothing_acknowledged(outage: tuple[RedisServer, list[Node]]) -> None:
    redis, (a, b) = outage
    httpx.post(f"{a.url}/api/konsole", headers=AUTH, json={"name": "outage", "options": {
        "deltas": 100_000, "delay_ms": 5, "thinking": False, "tool_calls": 0}}).raise_for_status()
    boards = [follower(node, "/api/stream/tasks?from=1") for node in (a, b)]
    viewer = follower(b, "/api/konsole/outage/events")
    turn_post = SseStream(a.port, "/api/konsole/outage/stream", AUTH, method="POST",
                          body=orjson.dumps({"message": "stream through the outage"}))
    assert turn_post.read_headers() == 200
    turn = turn_post.headers["x-agentwire-turn"]
    turn_reader = Follower(turn_post)
    turn_reader.start()
    writers = [Writer(a, "on-a").start(), Writer(b, "on-b").start()]
    readers = [*boards, viewer, turn_reader]
    try:
        waited(lambda: all(len(w.acknowledged) >= 30 for w in writers), 60, "tasks before the outage")
        viewer.wait_for(lambda events: sum(1 for m in events if m.event == "text.delta") >= 50, 30)
        before = [wire(board.stream.messages) for board in boards]

        # -- down ---------------------------------------------------------------------------------
        redis.stop()
        stopped = time.monotonic()
        acknowledged_at_stop = [len(w.acknowledged) for w in writers]
        took = waited(lambda: all(any(t > stopped for t, *_ in w.refused) for w in writers), 15, "refused appends")
        print(f"first 503 on both nodes {took:.2f} s after Redis stopped")
        for node in (a, b):
            began = time.monotonic()
            response = httpx.get(f"{node.url}/healthz", headers=AUTH, timeout=10)
            assert response.status_code == 503 and response.json()["status"] == "unavailable"
            assert time.monotonic() - began < 5
            # A new subscription cannot reach the journal either: a clear 503, not a hang.
            refused = httpx.get(f"{node.url}/api/stream/tasks?from=1", headers=AUTH, timeout=10)
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "journal_unavailable"
        time.sleep(2.0)  # a real outage: longer than a turn lease and than the heartbeat
        pings = [len(reader.stream.body) for reader in readers]
        time.sleep(1.5)
        for reader, size in zip(readers, pings, strict=True):
            assert not reader.stream.eof, "an open stream was closed by the outage"
            assert len(reader.stream.body) > size, "no heartbeat during the outage"
        for writer in writers:
            during = [(status, body, took) for t, status, body, took in writer.refused if t > stopped]
            assert during and all(status == 503 for status, _, _ in during), during[:3]
            assert all(isinstance(body, dict) and body["error"]["code"] == "journal_unavailable"  # type: ignore[index]
                       for _, body, _ in during), during[:3]
            assert max(took for _, _, took in during) < 5, "an append hung instead of failing"
        outage_seconds = time.monotonic() - stopped

        # -- back -----------------------------------------------------------------------------------
        redis.start()
        restarted_wall = time.time()
        healthy = waited(lambda: healthz(a) == 200 and healthz(b) == 200, 30, "healthz after the restart")
        counts = [len(w.acknowledged) for w in writers]
        waited(lambda: all(len(w.acknowledged) >= n + 30 for w, n in zip(writers, counts, strict=True)), 60,
             "tasks after the restart")
        for writer in writers:
            writer.stop()
        journal = journal_events(redis.url, "tasks")
        head = journal[-1][0]
        for board in boards:
            board.wait_for(lambda events: bool(events) and int(events[-1].id or 0) >= head, 30)
        # The interrupted turn ends for every viewer: on B's session stream and A's own POST response.
        waited(lambda: any(ends_turn(turn)(m) for m in viewer.events), 30, "the turn's end")
        turn_end = next(t for m, t in zip(viewer.stream.messages, viewer.stream.received_at, strict=True)
                        if ends_turn(turn)(m)) - restarted_wall
        turn_reader.wait_for(lambda events: any(ends_turn(turn)(m) for m in events), 30)
    finally:
        for writer in writers:
            writer.stop()
        for reader in readers:
            reader.stop()
    print(f"outage {outage_seconds:.1f} s; healthy {healthy:.2f} s after Redis restarted; the interrupted turn "
          f"reached its viewers {turn_end:.2f} s after; "
          f"acknowledged {sum(len(w.acknowledged) for w in writers)} tasks "
          f"({sum(acknowledged_at_stop)} before the stop), {sum(len(w.refused) for w in writers)} refused")

    # The journal: one seq per event, no gap, and every acknowledged task in it exactly once.
    assert [seq for seq, _ in journal] == list(range(1, head + 1))
    created = [orjson.loads(raw)["data"]["task"]["id"] for _, raw in journal]
    assert len(created) == len(set(created))
    acknowledged = {task for writer in writers for task in writer.acknowledged}
    missing = acknowledged - set(created)
    assert not missing, f"acknowledged but lost: {sorted(missing)[:5]}"
    for board, seen in zip(boards, before, strict=True):
        # What clients held before the outage is still there, with the same seq and bytes, …
        assert seen == journal[: len(seen)]
        # … and the connection that stayed open got exactly the journal's events, none twice.
        assert wire(board.stream.messages) == journal
        assert sum(1 for m in board.stream.messages if m.event == "stream.open") == 1
    session = journal_events(redis.url, "konsole/outage")
    ends = [raw for _, raw in session if orjson.loads(raw).get("turn") == turn
            and orjson.loads(raw)["type"] in ("turn.completed", "turn.failed", "turn.cancelled")]
    assert len(ends) == 1 and orjson.loads(ends[0])["type"] == "turn.failed"
    assert wire(viewer.stream.messages) == session
    posted = [(seq, raw) for seq, raw in session if orjson.loads(raw).get("turn") == turn]
    assert wire(turn_post.messages) == posted
    assert all(is_event(m) or m.event == "stream.open" for m in viewer.stream.messages)


def test_one_node_alone_ends_its_turn_that_streamed_into_an_outage(tmp_path: Path) -> None:
    """With no other node to take the lapsed lease, the owner itself records the end of a turn whose
    terminal event could not be stored while Redis was down."""
    redis = RedisServer(tmp_path / "redis", appendonly=True, appendfsync="always").start()
    node = Node(redis.url, token=TOKEN, log_path=tmp_path / "node.log",
                args=["--lease-seconds", str(LEASE_SECONDS), "--heartbeat", "0.5"])
    try:
        node.start()
        httpx.post(f"{node.url}/api/konsole", headers=AUTH, json={"name": "alone", "options": {
            "deltas": 100_000, "delay_ms": 5}}).raise_for_status()
        viewer = follower(node, "/api/konsole/alone/events")
        post = SseStream(node.port, "/api/konsole/alone/stream", AUTH, method="POST",
                         body=orjson.dumps({"message": "keep going"}))
        assert post.read_headers() == 200
        turn = post.headers["x-agentwire-turn"]
        viewer.wait_for(lambda events: sum(1 for m in events if m.event == "text.delta") >= 20, 30)
        redis.stop()
        time.sleep(LEASE_SECONDS + 1)
        redis.start()
        restarted = time.time()
        viewer.wait_for(lambda events: any(ends_turn(turn)(m) for m in events), 20)
        post.read_to_eof(20)
        end = next(m for m in viewer.events if ends_turn(turn)(m))
        assert end.event == "turn.failed" and orjson.loads(end.data)["data"] == {"error": "interrupted"}
        assert wire(post.messages)[-1] == wire([end])[0]
        state = httpx.get(f"{node.url}/api/konsole/alone/state", headers=AUTH).json()
        assert state["running"] == [] and state["agent_state"] == "idle"
        print(f"the turn's end reached its viewer {viewer.stream.received_at[-1] - restarted:.2f} s after the restart")
        viewer.stop()
    finally:
        node.stop()
        redis.stop()


def test_a_turn_quiet_through_an_outage_is_not_taken_for_dead(outage: tuple[RedisServer, list[Node]]) -> None:
    """A turn that appends nothing while Redis is down (a long tool call) survives an outage longer
    than its lease: its owner takes the lease again before any other node may sweep it."""
    redis, (a, b) = outage
    httpx.post(f"{a.url}/api/konsole", headers=AUTH, json={"name": "quiet", "options": {
        "deltas": 1, "delay_ms": 9000, "tool_calls": 1, "thinking": False}}).raise_for_status()
    viewer = follower(b, "/api/konsole/quiet/events")
    post = SseStream(a.port, "/api/konsole/quiet/stream", AUTH, method="POST",
                     body=orjson.dumps({"message": "look it up"}))
    assert post.read_headers() == 200
    turn = post.headers["x-agentwire-turn"]
    try:
        post.read_until(lambda m: m.event == "tool.call" and orjson.loads(m.data)["data"]["name"] == "lookup", 30)
        redis.stop()
        time.sleep(LEASE_SECONDS + 1.5)  # every lease of the turn has lapsed by now
        redis.start()
        # Long enough for any node's sweeper to have run several times since Redis came back.
        time.sleep(LEASE_SECONDS + LEASE_SECONDS / 3 + 1.0)
        assert not any(ends_turn(turn)(m) for m in viewer.events), "a live turn was marked interrupted"
        # The turn goes on: its lookup returns, its events still reach the viewer on the other node.
        viewer.wait_for(lambda events: any(m.event == "tool.result" for m in events), 20)
        assert httpx.post(f"{a.url}/api/konsole/quiet/cancel", headers=AUTH).status_code == 200
        viewer.wait_for(lambda events: any(ends_turn(turn)(m) for m in events), 20)
    finally:
        viewer.stop()
        post.close()
    session = journal_events(redis.url, "konsole/quiet")
    ends = [orjson.loads(raw)["type"] for _, raw in session if orjson.loads(raw)["type"] in
            ("turn.completed", "turn.failed", "turn.cancelled")]
    assert ends == ["turn.cancelled"]
    assert wire(viewer.stream.messages) == session
