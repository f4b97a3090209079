"""Event fan-out across instances through Redis Streams (ARCHITECTURE.md "Scale-out").

A call's pipeline lives on one instance, but its panels may connect to any instance. So every
event is delivered locally at once, exactly as `InProcessBus` does (local panels never wait on,
or depend on, Redis), and is also appended to the stream `<prefix><topic>` by a background
writer. Each instance reads the streams of the topics its own panels watch and delivers events
published by *other* instances (entries carry the origin instance id and process) to them, deduplicated by
the per-call `seq`, so retries and replays never show a panel the same event twice.

Losing Redis must not stop live calls: `publish` never blocks nor raises; events wait in a
bounded per-topic outbox (oldest dropped first) that is flushed when Redis returns (reconnect
with capped exponential backoff), and readers resume from the last stream id they saw, so
remote panels catch up. `degraded` is true meanwhile, for the readiness probe.

Remote events go to subscribers and history only, never to `add_listener` listeners: those
(the store, metrics) already see every event on the instance that owns the call, and running
them again on every instance would store each call once per instance. What needs every
instance's events of one topic (the supervisor wall) registers with `watch_remote`.

The supervisor stream is trimmed and expires, and so is each call's own stream, so a long call's
`call_start` scrolls out of both while the call goes on. An instance started after that could
not draw the call on its wall (a tile needs `call_start`: it names the agent and team that
decide who may see the call). So the instance that runs a call also keeps what a wall needs of
it in a small hash, `<prefix>wall:<call_id>` (its `call_start`, latest `agent_assigned`,
`call_update` and `cue`, every escalation and acknowledgement), which lives as long as the call
(coach/api/wall_seed.py reads it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from coach.bus import (
    SUPERVISOR_TOPIC,
    InProcessBus,
    Subscription,
    agent_topic,
    call_topic,
    is_agent_topic,
    is_call_topic,
)
from coach.events import Event, dumps
from coach.logs import call_fields

log = logging.getLogger(__name__)

ORIGIN_FIELD = "o"
EVENT_FIELD = "e"
_DEDUPE_KEYS = 20_000
"""(topic, call_id) pairs remembered for dedupe; old ones are forgotten first."""


_CLAIM_SCRIPT = """
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[1] and redis.call('EXISTS', ARGV[3] .. current) == 1 then
  return current
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
"""
"""Claim a call's owner key unless another *live* instance holds it; returns that instance's
id, or nil when the key is now ours. One script, so two instances opening one id at the same
moment cannot both see the key free (a GET then a SET could interleave)."""

_RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
"""Delete an owner key only while it still names this instance."""

_ADD_TO_RECORD_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], unpack(ARGV))
  return 1
end
return 0
"""
"""Add fields to a call's wall record only while the record exists. An acknowledgement taken
on another instance than the call's: after the call ended (its owner deleted the record) a
plain HSET left a record of one field behind, with no call to belong to, for the stream's TTL."""


def glob_escape(text: str) -> str:
    """`text` matched literally in a SCAN pattern (a key prefix may hold `*`, `?`, `[`)."""
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)


STALE_OWNERS_MAX_S = 5.0
"""Longest a process spends at its first connection releasing an earlier one's owner keys."""

AT_FIELD = "at"
"""In a wall record's entries: when the instance recorded the event (epoch seconds)."""
CUES_FIELD = "cues"
"""A wall record's count of the cues the call has had, counted in Redis (HINCRBY) so that it
goes on from where it was when another instance takes the call over."""

RemoteListener = Callable[[str, Event, float], None]
"""`(topic, event, written_at)`: an event another instance published, and when it was written to
its stream (epoch seconds, from the stream entry id), which a replay from the stream needs."""


@dataclass(eq=False)
class _SeqSubscription(Subscription):
    """A subscription that also skips *live* events at or before `after_seq`.

    Needed because a remote call's history may arrive from the stream after `subscribe`
    returned: without this a panel resuming after seq 40 would be shown seqs 1..40 again.
    """

    after_seq: int | None = None

    def offer(self, event: Event) -> None:
        if self.after_seq is not None and _seq(event) <= self.after_seq:
            return
        super().offer(event)


@dataclass
class _Pending:
    n: int
    """Local publish counter: lets the writer pop exactly what it sent even if the deque
    dropped its oldest entries (Redis down, outbox full) while the XADDs were in flight."""
    payload: str


def _seq(event: Event) -> int:
    try:
        return int(event.get("seq", -1))
    except (TypeError, ValueError):
        return -1


