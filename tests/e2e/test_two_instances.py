"""Two instances sharing one Redis: a real call on A, its panel on B, and a Redis outage.

The app cannot be wired to RedisBus from here, so the two "instances" are two RedisBus
objects with different instance ids in one process. The call is real: the billing_call
fixture (first ~10 s) through CallSession with the real models, replayed in real time on A.
Redis is a private redis-server owned by the test, stopped mid-call and restarted on the
same port: A's own panel must not notice, and B must end with the full event list.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from pathlib import Path
from typing import Any

import pytest

from coach.bus import call_topic
from coach.calls import CallManager
from coach.redis_bus import RedisBus
from coach.replay import read_call, replay
from coach.runtime import Runtime
from coach.settings import Settings
from tests.coach.test_redis_bus import PrivateRedis, wait_for

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server missing"),
]

CALL_S = 10.0


async def test_call_on_a_reaches_b_through_a_redis_outage(
    billing_call: tuple[Path, dict[str, Any]],
    runtime: Runtime,
    settings: Settings,
    tmp_path: Path,
) -> None:
    server = PrivateRedis(tmp_path)
    server.start()
    bus_a, bus_b = (
        RedisBus(server.url, instance_id=i, block_ms=100, heartbeat_s=0.1, backoff_cap_s=0.5)
        for i in ("A", "B")
    )
    await bus_a.start()
    await bus_b.start()
    try:
        audio = read_call(billing_call[0])
        n = int(CALL_S * audio.sample_rate)
        audio = dataclasses.replace(audio, channels={k: v[:n] for k, v in audio.channels.items()})
        topic = call_topic("e2e")
        panel_b = bus_b.subscribe(topic)  # B's panel is open before the call starts
        seen_b: list[dict[str, Any]] = []
        seen_a: list[dict[str, Any]] = []

        async def read_b() -> None:
            async for ev in panel_b:
                seen_b.append(ev)

        reader_b = asyncio.create_task(read_b())
        manager = CallManager(runtime=runtime, settings=settings, bus=bus_a)
        call = asyncio.create_task(
            replay(audio, manager=manager, call_id="e2e", realtime=True, sink=seen_a)
        )

        await wait_for(lambda: len(seen_b) >= 2, within=CALL_S)  # flowing through Redis
        server.stop()
        await wait_for(lambda: bus_a.degraded, within=3)
        n_a, n_b = len(seen_a), len(seen_b)
        await asyncio.sleep(2.0)
        assert len(seen_a) > n_a, "A's own panel must keep getting events without Redis"
        assert len(seen_b) == n_b, "B cannot get events while Redis is down"
        assert not call.done()

        server.start()
        events_a = await asyncio.wait_for(call, timeout=120)
        await asyncio.wait_for(reader_b, timeout=15)  # B's panel ends on call_end

        seqs_b = [e["seq"] for e in seen_b]
        assert seqs_b == sorted(set(seqs_b)), "B: in order, no duplicates"
        assert seen_b == events_a, "B caught up to exactly the events A's panel saw"
        assert events_a[0]["type"] == "call_start" and events_a[-1]["type"] == "call_end"
        assert any(e["type"] == "transcript" for e in events_a)
        assert bus_a.outbox_dropped == 0
        assert not bus_a.degraded and not bus_b.degraded
    finally:
        await bus_a.stop()
        await bus_b.stop()
        server.stop()
