"""What the panels' event feeds share: a call's feed (`/ws/calls/{id}/events`) and the
supervisor wall (`/ws/supervisor`) both forward a queue to a browser until the queue ends,
the browser goes away or the watcher's token expires, and both refuse with an error message
before the close code (a browser's close event does not say why in every engine)."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import WebSocket, WebSocketDisconnect

from coach.events import dumps

log = logging.getLogger(__name__)


class Stop(enum.Enum):
    """Why `next_item` returned no item."""

    EXPIRED = "expired"  # the watcher's token ran out: close 1008, the page signs in again
    GONE = "gone"  # the browser disconnected


async def refuse(ws: WebSocket, code: int, reason: str, message: str) -> None:
    """Tell the browser why (`{"type": "error", "code", "message"}`), then close."""
    log.warning("websocket %s refused: %s", ws.url.path, message)
    with contextlib.suppress(RuntimeError, WebSocketDisconnect):
        await ws.send_text(dumps({"type": "error", "code": reason, "message": message}))
        await ws.close(code=code, reason=message[:120])


@contextlib.asynccontextmanager
async def client_watch(ws: WebSocket) -> AsyncIterator[asyncio.Task[None]]:
    """A task that reads (and drops) what the browser sends, so that a disconnect is noticed
    while no events flow; it ends when the browser goes away."""

    async def drain() -> None:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            while (await ws.receive())["type"] != "websocket.disconnect":
                pass

    watcher = asyncio.create_task(drain())
    try:
        yield watcher
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def next_item(
    queue: asyncio.Queue[Any], watcher: asyncio.Task[None], timeout_s: float | None
) -> Any:
    """The queue's next item, or `Stop` when the browser left first or `timeout_s` (the
    token's remaining life; None: no limit) ran out first."""
    getter = asyncio.ensure_future(queue.get())
    done, _ = await asyncio.wait(
        {getter, watcher}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
    )
    if getter in done:
        return getter.result()
    getter.cancel()
    return Stop.GONE if done else Stop.EXPIRED
