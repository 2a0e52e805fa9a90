"""Scale-out on Redis Streams: several real `agentwire serve` processes on one redis-server.

A turn started on node A is watched live from B (and C) and B's stream equals A's POST stream byte for
byte; a stream read from one node and cut at random byte offsets resumes on another node with
`Last-Event-ID` to exactly the journal's events; appends from every node at once to one stream get
one seq each with no gap; and a node killed with SIGKILL mid-turn has its turn marked
`turn.failed {"error": "interrupted"}` by the other nodes within the lease time.

Every test starts its own redis-server (tests/support/redis_server.py) on a free port and talks to
the journal's own bytes (read back through `RedisJournal`) where it says "the journal's events".
"""

from __future__ import annotations

import itertools
import random
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.support.cluster import (
    AUTH,
    LEASE_SECONDS,
    TERMINAL,
    Cluster,
    Node,
    Wire,
    create_session,
    ends_turn,
    follower,
    open_stream,
    read_to_seq,
    start_turn,
    unique,
    wire,
)
from tests.support.proxy import TcpProxy
from tests.support.sse import SseStream, envelope

pytestmark = [pytest.mark.redis]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    # A little more lease than the kill test's: here every turn must live, even on a machine so busy
    # that a node's renewal (every lease/3) comes late.
    found = Cluster(tmp_path_factory.mktemp("multinode"), 3, lease=3.0)
    try:
        yield found.start()
    finally:
        found.stop()


@pytest.mark.parametrize("count", [2, 3], ids=["2-nodes", "3-nodes"])
def test_turn_on_one_node_is_watched_live_from_the_others(cluster: Cluster, count: int) -> None:
    a, *others = cluster.nodes[:count]
    session = unique("live")
    create_session(a, session, deltas=400, delay_ms=5)
    watchers = [follower(node, f"/api/konsole/{session}/events") for node in others]
    try:
        post = start_turn(a, session, "a long answer, watched from elsewhere")
        assert post.read_headers() == 200
        turn = post.headers["x-agentwire-turn"]
        post.read_to_eof(60)
        posted = wire(post.messages)
        assert posted[-1][1] == post.events[-1].data and post.events[-1].event == "turn.completed"
        assert sum(1 for m in post.events if m.event == "text.delta") >= 400
        for watcher in watchers:
            watcher.wait_for(lambda events: any(ends_turn(turn)(m) for m in events), 30)
    finally:
        for watcher in watchers:
            watcher.stop()
    journal = cluster.journal(f"konsole/{session}")
    assert posted == journal[1:], "A's POST stream is the turn's events as journaled"
    for node, watcher in zip(others, watchers, strict=True):
        seen = wire(watcher.stream.messages)
        assert seen == journal, f"node {node.port} delivered other bytes than the journal holds"
        # Live, not replayed after the fact: B had the first delta long before A's turn ended.
        first_delta = next(i for i, m in enumerate(watcher.stream.messages) if m.event == "text.delta")
        assert watcher.stream.received_at[first_delta] < post.received_at[-1] - 1.0
        # Per-event delay between A's own response and B's view of the same event.
        at_a = {int(m.id): t for m, t in zip(post.messages, post.received_at, strict=True) if m.id}
        lag = sorted(t - at_a[int(m.id)] for m, t in zip(watcher.stream.messages, watcher.stream.received_at,
                                                            strict=True) if m.id and int(m.id) in at_a)
        print(f"{count} nodes: node {node.port} behind A's own POST stream over {len(lag)} events: "
              f"p50 {statistics.median(lag) * 1000:.1f} ms, max {lag[-1] * 1000:.1f} ms")


# -- resume on another node after a cut --------------------------------------------------------------


def read_cut(path: str, proxy: TcpProxy, offset: int, *, last: int | None = None, method: str = "GET",
             body: bytes | None = None) -> SseStream:
    """Read `path` through `proxy`, whose next connection is cut after `offset` bytes downstream, until
    the cut (or the response's end, or seq `last` if the cut comes later than that)."""
    proxy.plan_cuts([offset])
    stream = SseStream(proxy.port, path, AUTH, method=method, body=body)
    deadline = time.monotonic() + 60
    while not stream.eof and not (last is not None and stream.events and int(stream.events[-1].id or 0) >= last):
        assert time.monotonic() < deadline, f"no cut and no end within 60 s ({len(stream.events)} events)"
        stream.read_some(0.5)
    stream.close()
    return stream


