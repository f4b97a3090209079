"""Reading a connection while the server may end the call on its own.

The idle watchdog, the maximum call length or a shutdown can end a call while its peer sends
nothing; a handler blocked in `ws.receive()` (or a TCP read, for AudioSocket) would never
notice, and the peer would wait on an open socket for a call that is gone (found by a docs
audit).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.websockets import WebSocket

from coach.ingest import closecodes as cc
from coach.session import CallSession


@contextlib.asynccontextmanager
async def watching_end(session: CallSession) -> AsyncIterator[asyncio.Future[None]]:
    """A future done when `session` ends, for `receive_unless_ended`; dropped on exit."""
    ended = asyncio.ensure_future(session.wait_ended())
    try:
        yield ended
    finally:
        ended.cancel()


async def receive_unless_ended(ws: WebSocket, ended: asyncio.Future[None]) -> Any | None:
    """The next ASGI message, or None when `ended` (the call's end) comes first."""
    receive: asyncio.Future[Any] = asyncio.ensure_future(ws.receive())
    try:
        await asyncio.wait({receive, ended}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not receive.done():  # the call ended, or this handler is being cancelled
            receive.cancel()
    if not receive.done() or receive.cancelled():
        return None
    return receive.result()


def closed_as_oversized(msg: Any) -> str | None:
    """Why uvicorn closed the connection itself, when it did so for a message over its
    `ws_max_size` (coach/api/server.py): the handler never sees such a message, only this
    disconnect with 1009, and answers it like the oversized frames it does see (logged,
    counted, the call ended as `error:oversized`). None for any other disconnect."""
    if msg.get("type") != "websocket.disconnect" or msg.get("code") != cc.MESSAGE_TOO_BIG:
        return None
    return str(msg.get("reason") or "message over the server's size limit")
