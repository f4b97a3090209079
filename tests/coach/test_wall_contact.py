"""A wall says so when a live call's instance dies, long before the orphan sweep closes it.

Instance A runs calls (a RedisBus publishing what a call session publishes, as in
test_wall_seed.py); instance B is a second RedisBus with a WallTracker fed by A's stream and
a ContactWatcher. Killing A is `kill` (as kill -9: its keys stay until they expire).
"""

from __future__ import annotations

import asyncio
from typing import Any

from coach.api.wall import WallTracker
from coach.api.wall_contact import ContactWatcher
from coach.auth import Principal
from coach.bus import SUPERVISOR_TOPIC
from coach.redis_bus import RedisBus
from tests.coach.test_redis_bus import SHARED_URL, make_bus, needs_redis, prefix, wait_for
from tests.coach.test_scale_out import kill
from tests.coach.test_wall_seed import Call, flushed

__all__ = ["prefix"]  # fixture: a Redis key prefix

ADMIN = Principal(user="root", role="admin")


async def wall_on_b(prefix: str) -> tuple[RedisBus, WallTracker]:
    bus, wall = make_bus(SHARED_URL, prefix, "B"), WallTracker()
    bus.add_listener(wall.listener)
    await bus.start()
    bus.watch_remote(SUPERVISOR_TOPIC, wall.remote)
    return bus, wall


async def key_is(bus: RedisBus, key: str, *, present: bool, within_s: float = 10.0) -> None:
    """Wait until `key` exists (or is gone) in Redis: a liveness key expiring or written."""
    for _ in range(round(within_s / 0.05)):
        if bool(await bus.redis.exists(key)) == present:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{key} still {'missing' if present else 'there'}")


def tile(wall: WallTracker, call_id: str) -> dict[str, Any]:
    return next(t for t in wall.snapshot(ADMIN) if t["call_id"] == call_id)


@needs_redis
async def test_a_call_whose_instance_died_is_marked_lost_and_its_sibling_is_not(
    prefix: str,
) -> None:
    dead = make_bus(SHARED_URL, prefix, "A", instance_ttl_s=0.5)
    alive = make_bus(SHARED_URL, prefix, "A2", instance_ttl_s=0.5)
    await dead.start()
    await alive.start()
    b: RedisBus | None = None
    try:
        b, wall = await wall_on_b(prefix)
        sub = wall.subscribe(ADMIN)
        meta = {"agent_id": "ann", "team": "blue"}
        Call(dead, "on-dead").emit("call_start", source="pcm", meta=meta)
        Call(alive, "on-alive").emit("call_start", source="pcm", meta=meta)
        await flushed(dead)
        await flushed(alive)
        await wait_for(lambda: {"on-dead", "on-alive"} <= wall.calls.keys(), within=10.0)
        watcher = ContactWatcher(wall, b, runs_here=lambda _c: False)
        # Both answer: nothing is marked.
        assert await watcher.check() == []
        assert tile(wall, "on-dead")["contact_lost_at"] is None

        await kill(dead)  # its owner keys stay for their 30 s; its liveness key goes in 0.5 s
        await key_is(b, dead.instance_key("A"), present=False)
        assert await watcher.check() == ["on-dead"]
        assert tile(wall, "on-dead")["contact_lost_at"] is not None
        assert tile(wall, "on-alive")["contact_lost_at"] is None
        # The open pages were told, once.
        told = []
        while not sub.queue.empty():
            ev = sub.queue.get_nowait()
            if ev["type"] == "call_contact":
                told.append(ev)
        assert [(e["call_id"], e["lost"]) for e in told] == [("on-dead", True)]
        assert await watcher.check() == []  # already marked: no second event
        assert sub.queue.empty()

        # The sweep's (or a takeover's) call_end ends the tile and the mark with it.
        wall.apply({"type": "call_end", "call_id": "on-dead", "seq": 9, "reason": "interrupted"})
        assert tile(wall, "on-dead")["contact_lost_at"] is None
    finally:
        for bus in (b, dead, alive):
            if bus is not None:
                await bus.stop()


