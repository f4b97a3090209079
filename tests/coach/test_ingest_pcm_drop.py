"""`/ingest/pcm` on a real server: a client whose TCP connection is gone before the server
says `accepted`. Starlette's test client cannot drop a connection under the server."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import threading
from pathlib import Path
from typing import Any

from coach.api.app import create_app
from coach.api.server import server_for
from coach.runtime import Runtime
from coach.session import CallSession
from coach.settings import Settings
from tests.coach.test_shutdown import _until, serving
from tests.support import free_port


def _masked_frame(opcode: int, payload: bytes) -> bytes:
    """One client frame (clients mask every frame, RFC 6455 5.3)."""
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _header_then_reset(port: int, header: dict[str, object]) -> None:
    """Upgrade, send the header, and reset the connection at once (no close frame)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ingest/pcm HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 101"), answer
    sock.sendall(_masked_frame(0x1, json.dumps(header).encode()))
    # SO_LINGER 0: close sends a reset, as a telephony host that crashed or lost its link.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def test_a_client_gone_right_after_its_header_leaves_no_live_call(
    runtime: Runtime, settings: Settings, tmp_path: Path
) -> None:
    """Found by an outside ingest audit: eight clients that reset their connection right after
    the header left eight calls live (the `accepted` send failed outside any handler), which
    filled COACH_MAX_CALLS, refused their reconnects as duplicates and ended, a minute later,
    as `idle_timeout`. Each now ends at once as `disconnect`."""
    port = free_port()
    app = create_app(settings.model_copy(update={"data_dir": tmp_path, "max_calls": 4}), runtime)
    server = server_for(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    async with serving(server):
        manager = app.state.coach.manager
        opened: list[CallSession] = []
        gone = threading.Event()
        real_open = manager.open

        async def open_then_wait_for_the_reset(**kwargs: Any) -> CallSession:
            # The window of the bug, made certain: the call is open, the client already gone.
            session = await real_open(**kwargs)
            opened.append(session)
            await asyncio.to_thread(gone.wait, 5)
            return session

        manager.open = open_then_wait_for_the_reset
        for i in range(6):
            gone.clear()
            header = {"call_id": f"ghost-{i}", "sample_rate": 8000, "encoding": "pcm16"}
            await asyncio.to_thread(_header_then_reset, port, {**header, "channels": 1})
            gone.set()
            await _until(lambda n=i: len(opened) > n)
        await _until(lambda: not manager.live())
        assert [s.end_reason for s in opened] == ["disconnect"] * 6
        assert not manager.at_capacity()