class RedisBus(InProcessBus):
    """`InProcessBus` plus Redis Streams replication; same interface, so the app can use either.

    Call `await start()` once an event loop runs and `await stop()` on shutdown.
    """

    def __init__(
        self,
        url: str,
        *,
        instance_id: str | None = None,
        prefix: str = "coach:",
        history: int = 500,
        subscriber_queue: int = 1000,
        stream_maxlen: int = 2000,
        stream_ttl_s: float = 3600.0,
        owner_ttl_s: float = 30.0,
        instance_ttl_s: float | None = None,
        outbox_per_topic: int = 2000,
        block_ms: int = 500,
        heartbeat_s: float = 1.0,
        backoff_base_s: float = 0.1,
        backoff_cap_s: float = 5.0,
        connect_timeout_s: float = 1.0,
    ) -> None:
        super().__init__(history=history, subscriber_queue=subscriber_queue)
        self.url = url
        self.instance_id = instance_id or uuid.uuid4().hex[:12]
        self.origin = f"{self.instance_id}/{uuid.uuid4().hex[:8]}"
        """What this process writes as its stream entries' origin, and skips when it reads
        them back (it delivered them locally). Not the instance id alone: a process restarted
        under the same id (a pod's container restarts under its pod name) never saw what its
        predecessor published, and skipping that drew a call another instance had ended as
        live on its wall, an escalation it had taken open (found by an outside audit)."""
        self.prefix = prefix
        self.stream_maxlen = stream_maxlen
        self.stream_ttl_s = stream_ttl_s
        self.owner_ttl_s = owner_ttl_s
        self.instance_ttl_s = (
            max(3.0, 3 * heartbeat_s) if instance_ttl_s is None else instance_ttl_s
        )
        """Lifetime of this instance's liveness key, refreshed every heartbeat: an owner key
        names a live instance only while that instance's key exists, so a call whose instance
        was killed can reconnect elsewhere long before its owner key expires."""
        self.handover_wait_s = self.instance_ttl_s + heartbeat_s
        """An owner killed just before its call's reconnect arrives here still counts as
        live until its liveness key expires: an open waits that long (with the instances'
        shared configuration, `instance_ttl_s`, plus a heartbeat) before refusing the id."""
        self._outbox_len = outbox_per_topic
        self._block_ms = block_ms
        self._heartbeat_s = heartbeat_s
        self._backoff_base = backoff_base_s
        self._backoff_cap = backoff_cap_s
        no_retry = Retry(NoBackoff(), 0)  # we own the retry policy (and the degraded flag)
        self._w: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_connect_timeout=connect_timeout_s,
            socket_timeout=connect_timeout_s + 2.0,
            retry=no_retry,
            decode_responses=True,
        )
        # Separate connection for XREAD BLOCK so a blocked read never delays the writer.
        self._r: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_connect_timeout=connect_timeout_s,
            socket_timeout=connect_timeout_s + block_ms / 1000 + 2.0,
            retry=no_retry,
            decode_responses=True,
        )
        self._claim = self._w.register_script(_CLAIM_SCRIPT)
        self._release = self._w.register_script(_RELEASE_SCRIPT)
        self._add_to_record = self._w.register_script(_ADD_TO_RECORD_SCRIPT)
        self._outbox: OrderedDict[str, deque[_Pending]] = OrderedDict()
        self._n = 0
        self.outbox_dropped = 0
        self._wake_writer = asyncio.Event()
        self._wake_reader = asyncio.Event()
        self._last_seq: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._amendments: OrderedDict[tuple[str, int], dict[str, Any]] = OrderedDict()
        """(topic, seq) -> fields added to that event after it was written (who took an
        escalation after its call ended). The stream is append-only, so a copy read from it
        later, for a panel opened on this instance, gets them here."""
        self._read_ids: dict[str, str] = {}
        """topic -> last stream id seen (delivered or skipped): where the reader resumes."""
        self._remote_listeners: dict[str, list[RemoteListener]] = {}
        self._owned: set[str] = set()
        self._claiming: set[str] = set()
        """Until `_release_stale_owners` is done: calls whose claim this instance is making or
        has made (`claim_call`), before their first event makes them `_owned`."""
        self._stale_owners_cleared = False
        self._claim_lock = asyncio.Lock()
        """Held by a claim and by the release of a stale key: a claim sent between the
        release's look and its delete would be deleted with it."""
        self._owner_drop: set[str] = set()
        self._letting_go: dict[str, asyncio.Event] = {}
        """call_id -> set once its owner key is deleted (`let_go`): the call stops here
        without ending, and whichever instance its reconnect reaches takes it over."""
        self._state_out: dict[str, str] = {}
        """call_id -> latest session state to write (only the newest per flush)."""
        self._wall_out: dict[str, dict[str, str]] = {}
        """call_id -> wall record fields to write (field -> `{"at", "e"}` JSON; newest wins)."""
        self._cues: dict[str, int] = {}
        """call_id -> cues shown since the last flush on a call this instance runs, to add
        to its wall record's count."""
        self._owner_due = 0.0
        self._alive_due = 0.0
        self._writer_down = True
        self._writer_tried = False
        """Set after the first attempt to reach Redis, whatever its outcome: the writer
        starts "down", and the first failure must be logged as loudly as a lost connection."""
        self._reader_down = False
        self._tasks: list[asyncio.Task[None]] = []
        self._catchups: set[asyncio.Task[None]] = set()
        self._stopping = False

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        if self._tasks:
            return
        self._stopping = False
        # Connect at once: until the writer's first flush the bus counts as degraded, and a
        # remote call's panel would be told to retry for a heartbeat after start-up.
        self._wake_writer.set()
        self._tasks = [
            asyncio.create_task(self._writer(), name="redis-bus-writer"),
            asyncio.create_task(self._reader(), name="redis-bus-reader"),
        ]

    async def stop(self, *, flush_timeout_s: float = 2.0) -> None:
        """Flush what Redis can still take (bounded wait), then stop the tasks."""
        deadline = time.monotonic() + flush_timeout_s
        while self._pending() and not self._writer_down and time.monotonic() < deadline:
            self._wake_writer.set()
            await asyncio.sleep(0.02)
        # The loops also check the flag: a cancellation that lands just as a wait completes
        # must not leave a loop running (asyncio.wait_for on Python 3.11 can swallow it, which
        # once hung shutdown for good).
        self._stopping = True
        self._wake_writer.set()
        self._wake_reader.set()
        tasks = [*self._tasks, *self._catchups]
        for task in tasks:
            task.cancel()
        if tasks:
            # asyncio.wait, not `await task` under suppress(CancelledError): that would also
            # swallow a cancellation aimed at whoever is calling stop().
            done, stuck = await asyncio.wait(tasks, timeout=flush_timeout_s)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    log.error("redis bus: %s failed", task.get_name(), exc_info=task.exception())
            if stuck:
                log.error("redis bus: %d task(s) did not stop", len(stuck))
        self._tasks = []
        self._catchups.clear()
        if not self._writer_down:
            # Stopping gracefully: this instance runs no call any more, say so at once.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(0.5):
                    await self._w.delete(self.instance_key(self.instance_id))
        for client in (self._w, self._r):
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()

    @property
    def degraded(self) -> bool:
        """True while Redis is unreachable: local panels work, other instances lag behind."""
        return self._writer_down or self._reader_down

    def _pending(self) -> int:
        return (
            sum(len(q) for q in self._outbox.values())
            + len(self._state_out)
            + len(self._wall_out)
            + len(self._cues)
            + len(self._owner_drop)  # a call that ended during a flush: its key goes next
        )

    def stream_key(self, topic: str) -> str:
        return f"{self.prefix}{topic}"

    def owner_key(self, call_id: str) -> str:
        return f"{self.prefix}owner:{call_id}"

    def instance_key(self, instance_id: str) -> str:
        return f"{self.prefix}instance:{instance_id}"

    def state_key(self, call_id: str) -> str:
        return f"{self.prefix}state:{call_id}"

    def wall_key(self, call_id: str) -> str:
        """The hash of what a wall needs to draw this call (see the module docstring)."""
        return f"{self.prefix}wall:{call_id}"

    @property
    def redis(self) -> aioredis.Redis:
        """The client for short lookups (never a blocking read): the wall seeder's reads."""
        return self._w

    @property
    def heartbeat_s(self) -> float:
        """The writer's longest sleep: keys due for a refresh are written this much late."""
        return self._heartbeat_s

    async def lookup(self, build: Callable[[Any], object], *, timeout_s: float) -> list[Any]:
        """One round trip of short reads: `build` queues them on a pipeline (no transaction);
        their answers, in order. TimeoutError past `timeout_s`, RedisError as redis raises."""
        pipe = self._w.pipeline(transaction=False)
        build(pipe)
        async with asyncio.timeout(timeout_s):
            result: list[Any] = await pipe.execute()
        return result

    def save_session_state(self, call_id: str, state: dict[str, Any]) -> None:
        super().save_session_state(call_id, state)  # this instance keeps it too
        self._state_out[call_id] = json.dumps(state, separators=(",", ":"))
        self._wake_writer.set()

    async def load_session_state(self, call_id: str) -> dict[str, Any] | None:
        """Redis first (another instance may have run the call), else what we kept."""
        try:
            async with asyncio.timeout(1.0):
                raw: Any = await self._w.get(self.state_key(call_id))
        except Exception:  # Redis down: fall back to local state, never block the call
            raw = None
        if raw:
            try:
                value = json.loads(raw)
                if isinstance(value, dict):
                    return value
            except ValueError:
                log.warning(
                    "unreadable session state for call %s in Redis",
                    call_id,
                    extra=call_fields(call_id),
                )
        return await super().load_session_state(call_id)

    async def owner(self, call_id: str) -> str | None:
        """The instance id running this call's pipeline, if it is live (key has a TTL)."""
        value: Any = await self._w.get(self.owner_key(call_id))
        return None if value is None else str(value)

    async def live_owner_elsewhere(self, call_id: str) -> str | None:
        """Another instance that runs this call now: its owner key names it and that
        instance is alive (its liveness key, refreshed every heartbeat, has not expired).

        An owner that was killed leaves its owner keys behind for up to `owner_ttl_s`; its
        liveness key goes within `instance_ttl_s`, after which the call may reconnect here.
        Raises ConnectionError at once while Redis is known to be unreachable, RedisError or
        OSError when the lookup fails: the caller decides (the call manager opens the call).
        """
        if self._writer_down and self._writer_tried:
            raise ConnectionError(f"Redis at {_safe_url(self.url)} is unreachable")
        value: Any = await self._w.get(self.owner_key(call_id))
        if value is None or str(value) == self.instance_id:
            return None
        owner = str(value)
        alive: Any = await self._w.exists(self.instance_key(owner))
        return owner if alive else None

    async def earlier_events(self, topic: str, *, before_seq: int) -> list[Event]:
        """What `topic`'s stream still holds (up to `stream_maxlen` entries) from before
        `before_seq`, whichever instance published it, in order. Raises like any lookup."""
        async with asyncio.timeout(2.0):
            entries: Any = await self._w.xrange(self.stream_key(topic), min="-", max="+")
        found: list[Event] = []
        for _entry_id, fields in entries:
            try:
                event = json.loads(fields[EVENT_FIELD])
                seq = int(event["seq"])
            except (KeyError, ValueError, TypeError):
                continue
            if isinstance(event, dict) and seq < before_seq:
                found.append(event)
        return found

    async def claim_call(self, call_id: str) -> str | None:
        """Make this instance the owner of `call_id` in Redis, atomically, unless another
        live instance runs it: that instance's id is returned and nothing changes.

        An owner key left by a killed instance (its liveness key expired) or by this one is
        taken over. Raises like `live_owner_elsewhere` when Redis cannot answer.
        """
        if self._writer_down and self._writer_tried:
            raise ConnectionError(f"Redis at {_safe_url(self.url)} is unreachable")
        async with self._claim_lock:
            holder: Any = await self._claim(
                keys=[self.owner_key(call_id)],
                args=[self.instance_id, int(self.owner_ttl_s), self.instance_key("")],
            )
            if holder is None and not self._stale_owners_cleared:
                self._claiming.add(call_id)  # ours now: `_release_stale_owners` spares it
        return None if holder is None else str(holder)

    async def release_call(self, call_id: str) -> None:
        """Undo `claim_call` for a call that did not open here after all (best effort: the
        key would expire with this instance's liveness anyway, or in `owner_ttl_s`)."""
        self._claiming.discard(call_id)
        try:
            async with asyncio.timeout(0.5):
                await self._release(keys=[self.owner_key(call_id)], args=[self.instance_id])
        except Exception as exc:  # Redis down or slow: the key expires on its own
            log.debug(
                "call %s: owner key not released (%r)", call_id, exc, extra=call_fields(call_id)
            )

    @property
    def can_hand_over(self) -> bool:
        return not self._writer_down and not self._stopping

    async def let_go(self, call_id: str, *, timeout_s: float = 2.0) -> bool:
        """Give up `call_id` without ending it: its owner key is no longer refreshed and is
        deleted by the writer after the call's last events and session state have gone out
        (the flush writes those first), so an instance that claims it next resumes from
        where this one stopped, with no event number used twice. The wall record stays: the
        call is still live, and its next owner keeps it."""
        async with self._claim_lock:
            self._owned.discard(call_id)
            self._claiming.discard(call_id)
            done = self._letting_go.setdefault(call_id, asyncio.Event())
        self._wake_writer.set()
        try:
            async with asyncio.timeout(timeout_s):
                await done.wait()
        except TimeoutError:
            # Redis is slow or gone: the key expires with this instance's liveness (or in
            # owner_ttl_s); until then a reconnect elsewhere waits or is refused.
            log.warning(
                "call %s: could not hand it over in %.1f s",
                call_id,
                timeout_s,
                extra=call_fields(call_id),
            )
            return False
        finally:
            self._letting_go.pop(call_id, None)
        return True

    # -- publish side --------------------------------------------------------------------

    def publish(self, topic: str, event: Event) -> None:
        self._mark_seen(topic, event)
        super().publish(topic, event)
        if is_call_topic(topic):
            call_id = str(event.get("call_id", ""))
            if event.get("type") == "call_end":
                self._owned.discard(call_id)
                self._claiming.discard(call_id)
                self._owner_drop.add(call_id)
            elif call_id not in self._owned:
                self._owned.add(call_id)
                self._owner_due = 0.0  # claim ownership at the next flush
        elif topic == SUPERVISOR_TOPIC:
            self._record_for_wall(event)
        if is_agent_topic(topic):
            # Unredacted text never leaves the instance that holds the call: an agent whose
            # panel is connected elsewhere gets the redacted view (no PII in Redis).
            return
        try:
            payload = dumps(event)
        except (TypeError, ValueError):
            log.exception("event on %s is not JSON; kept local only", topic)
            return
        q = self._outbox.get(topic)
        if q is None:
            q = self._outbox[topic] = deque(maxlen=self._outbox_len)
        if len(q) == q.maxlen:
            self.outbox_dropped += 1
        self._n += 1
        q.append(_Pending(self._n, payload))
        self._wake_writer.set()

    def _record_for_wall(self, event: Event) -> None:
        """Keep what a wall needs of a call this instance runs in its wall record.

        Acknowledgements are kept whichever instance takes them (the supervisor's, not
        necessarily the call's): a wall drawing the call later must not show them open.
        """
        call_id, etype = event.get("call_id"), event.get("type")
        if not isinstance(call_id, str):
            return
        if etype == "call_end":
            self._wall_out.pop(call_id, None)  # the owner key's drop deletes the record
            self._cues.pop(call_id, None)
            return
        field = _wall_field(event)
        if field is None or (etype != "escalation_ack" and call_id not in self._owned):
            return
        entry: dict[str, Any] = {AT_FIELD: time.time(), "e": event}
        if etype == "cue":
            # Only the latest cue is kept; the count the wall shows is added up in Redis.
            self._cues[call_id] = self._cues.get(call_id, 0) + 1
        try:
            payload = json.dumps(entry, separators=(",", ":"))
        except (TypeError, ValueError):
            return
        self._wall_out.setdefault(call_id, {})[field] = payload

    async def _writer(self) -> None:
        failures = 0
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._heartbeat_s):
                    await self._wake_writer.wait()
            self._wake_writer.clear()
            if self._stopping:
                return
            try:
                if not self._stale_owners_cleared:
                    # Before the first liveness key: until then the stale keys' calls look
                    # dead to the other instances' walls, as they are.
                    await self._release_stale_owners()
                    self._stale_owners_cleared = True
                    self._claiming.clear()
                await self._flush_once()
                if self._writer_down:
                    log.info(
                        "redis bus: connected to %s (instance %s)",
                        _safe_url(self.url),
                        self.instance_id,
                    )
                self._writer_down = False
                self._writer_tried = True
                failures = 0
            except (RedisError, OSError) as exc:
                if not self._writer_down or not self._writer_tried:
                    # Logged once per outage, and also when Redis was never reached (a wrong
                    # COACH_REDIS_URL), not again for every retry.
                    log.warning(
                        "redis bus: Redis at %s unreachable (%s); events stay local, "
                        "other instances cannot see this one's calls; retrying",
                        _safe_url(self.url),
                        exc,
                    )
                self._writer_down = True
                self._writer_tried = True
                failures += 1
                await asyncio.sleep(self._backoff(failures))
                self._wake_writer.set()  # retry promptly after the backoff

    async def _release_stale_owners(self) -> int:
        """Delete the owner keys that name this instance's id for calls this process does
        not run: an earlier process under the same id (a container restarted in its pod
        after a crash keeps the pod's name) left them, and this one's liveness key made
        them look live. An outside audit saw such calls lose their "lost contact" mark on
        the walls while nobody ran them, and their reconnects to another instance refused
        as duplicates until the keys expired. Once they are gone, the calls reconnect
        elsewhere and the orphan sweep closes the rest. Once per process, at its first
        connection; a call this process claims meanwhile is never touched."""
        head = self.owner_key("")
        match = glob_escape(head) + "*"
        cursor, released = 0, 0
        deadline = time.monotonic() + STALE_OWNERS_MAX_S
        while True:
            reply: Any = await self._w.scan(cursor=cursor, match=match, count=1000)
            cursor, keys = int(reply[0]), [str(k) for k in reply[1]]
            values = await self._w.mget(keys) if keys else []
            for key, value in zip(keys, values, strict=True):
                call_id = key[len(head) :]
                if value != self.instance_id:
                    continue
                async with self._claim_lock:
                    if call_id in self._owned | self._claiming:
                        continue
                    released += int(await self._release(keys=[key], args=[self.instance_id]))
            if cursor == 0:
                break
            if time.monotonic() > deadline:
                # A huge keyspace: the rest expire on their own (owner_ttl_s).
                log.warning("redis bus: stale owner keys not all looked at (keyspace too big)")
                break
        if released:
            log.warning(
                "redis bus: %d call(s) an earlier process under instance id %s ran are "
                "released (it stopped without ending them)",
                released,
                self.instance_id,
            )
        return released

    def _backoff(self, failures: int) -> float:
        return float(min(self._backoff_cap, self._backoff_base * 2 ** (failures - 1)))

    async def _flush_once(self) -> None:
        """Send the outbox (per topic, in order), refresh ownership, or just ping."""
        # The calls whose owner key this flush may delete, taken before anything is written: a
        # call that ends while this flush awaits Redis has its ended state queued after the
        # states were sent, and deleting its key now let another instance claim the id and
        # read it as still running (a loaded CI run reopened it under the same id, not as
        # its next leg). Such a call's key goes in the next flush, after its state.
        drops = set(self._owner_drop)
        # Wall records first: once another instance reads an event from a stream, the record
        # it may then look up already holds that event.
        sent = await self._flush_wall_records()
        for topic in list(self._outbox):
            q = self._outbox.get(topic)
            if not q:
                self._outbox.pop(topic, None)
                continue
            batch = list(q)[:500]
            key = self.stream_key(topic)
            pipe = self._w.pipeline(transaction=False)
            for item in batch:
                pipe.xadd(
                    key,
                    {ORIGIN_FIELD: self.origin, EVENT_FIELD: item.payload},
                    maxlen=self.stream_maxlen,
                    approximate=True,
                )
            # Streams of ended calls expire on their own; live ones keep being refreshed.
            pipe.expire(key, int(self.stream_ttl_s))
            await pipe.execute()
            last = batch[-1].n
            while q and q[0].n <= last:
                q.popleft()
            sent = True
        if self._state_out:
            states, self._state_out = self._state_out, {}
            pipe = self._w.pipeline(transaction=False)
            for call_id, payload in states.items():
                pipe.set(self.state_key(call_id), payload, ex=int(self.stream_ttl_s))
            try:
                await pipe.execute()
            except Exception:
                for call_id, payload in states.items():  # keep the newest for the retry
                    self._state_out.setdefault(call_id, payload)
                raise
            sent = True
        now = time.monotonic()
        alive_due = now >= self._alive_due
        owners_due = bool(drops) or (bool(self._owned) and now >= self._owner_due)
        # A call handed over goes once its events have all been sent (their ids stay below
        # those of its next owner, which reads the state just written).
        letting_go = [
            call_id
            for call_id, done in self._letting_go.items()
            if not done.is_set()
            and not self._outbox.get(call_topic(call_id))
            and call_id not in self._state_out  # saved while this flush awaited: next one
        ]
        if alive_due or owners_due or letting_go:
            pipe = self._w.pipeline(transaction=False)
            if alive_due:
                pipe.set(
                    self.instance_key(self.instance_id),
                    "1",
                    px=max(1, int(self.instance_ttl_s * 1000)),
                )
            if owners_due:
                for call_id in self._owned:
                    pipe.set(self.owner_key(call_id), self.instance_id, ex=int(self.owner_ttl_s))
                    # A quiet call writes no record for hours: it must outlive the call.
                    pipe.expire(self.wall_key(call_id), int(self.stream_ttl_s))
                for call_id in drops:
                    pipe.delete(self.owner_key(call_id), self.wall_key(call_id))
            for call_id in letting_go:
                pipe.delete(self.owner_key(call_id))
            await pipe.execute()
            for call_id in letting_go:
                if (done := self._letting_go.get(call_id)) is not None:
                    done.set()
            if alive_due:
                self._alive_due = now + min(self._heartbeat_s, self.instance_ttl_s / 3)
            if owners_due:
                self._owner_drop -= drops
                self._owner_due = now + self.owner_ttl_s / 3
            sent = True
        if not sent:
            await self._w.ping()
        if self._pending():
            self._wake_writer.set()

    async def _flush_wall_records(self) -> bool:
        if not self._wall_out and not self._cues:
            return False
        records, self._wall_out = self._wall_out, {}
        counts, self._cues = self._cues, {}
        pipe = self._w.pipeline(transaction=False)
        for call_id in records.keys() | counts.keys():
            key = self.wall_key(call_id)
            if call_id not in self._owned:
                # Another instance's call (an acknowledgement taken here), or one of ours that
                # has ended: add to its record if it still has one, never start one.
                flat = [x for pair in records.get(call_id, {}).items() for x in pair]
                if flat:
                    # Queued on the pipeline (the await returns at once; execute runs it).
                    await self._add_to_record(keys=[key], args=flat, client=pipe)
                continue
            if records.get(call_id):
                pipe.hset(key, mapping=records[call_id])  # type: ignore[arg-type]
            if counts.get(call_id):
                pipe.hincrby(key, CUES_FIELD, counts[call_id])
            pipe.expire(key, int(self.stream_ttl_s))
        try:
            await pipe.execute()
        except Exception:
            for call_id, fields in records.items():
                owned = call_id in self._owned  # else it ended meanwhile: only acks are kept
                for field, payload in fields.items():
                    if owned or field.startswith("ack:"):
                        self._wall_out.setdefault(call_id, {}).setdefault(field, payload)
            for call_id, n in counts.items():
                if call_id in self._owned:  # the count may be off by these if some went in
                    self._cues[call_id] = self._cues.get(call_id, 0) + n
            raise
        return True

    # -- remote side ---------------------------------------------------------------------

    def subscribe(
        self, topic: str, *, after_seq: int | None = None, replay: bool = True
    ) -> Subscription:
        """Local history first, then (for topics other instances feed) the stream, then live."""
        sub = _SeqSubscription(
            topic,
            asyncio.Queue(maxsize=self._sub_queue),
            after_seq=after_seq
            if replay and (is_call_topic(topic) or is_agent_topic(topic))
            else None,
        )
        if replay:
            for ev in self.history(topic, after_seq=after_seq)[-self._sub_queue :]:
                sub.offer(ev)
        if topic in self._closed_topics:
            sub.queue.put_nowait(None)
            return sub
        self._subs.setdefault(topic, set()).add(sub)
        self._watch(topic)
        return sub

    def _watch(self, topic: str) -> None:
        """Read `topic`'s stream from here on, starting with what it holds now."""
        if topic not in self._read_ids:
            self._read_ids[topic] = "0-0"
            task = asyncio.create_task(self._catch_up(topic))
            self._catchups.add(task)
            task.add_done_callback(self._catchups.discard)
        self._wake_reader.set()

    def watch_remote(self, topic: str, listener: RemoteListener) -> None:
        """Call `listener` with every event other instances publish on `topic`, from what the
        stream still holds (up to `stream_maxlen` entries, `stream_ttl_s`) onwards. Needs a
        running loop (call after `start`). What has scrolled out is not replayed: the wall
        draws live calls whose start it missed from their wall records (`wall_key`)."""
        self._remote_listeners.setdefault(topic, []).append(listener)
        self._watch(topic)

    async def count_sign_in(self, name: str, window_s: float) -> int:
        """Count one sign-in try for `name` on every instance at once; the tries in its
        window so far (this one included). Raises when Redis cannot answer."""
        key = self._sign_in_key(name)
        async with asyncio.timeout(0.5):
            pipe = self._w.pipeline(transaction=True)
            pipe.incr(key)
            pipe.expire(key, max(1, int(window_s)), nx=True)
            tries, _ = await pipe.execute()
        return int(tries)

    async def clear_sign_ins(self, name: str) -> None:
        """A right password: the name's count starts again (best effort)."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(0.5):
                await self._w.delete(self._sign_in_key(name))

    def _sign_in_key(self, name: str) -> str:
        # Hashed: a name is whatever someone typed.
        return f"{self.prefix}signin:{hashlib.sha256(name.encode()).hexdigest()[:32]}"

    async def erase_call(self, call_id: str) -> None:
        """Delete what Redis keeps of an erased call: its redacted event stream (kept an hour
        for late panels), its session state and its wall record. Raises when Redis cannot
        answer; the stream would then expire on its own within `stream_ttl_s`."""
        keys = [
            self.stream_key(call_topic(call_id)),
            self.state_key(call_id),
            self.wall_key(call_id),
        ]
        async with asyncio.timeout(2.0):
            await self._w.delete(*keys)

    def forget(self, topic: str) -> None:
        super().forget(topic)
        self._read_ids.pop(topic, None)
        for key in [k for k in self._last_seq if k[0] == topic]:
            del self._last_seq[key]

    def amend(self, topic: str, seq: int, fields: dict[str, Any]) -> bool:
        """As `InProcessBus.amend`, and also for a copy of the event read from Redis later
        (a panel opened here after the call left this instance's memory, or before any
        panel here watched it)."""
        self._amendments[(topic, seq)] = {**self._amendments.get((topic, seq), {}), **fields}
        self._amendments.move_to_end((topic, seq))
        while len(self._amendments) > _DEDUPE_KEYS:
            self._amendments.popitem(last=False)
        return super().amend(topic, seq, fields)

    def _mark_seen(self, topic: str, event: Event) -> bool:
        """Record the event's seq; False if this topic already had it (or a later one)."""
        seq = _seq(event)
        if seq < 0 or event.get("type") == "escalation_ack":
            # An acknowledgement's `seq` names the escalation it takes, not this event: it is
            # older than the call's latest seq, and would have been dropped as a replay.
            return True
        key = (topic, str(event.get("call_id", "")))
        last = self._last_seq.get(key)
        if last is not None and seq <= last:
            return False
        self._last_seq[key] = seq
        self._last_seq.move_to_end(key)
        while len(self._last_seq) > _DEDUPE_KEYS:
            self._last_seq.popitem(last=False)
        return True

    def _deliver_remote(self, topic: str, entry_id: str, fields: dict[str, str]) -> None:
        if _stream_id(entry_id) > _stream_id(self._read_ids.get(topic, "0-0")):
            self._read_ids[topic] = entry_id
        if fields.get(ORIGIN_FIELD) == self.origin or topic in self._closed_topics:
            return
        try:
            event: Event = json.loads(fields[EVENT_FIELD])
        except (KeyError, ValueError):
            log.warning("redis bus: bad entry %s on %s", entry_id, topic)
            return
        if not self._mark_seen(topic, event):
            return
        amended = self._amendments.get((topic, _seq(event)))
        if amended is not None:
            event = {**event, **amended}
        # Local history and subscribers only: listeners ran on the owning instance.
        hist = self._history.setdefault(topic, deque(maxlen=self._history_len))
        hist.append(event)
        for sub in list(self._subs.get(topic, ())):
            sub.offer(event)
        listeners = self._remote_listeners.get(topic, ())
        if listeners:
            written_at = _stream_id(entry_id)[0] / 1000.0
            for listener in list(listeners):
                try:
                    listener(topic, event, written_at)
                except Exception:  # one listener's bug must not stop the reader
                    log.exception("redis bus: remote listener failed on %s", topic)
        call_id = str(event.get("call_id", ""))
        if event.get("type") == "call_end" and topic in (
            call_topic(call_id),
            agent_topic(call_id),
        ):
            self.close_topic(topic)  # the call ended on its own instance: end panels here too

    async def _catch_up(self, topic: str) -> None:
        """XRANGE what the stream holds for a newly watched topic, at once (no reader wait)."""
        key = self.stream_key(topic)
        try:
            start = "-"
            while True:
                entries: Any = await self._r.xrange(key, min=start, max="+", count=1000)
                for entry_id, fields in entries:
                    self._deliver_remote(topic, entry_id, fields)
                if len(entries) < 1000:
                    return
                start = "(" + entries[-1][0]
        except (RedisError, OSError):
            pass  # the reader resumes from the last id seen once Redis is back

    def _watched(self) -> dict[str, str]:
        return {
            self.stream_key(t): self._read_ids[t]
            for t in {*(t for t, subs in self._subs.items() if subs), *self._remote_listeners}
            if t in self._read_ids and t not in self._closed_topics
        }

    async def _reader(self) -> None:
        failures = 0
        while not self._stopping:
            streams = self._watched()
            if not streams:
                self._reader_down = False
                self._wake_reader.clear()
                await self._wake_reader.wait()
                continue
            try:
                reply: Any = await self._r.xread(streams, count=500, block=self._block_ms)  # type: ignore[arg-type]
                self._reader_down = False
                failures = 0
            except (RedisError, OSError):
                self._reader_down = True
                failures += 1
                await asyncio.sleep(self._backoff(failures))
                continue
            n = len(self.prefix)
            for key, entries in reply or []:
                topic = key[n:]
                for entry_id, fields in entries:
                    self._deliver_remote(topic, entry_id, fields)


def _wall_field(event: Event) -> str | None:
    """The wall record field an event goes to: one per kind, or per escalation."""
    match event.get("type"):
        case "call_start":
            return "start"
        case "agent_assigned":
            return "agent"
        case "call_update":
            return "update"
        case "cue":
            return "cue"
        case "escalation":
            return f"esc:{_seq(event)}"
        case "escalation_ack":
            return f"ack:{_seq(event)}"
    return None


def _safe_url(url: str) -> str:
    """The Redis URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def _stream_id(entry_id: str) -> tuple[int, int]:
    ms, _, n = entry_id.partition("-")
    return int(ms), int(n or 0)
