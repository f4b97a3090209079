"""The app starts what the settings ask for: the AudioSocket listener, the store."""

from __future__ import annotations

import socket
from pathlib import Path

from fastapi.testclient import TestClient

from coach.api.app import create_app
from coach.ingest.audiosocket import Hangup, UuidFrame, encode
from coach.runtime import Runtime
from coach.settings import Settings
from tests.support import free_port


def test_audiosocket_listener_follows_the_settings(runtime: Runtime, tmp_path: Path) -> None:
    port = free_port()
    settings = Settings(data_dir=tmp_path, auth_disabled=True, audiosocket_port=port)
    with TestClient(create_app(settings, runtime)) as client:
        assert client.get("/health/ready").status_code == 200
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            import uuid

            conn.sendall(encode(UuidFrame(uuid.uuid4())) + encode(Hangup()))
    with socket.socket() as s:  # closed again on shutdown
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_no_listener_by_default(runtime: Runtime, tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path, auth_disabled=True), runtime)
    with TestClient(app):
        assert app.state.coach.audiosocket is None


def test_without_redis_a_remote_call_panel_is_told_to_retry(
    runtime: Runtime, tmp_path: Path
) -> None:
    import time

    from starlette.websockets import WebSocketDisconnect

    settings = Settings(data_dir=tmp_path, auth_disabled=True, redis_url="redis://127.0.0.1:1/0")
    with TestClient(create_app(settings, runtime)) as client:
        deadline = time.monotonic() + 5
        while not client.get("/health/ready").json().get("redis_degraded"):
            assert time.monotonic() < deadline, "bus never reported degraded"
            time.sleep(0.1)
        ready = client.get("/health/ready")
        assert ready.status_code == 200  # its own calls still work without Redis
        with client.websocket_connect("/ws/calls/elsewhere/events") as ws:
            try:
                while True:
                    ws.receive_text()
            except WebSocketDisconnect as exc:
                assert exc.code == 1013
