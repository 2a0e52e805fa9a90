from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError, ResponseError

try:
    from hiredis import pack_command as _c_pack
except ImportError:  # pragma: no cover - redis[hiredis] installs it
    _c_pack = None  # type: ignore[assignment]

from agentwire.backoff import Backoff
from agentwire.journal import AppendsOne, Listener, pass_on
from agentwire.journal.group_commit import GroupCommit, Pending
from agentwire.types import JSON, Append, Event, StreamPosition, Unavailable, envelope_tail, now_ms

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 2.0
COMMAND_TIMEOUT = 5.0
# The live reader blocks this long per XREAD; its socket waits longer, so a quiet stream is not
# taken for a dead connection. Watching a new stream interrupts the block (CLIENT UNBLOCK).
BLOCK_MS = 2000
READ_COUNT = 1000
# Events per script call: bounds how long one call holds Redis (a caller's batch is never split).
SCRIPT_EVENTS = 1000
RECONNECT_MIN, RECONNECT_MAX = 0.05, 2.0

_SCRIPT = resources.files("agentwire.journal").joinpath("redis_append.lua").read_text(encoding="utf-8")
_SCRIPT_SHA = hashlib.sha1(_SCRIPT.encode()).hexdigest()
_LEASE = resources.files("agentwire.journal").joinpath("redis_lease.lua").read_text(encoding="utf-8")


@dataclass(slots=True)
class _Item:
    stream: str
    type: str
    tail: bytes  # the envelope's bytes after `{"seq":N,` (types.envelope_tail)
    doc_kind: str | None
    doc_id: str
    doc_body: bytes  # b"" deletes


_Batch = Pending[list[_Item]]


def _unavailable(exc: BaseException) -> Unavailable:
    return Unavailable(f"Redis journal unreachable: {exc}")


