"""A call taken over by another instance ends with the summary of the whole call: the arc,
cues and escalations of the part its killed instance ran are in `call_end.summary`, and the
handoff knows the cues shown before the takeover. What carries them through Redis (the
session state's recap, coach/recap.py) holds no unredacted words, and a corrupt state in
Redis never breaks the call that finds it.

Two "instances" are two CallManagers on two RedisBus objects in one process, on the shared
Redis under a key prefix of their own, as in test_scale_out.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import pytest
import redis.asyncio as aioredis

from coach import events
from coach.bus import agent_topic
from coach.calls import CallManager, CallRejected
from coach.redis_bus import RedisBus
from coach.runtime import Runtime
from coach.session import CallSession
from coach.settings import Settings
from tests.coach.test_redis_bus import SHARED_URL, make_bus, needs_redis, prefix, wait_for
from tests.coach.test_scale_out import kill, open_call, owned_by

__all__ = ["prefix"]  # the Redis key-prefix fixture, cleaned up after each test

MANAGER = "Put me through to your manager right now, I want a supervisor."
CARD = "4111 1111 1111 1111"
COLLAPSE = (
    "My husband just collapsed on the kitchen floor and he isn't breathing. "
    "The kids are here with me"
)


RAISED_VOICE = {"f0_hz": 220.0, "arousal": 0.97, "why": ["pitch +2.4 SD"]}


async def say(
    call: CallSession,
    text: str,
    t_start: float,
    t_end: float,
    valence: float,
    prosody: dict[str, Any] | None = None,
) -> None:
    """A customer's final transcript with its fused state, as the pipeline emits it."""
    sentiment = {
        "label": "frustrated",
        "valence": valence,
        "confidence": 0.9,
        "scores": {"frustrated": 0.9},
    }
    state = call.customer_state.update(
        t_end=t_end, duration_s=t_end - t_start, sentiment=sentiment, prosody=prosody
    )
    transcript = events.transcript(
        speaker="customer",
        text=text,
        t_start=t_start,
        t_end=t_end,
        words=[],
        sentiment=sentiment,
        prosody=prosody,
        utterance_id=int(t_start),
    )
    await call.emit(transcript | {"state": state.as_dict()})


async def stored_state(bus: RedisBus, call_id: str) -> str:
    """The call's session state as Redis holds it, once the bus has written the latest."""
    await wait_for(lambda: not bus._pending())
    client = aioredis.Redis.from_url(SHARED_URL, decode_responses=True)
    try:
        raw = await client.get(bus.state_key(call_id))
    finally:
        await client.aclose()
    assert raw is not None
    return str(raw)


async def take_over(bus_a: RedisBus, bus_b: RedisBus, b: CallManager, call_id: str) -> CallSession:
    """Kill A (as kill -9) and reconnect the call to B once A no longer counts as alive."""
    await owned_by(bus_a, bus_b, call_id)
    await wait_for(lambda: not bus_a._pending())  # its last state is in Redis
    await kill(bus_a)
    deadline = time.monotonic() + 5
    while await bus_b.live_owner_elsewhere(call_id) is not None:
        assert time.monotonic() < deadline, "a dead instance still counts as the owner"
        await asyncio.sleep(0.1)
    return await open_call(b, call_id)


@needs_redis
async def test_the_call_end_summary_after_a_takeover_covers_the_killed_instances_part(
    runtime: Runtime, settings: Settings, prefix: str
) -> None:
    """Found by a scale-out review: after A was killed mid-call, B's call_end summary had
    only B's part: the arc started at the takeover and the cues A showed were gone."""
    bus_a = make_bus(SHARED_URL, prefix, "A", instance_ttl_s=1.0)
    bus_b = make_bus(SHARED_URL, prefix, "B")
    await bus_a.start()
    await bus_b.start()
    a = CallManager(runtime=runtime, settings=settings, bus=bus_a)
    b = CallManager(runtime=runtime, settings=settings, bus=bus_b)
    first: CallSession | None = None
    try:
        first = await open_call(a, "so-arc")
        await say(first, "I have been on hold for an hour.", 1.0, 4.0, -0.6)
        await say(first, MANAGER, 6.0, 9.0, -0.8)
        shown = [e for e in bus_a.history(agent_topic("so-arc")) if e["type"] == "cue"]
        assert [c["cue"] for c in shown] == ["frustration", "escalation_request"]
        assert first.cues is not None
        raised_in_part_one = list(first.cues.escalation.raised)

        took = await take_over(bus_a, bus_b, b, "so-arc")
        await say(took, COLLAPSE, 20.0, 24.0, -0.9)
        await b.finish(took, "end")
        seen = bus_b.history(agent_topic("so-arc"))
        end = seen[-1]
        assert end["type"] == "call_end"
        summary = end["summary"]
        assert summary["arc"] == [[4.0, -0.6], [9.0, -0.8], [24.0, -0.9]]  # from the start
        assert summary["cues"] == {"frustration": 1, "escalation_request": 1, "crisis": 1}
        outcomes = [
            (o["seq"], o["cue"], o["valence_before"], o["valence_after"])
            for o in summary["cue_outcomes"]
        ]
        assert outcomes[:2] == [
            (shown[0]["seq"], "frustration", -0.6, -0.85),
            (shown[1]["seq"], "escalation_request", -0.8, -0.9),  # after: heard on B
        ]
        assert outcomes[2][1] == "crisis" and outcomes[2][0] > shown[1]["seq"]
        assert all(r in summary["escalations"] for r in raised_in_part_one)
        # The crisis page's handoff knows what the agent was shown before the takeover.
        paged = [e for e in seen if e["type"] == "escalation" and e["urgency"] == "critical"]
        assert paged, "the crisis is paged"
        handoff = paged[0]["summary"]
        assert handoff["cues_shown"] == ["frustration", "escalation_request", "crisis"]
        assert shown[1]["evidence"]["phrases"][0] in handoff["trigger_phrases"]
    finally:
        if first is not None:
            await first.aclose()
        await b.shutdown()
        await bus_a.stop()
        await bus_b.stop()


