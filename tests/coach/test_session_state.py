"""A call that comes back (same instance or, through Redis, another) resumes its event
sequence and honours the cue cooldowns its agent has just seen."""

from __future__ import annotations

import asyncio
import time

from coach.bus import InProcessBus
from coach.runtime import Runtime
from coach.session import CallSession
from coach.settings import Settings
from tests.coach.test_redis_bus import SHARED_URL, make_bus, needs_redis, prefix

__all__ = ["prefix"]  # the Redis key-prefix fixture, cleaned up after each test


def session(bus: InProcessBus, runtime: Runtime, settings: Settings, call_id: str) -> CallSession:
    return CallSession(
        call_id=call_id,
        source="test",
        speakers=("customer", "agent"),
        runtime=runtime,
        settings=settings,
        bus=bus,
    )


async def first_life(bus: InProcessBus, runtime: Runtime, settings: Settings, call_id: str) -> int:
    a = session(bus, runtime, settings, call_id)
    await a.start()
    assert a.cues is not None
    a.cues.fired_at["frustration"] = 0.0  # shown just now (call time 0)
    await a.emit({"type": "metrics", "t_start": 0.0, "t_end": 0.0})
    seq = a.last_event["seq"] if a.last_event else 0
    await a.aclose()  # the stream dies without a call_end (instance lost, network cut)
    return int(seq)


async def test_same_instance_resumes_sequence_and_cooldowns(
    runtime: Runtime, settings: Settings
) -> None:
    bus = InProcessBus()
    seq = await first_life(bus, runtime, settings, "c1")
    b = session(bus, runtime, settings, "c1")
    await b.start()
    assert b.last_event is not None and b.last_event["seq"] == seq + 1
    assert b.last_event["meta"]["resumed"] is True
    assert b.cues is not None and b.cues.fired_at["frustration"] > -2.0  # still cooling down
    await b.aclose()


async def test_ended_call_continues_sequence_but_not_cooldowns(
    runtime: Runtime, settings: Settings
) -> None:
    bus = InProcessBus()
    a = session(bus, runtime, settings, "c2")
    await a.start()
    assert a.cues is not None
    a.cues.fired_at["frustration"] = 0.0
    await a.end("hangup")
    end_seq = a.last_event["seq"] if a.last_event else 0
    b = session(bus, runtime, settings, "c2")
    await b.start()
    assert b.last_event is not None and b.last_event["seq"] == end_seq + 1
    assert b.cues is not None and "frustration" not in b.cues.fired_at
    await b.end("hangup")


@needs_redis
async def test_another_instance_picks_up_state_through_redis(
    runtime: Runtime, settings: Settings, prefix: str
) -> None:
    one, two = make_bus(SHARED_URL, prefix, "one"), make_bus(SHARED_URL, prefix, "two")
    await one.start()
    await two.start()
    try:
        seq = await first_life(one, runtime, settings, "c3")
        deadline = time.monotonic() + 5
        while await two.load_session_state("c3") is None:
            assert time.monotonic() < deadline, "state never reached Redis"
            await asyncio.sleep(0.05)
        b = session(two, runtime, settings, "c3")
        await b.start()
        assert b.last_event is not None and b.last_event["seq"] == seq + 1
        assert b.cues is not None and b.cues.fired_at["frustration"] > -2.0
        await b.aclose()
    finally:
        await one.stop()
        await two.stop()


async def test_unknown_call_has_no_state() -> None:
    assert await InProcessBus().load_session_state("nope") is None


async def test_session_looks_up_the_customers_history(runtime: Runtime, settings: Settings) -> None:
    asked: list[str] = []

    async def lookup(customer_id: str) -> list[object]:
        asked.append(customer_id)
        return []

    s = CallSession(
        call_id="h1",
        source="test",
        speakers=("customer",),
        runtime=runtime,
        settings=settings,
        bus=InProcessBus(),
        meta={"customer_id": "cust-9"},
    )
    s.history_lookup = lookup
    await s.start()
    await asyncio.sleep(0.05)
    assert asked == ["cust-9"]
    await s.end("hangup")


async def test_an_earlier_leg_of_the_same_call_is_no_earlier_contact(
    runtime: Runtime, settings: Settings
) -> None:
    """An outside audit with two servers: a call cut off by a SIGTERM and reconnected as
    `id~2` showed "Has called before" two seconds in, its evidence the call's own first leg."""
    from datetime import UTC, datetime, timedelta

    from coach.store.records import CustomerCall

    def earlier(call_id: str) -> CustomerCall:
        at = datetime.now(UTC) - timedelta(minutes=3)
        return CustomerCall(call_id, "ann", at, at, 60.0, "shutdown", None, {}, 0)

    hints = {}
    for previous in ([earlier("tc-9")], [earlier("tc-9"), earlier("tc-other")]):

        async def lookup(customer_id: str, previous: list[CustomerCall] = previous) -> list[object]:
            return list(previous)

        s = CallSession(
            call_id="tc-9~2",
            source="test",
            speakers=("customer",),
            runtime=runtime,
            settings=settings,
            bus=InProcessBus(),
            meta={"customer_id": "cust-9", "telephony_call_id": "tc-9"},
        )
        s.history_lookup = lookup
        await s.start()
        await asyncio.sleep(0.05)
        assert s.cues is not None
        hints[len(previous)] = s.cues.history_hint
        await s.end("hangup")
    assert hints[1] is None  # its own first leg only: nothing to say
    assert hints[2] is not None and "1 call(s)" in hints[2]  # another call does count
