"""Draws on this instance's wall the calls other instances run whose `call_start` it never saw.

A wall learns of other instances' calls from the supervisor stream, which is trimmed
(`COACH_REDIS_STREAM_MAXLEN`) and expires; only `call_start` makes a tile (it names the agent
and team that decide who may see the call). So an instance started after a long call's
`call_start` scrolled out never showed that call, though it was live elsewhere: with a busy
contact center, within minutes.

The instance running a call keeps what a wall needs of it in `<prefix>wall:<call_id>`
(coach/redis_bus.py). This reads it for the calls that are live elsewhere and have no tile here:
- a full pass when the wall starts following remote events, then every `full_every_s`: SCAN
  for the owner keys (`<prefix>owner:<call_id>`; SCAN walks the whole keyspace, ended calls'
  streams included, so `scan_count` keys per round trip and at most `max_rounds` round trips
  per pass, the next pass going on from there a moment later);
- a pass over the calls the wall heard of without a tile (`want`), at most one per
  `min_interval_s`, each call at most once per `retry_s`.
A call whose owner key is gone (it ended) or names this instance or a dead one (its liveness
key expired) is skipped. Without a record, a call's `call_start` is looked for as the first
entry of its own stream (a call run by an older version); found nowhere, the call is not
shown (WallTracker.seed).

It must never block nor crash the wall: one task, every round trip under `timeout_s`, and
Redis down or slow only postpones the next pass (capped backoff).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from coach.api.wall import WallTracker
from coach.bus import call_topic
from coach.events import Event
from coach.redis_bus import AT_FIELD, CUES_FIELD, EVENT_FIELD, RedisBus, glob_escape

log = logging.getLogger(__name__)

_MAX_WANTED = 5000
_MAX_TRIED = 20_000


class WallSeeder:
    def __init__(
        self,
        wall: WallTracker,
        bus: RedisBus,
        *,
        batch: int = 200,
        scan_count: int = 1000,
        max_rounds: int = 100,
        min_interval_s: float = 1.0,
        full_every_s: float = 60.0,
        retry_s: float = 30.0,
        timeout_s: float = 2.0,
        backoff_cap_s: float = 30.0,
    ) -> None:
        self.wall = wall
        self.bus = bus
        self.batch = batch
        """Calls looked up per targeted pass."""
        self.scan_count = scan_count
        self.max_rounds = max_rounds
        self.min_interval_s = min_interval_s
        self.full_every_s = full_every_s
        self.retry_s = retry_s
        self.timeout_s = timeout_s
        self.backoff_cap_s = backoff_cap_s
        self.drawn = 0
        """Calls drawn so far (tests, logs)."""
        self._wanted: set[str] = set()
        self._tried: OrderedDict[str, float] = OrderedDict()
        """call_id -> when a pass last looked it up (monotonic): `want` waits `retry_s`."""
        self._cursor = 0
        """Where the full pass's SCAN goes on (0: a fresh pass)."""
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the passes (needs a running loop) and hear of the wall's unknown calls."""
        if self._task is None:
            self.wall.unknown = self.want
            self._task = asyncio.create_task(self._run(), name="wall-seeder")

    async def stop(self) -> None:
        self.wall.unknown = None
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        _, stuck = await asyncio.wait({task}, timeout=2.0)
        if stuck:
            log.error("wall seeder did not stop")

    def want(self, call_id: str) -> None:
        """The wall heard of a call without a tile: look it up at the next pass. Cheap: it
        runs for every remote event of such a call."""
        if call_id in self._wanted or len(self._wanted) >= _MAX_WANTED:
            return
        tried = self._tried.get(call_id)
        if tried is not None and time.monotonic() - tried < self.retry_s:
            return
        self._wanted.add(call_id)
        self._wake.set()

    async def _run(self) -> None:
        failures = 0
        full_due = 0.0  # at once: the wall has just started following remote events
        while True:
            wait = full_due - time.monotonic()
            if wait > 0 and not self._wanted:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
            self._wake.clear()
            try:
                if time.monotonic() >= full_due:
                    done = await self.seed_all()
                    full_due = time.monotonic() + (
                        self.full_every_s if done else self.min_interval_s
                    )
                else:
                    ids = list(self._wanted)[: self.batch]
                    self._wanted.difference_update(ids)
                    await self.seed_calls(ids)
                if failures:
                    log.info("wall seeder: Redis answers again")
                failures = 0
            except (RedisError, OSError, TimeoutError) as exc:
                failures += 1
                if failures == 1:
                    log.info("wall seeder: Redis unavailable (%s); retrying", exc)
                full_due = 0.0  # a full pass next: it covers the calls asked for meanwhile
                self._cursor = 0
                await asyncio.sleep(min(self.backoff_cap_s, 0.2 * 2 ** (failures - 1)))
                continue
            except Exception:  # a bug here must not end the wall's seeding for good
                log.exception("wall seeder: pass failed")
                full_due = time.monotonic() + self.full_every_s
            await asyncio.sleep(self.min_interval_s)

    async def seed_all(self) -> bool:
        """One full pass (at most `max_rounds` SCANs); True once the SCAN came round."""
        head = self.bus.owner_key("")
        match = glob_escape(head) + "*"
        rounds = 0
        while True:
            async with asyncio.timeout(self.timeout_s):
                reply: Any = await self.bus.redis.scan(
                    cursor=self._cursor, match=match, count=self.scan_count
                )
            self._cursor, keys = int(reply[0]), reply[1]
            rounds += 1
            await self.seed_calls([str(k)[len(head) :] for k in keys])
            if self._cursor == 0:
                return True
            if rounds >= self.max_rounds:
                return False  # bounded work: the next pass goes on from the cursor

    async def seed_calls(self, call_ids: Sequence[str]) -> int:
        """Draw those of these calls that another live instance runs and the wall lacks (or
        complete their tiles drawn from a takeover's `call_start`: WallTracker.seed)."""
        ids = [c for c in dict.fromkeys(call_ids) if c and self.wall.lacks(c)]
        if not ids:
            return 0
        self._note_tried(ids)
        bus = self.bus
        owners = await self._pipeline(lambda p: [p.get(bus.owner_key(c)) for c in ids])
        elsewhere = {
            c: str(o) for c, o in zip(ids, owners, strict=True) if o and o != bus.instance_id
        }
        if not elsewhere:
            return 0  # ended (owner key deleted), or this instance's own
        instances = sorted(set(elsewhere.values()))
        alive = await self._pipeline(lambda p: [p.exists(bus.instance_key(i)) for i in instances])
        live = {i for i, a in zip(instances, alive, strict=True) if a}
        calls = [c for c, owner in elsewhere.items() if owner in live]
        if not calls:
            return 0
        records = await self._pipeline(lambda p: [p.hgetall(bus.wall_key(c)) for c in calls])
        events: dict[str, list[tuple[Event, float]]] = {}
        cues: dict[str, int | None] = {}
        for c, record in zip(calls, records, strict=True):
            events[c], cues[c] = _record_events(c, record or {})
        lost = [c for c in calls if not _starts(events[c])]
        if lost:
            # No record of its start (a call run by an older version): its own stream's first
            # entry, if not trimmed away yet.
            firsts = await self._pipeline(
                lambda p: [
                    p.xrange(bus.stream_key(call_topic(c)), min="-", max="+", count=1) for c in lost
                ]
            )
            for c, entries in zip(lost, firsts, strict=True):
                start = _stream_start(c, entries)
                if start is not None:
                    events[c] = [start, *events[c]]
        startless = [c for c in calls if not _starts(events[c])]
        if startless:
            # Shown to nobody rather than to everybody: a tile needs the agent and team.
            log.info(
                "wall: %d call(s) run elsewhere have no call_start left in Redis; not shown "
                "(e.g. %s)",
                len(startless),
                startless[0],
            )
        drawn = sum(1 for c in calls if self.wall.seed(c, events[c], cues=cues[c]))
        if drawn:
            self.drawn += drawn
            log.info("wall: drew %d call(s) other instances run", drawn)
        return drawn

    async def _pipeline(self, build: Callable[[Pipeline], object]) -> list[Any]:
        return await self.bus.lookup(build, timeout_s=self.timeout_s)

    def _note_tried(self, ids: Sequence[str]) -> None:
        now = time.monotonic()
        for c in ids:
            self._tried[c] = now
            self._tried.move_to_end(c)
        while len(self._tried) > _MAX_TRIED:
            self._tried.popitem(last=False)


