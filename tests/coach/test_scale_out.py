"""Two instances on one Redis, as an audit ran them: a call id live on one is refused on the
other; a call whose instance was killed continues on another with its clock and start; and
an instance that cannot reach Redis says so in its log.

The two "instances" are two CallManagers on two RedisBus objects (different instance ids)
in one process, on the shared Redis under a key prefix of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from coach.bus import agent_topic, call_topic
from coach.calls import DRAINING, DUPLICATE_CALL, CallManager, CallRejected
from coach.ingest import closecodes as cc
from coach.messages import AudioChunk
from coach.redis_bus import RedisBus
from coach.runtime import Runtime
from coach.session import HANDED_OVER, HANDING_OVER, CallSession
from coach.settings import Settings
from coach.store.service import StoreConfig, StoreService
from tests.coach.test_admission import PCM_HEADER
from tests.coach.test_ingest_twilio import TwilioClient, close_of
from tests.coach.test_redis_bus import (
    SHARED_URL,
    PrivateRedis,
    make_bus,
    needs_redis,
    needs_redis_server,
    prefix,
    private_redis,
    wait_for,
)

__all__ = ["prefix", "private_redis"]  # fixtures: a Redis key prefix, a private redis-server

RATE = 8000


def rejected(reason: str) -> float:
    return REGISTRY.get_sample_value("coach_calls_rejected_total", {"reason": reason}) or 0.0


async def open_call(manager: CallManager, call_id: str) -> CallSession:
    return await manager.open(call_id=call_id, source="pcm", speakers=("customer",))


async def owned_by(bus: RedisBus, asking: RedisBus, call_id: str) -> None:
    """Wait until `asking` sees `bus`'s instance as the call's live owner."""
    deadline = time.monotonic() + 5
    while await asking.live_owner_elsewhere(call_id) != bus.instance_id:
        assert time.monotonic() < deadline, "owner key never written"
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def two_instances(
    runtime: Runtime, settings: Settings, prefix: str
) -> AsyncIterator[tuple[RedisBus, RedisBus, CallManager, CallManager]]:
    """Instances A and B: their buses (started) and call managers, shut down afterwards.
    Liveness keys last 1 s, so an open of a call live elsewhere is refused after 1.1 s."""
    bus_a = make_bus(SHARED_URL, prefix, "A", instance_ttl_s=1.0)
    bus_b = make_bus(SHARED_URL, prefix, "B", instance_ttl_s=1.0)
    await bus_a.start()
    await bus_b.start()
    a = CallManager(runtime=runtime, settings=settings, bus=bus_a)
    b = CallManager(runtime=runtime, settings=settings, bus=bus_b)
    try:
        yield bus_a, bus_b, a, b
    finally:
        await a.shutdown()
        await b.shutdown()
        await bus_a.stop()
        await bus_b.stop()


async def kill(bus: RedisBus) -> None:
    """As `kill -9`: the bus stops talking to Redis and removes nothing (keys just expire).

    Its loops are told to stop as well as cancelled, as `RedisBus.stop` does: a cancellation
    that lands just as a Redis read or wait completes can be lost on Python 3.11, and the loop
    then ran on, this `gather` waited for it for good, and the test hung until its 600 s
    timeout (once, in a fresh clone's CI with two test workers).
    """
    bus._stopping = True
    bus._wake_writer.set()
    bus._wake_reader.set()
    tasks = [*bus._tasks, *bus._catchups]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@needs_redis
async def test_a_call_live_on_another_instance_is_refused_as_a_duplicate(
    runtime: Runtime, settings: Settings, prefix: str
) -> None:
    """Found by an audit: one call id streamed into A and 2 s later into B was accepted by
    both, and both wrote one stored record (two conversations interleaved)."""
    async with two_instances(runtime, settings, prefix) as (bus_a, bus_b, a, b):
        call = await open_call(a, "so-dup")
        await owned_by(bus_a, bus_b, "so-dup")
        before = rejected(DUPLICATE_CALL)
        asked = time.monotonic()
        with pytest.raises(CallRejected) as refused:
            await open_call(b, "so-dup")
        # Refused once A, alive all along, had not let the call go within the wait.
        assert time.monotonic() - asked >= bus_b.handover_wait_s - 0.05
        # The reason every ingest answers a local duplicate with (raw PCM and Twilio 4409,
        # AudioHook disconnect, AudioSocket error frame): not "try again later".
        assert refused.value.reason == DUPLICATE_CALL and not refused.value.try_again_later
        assert "already live" in str(refused.value)
        assert rejected(DUPLICATE_CALL) == before + 1
        assert b.get("so-dup") is None
        # Another id opens on B as usual.
        other = await open_call(b, "so-other")
        await b.finish(other, "end")
        await a.finish(call, "end")


@needs_redis
async def test_a_call_ended_on_its_instance_while_another_waits_opens_there_as_a_new_leg(
    runtime: Runtime, settings: Settings, prefix: str
) -> None:
    """An open of a call live on A waits for A to let it go; A ends it meanwhile (its
    stream stopped), so B opens the id's next leg, not the ended call's record again."""
    async with two_instances(runtime, settings, prefix) as (bus_a, bus_b, a, b):
        call = await open_call(a, "so-handover")
        await owned_by(bus_a, bus_b, "so-handover")
        opening = asyncio.create_task(open_call(b, "so-handover"))
        await asyncio.sleep(0.3)
        assert not opening.done()  # waiting, not refused
        await a.finish(call, "end")
        took = await opening
        assert took.call_id == "so-handover~2"
        assert took.meta["telephony_call_id"] == "so-handover"
        assert await bus_a.owner("so-handover~2") == bus_b.instance_id
        await b.finish(took, "end")


@needs_redis
async def test_an_id_reused_on_another_instance_the_moment_its_call_ended_is_a_new_leg(
    runtime: Runtime, settings: Settings, prefix: str
) -> None:
    """Found by an outside audit with two servers: the id reopened on B 0.2-0.5 s after its
    call ended on A (A had let the call go, the store had not yet written its end) opened
    under the same id, and the stored record mixed both calls under the second's agent."""
    async with two_instances(runtime, settings, prefix) as (bus_a, bus_b, a, b):
        call = await open_call(a, "so-reused")
        await owned_by(bus_a, bus_b, "so-reused")
        await a.finish(call, "end")
        # A has let it go: no owner is left, so B's claim comes at once.
        deadline = time.monotonic() + 5
        while await bus_b.live_owner_elsewhere("so-reused") is not None:
            assert time.monotonic() < deadline, "A never let the call go"
            await asyncio.sleep(0.02)
        took = await open_call(b, "so-reused")
        assert took.call_id == "so-reused~2"
        assert took.meta["telephony_call_id"] == "so-reused"
        await b.finish(took, "end")


@needs_redis
async def test_one_id_opened_on_two_instances_at_the_same_moment_runs_once(
    runtime: Runtime, settings: Settings, prefix: str
) -> None:
    """Two opens of one id within milliseconds used to both pass the owner lookup (the owner
    key is written at the bus's next flush); the id is now claimed atomically at open."""
    async with two_instances(runtime, settings, prefix) as (bus_a, bus_b, a, b):
        await wait_for(lambda: not bus_a.degraded and not bus_b.degraded)
        for n in range(5):
            call_id = f"so-race-{n}"
            results = await asyncio.gather(
                open_call(a, call_id), open_call(b, call_id), return_exceptions=True
            )
            opened = [r for r in results if isinstance(r, CallSession)]
            refused = [r for r in results if isinstance(r, CallRejected)]
            assert len(opened) == 1 and len(refused) == 1, results
            assert refused[0].reason == DUPLICATE_CALL
            winner = a if opened[0] is a.get(call_id) else b
            assert await bus_b.owner(call_id) == (bus_a if winner is a else bus_b).instance_id
            await winner.finish(opened[0], "end")


@needs_redis
async def test_an_open_refused_after_its_claim_gives_the_id_back(
    runtime: Runtime, settings: Settings, prefix: str
) -> None:
    """A claim whose call is then refused here (a person's second call of their own) must
    not keep the id from the instance the call goes to next."""
    async with two_instances(runtime, settings, prefix) as (bus_a, bus_b, a, b):
        await wait_for(lambda: not bus_a.degraded and not bus_b.degraded)
        mine = await a.open(
            call_id="so-own-1", source="pcm", speakers=("customer",), started_by="ann"
        )
        with pytest.raises(CallRejected):
            await a.open(call_id="so-own-2", source="pcm", speakers=("customer",), started_by="ann")
        assert await bus_a.owner("so-own-2") is None
        second = await open_call(b, "so-own-2")  # not a duplicate: nobody runs it
        assert await bus_a.owner("so-own-2") == bus_b.instance_id
        await b.finish(second, "end")
        await a.finish(mine, "end")


@needs_redis
async def test_a_call_whose_instance_was_killed_continues_on_another_with_its_clock(
    runtime: Runtime, settings: Settings, prefix: str
) -> None:
    """Found by the same audit: after A was killed, the call's reconnect into B (same id,
    within the grace) restarted the call's clock at 0 and overwrote its start."""
    async with two_instances(runtime, settings, prefix) as (bus_a, bus_b, a, b):
        first = await open_call(a, "so-moved")
        await first.feed(
            AudioChunk("so-moved", "customer", np.zeros(6 * RATE, np.float32), RATE, 0.0)
        )
        # The pipeline's metrics event at 5 s of audio saves the call's state (seq, clock).
        await wait_for(lambda: first.fed_s >= 6.0)
        await wait_for(
            lambda: first.last_event is not None and first.last_event["type"] == "metrics",
            within=10,
        )
        heard = float(first.last_event["t_emit"]) if first.last_event else 0.0
        assert heard >= 5.0
        await owned_by(bus_a, bus_b, "so-moved")
        await wait_for(lambda: not bus_a._pending())  # its last state is in Redis

        await kill(bus_a)
        # The reconnect arrives on B at once, while A's liveness key is still there: it
        # waits that key out rather than being refused as a duplicate (an audit's reconnect
        # within 3 s of a `kill -9` used to get 4409).
        assert await bus_b.live_owner_elsewhere("so-moved") == "A"
        took = await open_call(b, "so-moved")
        assert took.call_id == "so-moved"
        assert took.fed_s == pytest.approx(heard, abs=0.01)  # the clock goes on, not from 0
        assert took.started_wall == pytest.approx(first.started_wall, abs=1e-3)
        start = took.last_event
        assert start is not None and start["type"] == "call_start"
        assert start["meta"]["resumed"] is True
        assert start["started_at"] == datetime.fromtimestamp(first.started_wall, UTC).isoformat()
        # The new connection's audio (its own clock at 0) lands after what was heard.
        await took.feed(
            AudioChunk("so-moved", "customer", np.zeros(RATE, np.float32), RATE, took.fed_s)
        )
        await b.finish(took, "end")
        end = took.last_event
        assert end is not None and end["type"] == "call_end"
        assert end["duration_s"] >= heard + 1.0 - 0.05


@needs_redis
@pytest.mark.parametrize("dropped", ["while draining", "before the drain"])
async def test_a_call_dropped_on_a_draining_instance_continues_on_another(
    runtime: Runtime, settings: Settings, prefix: str, dropped: str
) -> None:
    """A stopping instance (drain) whose call's connection drops hands the call over: the
    reconnect, sent by the load balancer to B, continues it there with its clock and event
    numbers. It used to wait on A for the grace period, B refusing it as a duplicate, and
    come back as a second leg once A had ended it. A call already waiting for its
    reconnect when the drain begins is handed over then."""
    graced = settings.model_copy(update={"reconnect_grace_s": 30.0})
    async with two_instances(runtime, graced, prefix) as (bus_a, bus_b, a, b):
        first = await open_call(a, "so-drained")
        await first.feed(
            AudioChunk("so-drained", "customer", np.zeros(6 * RATE, np.float32), RATE, 0.0)
        )
        await wait_for(lambda: first.fed_s >= 6.0)
        await owned_by(bus_a, bus_b, "so-drained")
        if dropped == "before the drain":
            await a.detach(first, "disconnect")
            assert a.is_detached("so-drained")
        agent_feed = bus_a.subscribe(agent_topic("so-drained"), replay=False)
        drain = asyncio.create_task(a.drain(60.0, abandon=lambda: False))
        await wait_for(lambda: a.draining)
        if dropped == "while draining":
            await a.detach(first, "disconnect")

        took = await open_call(b, "so-drained")
        assert took.call_id == "so-drained"  # the same call, not a second leg
        assert first.end_reason == HANDED_OVER and first.last_event is not None
        assert took.fed_s == pytest.approx(6.0, abs=0.05)  # where A stopped hearing it
        start = took.last_event
        assert start is not None and start["type"] == "call_start"
        assert start["meta"]["resumed"] is True
        assert start["seq"] == first.last_event["seq"] + 1  # no event number used twice
        assert await bus_a.owner("so-drained") == bus_b.instance_id
        # A has nothing left to wait for, never ended the call, and sends its next
        # reconnect elsewhere.
        assert await asyncio.wait_for(drain, 5) == 0
        assert a.get("so-drained") is None
        ended = [e for e in bus_a.history(call_topic("so-drained")) if e["type"] == "call_end"]
        assert ended == []
        # The agent's feed on A ends as moved (its panel connects again), and A keeps no
        # copy of the unredacted events.
        while (item := agent_feed.queue.get_nowait()) is not None:
            assert item["type"] != "call_end"
        assert agent_feed.moved and bus_a.history(agent_topic("so-drained")) == []
        with pytest.raises(CallRejected) as refused:
            await open_call(a, "so-drained")
        assert refused.value.reason == DRAINING
        await b.finish(took, "end")
        end = took.last_event
        assert end is not None and end["type"] == "call_end" and end["duration_s"] >= 6.0


@needs_redis
async def test_an_open_waits_out_a_slow_hand_over(
    runtime: Runtime, settings: Settings, prefix: str
) -> None:
    """A hand-over transcribes the call's last words first, which under load can outlast the
    usual wait for a live owner (the instance's liveness key, ~4 s by default): the reconnect
    was then refused as a duplicate. The state says it is being handed over, and the open
    waits for it."""
    graced = settings.model_copy(update={"reconnect_grace_s": 30.0})
    async with two_instances(runtime, graced, prefix) as (bus_a, bus_b, a, b):
        first = await open_call(a, "so-slow")
        await owned_by(bus_a, bus_b, "so-slow")
        drain = asyncio.create_task(a.drain(60.0, abandon=lambda: False))
        await wait_for(lambda: a.draining)
        # What `CallSession.hand_over` says first; its pipelines are still at work.
        bus_a.save_session_state("so-slow", {"seq": 1, "ended": False, HANDING_OVER: True})
        await wait_for(lambda: not bus_a._pending())
        opening = asyncio.create_task(open_call(b, "so-slow"))
        await asyncio.sleep(bus_b.handover_wait_s + 0.5)
        assert not opening.done()  # past the usual wait, and still waiting
        await a.detach(first, "disconnect")  # the hand-over itself
        took = await asyncio.wait_for(opening, 10)
        assert took.call_id == "so-slow" and took.meta["resumed"] is True
        assert await asyncio.wait_for(drain, 5) == 0
        await b.finish(took, "end")


async def test_an_unreachable_redis_never_blocks_a_call(
    runtime: Runtime, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    bus = make_bus("redis://127.0.0.1:1/0", "coach-test-down:", "C")
    await bus.start()
    manager = CallManager(runtime=runtime, settings=settings, bus=bus)
    try:
        caplog.set_level(logging.WARNING, logger="coach.calls")
        t0 = time.monotonic()
        call = await open_call(manager, "so-alone")  # before the first attempt, and after
        await wait_for(lambda: bus.degraded and bus._writer_tried)
        other = await open_call(manager, "so-alone-2")
        assert time.monotonic() - t0 < 3.0
        assert "cannot tell whether another instance runs it" in caplog.text
        await manager.finish(call, "end")
        await manager.finish(other, "end")
    finally:
        await manager.shutdown()
        await bus.stop()


async def test_with_redis_unreachable_an_id_the_store_shows_live_opens_as_a_new_leg(
    runtime: Runtime, settings: Settings, tmp_path: Path
) -> None:
    """An outside scaling audit, Redis unreachable from B: one call id streamed to A and to B
    at once ran on both, and the shared store kept one record of the two calls, lines lost.
    Redis cannot say who runs it; the store, written by A every flush, can."""
    from datetime import timedelta

    from coach.store import Store, migrate
    from coach.store.writer import Received
    from tests.coach.test_store_support import call_events

    url = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    await migrate(url)
    store = Store(url=url)
    running = [{**e, "call_id": "so-twice", "seq": i} for i, e in enumerate(call_events("x"), 1)]
    running = [e for e in running if e["type"] != "call_end"]  # A runs it: written just now
    await store.write_events([Received(e, time.time()) for e in running])
    bus = make_bus("redis://127.0.0.1:1/0", "coach-test-down:", "B")
    await bus.start()
    manager = CallManager(runtime=runtime, settings=settings, bus=bus)

    async def live(call_id: str) -> bool:
        return await store.heard_lately(call_id, since=datetime.now(UTC) - timedelta(seconds=60))

    manager.live_lookup = live
    try:
        twice = await open_call(manager, "so-twice")
        alone = await open_call(manager, "so-only-here")
        assert (twice.call_id, twice.meta["telephony_call_id"]) == ("so-twice~2", "so-twice")
        assert alone.call_id == "so-only-here"
        await manager.finish(twice, "end")
        await manager.finish(alone, "end")
    finally:
        await manager.shutdown()
        await bus.stop()
        await store.aclose()


async def test_a_wrong_redis_url_is_logged_once_not_per_retry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Found by the audit: an instance started with a wrong Redis URL never logged it
    (`/health/ready` said `redis_degraded`), because the warning only marked an up -> down
    change and the writer starts down."""
    caplog.set_level(logging.INFO, logger="coach.redis_bus")
    bus = make_bus("redis://:hunter2@127.0.0.1:1/0", "coach-test-down:", "C", backoff_cap_s=0.05)
    await bus.start()
    try:
        await wait_for(lambda: bus.degraded and bus._writer_tried)
        await asyncio.sleep(0.5)  # several retries
    finally:
        await bus.stop()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    text = warnings[0].getMessage()
    assert "unreachable" in text and "127.0.0.1:1" in text
    assert "hunter2" not in caplog.text  # the password stays out of the log


@needs_redis
async def test_the_first_connection_is_logged(
    caplog: pytest.LogCaptureFixture, prefix: str
) -> None:
    caplog.set_level(logging.INFO, logger="coach.redis_bus")
    bus = make_bus(SHARED_URL, prefix, "A")
    await bus.start()
    try:
        await wait_for(lambda: not bus.degraded)
    finally:
        await bus.stop()
    assert [r.levelno for r in caplog.records if "redis" in r.getMessage().lower()] == [
        logging.INFO
    ]
    assert "connected to redis://127.0.0.1:6379/0" in caplog.text


@needs_redis_server
def test_each_protocol_answers_a_call_live_elsewhere_as_a_duplicate(
    runtime: Runtime, settings: Settings, private_redis: PrivateRedis
) -> None:
    """Raw PCM: the error message and 4409, as the README's close-code table says; Twilio:
    4409 with the reason and no message. Instance A is its two keys in Redis."""
    import redis

    from coach.api.app import create_app

    client = redis.Redis.from_url(private_redis.url)
    for call_id in ("so-pcm", "so-twilio"):
        client.set(f"coach:owner:{call_id}", "A", ex=30)
    client.set("coach:instance:A", "1", ex=30)
    client.close()
    on_b = settings.model_copy(update={"redis_url": private_redis.url, "instance_id": "B"})
    with TestClient(create_app(on_b, runtime)) as b:
        with b.websocket_connect("/ingest/pcm") as ws:
            ws.send_text(json.dumps({"call_id": "so-pcm", **PCM_HEADER}))
            code, reason, texts = close_of(ws)
        assert code == cc.DUPLICATE_CALL == 4409
        assert json.loads(texts[0])["code"] == DUPLICATE_CALL and "already live" in reason
        with b.websocket_connect("/ingest/twilio") as sock:
            TwilioClient(sock, call_id="so-twilio").handshake()
            code, reason, texts = close_of(sock)
        assert code == cc.DUPLICATE_CALL and reason.startswith(f"{DUPLICATE_CALL}: ")
        assert texts == []
        manager = b.app.state.coach.manager  # type: ignore[attr-defined]
        assert manager.live() == []


@contextlib.asynccontextmanager
async def _killed_a_and_b_with_a_store(
    prefix: str, tmp_path: Path
) -> AsyncIterator[tuple[RedisBus, RedisBus, StoreService]]:
    """Instances A and B on the shared Redis, B with a store of its own: the tests kill A
    before its writer would have written what it published."""
    bus_a = make_bus(SHARED_URL, prefix, "A")
    bus_b = make_bus(SHARED_URL, prefix, "B")
    await bus_a.start()
    await bus_b.start()
    service = await StoreService.start(
        StoreConfig(url=f"sqlite+aiosqlite:///{tmp_path / 'b.db'}", spool_dir=tmp_path / "spool"),
        bus=bus_b,
    )
    try:
        yield bus_a, bus_b, service
    finally:
        await service.aclose()
        await bus_a.stop()
        await bus_b.stop()


@needs_redis
async def test_a_taken_over_call_stores_what_its_killed_instance_had_not_written(
    prefix: str, tmp_path: Path
) -> None:
    """Found by an outside audit with two real servers: a customer line shown half a second
    before `kill -9` was never stored (the dead instance's writer batches every 0.5 s). The
    instance that takes the call over sends the stream's earlier events to its store again."""
    from tests.coach.test_store_support import call_events

    events = [e for e in call_events("so-lost", lines=3) if e["type"] != "call_end"]
    start, rest = events[0], events[1:]
    async with _killed_a_and_b_with_a_store(prefix, tmp_path) as (bus_a, bus_b, service):
        for ev in events:  # A published them all; its store got none before the kill
            bus_a.publish(call_topic("so-lost"), ev)
        await wait_for(lambda: not bus_a._pending())
        await kill(bus_a)
        resumed = {**start, "seq": len(events) + 1, "meta": {**start["meta"], "resumed": True}}
        bus_b.publish(call_topic("so-lost"), resumed)
        said = {**rest[1], "seq": len(events) + 2, "text": "line after the takeover"}
        bus_b.publish(call_topic("so-lost"), said)

        async def stored() -> set[int]:
            detail = await service.store.get_call("so-lost")
            return set() if detail is None else {u.seq for u in detail.transcript}

        lines = {e["seq"] for e in rest if e["type"] == "transcript"} | {said["seq"]}
        deadline = time.monotonic() + 10
        while await stored() != lines:
            assert time.monotonic() < deadline, f"stored {await stored()}, not {lines}"
            await asyncio.sleep(0.1)
        detail = await service.store.get_call("so-lost")
        assert detail is not None
        assert [c.cue for c in detail.cues] == ["acknowledge_frustration"]
        assert "4111" not in json.dumps([u.text for u in detail.transcript])  # redacted


@needs_redis
async def test_an_orphan_is_closed_with_what_its_killed_instance_had_not_written(
    prefix: str, tmp_path: Path
) -> None:
    """An outside scaling audit: a line panels showed 60 ms before `kill -9` reached Redis,
    not the store, and the orphan sweep closed the call without it (its duration short of
    it). The sweep writes what the stream holds first, as a takeover does."""
    from datetime import UTC, datetime, timedelta

    from coach.store.recovered import close_orphans
    from tests.coach.test_store_support import call_events

    events = [e for e in call_events("so-orphan", lines=3) if e["type"] != "call_end"]
    events = [{**e, "call_id": "so-orphan", "seq": i} for i, e in enumerate(events, 1)]
    lines = [e for e in events if e["type"] == "transcript"]

    async def nobody_runs_it(call_id: str) -> bool:
        return False

    async with _killed_a_and_b_with_a_store(prefix, tmp_path) as (bus_a, bus_b, service):
        topic = call_topic("so-orphan")
        for ev in events:
            bus_a.publish(topic, ev)
            if ev["seq"] <= 3:  # A's writer stored the start and the first line, then died
                service.writer(topic, ev)
        await service.writer.flush()
        await wait_for(lambda: not bus_a._pending())
        await kill(bus_a)
        before = await service.store.get_call("so-orphan")
        assert before is not None and len(before.transcript) == 1
        closed = await close_orphans(
            service.store,
            bus_b,
            is_live=nobody_runs_it,
            started_before=datetime.now(UTC) + timedelta(seconds=5),
            backfill=service.backfill_call,
        )
        assert closed == ["so-orphan"]
        await service.writer.flush()
        detail = await service.store.get_call("so-orphan")
        assert detail is not None and detail.call.ended_at is not None
        assert [u.seq for u in detail.transcript] == [e["seq"] for e in lines]
        assert detail.call.duration_s == pytest.approx(lines[-1]["t_end"])


@needs_redis
async def test_an_instance_restarted_under_its_id_replays_what_it_published_before(
    prefix: str,
) -> None:
    """Found by an outside audit with two real servers: B closed a call that A had run (A
    was killed: an `interrupted` call_end, published by B) after sam on B had taken its
    escalation. B was restarted under the same COACH_INSTANCE_ID (a pod's container restarts
    under its pod name) and its wall drew that call live again, the escalation open: replaying
    the supervisor stream, it skipped every entry written under its own id, its
    predecessor's included, which this process had never seen."""
    from coach.api.wall import WallTracker
    from coach.bus import SUPERVISOR_TOPIC

    start = {"seq": 1, "call_id": "so-ghost", "type": "call_start", "meta": {"agent_id": "ann"}}
    escalation = {"seq": 2, "call_id": "so-ghost", "type": "escalation", "urgency": "high"}
    ack = {"type": "escalation_ack", "call_id": "so-ghost", "seq": 2, "by": "sam"}
    end = {"seq": 3, "call_id": "so-ghost", "type": "call_end", "reason": "interrupted"}
    bus_a, bus_b = make_bus(SHARED_URL, prefix, "A"), make_bus(SHARED_URL, prefix, "B")
    await bus_a.start()
    await bus_b.start()
    await wait_for(lambda: not bus_a.degraded and not bus_b.degraded)  # else stop() drops
    bus_a.publish(SUPERVISOR_TOPIC, start)
    bus_a.publish(SUPERVISOR_TOPIC, escalation)
    bus_b.publish(SUPERVISOR_TOPIC, ack)
    bus_b.publish(SUPERVISOR_TOPIC, end)
    await bus_a.stop()
    await bus_b.stop()

    restarted = make_bus(SHARED_URL, prefix, "B")
    wall = WallTracker()
    await restarted.start()
    try:
        restarted.watch_remote(SUPERVISOR_TOPIC, wall.remote)
        await wait_for(lambda: "so-ghost" in wall.calls and wall.has_ended("so-ghost"))
        assert wall.calls["so-ghost"].escalations[2].get("acknowledged_by") == "sam"
    finally:
        await restarted.stop()


@needs_redis
async def test_a_process_restarted_under_its_instance_id_lets_go_of_calls_it_does_not_run(
    prefix: str,
) -> None:
    """Kubernetes restarts a crashed container in its pod, under the pod's name: the new
    process's liveness key made the old process's calls look live (an outside audit: their
    "lost contact" mark went on the walls, and their reconnects to another instance were
    refused as duplicates). The new process releases the keys of calls it does not run;
    one it claims meanwhile stays its own."""
    old = make_bus(SHARED_URL, prefix, "pod-1", instance_ttl_s=0.5)
    await old.start()
    for call_id in ("ran-before", "also-before"):
        assert await old.claim_call(call_id) is None
        old.publish(call_topic(call_id), {"seq": 1, "type": "call_start", "call_id": call_id})
    await wait_for(lambda: not old._pending())
    await kill(old)
    other = make_bus(SHARED_URL, prefix, "pod-2", instance_ttl_s=0.5)
    new = make_bus(SHARED_URL, prefix, "pod-1", instance_ttl_s=0.5)
    await other.start()
    try:
        assert await new.claim_call("opened-now") is None  # before its first connection
        await new.start()
        await wait_for(lambda: new._stale_owners_cleared)
        assert await other.owner("ran-before") is None
        assert await other.owner("also-before") is None
        assert await other.owner("opened-now") == "pod-1"
        # The call reconnects to another instance at once, instead of a 4409.
        assert await other.claim_call("ran-before") is None
    finally:
        await new.stop()
        await other.stop()
