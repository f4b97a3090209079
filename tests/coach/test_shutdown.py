"""Stopping a server (SIGTERM: a rolling update, a scale-down) with calls on it.

Found by an outside audit with two real servers: uvicorn fails every open WebSocket with 1012
before the app's own shutdown runs, so a call on a stopped instance ended as `disconnect`,
its telephony got 1012, and the other instances' walls and the history said the customer
had dropped. The server now ends its calls first: reason `shutdown`, close 1000 `shutdown`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import websockets

from coach.api.app import create_app
from coach.api.server import CoachServer, server_for
from coach.runtime import Runtime
from coach.settings import Settings
from tests.support import free_port

RATE = 16000


@contextlib.contextmanager
def running(server: CoachServer) -> Iterator[None]:
    """`server` in a thread with its own loop; stopped as a SIGTERM stops it."""
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield
    finally:
        server.should_exit = True  # what uvicorn's SIGTERM handler does
        thread.join(timeout=30)


async def test_a_stopped_server_ends_its_calls_as_shutdown(
    runtime: Runtime, settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    app = create_app(settings.model_copy(update={"data_dir": tmp_path}), runtime)
    server = server_for(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    base = f"ws://127.0.0.1:{port}"
    header = {"call_id": "stopped", "sample_rate": RATE, "encoding": "pcm16", "channels": 1}
    with running(server):
        async with websockets.connect(f"{base}/ingest/pcm") as ingest:
            await ingest.send(json.dumps(header))
            assert json.loads(await ingest.recv())["type"] == "accepted"
            await ingest.send(np.zeros(RATE // 2, np.int16).tobytes())
            async with websockets.connect(f"{base}/ws/calls/stopped/events") as panel:
                assert json.loads(await panel.recv())["type"] == "call_start"
                server.should_exit = True
                events = []
                # The panel's own close may race uvicorn's 1012: its events are what count.
                with contextlib.suppress(websockets.ConnectionClosed):
                    async for message in panel:
                        events.append(json.loads(message))
                with contextlib.suppress(websockets.ConnectionClosed):
                    async with asyncio.timeout(10):
                        while True:
                            await ingest.recv()
    # The telephony is told the server ended the call, as README says, not "try elsewhere".
    assert (ingest.close_code, ingest.close_reason) == (1000, "shutdown")
    assert events[-1]["type"] == "call_end" and events[-1]["reason"] == "shutdown"


def test_background_work_stops_before_the_store_closes(
    runtime: Runtime, tmp_path: Path, monkeypatch: Any
) -> None:
    """The orphan sweep queries the store. Cancelled mid-query and never waited for, it was
    still winding down when the store's engine was disposed under it, and the event loop's
    shutdown hung on it for good (twice in the test suite's quick tests). Shutdown now waits
    for it to stop before closing the store."""
    from coach.api import app as app_module
    from coach.store.store import Store

    order: list[str] = []
    started = threading.Event()

    async def slow_sweep(*args: Any, **kwargs: Any) -> list[str]:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(0.2)  # a query's own cleanup on cancellation
            order.append("sweep stopped")
            raise
        return []

    real_aclose = Store.aclose

    async def aclose(self: Store) -> None:
        order.append("store closed")
        await real_aclose(self)

    monkeypatch.setattr(app_module.recovered, "close_orphans", slow_sweep)
    monkeypatch.setattr(Store, "aclose", aclose)
    settings = Settings(data_dir=tmp_path, auth_disabled=True)
    from fastapi.testclient import TestClient

    with TestClient(create_app(settings, runtime)):
        assert started.wait(10)
    assert order == ["sweep stopped", "store closed"], order
