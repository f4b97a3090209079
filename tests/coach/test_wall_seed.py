"""A wall started after a long call's `call_start` scrolled out of Redis still shows the call.

Instance A runs calls (a RedisBus publishing what a call session publishes); instance B is a
second RedisBus with its own WallTracker and WallSeeder, on the shared Redis under a key
prefix of the test's own. "Scrolled out" is an exact XTRIM of the streams to nothing.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis

from coach.api.wall import WallTracker
from coach.api.wall_seed import WallSeeder
from coach.auth import Principal
from coach.bus import SUPERVISOR_TOPIC, call_topic
from coach.redis_bus import RedisBus
from tests.coach.test_redis_bus import SHARED_URL, make_bus, needs_redis, prefix, wait_for
from tests.coach.test_scale_out import kill
from tests.support import free_port

__all__ = ["prefix"]  # fixture: a Redis key prefix

_SUPERVISED = ("call_start", "call_end", "cue", "escalation", "agent_assigned")


class Call:
    """What a CallSession on instance A publishes, without the audio pipeline."""

    def __init__(self, bus: RedisBus, call_id: str) -> None:
        self.bus, self.call_id, self.seq = bus, call_id, 0

    def emit(self, type_: str, **fields: Any) -> int:
        self.seq += 1
        event = {"seq": self.seq, "call_id": self.call_id, "type": type_, **fields}
        self.bus.publish(call_topic(self.call_id), event)
        if type_ in _SUPERVISED:
            self.bus.publish(SUPERVISOR_TOPIC, event)
        return self.seq

    def update(self, valence: float, emotion: str) -> None:
        """A customer's transcript, and the wall's `call_update` from it."""
        seq = self.emit("transcript", speaker="customer", text="...")
        self.bus.publish(
            SUPERVISOR_TOPIC,
            {
                "type": "call_update",
                "call_id": self.call_id,
                "seq": seq,
                "valence": valence,
                "arousal": 0.8,
                "emotion": emotion,
                "trend_valence": valence,
                "last_cue": None,
            },
        )


async def flushed(bus: RedisBus) -> None:
    await wait_for(lambda: not bus.degraded and not bus._pending())


async def trim(prefix: str, *topics: str) -> None:
    """As if a busy contact center had pushed these streams' old entries out."""
    client = aioredis.Redis.from_url(SHARED_URL)
    try:
        for topic in topics:
            await client.xtrim(f"{prefix}{topic}", maxlen=0, approximate=False)
    finally:
        await client.aclose()


async def stop_all(seeder: WallSeeder | None, *buses: RedisBus | None) -> None:
    """The end of a test: the seeder first (it reads through B's bus), then every bus."""
    if seeder is not None:
        await seeder.stop()
    for bus in buses:
        if bus is not None:
            await bus.stop()


async def instance_b(prefix: str, **seeder: Any) -> tuple[RedisBus, WallTracker, WallSeeder]:
    """A second instance's wall as the app wires it (coach/api/app.py)."""
    bus, wall = make_bus(SHARED_URL, prefix, "B"), WallTracker()
    bus.add_listener(wall.listener)
    await bus.start()
    bus.watch_remote(SUPERVISOR_TOPIC, wall.remote)
    seeder_ = WallSeeder(wall, bus, min_interval_s=0.05, **seeder)
    seeder_.start()
    return bus, wall, seeder_