def _record_events(
    call_id: str, record: dict[str, str]
) -> tuple[list[tuple[Event, float]], int | None]:
    """A wall record as events to fold (its `call_start` first, the rest as they happened),
    and the call's count of cues."""
    start: tuple[Event, float] | None = None
    rest: list[tuple[Event, float]] = []
    cues: int | None = None
    for field, raw in record.items():
        if field == CUES_FIELD:
            with contextlib.suppress(ValueError):
                cues = int(raw)
            continue
        try:
            item = json.loads(raw)
            event, at = item["e"], float(item[AT_FIELD])
        except (ValueError, TypeError, KeyError):
            continue
        if not isinstance(event, dict) or event.get("call_id") != call_id:
            continue
        if field == "start":
            start = (event, at)
        else:
            rest.append((event, at))
    rest.sort(key=lambda item: item[1])
    return ([start, *rest] if start is not None else rest), cues


def _starts(events: Sequence[tuple[Event, float]]) -> bool:
    return bool(events) and events[0][0].get("type") == "call_start"


def _stream_start(call_id: str, entries: Any) -> tuple[Event, float] | None:
    """The call's `call_start`, if it is the first entry its stream still holds."""
    if not entries:
        return None
    entry_id, fields = entries[0]
    try:
        event = json.loads(fields[EVENT_FIELD])
        at = int(str(entry_id).partition("-")[0]) / 1000.0
    except (KeyError, ValueError, TypeError):
        return None
    if not isinstance(event, dict):
        return None
    if event.get("type") != "call_start" or event.get("call_id") != call_id:
        return None
    return event, at
