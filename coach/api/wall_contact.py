"""Tells the walls when a live call's instance has gone (killed, or cut off from Redis).

Each instance refreshes a liveness key in Redis every heartbeat (`RedisBus.instance_key`,
`instance_ttl_s`, a few seconds); each call it runs has an owner key naming it. When an
instance dies, its calls stop being coached at once, but the orphan sweep closes them only
after their owner keys expire and the store has heard nothing for twice that (about a
minute, coach/store/recovered.py): meanwhile every other wall showed them as live calls,
coached, with a mood and a trend that were a minute old. An outside audit asked for an
interim signal.

This looks, every `every_s`, at the calls the wall shows as live that this instance does not
run: a call whose owner key names an instance whose liveness key has expired is marked
`contact lost` on the wall (`WallTracker.mark_contact`, a `call_contact` event to the
pages); if that instance answers again (a Redis blip, a long GC pause) the mark goes. A call
without an owner key is left alone at first (it has ended and its `call_end` is on its way,
or Redis lost the key and its owner writes it again within `ownerless_s`); one that stays
without for longer is marked too (its instance let it go without ending it, or its end was
lost). With Redis down nothing is judged: this instance cannot tell.

One task; every round trip under `timeout_s`; Redis failing postpones the next look.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from redis.exceptions import RedisError

from coach.api.wall import WallTracker
from coach.redis_bus import RedisBus

log = logging.getLogger(__name__)


class ContactWatcher:
    def __init__(
        self,
        wall: WallTracker,
        bus: RedisBus,
        *,
        runs_here: Callable[[str], bool],
        every_s: float | None = None,
        timeout_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.wall = wall
        self.bus = bus
        self.runs_here = runs_here
        """Whether this instance runs the call (its own calls need no looking up)."""
        self.every_s = bus.instance_ttl_s if every_s is None else every_s
        self.timeout_s = timeout_s
        self.ownerless_s = bus.owner_ttl_s / 3 + bus.heartbeat_s + 0.5
        """How long a live call may have no owner key before it counts as lost: longer than
        its owner takes to write the key again after Redis lost it."""
        self._ownerless: dict[str, float] = {}
        """call id -> when it was first found without an owner key (at every look since)."""
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="wall-contact")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.every_s)
            try:
                await self.check()
                failing = False
            except (RedisError, OSError, TimeoutError) as exc:
                if not failing:
                    log.info("wall contact: Redis unavailable (%s); not judged meanwhile", exc)
                failing = True
            except Exception:  # a bug here must not stop the looks for good
                log.exception("wall contact: look failed")

    async def check(self) -> list[str]:
        """One look; returns the calls marked lost by it (tests, logs)."""
        if self.bus.degraded:
            return []  # cut off from Redis ourselves: every other instance would look dead
        ids = [c for c in self.wall.live_calls() if not self.runs_here(c)]
        if not ids:
            return []
        bus = self.bus
        owners = await bus.lookup(
            lambda p: [p.get(bus.owner_key(c)) for c in ids], timeout_s=self.timeout_s
        )
        owner_of = {c: str(o) for c, o in zip(ids, owners, strict=True) if o}
        instances = sorted(set(owner_of.values()) - {bus.instance_id})
        gone: set[str] = set()
        if instances:
            answers = await bus.lookup(
                lambda p: [p.exists(bus.instance_key(i)) for i in instances],
                timeout_s=self.timeout_s,
            )
            gone = {i for i, alive in zip(instances, answers, strict=True) if not alive}
        lost: list[str] = []
        for call_id, owner in owner_of.items():
            if owner == bus.instance_id:
                continue
            if self.wall.mark_contact(call_id, lost=owner in gone) and owner in gone:
                lost.append(call_id)
        # A live call nobody has owned for longer than an owner takes to write its key again
        # (a flushed Redis): its instance let it go without ending it (a process restarted
        # under the dead one's id releases such keys) or its end never came.
        now = self._clock()
        self._ownerless = {c: self._ownerless.get(c, now) for c in ids if c not in owner_of}
        for call_id, since in self._ownerless.items():
            if now - since >= self.ownerless_s and self.wall.mark_contact(call_id, lost=True):
                lost.append(call_id)
        if lost:
            log.warning(
                "wall: %d call(s) lost their instance (no liveness key): %s",
                len(lost),
                ", ".join(lost[:10]),
            )
        return lost