@needs_redis
async def test_a_wall_started_later_shows_a_long_call_whose_start_scrolled_out(
    prefix: str,
) -> None:
    """The bug: B's wall never showed A's call, whose call_start had left the supervisor
    stream (and the call's own), though the call was live. Now it is drawn from A's record
    with its agent and team (who may see it), risk, and open escalations."""
    a = make_bus(SHARED_URL, prefix, "A")
    await a.start()
    b: RedisBus | None = None
    seeder: WallSeeder | None = None
    try:
        call = Call(a, "long-1")
        t0 = time.time()
        call.emit("call_start", source="pcm", meta={"agent_id": "ann", "team": "blue"})
        call.emit("agent_assigned", agent_id="bob")
        open_esc = call.emit("escalation", reason="user_request", urgency="high")
        taken = call.emit("escalation", reason="repeated_frustration", urgency="medium")
        # A supervisor takes one (on whichever instance: here A's API).
        a.publish(
            SUPERVISOR_TOPIC,
            {"type": "escalation_ack", "call_id": "long-1", "seq": taken, "by": "sam"},
        )
        call.emit("cue", cue="empathy", title="Acknowledge")
        call.emit("cue", cue="slow_down", title="Slow down")
        call.update(-0.7, "angry")
        await flushed(a)
        await trim(prefix, SUPERVISOR_TOPIC, call_topic("long-1"))

        b, wall, seeder = await instance_b(prefix)
        await wait_for(lambda: "long-1" in wall.calls)
        tile = wall.calls["long-1"]
        assert tile.meta == {"agent_id": "bob", "team": "blue"} and tile.source == "pcm"
        assert tile.valence == -0.7 and tile.emotion == "angry" and tile.cues == 2
        assert tile.last_cue is not None and tile.last_cue["cue"] == "slow_down"
        assert tile.escalations[open_esc]["acknowledged_by"] is None
        assert tile.escalations[taken]["acknowledged_by"] == "sam"
        assert tile.ended_at is None and abs(tile.started_at - t0) < 2.0

        # From here on it follows the call as any other.
        call.update(0.4, "calm")
        await wait_for(lambda: tile.emotion == "calm")
        call.emit("call_end", reason="hangup")
        await wait_for(lambda: tile.ended_at is not None)
        client = aioredis.Redis.from_url(SHARED_URL)
        await flushed(a)
        assert not await client.exists(a.wall_key("long-1"))  # ended: its record goes
        await client.aclose()
    finally:
        await stop_all(seeder, b, a)


@needs_redis
async def test_an_acknowledgement_taken_on_another_instance_goes_into_the_calls_record(
    prefix: str,
) -> None:
    """A supervisor on C takes an escalation of a call A runs: a wall drawing the call from
    A's record later shows it taken. Once the call has ended (A deleted its record), an
    acknowledgement must not start a record of its own: one was left behind for the TTL."""
    a, c = make_bus(SHARED_URL, prefix, "A"), make_bus(SHARED_URL, prefix, "C")
    client = aioredis.Redis.from_url(SHARED_URL)
    await a.start()
    await c.start()
    try:
        call = Call(a, "acked-1")
        call.emit("call_start", source="pcm", meta={"agent_id": "ann"})
        taken = call.emit("escalation", reason="user_request", urgency="high")
        await flushed(a)
        ack = {"type": "escalation_ack", "call_id": "acked-1", "seq": taken, "by": "sam"}
        c.publish(SUPERVISOR_TOPIC, ack)
        await flushed(c)
        assert await client.hexists(a.wall_key("acked-1"), f"ack:{taken}")

        call.emit("call_end", reason="hangup")
        await flushed(a)
        assert not await client.exists(a.wall_key("acked-1"))
        c.publish(SUPERVISOR_TOPIC, {**ack, "by": "kim"})
        await flushed(c)
        assert not await client.exists(a.wall_key("acked-1"))
    finally:
        await client.aclose()
        await stop_all(None, c, a)


@needs_redis
async def test_a_drawn_call_is_shown_to_whom_its_assigned_agent_says(prefix: str) -> None:
    """A call that started with no agent is every supervisor's until one is put on it: a
    drawn tile that missed the `agent_assigned` would show the call to every team. Walls
    that may see it get a fresh snapshot (the tile with its real start), the others nothing."""
    a = make_bus(SHARED_URL, prefix, "A")
    b = make_bus(SHARED_URL, prefix, "B")
    await a.start()
    await b.start()
    wall = WallTracker()
    try:
        call = Call(a, "assigned-1")
        call.emit("call_start", source="pcm", meta={})
        call.emit("agent_assigned", agent_id="bob")
        await flushed(a)
        await trim(prefix, SUPERVISOR_TOPIC, call_topic("assigned-1"))
        bobs = Principal("sue", "supervisor", team="red", team_agents=frozenset({"bob"}))
        other = Principal("tom", "supervisor", team="green", team_agents=frozenset({"zed"}))
        sub_bobs, sub_other = wall.subscribe(bobs), wall.subscribe(other)

        assert await WallSeeder(wall, b).seed_calls(["assigned-1"]) == 1
        assert wall.calls["assigned-1"].meta == {"agent_id": "bob"}
        assert [c["call_id"] for c in wall.snapshot(bobs)] == ["assigned-1"]
        assert wall.snapshot(other) == []
        assert sub_bobs.overflowed and sub_bobs.queue.qsize() == 1  # a snapshot, then
        assert not sub_other.overflowed and sub_other.queue.empty()
    finally:
        await b.stop()
        await a.stop()


