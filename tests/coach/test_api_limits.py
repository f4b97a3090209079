"""Request bodies over COACH_MAX_BODY_BYTES get 413 and are not buffered (found by an audit:
a 50 MB feedback body was read whole and answered 200); WebSocket messages past uvicorn's
limit get 1009."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from coach.api.app import create_app
from coach.api.server import uvicorn_limits
from coach.auth import issue_token
from coach.ingest import closecodes as cc
from coach.runtime import Runtime
from coach.settings import Settings
from tests.support import serve_in_thread

LIMIT = 10_000
URL = "/api/calls/c-1/cues/frustration/feedback"


@pytest.fixture
def client(tmp_path: Path, runtime: Runtime) -> Iterator[TestClient]:
    settings = Settings(
        data_dir=tmp_path, auth_disabled=True, store_enabled=False, max_body_bytes=LIMIT
    )
    with TestClient(create_app(settings, runtime)) as c:
        yield c


def test_a_declared_oversized_body_is_refused_before_it_is_read(client: TestClient) -> None:
    big = b'{"verdict": "helpful", "pad": "' + b"x" * (LIMIT * 5) + b'"}'
    r = client.post(URL, content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert "COACH_MAX_BODY_BYTES" in r.json()["detail"]


def test_a_chunked_body_is_cut_off_at_the_limit(client: TestClient) -> None:
    """No Content-Length: the body is counted as it arrives."""

    def chunks() -> Iterator[bytes]:
        yield b'{"verdict": "helpful", "pad": "'
        for _ in range(50):
            yield b"x" * 1000
        yield b'"}'

    r = client.post(URL, content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert "COACH_MAX_BODY_BYTES" in r.json()["detail"]


def test_a_body_under_the_limit_reaches_its_handler(client: TestClient) -> None:
    r = client.post(URL, json={"verdict": "helpful"})
    assert r.status_code == 503  # the handler answered: this app runs without a store


def test_zero_turns_the_limit_off(tmp_path: Path, runtime: Runtime) -> None:
    settings = Settings(
        data_dir=tmp_path, auth_disabled=True, store_enabled=False, max_body_bytes=0
    )
    with TestClient(create_app(settings, runtime)) as c:
        r = c.post(URL, content=b'{"verdict": "helpful", "pad": "' + b"x" * 50_000 + b'"}')
    assert r.status_code != 413


SECRET = "limits-test-secret-0123456789abcdef"


@pytest.fixture
def real_server(tmp_path: Path, runtime: Runtime) -> Iterator[tuple[int, Settings]]:
    """uvicorn with the limits `coach serve` gives it: the WebSocket size limit is uvicorn's."""
    settings = Settings(data_dir=tmp_path, auth_secret=SECRET, store_enabled=False)
    with serve_in_thread(create_app(settings, runtime), **uvicorn_limits(settings)) as port:
        yield port, settings


def test_a_panel_socket_refuses_a_junk_message_past_a_mebibyte(
    real_server: tuple[int, Settings],
) -> None:
    """A signed-in panel's socket reads and drops what the browser sends; uvicorn assembled
    each such message up to 16 MiB first, memory any signed-in user could make it hold."""
    port, _ = real_server
    token = issue_token(user="sue", role="supervisor", secret=SECRET, ttl_s=60)

    async def send(size: int) -> int | None:
        url = f"ws://127.0.0.1:{port}/ws/supervisor?token={token}"
        async with websockets.connect(url, max_size=None) as ws:
            await ws.recv()  # the wall's first snapshot: the socket is up and authorised
            await ws.send("x" * size)
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), timeout=3)
            except TimeoutError:
                return None  # still open: the message was taken
            except websockets.ConnectionClosed as closed:
                return closed.rcvd.code if closed.rcvd else None

    assert asyncio.run(send(2**20 + 1)) == cc.MESSAGE_TOO_BIG
    assert asyncio.run(send(1000)) is None  # an ordinary message is dropped, the socket kept


# -- a message past uvicorn's limit, on each WebSocket ingest -------------------------------------

BIG = 2**20 + 1
"""One byte over the floor of uvicorn's limit (coach.api.server.WS_MAX_SIZE_FLOOR)."""


@pytest.fixture
def open_server(tmp_path: Path, runtime: Runtime) -> Iterator[int]:
    settings = Settings(data_dir=tmp_path, auth_disabled=True)
    with serve_in_thread(create_app(settings, runtime), **uvicorn_limits(settings)) as port:
        yield port


def ingest_errors(protocol: str) -> float:
    value = REGISTRY.get_sample_value(
        "coach_ingest_errors_total", {"protocol": protocol, "reason": "oversized"}
    )
    return value or 0.0


