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
import logging
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
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
    runtime: Runtime, settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="coach.calls")
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
    # One "ended" line per call (an outside ingest audit saw each call's twice at a SIGTERM).
    ended = [r for r in caplog.records if r.getMessage().startswith("call stopped ended")]
    assert len(ended) == 1


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


def _ready(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def _until(check: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def serving(server: CoachServer) -> AsyncIterator[threading.Thread]:
    """`server` in a thread of its own, started; afterwards stopped (a second signal ends
    any drain) and joined."""
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    await _until(lambda: server.started, 30)
    try:
        yield thread
    finally:
        server.should_exit = server.stop_draining = True
        await asyncio.to_thread(thread.join, 30)


async def test_a_draining_server_lets_its_calls_finish_and_refuses_new_ones(
    runtime: Runtime, settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """COACH_DRAIN_TIMEOUT_S: a SIGTERM no longer cuts the live calls short. The call goes
    on (its audio is coached), a new call is told to try again later (1013 `draining`, so
    the telephony or the load balancer goes to another instance), ready says `draining`,
    and the server stops by itself once the call ends as its client ended it."""
    caplog.set_level(logging.INFO, logger="coach")
    port = free_port()
    drained = settings.model_copy(update={"data_dir": tmp_path, "drain_timeout_s": 60.0})
    app = create_app(drained, runtime)
    server = server_for(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    base = f"ws://127.0.0.1:{port}"
    header = {"call_id": "draining", "sample_rate": RATE, "encoding": "pcm16", "channels": 1}
    async with serving(server) as thread:
        async with websockets.connect(f"{base}/ingest/pcm") as ingest:
            await ingest.send(json.dumps(header))
            assert json.loads(await ingest.recv())["type"] == "accepted"
            async with websockets.connect(f"{base}/ws/calls/draining/events") as panel:
                assert json.loads(await panel.recv())["type"] == "call_start"
                server.should_exit = True  # what uvicorn's SIGTERM handler does
                await _until(lambda: app.state.coach.manager.draining)
                status, body = await asyncio.to_thread(_ready, port)
                assert (status, body) == (503, {"status": "draining", "active_calls": 1})
                # A new call is refused as "try again later" while the live one runs.
                async with websockets.connect(f"{base}/ingest/pcm") as late:
                    await late.send(json.dumps({**header, "call_id": "late"}))
                    refusal = json.loads(await late.recv())
                    with contextlib.suppress(websockets.ConnectionClosed):
                        await late.recv()
                assert (refusal["type"], refusal["code"]) == ("error", "draining")
                assert late.close_code == 1013
                # The live call is still coached: 6 s more audio brings a metrics event.
                for _ in range(12):
                    await ingest.send(np.zeros(RATE // 2, np.int16).tobytes())
                seen: list[str] = []
                async with asyncio.timeout(20):
                    while "metrics" not in seen:
                        seen.append(json.loads(await panel.recv())["type"])
                assert "call_end" not in seen
                assert thread.is_alive()
                await ingest.send(json.dumps({"type": "end"}))
                events = []
                with contextlib.suppress(websockets.ConnectionClosed):
                    async for message in panel:
                        events.append(json.loads(message))
        ends = [e for e in events if e["type"] == "call_end"]
        assert ends and ends[0]["reason"] != "shutdown", ends
        # Nothing live: the server stops by itself, long before the 60 s are up.
        await asyncio.to_thread(thread.join, 15)
        assert not thread.is_alive()
    # ...once the call's end is written: "drained" came before its "ended" (session 33).
    lines = [r.getMessage() for r in caplog.records]
    assert "call draining ended (end)" in lines, [x for x in lines if "ended" in x or "drain" in x]
    assert lines.index("call draining ended (end)") < lines.index("drained: no live calls")


async def test_a_drain_ends_calls_as_shutdown_when_its_time_is_up(
    runtime: Runtime, settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    drained = settings.model_copy(update={"data_dir": tmp_path, "drain_timeout_s": 1.0})
    app = create_app(drained, runtime)
    server = server_for(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    base = f"ws://127.0.0.1:{port}"
    header = {"call_id": "overstays", "sample_rate": RATE, "encoding": "pcm16", "channels": 1}
    with running(server):
        async with websockets.connect(f"{base}/ingest/pcm") as ingest:
            await ingest.send(json.dumps(header))
            assert json.loads(await ingest.recv())["type"] == "accepted"
            await ingest.send(np.zeros(RATE // 2, np.int16).tobytes())
            async with websockets.connect(f"{base}/ws/calls/overstays/events") as panel:
                assert json.loads(await panel.recv())["type"] == "call_start"
                started = time.monotonic()
                server.should_exit = True
                with contextlib.suppress(websockets.ConnectionClosed):
                    async with asyncio.timeout(15):
                        while True:
                            await ingest.recv()
                waited = time.monotonic() - started
                events = []
                with contextlib.suppress(websockets.ConnectionClosed):
                    async with asyncio.timeout(10):
                        async for message in panel:
                            events.append(json.loads(message))
    assert (ingest.close_code, ingest.close_reason) == (1000, "shutdown")
    assert waited >= 0.9, waited  # it waited for the drain, then ended the call
    # The panel is told how the call ended, then closed normally: an outside operator audit's
    # panel was closed with 1012 after a drain, its call_end never sent.
    assert events and events[-1]["type"] == "call_end", events
    assert events[-1]["reason"] == "shutdown" and panel.close_code == 1000, panel.close_code


def test_a_second_signal_stops_the_drain(
    runtime: Runtime, settings: Settings, tmp_path: Path
) -> None:
    """uvicorn forces its exit only on a second SIGINT; Kubernetes and `docker stop` send
    SIGTERM. Either, sent twice, ends the wait for the calls."""
    app = create_app(settings.model_copy(update={"data_dir": tmp_path}), runtime)
    for second in (signal.SIGTERM, signal.SIGINT):
        server = server_for(app, host="127.0.0.1", port=free_port())
        server.handle_exit(signal.SIGTERM, None)
        assert server.should_exit and not server.stop_draining
        server.handle_exit(second, None)
        assert server.stop_draining


async def test_two_ctrl_c_during_a_drain_still_write_the_calls_end(
    runtime: Runtime, settings: Settings, tmp_path: Path
) -> None:
    """An outside audit pressed Ctrl-C twice while a call drained: the call ended as
    `shutdown` on the wire, but the app's shutdown (where the store writes) was skipped,
    and the stored call stayed unended until another instance closed it as `interrupted`."""
    from coach.store.db import sqlite_url
    from coach.store.store import Store

    port = free_port()
    drained = settings.model_copy(
        update={"data_dir": tmp_path, "drain_timeout_s": 60.0, "store_enabled": True}
    )
    app = create_app(drained, runtime)
    server = server_for(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    header = {"call_id": "ctrl-c", "sample_rate": RATE, "encoding": "pcm16", "channels": 1}
    async with serving(server) as thread:
        async with websockets.connect(f"ws://127.0.0.1:{port}/ingest/pcm") as ingest:
            await ingest.send(json.dumps(header))
            assert json.loads(await ingest.recv())["type"] == "accepted"
            await ingest.send(np.zeros(RATE, np.int16).tobytes())
            server.handle_exit(signal.SIGINT, None)
            await _until(lambda: app.state.coach.manager.draining)
            server.handle_exit(signal.SIGINT, None)
            with contextlib.suppress(websockets.ConnectionClosed):
                async with asyncio.timeout(15):
                    while True:
                        await ingest.recv()
        assert (ingest.close_code, ingest.close_reason) == (1000, "shutdown")
        await asyncio.to_thread(thread.join, 30)
        assert not thread.is_alive()
    store = Store(url=sqlite_url(tmp_path))
    try:
        record = await store.get_call_record("ctrl-c")
    finally:
        await store.aclose()
    assert record is not None and record.end_reason == "shutdown" and record.ended_at is not None