@needs_redis
async def test_calls_that_ended_or_whose_instance_died_are_not_shown(prefix: str) -> None:
    dead = make_bus(SHARED_URL, prefix, "A", instance_ttl_s=0.5)
    a2 = make_bus(SHARED_URL, prefix, "A2")
    await dead.start()
    await a2.start()
    b: RedisBus | None = None
    seeder: WallSeeder | None = None
    try:
        meta = {"agent_id": "ann", "team": "blue"}
        Call(dead, "on-dead").emit("call_start", source="pcm", meta=meta)
        ended = Call(a2, "ended")
        ended.emit("call_start", source="pcm", meta=meta)
        live = Call(a2, "live")
        live.emit("call_start", source="pcm", meta=meta)
        await flushed(dead)
        await flushed(a2)
        await kill(dead)  # as kill -9: its owner keys stay until their TTL
        # This one ended while B was down; its start and end left the streams since.
        ended.emit("call_end", reason="hangup")
        await flushed(a2)
        await trim(prefix, SUPERVISOR_TOPIC, call_topic("on-dead"), call_topic("ended"))
        client = aioredis.Redis.from_url(SHARED_URL)
        deadline = time.monotonic() + 5
        while await client.exists(dead.instance_key("A")):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert await client.exists(dead.owner_key("on-dead"))  # still names the dead one
        await client.aclose()

        # Small SCAN passes: the pass goes on from where the last one stopped.
        b, wall, seeder = await instance_b(prefix, scan_count=10, max_rounds=2)
        await wait_for(lambda: "live" in wall.calls, within=10.0)
        await asyncio.sleep(0.2)
        assert "on-dead" not in wall.calls and "ended" not in wall.calls
    finally:
        await stop_all(seeder, b, dead, a2)


@needs_redis
async def test_a_call_whose_start_is_nowhere_gets_no_tile(prefix: str) -> None:
    """Its record lost the start and its stream was trimmed: a tile without the agent and
    team would be every supervisor's, so the call is not shown at all, also when its events
    keep arriving."""
    a = make_bus(SHARED_URL, prefix, "A")
    await a.start()
    b: RedisBus | None = None
    seeder: WallSeeder | None = None
    try:
        lost = Call(a, "lost")
        lost.emit("call_start", source="pcm", meta={"agent_id": "ann", "team": "blue"})
        lost.update(-0.9, "angry")
        control = Call(a, "control")
        control.emit("call_start", source="pcm", meta={"agent_id": "ann", "team": "blue"})
        await flushed(a)
        client = aioredis.Redis.from_url(SHARED_URL)
        await client.hdel(a.wall_key("lost"), "start")
        await client.aclose()
        await trim(prefix, SUPERVISOR_TOPIC, call_topic("lost"))

        b, wall, seeder = await instance_b(prefix, retry_s=0.0)
        await wait_for(lambda: "control" in wall.calls)
        lost.update(-0.8, "angry")  # the wall hears of it: it looks again, in vain
        lost.emit("escalation", reason="user_request", urgency="high")
        await wait_for(lambda: "lost" in seeder._tried and not seeder._wanted)
        await asyncio.sleep(0.2)
        assert "lost" not in wall.calls and seeder.drawn == 1
    finally:
        await stop_all(seeder, b, a)


@needs_redis
async def test_without_a_record_the_start_is_read_from_the_calls_own_stream(
    prefix: str,
) -> None:
    """A call run by a version that kept no record: its stream's first entry, if it is still
    the call's start, serves."""
    a = make_bus(SHARED_URL, prefix, "A")
    await a.start()
    b: RedisBus | None = None
    seeder: WallSeeder | None = None
    try:
        call = Call(a, "old-1")
        call.emit("call_start", source="twilio", meta={"agent_id": "ann", "team": "blue"})
        call.emit("transcript", speaker="agent", text="hello")
        await flushed(a)
        client = aioredis.Redis.from_url(SHARED_URL)
        await client.delete(a.wall_key("old-1"))
        await client.aclose()
        await trim(prefix, SUPERVISOR_TOPIC)

        b, wall, seeder = await instance_b(prefix)
        await wait_for(lambda: "old-1" in wall.calls)
        assert wall.calls["old-1"].meta["team"] == "blue"
        assert wall.calls["old-1"].source == "twilio"
    finally:
        await stop_all(seeder, b, a)


