"""Request bodies over COACH_MAX_BODY_BYTES get 413 and are not buffered (found by an audit:
a 50 MB feedback body was read whole and answered 200); WebSocket messages past uvicorn's
limit get 1009."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets
from fastapi.testclient import TestClient

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
