"""RedisBus against a real Redis: cross-instance delivery, replay, and riding out an outage.

Shared-server tests use the CI Redis on 127.0.0.1:6379 under their own key prefix (deleted
after). Outage tests start a private `redis-server` on a free port so that stopping it never
disturbs anyone else using 6379.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from coach.bus import SUPERVISOR_TOPIC, Subscription, call_topic
from coach.redis_bus import RedisBus
from tests.support import free_port

SHARED_URL = "redis://127.0.0.1:6379/0"


def _shared_redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


needs_redis = pytest.mark.skipif(not _shared_redis_up(), reason="no Redis on 127.0.0.1:6379")
needs_redis_server = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server not installed"
)


class PrivateRedis:
    """A throwaway redis-server this test owns (so it may stop and restart it)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    p = f"coach-test-{uuid.uuid4().hex[:10]}:"
    yield p
    client = aioredis.Redis.from_url(SHARED_URL)
    keys = [k async for k in client.scan_iter(match=f"{p}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


def make_bus(url: str, prefix: str, instance: str, **kw: Any) -> RedisBus:
    opts: dict[str, Any] = {"block_ms": 100, "heartbeat_s": 0.1, "backoff_cap_s": 0.3}
    opts.update(kw)
    return RedisBus(url, instance_id=instance, prefix=prefix, **opts)


def ev(call_id: str, seq: int, type_: str = "transcript") -> dict[str, Any]:
    return {"seq": seq, "call_id": call_id, "type": type_, "text": f"e{seq}"}


async def drain(sub: Subscription, n: int, within: float = 5.0) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(within):
        while len(got) < n:
            item = await sub.queue.get()
            if item is None:
                break
            got.append(item)
    return got


async def wait_for(cond: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


@needs_redis
async def test_events_cross_instances_in_order_without_duplicates(prefix: str) -> None:
    a, b = make_bus(SHARED_URL, prefix, "A"), make_bus(SHARED_URL, prefix, "B")
    await a.start()
    await b.start()
    try:
        topic = call_topic("c1")
        sub_b = b.subscribe(topic)
        for i in range(1, 6):
            a.publish(topic, ev("c1", i))
        # Duplicates (a retried XADD) and a stray old seq must not reach panels twice.
        a.publish(topic, ev("c1", 3))
        for i in range(6, 11):
            a.publish(topic, ev("c1", i))
        a.publish(topic, ev("c1", 11, "call_end"))
        got = await drain(sub_b, 20)
        assert [e["seq"] for e in got] == list(range(1, 12))
        assert sub_b.queue.empty()
        assert b.is_closed(topic)  # call_end on A ends B's panels too

        # A late panel on B resumes after seq 7 (history from the stream, then the end).
        late = b.subscribe(topic, after_seq=7)
        assert [e["seq"] for e in await drain(late, 20)] == [8, 9, 10, 11]

        # A fresh instance that never saw the call replays from XRANGE, honouring after_seq.
        c = make_bus(SHARED_URL, prefix, "C")
        await c.start()
        try:
            sub_c = c.subscribe(topic, after_seq=4)
            assert [e["seq"] for e in await drain(sub_c, 20)] == list(range(5, 12))
        finally:
            await c.stop()

        # Own events are not re-delivered locally, and ownership was claimed then released.
        assert [e["seq"] for e in a.history(topic)] == [*range(1, 6), 3, *range(6, 12)]
        assert await a.owner("c1") is None
    finally:
        await a.stop()
        await b.stop()


@needs_redis
async def test_an_amendment_reaches_a_copy_read_from_redis_later(prefix: str) -> None:
    """An escalation taken after its call ended: the instance that ran it amends its own
    copy, and the stream is append-only. Another instance that reads the stream only later
    (a panel opened there) still shows who took it, and one holding a copy amends it."""
    a, b, c = (make_bus(SHARED_URL, prefix, name) for name in "ABC")
    for bus in (a, b, c):
        await bus.start()
    try:
        topic = call_topic("c1")
        watching = c.subscribe(topic)  # C holds a copy from the start
        a.publish(topic, ev("c1", 1))
        a.publish(topic, ev("c1", 2, "escalation"))
        a.publish(topic, ev("c1", 3, "call_end"))
        await drain(watching, 3)
        taker = {"acknowledged_by": "sam", "acknowledged_at": "2026-12-06T17:00:00+00:00"}
        for bus in (a, b, c):
            bus.amend(topic, 2, taker)  # what every instance does on the acknowledgement
        for bus in (b, c):
            got = await drain(bus.subscribe(topic), 5)
            assert [e["seq"] for e in got] == [1, 2, 3]
            assert got[1] == {**ev("c1", 2, "escalation"), **taker}, bus.instance_id
            assert "acknowledged_by" not in got[0]
    finally:
        for bus in (a, b, c):
            await bus.stop()


@needs_redis
async def test_owner_key_has_ttl_while_call_is_live(prefix: str) -> None:
    a = make_bus(SHARED_URL, prefix, "A", owner_ttl_s=10)
    await a.start()
    try:
        a.publish(call_topic("c2"), ev("c2", 1, "call_start"))
        await wait_for(lambda: not a.degraded and not a._pending())
        client = aioredis.Redis.from_url(SHARED_URL)
        assert await a.owner("c2") == "A"
        ttl = await client.ttl(f"{prefix}owner:c2")
        assert 0 < ttl <= 10
        assert await client.xlen(f"{prefix}call:c2") == 1
        await client.aclose()
    finally:
        await a.stop()


@needs_redis
async def test_an_erased_call_leaves_nothing_in_redis(prefix: str) -> None:
    """Erasure on request (coach/store/api.py) deletes the call's redacted stream, session
    state and wall record, which would otherwise be served for an hour."""
    a = make_bus(SHARED_URL, prefix, "A")
    await a.start()
    client = aioredis.Redis.from_url(SHARED_URL)
    try:
        a.publish(call_topic("c-erase"), ev("c-erase", 1, "call_start"))
        a.publish(SUPERVISOR_TOPIC, {**ev("c-erase", 1, "call_start"), "meta": {}})
        a.save_session_state("c-erase", {"seq": 1, "ended": True})
        await wait_for(lambda: not a.degraded and not a._pending())
        keys = [f"{prefix}call:c-erase", a.state_key("c-erase"), a.wall_key("c-erase")]
        assert await client.exists(*keys) == 3
        await a.erase_call("c-erase")
        assert await client.exists(*keys) == 0
    finally:
        await client.aclose()
        await a.stop()


@needs_redis
async def test_stop_returns_when_cancelled_just_as_the_writer_wakes(prefix: str) -> None:
    """Regression: a wake-up landing in the same loop turn as the cancel once left the
    writer looping for ever (Python 3.11's wait_for swallows that cancel) and hung stop()."""
    for _ in range(5):
        bus = make_bus(SHARED_URL, prefix, "A", heartbeat_s=30.0)
        await bus.start()
        bus._wake_writer.set()
        await wait_for(lambda b=bus: not b._writer_down)  # first ping done
        await asyncio.sleep(0.05)  # the writer is back waiting for the next wake-up
        bus._wake_writer.set()
        await asyncio.sleep(0)  # the inner wait finishes; the writer has not resumed yet
        tasks = list(bus._tasks)
        stopping = asyncio.ensure_future(bus.stop())
        done, _ = await asyncio.wait({stopping}, timeout=1.5)  # stop() gives tasks 2 s
        assert done, "stop() hung: a bus task outlived its cancellation"
        assert len(tasks) == 2 and all(t.done() for t in tasks)


async def test_local_delivery_when_redis_is_unreachable() -> None:
    bus = make_bus("redis://127.0.0.1:1/0", "coach-test-down:", "A", outbox_per_topic=5)
    await bus.start()
    try:
        topic = call_topic("c3")
        sub = bus.subscribe(topic)
        t0 = time.monotonic()
        for i in range(1, 21):
            bus.publish(topic, ev("c3", i))
        assert time.monotonic() - t0 < 0.1  # publish never waits on Redis
        assert [e["seq"] for e in await drain(sub, 20)] == list(range(1, 21))
        await wait_for(lambda: bus.degraded)
        assert bus._pending() == 5  # outbox bounded: keeps the newest per topic
        assert bus.outbox_dropped == 15
    finally:
        await bus.stop()


@needs_redis_server
async def test_outbox_flushes_and_readers_catch_up_after_redis_returns(
    private_redis: PrivateRedis,
) -> None:
    a = make_bus(private_redis.url, "coach-t:", "A")
    b = make_bus(private_redis.url, "coach-t:", "B")
    await a.start()
    await b.start()
    try:
        topic = call_topic("c4")
        sub_a, sub_b = a.subscribe(topic), b.subscribe(topic)
        for i in range(1, 4):
            a.publish(topic, ev("c4", i))
        assert [e["seq"] for e in await drain(sub_b, 3)] == [1, 2, 3]

        private_redis.stop()
        await wait_for(lambda: a.degraded and b.degraded)
        for i in range(4, 9):
            a.publish(topic, ev("c4", i))
        assert [e["seq"] for e in await drain(sub_a, 8)] == list(range(1, 9))
        await asyncio.sleep(0.3)
        assert sub_b.queue.empty()  # B cannot see them while Redis is down

        private_redis.start()  # same port, empty dataset
        await wait_for(lambda: not a.degraded and not b.degraded, within=10)
        a.publish(topic, ev("c4", 9, "call_end"))
        # B resumes after the last stream id it saw (ids are time-based, so the restarted
        # server's new entries come after it) and gets 4..9 once each, in order.
        got = await drain(sub_b, 10, within=10)
        assert [e["seq"] for e in got] == list(range(4, 10))
    finally:
        await a.stop()
        await b.stop()


@needs_redis
async def test_a_call_is_live_while_some_instance_owns_it(prefix: str, tmp_path: Path) -> None:
    """What the orphan sweep asks (coach/store/recovered.py): is any instance running it?"""
    from coach.api.app import AppState
    from coach.settings import Settings

    a, b = make_bus(SHARED_URL, prefix, "A", owner_ttl_s=10), make_bus(SHARED_URL, prefix, "B")
    await a.start()
    await b.start()
    state = AppState(Settings(data_dir=tmp_path), runtime=None)
    state.bus = b
    try:
        a.publish(call_topic("c-owned"), ev("c-owned", 1, "call_start"))
        await wait_for(lambda: not a.degraded and not a._pending() and not b.degraded)
        assert await state.is_live("c-owned")  # run by instance A, asked on B
        assert not await state.is_live("c-gone")  # no owner key: nobody runs it
    finally:
        await a.stop()
        await b.stop()
    # A bus that cannot reach Redis cannot tell: it never calls a call an orphan.
    down = make_bus("redis://127.0.0.1:1/0", prefix, "C")
    await down.start()
    state.bus = down
    try:
        await wait_for(lambda: down.degraded)
        assert await state.is_live("c-gone")
    finally:
        await down.stop()


@needs_redis
async def test_every_instances_wall_shows_every_call_and_acknowledgements(prefix: str) -> None:
    """Found by an audit: B's supervisor wall never showed a call A ran (remote events reach
    subscribers, not listeners), an acknowledgement made on B never cleared A's alert (its
    `seq` names the escalation, so it was dropped as an old event), and an acknowledgement
    for a call B had not seen made B a tile with no agent, which every supervisor could
    watch."""
    from coach.api.wall import WallTracker
    from coach.bus import SUPERVISOR_TOPIC

    a, b = make_bus(SHARED_URL, prefix, "A"), make_bus(SHARED_URL, prefix, "B")
    wall_a, wall_b = WallTracker(), WallTracker()
    for bus, wall in ((a, wall_a), (b, wall_b)):
        bus.add_listener(wall.listener)
        await bus.start()
        bus.watch_remote(SUPERVISOR_TOPIC, wall.remote)
    try:
        meta = {"agent_id": "ann", "team": "blue"}
        a.publish(SUPERVISOR_TOPIC, {**ev("c1", 1, "call_start"), "meta": meta, "source": "pcm"})
        a.publish(SUPERVISOR_TOPIC, {**ev("c1", 5, "escalation"), "reason": "user_request"})
        await wait_for(lambda: 5 in getattr(wall_b.calls.get("c1"), "escalations", {}))
        assert wall_b.calls["c1"].meta == meta and wall_b.calls["c1"].source == "pcm"

        ack = {"type": "escalation_ack", "call_id": "c1", "seq": 5, "by": "sam"}
        b.publish(SUPERVISOR_TOPIC, ack)
        await wait_for(lambda: wall_a.calls["c1"].escalations[5]["acknowledged_by"] == "sam")

        b.publish(SUPERVISOR_TOPIC, {**ack, "call_id": "never-started"})
        await asyncio.sleep(0.3)
        assert "never-started" not in wall_a.calls and "never-started" not in wall_b.calls
        # Nor a record of it in Redis: a plain HSET left a one-field record for the TTL.
        assert await b.redis.exists(b.wall_key("never-started")) == 0

        a.publish(SUPERVISOR_TOPIC, ev("c1", 9, "call_end"))
        await wait_for(lambda: wall_b.calls["c1"].ended_at is not None)

        # An instance started later replays the stream: the call, dated when it happened.
        c, wall_c = make_bus(SHARED_URL, prefix, "C"), WallTracker()
        await c.start()
        try:
            c.watch_remote(SUPERVISOR_TOPIC, wall_c.remote)
            await wait_for(lambda: "c1" in wall_c.calls and wall_c.calls["c1"].ended_at is not None)
            tile = wall_c.calls["c1"]
            assert tile.meta == meta and tile.escalations[5]["acknowledged_by"] == "sam"
            assert abs(tile.started_at - wall_a.calls["c1"].started_at) < 2.0
        finally:
            await c.stop()
    finally:
        await a.stop()
        await b.stop()