def end_reason(port: int, call_id: str) -> str | None:
    """The stored call's end reason, once it has one (the call is finalized after the close;
    on a loaded 2-core machine that took over 10 s once, in a full run beside other work)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = httpx.get(f"http://127.0.0.1:{port}/api/history/calls/{call_id}")
        call = r.json().get("call") if r.status_code == 200 else None
        if call and call.get("ended_at"):
            return str(call["end_reason"])
        time.sleep(0.1)
    return None


async def _closed_code(ws: Any) -> int | None:
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout=10)
    except websockets.ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None


def test_pcm_message_past_uvicorns_limit_is_logged_counted_and_ends_the_call(
    open_server: int,
) -> None:
    """uvicorn closes with 1009 before the handler sees such a message; an outside audit found
    the call then ended as a plain `disconnect`, with no log line and no count."""
    before = ingest_errors("pcm")

    async def call() -> int | None:
        async with websockets.connect(f"ws://127.0.0.1:{open_server}/ingest/pcm") as ws:
            header = {"call_id": "big-pcm", "sample_rate": 8000, "encoding": "pcm16", "channels": 1}
            await ws.send(json.dumps(header))
            assert json.loads(await ws.recv())["type"] == "accepted"
            await ws.send(b"\x00\x00" * 800)
            await ws.send(b"\x00" * BIG)
            return await _closed_code(ws)

    assert asyncio.run(call()) == cc.MESSAGE_TOO_BIG
    assert end_reason(open_server, "big-pcm") == "error:oversized"
    assert ingest_errors("pcm") == before + 1


def test_twilio_message_past_uvicorns_limit_is_counted_and_ends_the_call(
    open_server: int,
) -> None:
    before = ingest_errors("twilio")
    golden = Path(__file__).parent / "golden" / "twilio"
    connected = json.loads((golden / "connected.json").read_text())
    start = json.loads((golden / "start.json").read_text())
    start["start"]["customParameters"] = {"call_id": "big-tw"}

    async def call() -> int | None:
        async with websockets.connect(f"ws://127.0.0.1:{open_server}/ingest/twilio") as ws:
            await ws.send(json.dumps(connected))
            await ws.send(json.dumps(start))
            # Twilio's protocol acknowledges nothing: wait until the call runs. Sent at once,
            # the big message could close the socket before the server had read `start`
            # (then no call exists to end; seen under load in two full runs).
            async with httpx.AsyncClient() as http:
                deadline = time.monotonic() + 20
                while not any(
                    c["call_id"] == "big-tw"
                    for c in (await http.get(f"http://127.0.0.1:{open_server}/api/calls")).json()[
                        "calls"
                    ]
                ):
                    assert time.monotonic() < deadline, "the call never opened"
                    await asyncio.sleep(0.05)
            await ws.send("x" * BIG)
            return await _closed_code(ws)

    assert asyncio.run(call()) == cc.MESSAGE_TOO_BIG
    assert end_reason(open_server, "big-tw") == "error:oversized"
    assert ingest_errors("twilio") == before + 1


def test_audiohook_message_past_uvicorns_limit_is_counted_and_ends_the_call(
    open_server: int,
) -> None:
    before = ingest_errors("audiohook")
    golden = Path(__file__).parent / "golden" / "audiohook"
    open_msg = json.loads((golden / "open.json").read_text())
    session_id, org_id = str(uuid.uuid4()), open_msg["parameters"]["organizationId"]
    conversation = str(uuid.uuid4())
    open_msg["id"] = session_id
    open_msg["parameters"]["conversationId"] = conversation
    headers = {
        "Audiohook-Organization-Id": org_id,
        "Audiohook-Session-Id": session_id,
        "Audiohook-Correlation-Id": str(uuid.uuid4()),
    }

    async def call() -> int | None:
        url = f"ws://127.0.0.1:{open_server}/ingest/audiohook"
        async with websockets.connect(url, additional_headers=headers) as ws:
            await ws.send(json.dumps(open_msg))
            assert json.loads(await ws.recv())["type"] == "opened"
            await ws.send(b"\xff" * BIG)
            return await _closed_code(ws)

    assert asyncio.run(call()) == cc.MESSAGE_TOO_BIG
    assert end_reason(open_server, conversation) == "error:oversized"
    assert ingest_errors("audiohook") == before + 1


def test_a_refused_body_is_not_echoed_back(tmp_path: Path, runtime: Runtime) -> None:
    """A 422 says what and where, not what was sent: FastAPI's own answer repeated the
    value, and an outcome typed with a phone number in it came back whole (an outside
    audit), into any proxy's log."""
    settings = Settings(data_dir=tmp_path, auth_disabled=True)
    with TestClient(create_app(settings, runtime)) as c:
        long = "call back on 415 555 0100 " * 10
        r = c.put("/api/calls/c-1/outcome", json={"outcome": long})
        assert r.status_code == 422 and "555" not in r.text, r.text
        (err,) = r.json()["detail"]
        assert err["loc"] == ["body", "outcome"] and "200 characters" in err["msg"]
        r = c.post(URL, json={"verdict": "great"})
        assert r.status_code == 422 and "great" not in r.text, r.text