@needs_redis
async def test_a_call_the_wall_hears_of_later_is_drawn_then(prefix: str) -> None:
    """Between full passes, a remote event for a call without a tile (the wall was cut off
    from Redis while the call started) has that call looked up at once."""
    a = make_bus(SHARED_URL, prefix, "A")
    await a.start()
    b = make_bus(SHARED_URL, prefix, "B")
    wall = WallTracker()
    await b.start()
    seeder = WallSeeder(wall, b, min_interval_s=0.05, full_every_s=3600)
    try:
        seeder.start()
        await asyncio.sleep(0.3)  # its first full pass: no call yet
        call = Call(a, "late-1")
        call.emit("call_start", source="pcm", meta={"agent_id": "ann", "team": "blue"})
        await flushed(a)
        await trim(prefix, SUPERVISOR_TOPIC)
        call.update(-0.5, "sad")
        await flushed(a)
        b.watch_remote(SUPERVISOR_TOPIC, wall.remote)
        await wait_for(lambda: "late-1" in wall.calls, within=3.0)
        assert wall.calls["late-1"].meta["agent_id"] == "ann"
        assert wall.calls["late-1"].emotion == "sad"
    finally:
        await seeder.stop()
        await b.stop()
        await a.stop()


@needs_redis
async def test_a_call_taken_over_keeps_its_earlier_escalations_on_a_later_wall(
    prefix: str,
) -> None:
    """Found by an outside audit with two real servers: A ran a call and raised a critical
    escalation, was killed, and B took the call over (a `call_start` marked `resumed`). A
    wall started after A's part scrolled out drew the call from B's `call_start` alone: no
    critical escalation, and the takeover's time as the call's start. The record, which
    lives on through the takeover, completes the tile, and its cue count goes on."""
    a = make_bus(SHARED_URL, prefix, "A")
    taker = make_bus(SHARED_URL, prefix, "T")
    await a.start()
    await taker.start()
    b: RedisBus | None = None
    seeder: WallSeeder | None = None
    try:
        first = Call(a, "taken-1")
        t0 = time.time() - 60.0
        meta = {"agent_id": "ann", "team": "blue"}
        first.emit("call_start", source="pcm", meta=meta)
        first.emit("cue", cue="frustration", title="Acknowledge")
        first.emit("cue", cue="crisis", title="Safety first")
        crisis = first.emit("escalation", reason="crisis_indicators", urgency="critical")
        taken = first.emit("escalation", reason="user_request", urgency="high")
        a.publish(
            SUPERVISOR_TOPIC,
            {"type": "escalation_ack", "call_id": "taken-1", "seq": taken, "by": "sam"},
        )
        await flushed(a)
        await kill(a)  # as kill -9: its record stays
        await trim(prefix, SUPERVISOR_TOPIC, call_topic("taken-1"))

        second = Call(taker, "taken-1")
        second.seq = first.seq
        started = datetime.fromtimestamp(t0, UTC).isoformat()
        second.emit("call_start", source="pcm", meta={**meta, "resumed": True}, started_at=started)
        later = second.emit("escalation", reason="repeated_frustration", urgency="medium")
        second.emit("cue", cue="urgency", title="Act now")
        await flushed(taker)

        b, wall, seeder = await instance_b(prefix)
        await wait_for(lambda: "taken-1" in wall.calls)
        tile = wall.calls["taken-1"]
        # Drawn from the takeover's call_start at once, completed by the seeder's next pass.
        await wait_for(lambda: crisis in tile.escalations, within=3.0)
        assert sorted(tile.escalations) == [crisis, taken, later]
        assert tile.escalations[crisis]["urgency"] == "critical"
        assert tile.escalations[crisis]["acknowledged_by"] is None
        assert tile.escalations[taken]["acknowledged_by"] == "sam"
        assert abs(tile.started_at - t0) < 0.01
        assert tile.meta["agent_id"] == "ann" and tile.ended_at is None
        # The cue count goes on through the takeover (counted in Redis, not by each owner).
        await wait_for(lambda: tile.cues == 3, within=3.0)
    finally:
        await stop_all(seeder, b, taker, a)


async def test_redis_down_never_stops_nor_blocks_the_wall() -> None:
    bus = make_bus(f"redis://127.0.0.1:{free_port()}/0", "coach-test-down:", "B")
    wall = WallTracker()
    seeder = WallSeeder(wall, bus, min_interval_s=0.01, timeout_s=0.2)
    await bus.start()
    try:
        seeder.start()
        seeder.want("x")
        t0 = time.monotonic()
        wall.remote(SUPERVISOR_TOPIC, {"type": "call_update", "call_id": "y"}, time.time())
        assert time.monotonic() - t0 < 0.05
        await asyncio.sleep(0.5)
        assert seeder._task is not None and not seeder._task.done()  # still retrying
        assert wall.calls == {}
    finally:
        t0 = time.monotonic()
        await seeder.stop()
        assert time.monotonic() - t0 < 1.0
        await bus.stop()
