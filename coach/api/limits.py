"""Caps that keep one client from taking the server's memory: HTTP request bodies, and the
event streams one user may hold open.

Starlette reads a body into memory when a handler asks for it; no endpoint here needs more
than a few kilobytes (feedback, an SDP offer, a sign-in). A declared `Content-Length` over
the cap is answered at once; a chunked body is counted as it arrives and cut off there.
"""

from __future__ import annotations

import json
from collections import Counter

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimit:
    """ASGI middleware: 413 for an HTTP request body over `max_bytes` (0 = no limit)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.max_bytes <= 0:
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await _too_large(send, self.max_bytes)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # An HTTPException passes FastAPI's body parsing unchanged (any other
                    # error there becomes a 400) and is answered by its exception handler.
                    raise HTTPException(413, _detail(self.max_bytes))
            return message

        await self.app(scope, counted, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _detail(max_bytes: int) -> str:
    return f"request body larger than {max_bytes} bytes (COACH_MAX_BODY_BYTES)"


async def _too_large(send: Send, max_bytes: int) -> None:
    body = json.dumps({"detail": _detail(max_bytes)}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class StreamQuota:
    """Event streams (a call's panel, the wall) open per user. A wall or a panel is a few
    sockets per person; one token opened 300 walls in an outside security audit, each with
    its queue and snapshot. `per_user` 0: no limit."""

    def __init__(self, per_user: int) -> None:
        self.per_user = per_user
        self._open: Counter[str] = Counter()

    def take(self, user: str) -> bool:
        """Count one more stream for `user`; False (and nothing counted) when at the cap."""
        if self.per_user > 0 and self._open[user] >= self.per_user:
            return False
        self._open[user] += 1
        return True

    def give_back(self, user: str) -> None:
        self._open[user] -= 1
        if self._open[user] <= 0:
            del self._open[user]

    def refusal(self, user: str) -> str:
        return (
            f"{user} has {self.per_user} event streams open already "
            "(COACH_MAX_STREAMS_PER_USER): close a tab"
        )