def _split_url(url: str) -> tuple[str, str | None]:
    """Take our own `prefix` option out of the URL, and the options whose replies this module
    parses itself (it speaks RESP2, in bytes); the rest is redis-py's."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = next((value for key, value in query if key == "prefix"), None)
    rest = urlencode([(key, value) for key, value in query
                      if key not in ("prefix", "protocol", "decode_responses")])
    return urlunsplit(parts._replace(query=rest)), prefix


class RedisJournal(AppendsOne):
    """Redis Streams, shared by every process that points at the same Redis.

    Keys, under `prefix` (default `agentwire:`, or `?prefix=` in the URL): `epoch` (the journal's),
    `streams` (a set of names), `meta:<stream>` (a hash: epoch, first, head), `events:<stream>` (a
    stream whose entry IDs are `<seq>-0`, fields `t` type and `r` the envelope bytes) and
    `docs:<kind>` (a hash of id → JSON). Appends run `redis_append.lua`, which gives seqs out of the
    stream's head, so any number of processes can append to one stream. One writer task per process
    sends everything queued as one pipeline (group commit); one reader task per process runs XREAD
    BLOCK over every watched stream and passes on what other processes append.
    """

    def __init__(self, url: str, *, retention: int = 0, prefix: str | None = None) -> None:
        self.url = url
        self._redis_url, url_prefix = _split_url(url)
        self._prefix = prefix or url_prefix or "agentwire:"
        self._retention = retention
        self._listener: Listener | None = None
        self._redis: aioredis.Redis | None = None
        self._lease: AsyncScript | None = None
        self._writes: GroupCommit[list[_Item]] = GroupCommit(self._commit)
        self._reader: asyncio.Task[None] | None = None
        self._closed = False
        # Watched streams → the last seq passed on to the listener (also where XREAD resumes).
        self._passed: dict[str, int] = {}
        self._epochs: dict[str, bytes | None] = {}
        self._watch_version = 0
        self._changed = asyncio.Event()
        self._reader_id: int | None = None
        self._reading_version: int | None = None  # the watch set of the XREAD in flight

    def _key(self, kind: str, name: str = "") -> str:
        return f"{self._prefix}{kind}{name}"

    def _client(self, name: str) -> aioredis.Redis:
        # No retries: a command that timed out may have run, and running an append twice would
        # store its events twice. The caller hears Unavailable and decides.
        client: aioredis.Redis = aioredis.Redis.from_url(
            self._redis_url,
            protocol=2,
            decode_responses=False,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=COMMAND_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
            client_name=name,
        )
        return client

    @property
    def _store(self) -> aioredis.Redis:
        if self._redis is None:
            raise Unavailable("Redis journal is not started")
        return self._redis

    async def start(self) -> None:
        client = self._client("agentwire-journal")
        try:
            await client.script_load(_SCRIPT)
        except (RedisError, OSError) as exc:
            await client.aclose()
            raise _unavailable(exc) from exc
        self._redis = client
        self._lease = client.register_script(_LEASE)
        self._writes.start()
        self._reader = asyncio.create_task(self._read_loop(), name="journal-reader")

    async def close(self) -> None:
        self._closed = True
        await self._writes.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._redis is not None:
            await self._redis.aclose()

    def set_listener(self, listener: Listener) -> None:
        self._listener = listener

    # -- appending ---------------------------------------------------------------------------------

    async def append_many(self, items: Sequence[Append]) -> list[Event]:
        if self._closed or not self._writes.started:
            raise Unavailable("Redis journal is closed" if self._closed else "Redis journal is not started")
        if not items:
            return []
        ts = now_ms()
        prepared = []
        for item in items:
            doc = item.doc
            prepared.append(_Item(
                item.stream, item.type, envelope_tail(item.stream, item.type, item.data, ts, item.turn, item.lane),
                None if doc is None else doc.kind,
                "" if doc is None else doc.id,
                b"" if doc is None or doc.body is None else orjson.dumps(doc.body),
            ))
        return await self._writes.submit(prepared)

    async def _commit(self, batch: _Batch) -> None:
        # Whole batches go into script calls of up to SCRIPT_EVENTS events, all sent as one pipeline.
        calls: list[_Batch] = [[]]
        size = 0
        for entry in batch:
            if size and size + len(entry[0]) > SCRIPT_EVENTS:
                calls.append([])
                size = 0
            calls[-1].append(entry)
            size += len(entry[0])
        try:
            results = await self._run_scripts([self._script_args(call) for call in calls])
        except Exception as exc:  # nothing is known to be stored: every caller hears why
            error = exc if isinstance(exc, Unavailable) else _unavailable(exc)
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        stored: list[tuple[_Batch, list[Event]]] = []
        for call, result in zip(calls, results, strict=True):
            if isinstance(result, Exception):
                for _, future in call:
                    if not future.done():
                        future.set_exception(Unavailable(f"Redis journal append failed: {result}"))
            else:
                stored.append((call, self._events(call, result)))
        # Stored: only now may anyone see them. With several calls, sorted: a call run again after
        # NOSCRIPT got its seqs after the calls behind it.
        if len(stored) == 1:
            self._pass_on(stored[0][1], local=True)
        else:
            self._pass_on(sorted((event for _, events in stored for event in events), key=_seq), local=True)
        for call, events in stored:
            offset = 0
            for items, future in call:
                if not future.done():
                    future.set_result(events[offset : offset + len(items)])
                offset += len(items)

    def _script_args(self, call: _Batch) -> list[Any]:
        streams: dict[str, int] = {}
        kinds: dict[str, int] = {}
        events: list[Any] = []
        for items, _ in call:
            for item in items:
                index = streams.setdefault(item.stream, len(streams) + 1)
                if item.doc_kind is None:
                    events += (index, item.type, item.tail, 0)
                else:
                    kind = kinds.setdefault(item.doc_kind, len(kinds) + 1)
                    events += (index, item.type, item.tail, kind, item.doc_id, item.doc_body)
        keys: list[Any] = [self._key("epoch"), self._key("streams")]
        for name in streams:
            keys += (self._key("meta:", name), self._key("events:", name))
        keys += [self._key("docs:", kind) for kind in kinds]
        return [len(keys), *keys, secrets.token_hex(8), self._retention, len(streams), *streams, *events]

    async def _run_scripts(self, calls: list[list[Any]]) -> list[Any]:
        results = await self._pipeline(calls)
        missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
        if missing:  # Redis restarted and forgot the script; those calls did not run
            try:
                await self._store.script_load(_SCRIPT)
            except (RedisError, OSError) as exc:
                raise _unavailable(exc) from exc
            again = await self._pipeline([calls[i] for i in missing])
            for i, result in zip(missing, again, strict=True):
                results[i] = result
        return results

    async def _pipeline(self, calls: list[list[Any]]) -> list[Any]:
        """EVALSHA each call, all in one write, and read every reply (an error reply is a result)."""
        pool = self._store.connection_pool
        try:
            conn = await pool.get_connection()  # type: ignore[no-untyped-call]
            try:
                await conn.send_packed_command([_pack(conn, ("EVALSHA", _SCRIPT_SHA, *args)) for args in calls])
                results: list[Any] = []
                for _ in calls:
                    try:
                        results.append(await conn.read_response())
                    except ResponseError as exc:
                        results.append(exc)
                return results
            finally:
                await pool.release(conn)
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc

    def _events(self, call: _Batch, before: list[int]) -> list[Event]:
        heads: dict[str, int] = {}
        events: list[Event] = []
        for items, _ in call:
            for item in items:
                if item.stream not in heads:
                    heads[item.stream] = int(before[len(heads)])
                seq = heads[item.stream] = heads[item.stream] + 1
                events.append(Event.sealed(seq, item.stream, item.type, item.tail))
        return events

    def _pass_on(self, events: list[Event], *, local: bool) -> None:
        """Hand events to the listener in seq order per stream; drop what it has already had."""
        for event in events:
            passed = self._passed.get(event.stream)
            if passed is not None:
                if event.seq <= passed:
                    continue
                self._passed[event.stream] = event.seq
            elif not local:
                continue  # unwatched since this XREAD was sent
            pass_on(self._listener, (event,))

    # -- reading -----------------------------------------------------------------------------------

    async def read(self, stream: str, after: int, limit: int) -> list[Event]:
        if limit <= 0:
            return []
        try:
            entries: Any = await self._store.xrange(
                self._key("events:", stream), min=f"{max(after, 0) + 1}-0", max="+", count=limit)
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc
        return [_entry_event(stream, entry_id, fields) for entry_id, fields in entries]

    async def position(self, stream: str) -> StreamPosition:
        try:
            async with self._store.pipeline(transaction=False) as pipe:
                pipe.set(self._key("epoch"), secrets.token_hex(8), nx=True)
                pipe.hmget(self._key("meta:", stream), ["epoch", "first", "head"])
                pipe.get(self._key("epoch"))
                _, (epoch, first, head), journal_epoch = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc
        if epoch is None or head is None:
            return StreamPosition(journal_epoch.decode(), 1, 0)
        return StreamPosition(epoch.decode(), int(first), int(head))

    async def streams(self, prefix: str) -> list[str]:
        try:
            names: Any = await self._store.smembers(self._key("streams"))
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc
        return sorted(name for name in (raw.decode() for raw in names) if name.startswith(prefix))

    async def get_doc(self, kind: str, id: str) -> JSON | None:
        try:
            body = await self._store.hget(self._key("docs:", kind), id)
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc
        return None if body is None else orjson.loads(body)  # type: ignore[no-any-return]

    async def list_docs(self, kind: str) -> list[JSON]:
        try:
            docs = await self._store.hgetall(self._key("docs:", kind))
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc
        return [orjson.loads(docs[id]) for id in sorted(docs)]

    async def ping(self) -> None:
        try:
            await self._store.ping()
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc

    # -- leases ------------------------------------------------------------------------------------

    async def lease(self, key: str, owner: str, ttl: float) -> bool:
        return await self._run_lease(key, owner, max(1, round(ttl * 1000)))

    async def release(self, key: str, owner: str) -> None:
        await self._run_lease(key, owner, 0)

    async def _run_lease(self, key: str, owner: str, ttl_ms: int) -> bool:
        if self._lease is None:
            raise Unavailable("Redis journal is not started")
        try:
            held = await self._lease(keys=[self._key("lease:", key)], args=[owner, ttl_ms])
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc
        return bool(held)

    # -- live delivery -----------------------------------------------------------------------------

    async def watch(self, stream: str) -> int:
        passed = self._passed.get(stream)
        if passed is not None:
            return passed
        [(epoch, head)] = await self._stand([stream])
        passed = self._passed.get(stream)
        if passed is not None:  # watched by someone else meanwhile
            return passed
        # Live delivery starts after the head as it is now: the hub reads the journal up to here.
        self._passed[stream] = head
        self._epochs[stream] = epoch
        self._watch_version += 1
        self._changed.set()
        await self._wake_reader(self._watch_version)
        return head

    async def unwatch(self, stream: str) -> None:
        self._passed.pop(stream, None)
        self._epochs.pop(stream, None)

    async def _stand(self, names: list[str]) -> list[tuple[bytes | None, int]]:
        """Each stream's epoch (the journal's while the stream is empty) and head, in one round trip."""
        try:
            async with self._store.pipeline(transaction=False) as pipe:
                pipe.get(self._key("epoch"))
                for name in names:
                    pipe.hmget(self._key("meta:", name), ["epoch", "head"])
                journal_epoch, *found = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc
        return [(epoch or journal_epoch, int(head or 0)) for epoch, head in found]

    async def _wake_reader(self, version: int) -> None:
        """Interrupt an XREAD sent before `version` of the watch set, so it restarts with the new one."""
        deadline = asyncio.get_running_loop().time() + BLOCK_MS / 1000
        while (self._reading_version is not None and self._reading_version < version
               and self._reader_id is not None):
            try:
                if await self._store.client_unblock(self._reader_id):
                    return
            except (RedisError, OSError):
                return  # the reader is reconnecting and will pick up the new set
            if asyncio.get_running_loop().time() > deadline:
                return  # the block ends by itself about now
            await asyncio.sleep(0.002)  # the XREAD was not blocking in Redis yet

    async def _read_loop(self) -> None:
        backoff = Backoff(RECONNECT_MIN, RECONNECT_MAX)
        failing = False
        while not self._closed:
            client = self._client("agentwire-reader")
            # A blocked XREAD is silent for BLOCK_MS: the reader's socket must wait longer than that.
            client.connection_pool.connection_kwargs["socket_timeout"] = BLOCK_MS / 1000 + COMMAND_TIMEOUT
            try:
                self._reader_id = await client.client_id()
                await self._resync()
                if failing:
                    log.warning("Redis journal reader is back")
                    failing = False
                backoff.reset()
                await self._read_live(client)
            except (RedisError, OSError, Unavailable) as exc:
                if not failing:
                    log.warning("Redis journal reader lost its connection (%s); reconnecting", exc)
                    failing = True
                await asyncio.sleep(backoff.next_delay())
            finally:
                self._reader_id = None
                await client.aclose()

    async def _read_live(self, client: aioredis.Redis) -> None:
        loop = asyncio.get_running_loop()
        resynced = loop.time()
        while not self._closed:
            if not self._passed:
                self._changed.clear()
                await self._changed.wait()
                continue
            names = {self._key("events:", name).encode(): name for name in self._passed}
            ids = {key: f"{self._passed[name]}-0" for key, name in names.items()}
            self._reading_version = self._watch_version
            try:
                reply: Any = await client.xread(ids, count=READ_COUNT, block=BLOCK_MS)  # type: ignore[arg-type]
            finally:
                self._reading_version = None
            for key, entries in (reply.items() if isinstance(reply, dict) else reply or ()):
                name = names.get(key)
                if name is not None:
                    self._pass_on([_entry_event(name, entry_id, fields) for entry_id, fields in entries],
                                  local=False)
            if loop.time() - resynced >= BLOCK_MS / 1000:
                await self._resync()
                resynced = loop.time()

    async def _resync(self) -> None:
        """Follow a watched stream whose history was lost (a wiped Redis: its epoch changed) from
        the start of its new history; XREAD would wait past the old seqs otherwise."""
        watched = dict(self._passed)
        if not watched:
            return
        stands = await self._stand(list(watched))
        for (name, passed), (epoch, _) in zip(watched.items(), stands, strict=True):
            known = self._epochs.get(name)
            if self._passed.get(name) != passed or epoch == known:
                continue
            if known is not None:
                log.warning("Redis journal stream %s lost its history (new epoch); following the new one", name)
                self._passed[name] = 0
            self._epochs[name] = epoch


def _pack(conn: Any, args: tuple[Any, ...]) -> bytes:
    # redis-py's asyncio pack_command is pure Python and was most of an append's cost; hiredis packs in C.
    if _c_pack is not None:
        packed: bytes = _c_pack(args)
        return packed
    return b"".join(conn.pack_command(*args))


def _seq(event: Event) -> int:
    return event.seq


def _entry_event(stream: str, entry_id: bytes, fields: Any) -> Event:
    return Event(int(entry_id.partition(b"-")[0]), stream, fields[b"t"].decode(), fields[b"r"])