@needs_redis
async def test_an_instance_that_answers_again_loses_its_mark(prefix: str) -> None:
    """A Redis blip or a long pause on A: its liveness key expired, then came back."""
    a = make_bus(SHARED_URL, prefix, "A", instance_ttl_s=0.5)
    await a.start()
    b: RedisBus | None = None
    try:
        b, wall = await wall_on_b(prefix)
        Call(a, "paused").emit("call_start", source="pcm", meta={})
        await flushed(a)
        await wait_for(lambda: "paused" in wall.calls, within=10.0)
        watcher = ContactWatcher(wall, b, runs_here=lambda _c: False)
        await b.redis.delete(a.instance_key("A"))  # as if it had expired
        assert await watcher.check() == ["paused"]
        await key_is(b, a.instance_key("A"), present=True)  # A's next heartbeat writes it
        assert await watcher.check() == []
        assert tile(wall, "paused")["contact_lost_at"] is None
    finally:
        for bus in (b, a):
            if bus is not None:
                await bus.stop()


@needs_redis
async def test_the_instances_own_calls_and_a_degraded_bus_are_not_judged(prefix: str) -> None:
    a = make_bus(SHARED_URL, prefix, "A", instance_ttl_s=0.5)
    await a.start()
    b: RedisBus | None = None
    try:
        b, wall = await wall_on_b(prefix)
        Call(a, "mine").emit("call_start", source="pcm", meta={})
        await flushed(a)
        await wait_for(lambda: "mine" in wall.calls, within=10.0)
        await kill(a)
        await key_is(b, a.instance_key("A"), present=False)
        # B runs the call (a takeover): its own calls are never looked up.
        assert await ContactWatcher(wall, b, runs_here=lambda c: c == "mine").check() == []
        # B cut off from Redis itself: every instance would look dead, so it judges none.
        b._writer_down = True
        assert b.degraded
        assert await ContactWatcher(wall, b, runs_here=lambda _c: False).check() == []
        b._writer_down = False
        assert await ContactWatcher(wall, b, runs_here=lambda _c: False).check() == ["mine"]
    finally:
        for bus in (b, a):
            if bus is not None:
                await bus.stop()


@needs_redis
async def test_a_live_call_nobody_owns_for_long_is_marked_lost(prefix: str) -> None:
    """A process restarted under its dead predecessor's id releases the owner keys it left
    (coach/redis_bus.py): a call whose key went before any wall had marked it was shown live
    until the sweep. Without an owner for longer than an owner takes to write its key again,
    it is marked; a key that comes back within that time (a flushed Redis) marks nothing."""
    a = make_bus(SHARED_URL, prefix, "A", instance_ttl_s=0.5)
    await a.start()
    b: RedisBus | None = None
    try:
        b, wall = await wall_on_b(prefix)
        for call_id in ("released", "flushed"):
            Call(a, call_id).emit("call_start", source="pcm", meta={})
        await flushed(a)
        await wait_for(lambda: {"released", "flushed"} <= wall.calls.keys(), within=10.0)
        now = [0.0]
        watcher = ContactWatcher(wall, b, runs_here=lambda _c: False, clock=lambda: now[0])
        for call_id in ("released", "flushed"):
            await b.redis.delete(a.owner_key(call_id))
        assert await watcher.check() == []  # no owner yet: not judged
        await b.redis.set(a.owner_key("flushed"), "A")  # its owner wrote it again
        now[0] = watcher.ownerless_s + 0.1
        assert await watcher.check() == ["released"]
        assert tile(wall, "released")["contact_lost_at"] is not None
        assert tile(wall, "flushed")["contact_lost_at"] is None
    finally:
        for bus in (b, a):
            if bus is not None:
                await bus.stop()