def test_resume_on_another_node_after_random_cuts(cluster: Cluster) -> None:
    """A finished session stream read from A through a proxy that cuts it at random byte offsets,
    resumed on B or C with the last id seen: the client holds exactly the journal's events."""
    a, *others = cluster.nodes
    session = unique("cuts")
    create_session(a, session, deltas=1500, delay_ms=0, tool_calls=2)
    post = start_turn(a, session, "a long answer to cut")
    post.read_to_eof(60)
    journal = cluster.journal(f"konsole/{session}")
    head = journal[-1][0]
    path = f"/api/konsole/{session}/events"
    whole = read_to_seq(a, path, head)
    size = len(whole.head) + 4 + len(whole.body) * 11 // 10  # about the bytes on the wire, chunk framing too
    rng = random.Random(1207)
    offsets = sorted({0, 1, 200, size // 2, *(rng.randrange(0, size) for _ in range(24))})
    with TcpProxy(a.port) as proxy:
        for offset in offsets:
            first = read_cut(path, proxy, offset, last=head)
            got = wire(first.messages)
            resume_on = rng.choice(others)
            # With nothing received, the browser reconnects with no position at all.
            rest = read_to_seq(resume_on, path, head, got[-1][0] if got else None)
            combined = got + wire(rest.messages)
            assert combined == journal, (f"cut at {offset} ({len(got)} events before it), resumed on "
                                         f"{resume_on.port}: {len(combined)} events, journal {len(journal)}")
    print(f"{len(offsets)} cuts in a {size:,}-byte stream of {head} events, all resumed exactly on another node")


def test_live_turn_cut_on_one_node_resumes_on_another(cluster: Cluster) -> None:
    """A turn's own POST response from A is cut mid-turn; the client resumes on B or C with
    Last-Event-ID while the turn still runs on A, and ends with exactly the turn's journaled events."""
    a, *others = cluster.nodes
    rng = random.Random(77)
    with TcpProxy(a.port) as proxy:
        for offset in sorted(rng.randrange(300, 60_000) for _ in range(4)):
            session = unique("livecut")
            create_session(a, session, deltas=600, delay_ms=5, tool_calls=1)
            cut = read_cut(f"/api/konsole/{session}/stream", proxy, offset, method="POST",
                           body=orjson.dumps({"message": "cut me off"}))
            got = wire(cut.messages)
            turn = cut.headers.get("x-agentwire-turn")
            resume_on = rng.choice(others)
            headers = {"last-event-id": str(got[-1][0])} if got else {}
            resumed_at = time.time()
            stream = open_stream(resume_on.port, f"/api/konsole/{session}/events", headers)
            end = stream.read_until(ends_turn(turn), 60)
            stream.close()
            turn = envelope(end)["turn"]
            resumed = [(seq, raw) for seq, raw in wire(stream.messages) if orjson.loads(raw).get("turn") == turn]
            journal = [(seq, raw) for seq, raw in cluster.journal(f"konsole/{session}")
                       if orjson.loads(raw).get("turn") == turn]
            assert got + resumed == journal, f"cut at {offset} after {len(got)} events, resumed on {resume_on.port}"
            assert journal[-1][1] == end.data and end.event == "turn.completed"
            # The client resumed while the turn still ran on A: the other node delivered it live to its end.
            assert orjson.loads(end.data)["ts"] / 1000 > resumed_at


# -- concurrent appends from every node ------------------------------------------------------------


def test_concurrent_task_appends_from_all_nodes(cluster: Cluster) -> None:
    nodes = cluster.nodes
    head = httpx.get(f"{nodes[0].url}/api/tasks", params={"limit": 1}, headers=AUTH).json()["head"]
    boards = [follower(node, f"/api/stream/tasks?from={head + 1}") for node in nodes]
    run = unique("board")
    count = 150

    http = httpx.Client(headers=AUTH, timeout=30)  # pooled keep-alive connections, shared by the threads

    def create(i: int) -> tuple[str, int]:
        node = nodes[i % len(nodes)]
        task_id = f"{run}-{i}"
        response = http.post(f"{node.url}/api/tasks", json={"id": task_id, "title": f"task {i} from {node.port}"})
        return task_id, response.status_code

    try:
        with http, ThreadPoolExecutor(12) as pool:
            results = list(pool.map(create, range(count)))
        assert all(status == 201 for _, status in results), [r for r in results if r[1] != 201][:5]
        for board in boards:
            board.wait_for(lambda events: len(events) >= count, 30)
    finally:
        for board in boards:
            board.stop()
    journal = [(seq, raw) for seq, raw in cluster.journal("tasks") if seq > head]
    assert [seq for seq, _ in journal] == list(range(head + 1, head + count + 1)), "a gap or a repeated seq"
    ids = [orjson.loads(raw)["data"]["task"]["id"] for _, raw in journal]
    assert sorted(ids) == sorted(task_id for task_id, _ in results), "each task once"
    for node, board in zip(nodes, boards, strict=True):
        assert wire(board.stream.messages) == journal, f"node {node.port}'s live board differs from the journal"
        replayed = read_to_seq(node, f"/api/stream/tasks?from={head + 1}", head + count)
        assert wire(replayed.messages)[:count] == journal
        listed = httpx.get(f"{node.url}/api/tasks", params={"limit": 1000}, headers=AUTH).json()
        assert {task["id"] for task in listed["tasks"]} >= set(ids)


def test_concurrent_quick_turns_on_one_session_from_all_nodes(cluster: Cluster) -> None:
    nodes = cluster.nodes
    session = unique("quick")
    create_session(nodes[0], session, deltas=100, delay_ms=5, tool_calls=0, thinking=False)
    per_node = 3

    def turn(i: int) -> list[Wire]:
        post = start_turn(nodes[i % len(nodes)], session, f"quick question {i}", lane="quick")
        assert post.read_headers() == 200, bytes(post.body)
        post.read_to_eof(60)
        post.close()
        return wire(post.messages)

    with ThreadPoolExecutor(len(nodes) * per_node) as pool:
        posted = list(pool.map(turn, range(len(nodes) * per_node)))
    journal = cluster.journal(f"konsole/{session}")
    assert [seq for seq, _ in journal] == list(range(1, len(journal) + 1)), "a gap or a repeated seq"
    for events in posted:
        assert orjson.loads(events[-1][1])["type"] == "turn.completed"
        turn_id = orjson.loads(events[0][1])["turn"]
        assert events == [(seq, raw) for seq, raw in journal if orjson.loads(raw).get("turn") == turn_id]
    # The quick turns really ran at once: their events interleave in the stream.
    turns = [orjson.loads(raw).get("turn") for _, raw in journal[1:]]
    assert sum(1 for x, y in itertools.pairwise(turns) if x != y) > len(posted)
    for node in nodes:
        assert wire(read_to_seq(node, f"/api/konsole/{session}/events?from=1", len(journal)).messages) == journal


# -- a node dies mid-turn --------------------------------------------------------------------------


def test_a_permission_request_is_answered_from_another_node(cluster: Cluster) -> None:
    """The agent waits on A; the other nodes see the request (journal and state); B and C answer at
    the same moment: one answer is taken (200), the other refused (409), and A's agent goes on with
    the one the journal holds. "Always allow" given on another node holds on A."""
    a, b, c = cluster.nodes
    session = unique("ask")
    create_session(a, session, ask_permission=True, deltas=5, delay_ms=0)
    post = start_turn(a, session, "take notes")
    assert post.read_headers() == 200
    requested = envelope(post.read_until(lambda m: m.event == "permission.requested", 30))
    request_id = requested["data"]["request_id"]
    pending = httpx.get(f"{c.url}/api/konsole/{session}/state", headers=AUTH, timeout=10).json()["permissions"]
    assert [p["request_id"] for p in pending] == [request_id]

    def answer(node_and_body: tuple[Node, dict[str, Any]]) -> httpx.Response:
        node, body = node_and_body
        return httpx.post(f"{node.url}/api/konsole/{session}/permissions/{request_id}", headers=AUTH, json=body,
                          timeout=10)

    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(answer, [(b, {"decision": "allow", "remember": True}), (c, {"decision": "deny"})]))
    assert sorted(r.status_code for r in answers) == [200, 409], [r.text for r in answers]
    taken = next(r.json() for r in answers if r.status_code == 200)
    refused = next(r.json() for r in answers if r.status_code == 409)
    assert refused["error"]["code"] == "permission_settled"
    post.read_to_eof(30)
    decided = [envelope(m)["data"] for m in post.events if m.event == "permission.decided"]
    assert [(d["request_id"], d["decision"]) for d in decided] == [(request_id, taken["decision"])]
    assert post.events[-1].event == "turn.completed"
    written = next(envelope(m)["data"] for m in post.events if m.event == "tool.result"
                   and envelope(m)["data"]["call_id"] == "call_write_1")
    assert written["is_error"] == (taken["decision"] == "deny")
    journal = [orjson.loads(raw) for _, raw in cluster.journal(f"konsole/{session}")]
    assert sum(1 for e in journal if e["type"] == "permission.decided") == 1
    if taken["decision"] == "deny":  # C won the race: give B's "always allow" on a second request
        post = start_turn(a, session, "take notes again")
        request_id = envelope(post.read_until(lambda m: m.event == "permission.requested", 30))["data"]["request_id"]
        assert answer((b, {"decision": "allow", "remember": True})).status_code == 200
        post.read_to_eof(30)
    again = start_turn(a, session, "more notes")
    again.read_to_eof(30)
    assert again.events[-1].event == "turn.completed"
    assert not [m for m in again.events if m.event == "permission.requested"]


def test_node_killed_mid_turn_is_marked_interrupted_by_the_others(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, 3).start()
    try:
        a, b, c = cluster.nodes
        session = unique("killed")
        create_session(a, session, deltas=100_000, delay_ms=5)
        viewers = [follower(node, f"/api/konsole/{session}/events") for node in (b, c)]
        post = start_turn(a, session, "a turn that never ends")
        assert post.read_headers() == 200
        turn = post.headers["x-agentwire-turn"]
        post.read_until(lambda m: m.event == "text.delta", 30)
        for viewer in viewers:
            viewer.wait_for(lambda events: sum(1 for m in events if m.event == "text.delta") >= 20, 30)
        killed_at = time.time()
        a.kill()
        post.close()
        bound = LEASE_SECONDS + LEASE_SECONDS / 3 + 3.0  # lease + one sweep period + margin for a busy machine
        waits = []
        for viewer in viewers:
            viewer.wait_for(lambda events: any(ends_turn(turn)(m) for m in events), bound + 5)
            index = next(i for i, m in enumerate(viewer.stream.messages) if ends_turn(turn)(m))
            failed = viewer.stream.messages[index]
            assert failed.event == "turn.failed" and envelope(failed)["data"] == {"error": "interrupted"}
            waits.append(viewer.stream.received_at[index] - killed_at)
        for viewer in viewers:
            viewer.stop()
        print(f"SIGKILL → turn.failed interrupted seen on the other nodes after "
              f"{', '.join(f'{w:.2f}' for w in waits)} s (lease {LEASE_SECONDS:g} s, renewed every "
              f"{LEASE_SECONDS / 3:.2f} s)")
        assert max(waits) < bound
        # Exactly one node wrote it, once, and nothing of the turn follows it.
        journal = cluster.journal(f"konsole/{session}")
        ends = [seq for seq, raw in journal if orjson.loads(raw).get("turn") == turn
                and orjson.loads(raw)["type"] in TERMINAL]
        assert len(ends) == 1 and ends[0] == journal[-1][0]
        state = httpx.get(f"{b.url}/api/konsole/{session}/state", headers=AUTH).json()
        assert state["running"] == [] and state["agent_state"] != "writing"
        # The session is not stuck: a survivor starts a new main turn on it at once (and cancels it).
        again = start_turn(c, session, "still there?")
        again.read_until(lambda m: m.event == "text.delta", 30)
        assert httpx.post(f"{c.url}/api/konsole/{session}/cancel", headers=AUTH).status_code == 200
        again.read_to_eof(30)
        assert again.events[0].event == "turn.started" and again.events[-1].event == "turn.cancelled"
    finally:
        cluster.stop()