@needs_redis
async def test_no_unredacted_words_reach_the_session_state_in_redis(
    runtime: Runtime, settings: Settings, prefix: str
) -> None:
    bus = make_bus(SHARED_URL, prefix, "A")
    await bus.start()
    manager = CallManager(runtime=runtime, settings=settings, bus=bus)
    try:
        call = await open_call(manager, "so-pii")
        # Shouted: the voice raises the frustration cue, whose phrase is the whole line.
        line = f"I told you twice, my card is {CARD}"
        await say(call, line, 1.0, 6.0, -0.8, prosody=RAISED_VOICE)
        await say(call, MANAGER, 8.0, 11.0, -0.8)
        cues = [e for e in bus.history(agent_topic("so-pii")) if e["type"] == "cue"]
        # The live agent's cue quotes the number; what the state keeps must not.
        assert any(CARD in p for c in cues for p in c["evidence"]["phrases"]), cues
        raw = await stored_state(bus, "so-pii")
        state = json.loads(raw)
        kept = json.loads(state["recap"])
        assert [c[1] for c in kept["cues"]] == [c["cue"] for c in cues]
        assert "[CARD]" in " ".join(kept["phrases"])  # the redacted phrase, as supervisors see it
        for piece in ("4111", "1111"):
            assert piece not in raw
        await manager.finish(call, "end")
        assert "4111" not in await stored_state(bus, "so-pii")
    finally:
        await manager.shutdown()
        await bus.stop()


CORRUPT: dict[str, Any] = {
    "so-bad-types": {
        "seq": "many",
        "ended": False,
        "fed_s": "soon",
        "started_wall": None,
        "cue_fired_wall": ["frustration"],
        "recap": "{not json",
    },
    "so-bad-recap": {
        "seq": 3,
        "ended": False,
        "fed_s": 2.0,
        "cue_fired_wall": {},
        "recap": {"v": 1, "arc": [[1.0, "sad"]], "cues": [[1, "frustration", 1.0]]},
    },
}


@needs_redis
async def test_a_corrupt_session_state_in_redis_does_not_break_the_call(
    runtime: Runtime, settings: Settings, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    bus = make_bus(SHARED_URL, prefix, "B")
    await bus.start()
    manager = CallManager(runtime=runtime, settings=settings, bus=bus)
    client = aioredis.Redis.from_url(SHARED_URL)
    try:
        for call_id, state in CORRUPT.items():
            await client.set(bus.state_key(call_id), json.dumps(state), ex=60)
        caplog.set_level(logging.WARNING, logger="coach.session")
        for call_id in CORRUPT:
            try:
                call = await open_call(manager, call_id)
            except CallRejected as exc:  # not what a corrupt state may do either
                pytest.fail(f"{call_id}: {exc}")
            await say(call, MANAGER, call.fed_s + 1.0, call.fed_s + 4.0, -0.5)
            await manager.finish(call, "end")
            end = call.last_event
            assert end is not None and end["type"] == "call_end", call_id
            assert [p[1] for p in end["summary"]["arc"]] == [-0.5], call_id  # its own part
            assert end["summary"]["cues"] == {"escalation_request": 1}, call_id
            lines = [r.getMessage() for r in caplog.records if call_id in r.getMessage()]
            assert len(lines) == 1 and "partly unreadable" in lines[0], lines
        # What could be read was used: the second call went on from its seq and clock.
        good = CORRUPT["so-bad-recap"]
        resumed = [e for e in bus.history(agent_topic("so-bad-recap")) if e["type"] == "call_start"]
        assert resumed[0]["seq"] == good["seq"] + 1
        assert resumed[0]["t_emit"] == good["fed_s"]
    finally:
        await client.aclose()
        await manager.shutdown()
        await bus.stop()
