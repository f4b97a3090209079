"""A server killed mid-call, then started again on the same store (real processes, real audio).

What a crash must not lose: the restarted server closes the call as `interrupted` with what
was stored before the kill, and a panel that reconnects gets that call and its end instead of
a refusal or a stream that never ends.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import soundfile as sf
import websockets

from tests.e2e.test_two_servers import wait_ready
from tests.support import free_port

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def start_server(
    port: int, data_dir: Path, extra_env: dict[str, str] | None = None, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """`coach serve` on `port` (auth off unless `extra_env` turns it on); its log to `log`."""
    env = {
        **os.environ,
        "COACH_PORT": str(port),
        "COACH_AUTH_DISABLED": "true",
        "COACH_DATA_DIR": str(data_dir),
        "COACH_LOG_LEVEL": "warning",
        **(extra_env or {}),
    }
    env.pop("COACH_REDIS_URL", None)
    env.pop("COACH_DATABASE_URL", None)
    return subprocess.Popen(
        [sys.executable, "-m", "coach", "serve"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb") if log else None,
    )


async def _call_until_a_transcript(port: int, wav: Path) -> list[dict[str, Any]]:
    """Stream the call at twice real time until the panel has a customer transcript stored."""
    data, rate = sf.read(wav, dtype="int16")
    pcm = data[: 20 * rate].tobytes()
    frame = rate // 50 * 4  # 20 ms of stereo PCM16
    seen: list[dict[str, Any]] = []

    async def panel() -> None:
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws/calls/k1/events") as ws:
            async for message in ws:
                seen.append(json.loads(message))

    watcher = asyncio.create_task(panel())
    await asyncio.sleep(0.3)
    ingest = await websockets.connect(f"ws://127.0.0.1:{port}/ingest/pcm")
    await ingest.send(
        json.dumps({"call_id": "k1", "sample_rate": rate, "encoding": "pcm16", "channels": 2})
    )
    assert json.loads(await ingest.recv())["type"] == "accepted"
    start = time.monotonic()
    for n, i in enumerate(range(0, len(pcm), frame)):
        await ingest.send(pcm[i : i + frame])
        await asyncio.sleep(max(0.0, start + (n + 1) * 0.01 - time.monotonic()))
        if sum(e["type"] == "transcript" for e in seen) >= 2:
            break
    await asyncio.sleep(2.0)  # past the store's flush interval: these lines are on disk
    watcher.cancel()
    return seen


def test_a_call_survives_a_kill_in_the_history_and_the_panel(
    tmp_path: Path, billing_call: Any
) -> None:
    port = free_port()
    server = start_server(port, tmp_path)
    try:
        wait_ready(port)
        seen = asyncio.run(_call_until_a_transcript(port, billing_call[0]))
    finally:
        server.send_signal(signal.SIGKILL)  # no shutdown, no call_end
        server.wait(timeout=30)
    said = [e for e in seen if e["type"] == "transcript"]
    assert said and all(e["type"] != "call_end" for e in seen)

    log = tmp_path / "second.log"
    server = start_server(port, tmp_path, {"COACH_LOG_LEVEL": "info"}, log=log)
    try:
        wait_ready(port)
        deadline = time.monotonic() + 20
        while True:
            stored = httpx.get(f"http://127.0.0.1:{port}/api/history/calls/k1", timeout=5).json()
            if stored["call"]["ended_at"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert stored["call"]["end_reason"] == "interrupted"
        assert stored["call"]["duration_s"] >= said[0]["t_end"]
        assert [u["text"] for u in stored["transcript"]][: len(said)] == [e["text"] for e in said]

        async def reconnect() -> tuple[list[dict[str, Any]], int | None]:
            last = max(e["seq"] for e in seen)
            url = f"ws://127.0.0.1:{port}/ws/calls/k1/events?after_seq={last}"
            got: list[dict[str, Any]] = []
            async with websockets.connect(url) as ws:
                async for message in ws:
                    got.append(json.loads(message))
            return got, ws.close_code

        after, code = asyncio.run(reconnect())
        assert code == 1000
        assert after[-1]["type"] == "call_end" and after[-1]["reason"] == "interrupted"
        assert after[-1]["seq"] > max(e["seq"] for e in seen)

        # Ctrl-C is a graceful stop and a normal exit: uvicorn raised it again after its
        # shutdown, so it ended in a KeyboardInterrupt traceback (a SIGTERM: status 143).
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=30) == 0
        text = log.read_text()
        assert "stopped by SIGINT after a graceful shutdown" in text
        assert "Traceback" not in text
    finally:
        server.terminate()
        server.wait(timeout=30)
