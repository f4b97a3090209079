"""Two server processes sharing Redis: audio into A, the call's events read from B.

The scale-out promise of ARCHITECTURE.md, end to end with real processes: a panel connected
to instance B sees a call whose audio arrives at instance A, in order and without
duplicates; when Redis dies mid-call, A's own panel keeps getting events, and B catches up
once Redis is back.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import soundfile as sf
import websockets

from tests.coach.test_redis_bus import PrivateRedis
from tests.support import free_port

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server missing"),
]


def start_server(port: int, redis_url: str, data_dir: Path, name: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "COACH_PORT": str(port),
        "COACH_REDIS_URL": redis_url,
        "COACH_AUTH_DISABLED": "true",
        "COACH_DATA_DIR": str(data_dir),
        "COACH_INSTANCE_ID": name,
        "COACH_LOG_LEVEL": "warning",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "coach", "serve"], cwd=REPO, env=env, stdout=subprocess.DEVNULL
    )


def wait_ready(port: int, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"server on {port} not ready in {timeout_s}s")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[PrivateRedis, int, int]]:
    redis = PrivateRedis(tmp_path)
    redis.start()
    port_a, port_b = free_port(), free_port()
    procs = [
        start_server(port_a, redis.url, tmp_path / "a", "A"),
        start_server(port_b, redis.url, tmp_path / "b", "B"),
    ]
    try:
        wait_ready(port_a)
        wait_ready(port_b)
        yield redis, port_a, port_b
    finally:
        for p in procs:
            p.terminate()
        codes = []
        for p in procs:
            try:
                codes.append(p.wait(timeout=30))
            except subprocess.TimeoutExpired:
                p.kill()
        redis.stop()
    # A SIGTERM (a deploy) after a graceful shutdown is a normal exit, not death by the
    # signal (-15, status 143: uvicorn raised it again after shutting down).
    assert codes == [0, 0]


async def collect(url: str, out: list[dict[str, Any]]) -> None:
    async with websockets.connect(url) as ws:
        async for message in ws:
            out.append(json.loads(message))


def test_panel_on_b_follows_a_call_on_a_through_a_redis_outage(
    cluster: tuple[PrivateRedis, int, int], billing_call: Any
) -> None:
    redis, port_a, port_b = cluster
    data, rate = sf.read(billing_call[0], dtype="int16")
    pcm = data[: 24 * rate].tobytes()  # 24 s: three customer turns, two agent turns
    frame = rate // 50 * 4  # 20 ms of stereo PCM16

    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]], bool]:
        seen_a: list[dict[str, Any]] = []
        seen_b: list[dict[str, Any]] = []
        wall_b.clear()
        wall = asyncio.create_task(collect(f"ws://127.0.0.1:{port_b}/ws/supervisor", wall_b))
        panel_a = asyncio.create_task(
            collect(f"ws://127.0.0.1:{port_a}/ws/calls/x1/events", seen_a)
        )
        panel_b = asyncio.create_task(
            collect(f"ws://127.0.0.1:{port_b}/ws/calls/x1/events", seen_b)
        )
        await asyncio.sleep(0.5)
        during_outage_a = False
        before = 0
        async with websockets.connect(f"ws://127.0.0.1:{port_a}/ingest/pcm") as ingest:
            await ingest.send(
                json.dumps(
                    {"call_id": "x1", "sample_rate": rate, "encoding": "pcm16", "channels": 2}
                )
            )
            assert json.loads(await ingest.recv())["type"] == "accepted"
            start = time.monotonic()
            for n, i in enumerate(range(0, len(pcm), frame)):
                await ingest.send(pcm[i : i + frame])
                t = (n + 1) * 0.02 / 2  # twice real time
                if n == 400:  # 8 s of call audio
                    redis.stop()  # Redis dies mid-call
                    before = len(seen_a)
                if n == 800:  # 16 s
                    during_outage_a = len(seen_a) > before  # A's panel kept going
                    redis.start()  # same port: B must catch up
                await asyncio.sleep(max(0.0, start + t - time.monotonic()))
            await ingest.send(json.dumps({"type": "end"}))
            await ingest.wait_closed()
        await asyncio.wait_for(panel_a, timeout=60)
        await asyncio.wait_for(panel_b, timeout=60)
        await asyncio.sleep(1.0)  # the wall's copy of the call_end comes on its own stream
        wall.cancel()
        return seen_a, seen_b, during_outage_a

    wall_b: list[dict[str, Any]] = []
    seen_a, seen_b, kept_going = asyncio.run(scenario())
    assert kept_going, "A's own panel stalled while Redis was down"
    assert seen_a[0]["type"] == "call_start" and seen_a[-1]["type"] == "call_end"
    assert [e["seq"] for e in seen_a] == list(range(1, len(seen_a) + 1))
    assert [e["seq"] for e in seen_b] == [e["seq"] for e in seen_a], (
        "B missed, repeated or reordered"
    )
    assert [e["type"] for e in seen_b] == [e["type"] for e in seen_a]
    assert any(e["type"] == "transcript" for e in seen_b)
    # B's supervisor wall shows the call A runs, from its start to its end (an audit found
    # walls showed only their own instance's calls).
    x1 = [e["type"] for e in wall_b if e.get("call_id") == "x1"]
    assert x1[:1] == ["call_start"] and x1[-1] == "call_end", wall_b[:3]
