"""Run the app under uvicorn with the settings' host and port."""

from __future__ import annotations

import socket
from typing import Any

import uvicorn
from fastapi import FastAPI

from coach.api.app import AppState, create_app
from coach.settings import Settings

# The largest WebSocket message uvicorn assembles before the app sees it. Clients send
# audio frames (COACH_MAX_FRAME_BYTES, 64 kB by default), Twilio's JSON media messages
# (a few hundred bytes) or nothing at all (the panels, whose messages are read and
# dropped): 1 MiB holds every one. It was 16 MiB, the memory a signed-in panel could make
# the server hold per junk message.
WS_MAX_SIZE_FLOOR = 1024 * 1024


def uvicorn_limits(settings: Settings) -> dict[str, Any]:
    """What uvicorn enforces before the app sees a message (a Config's keyword arguments).

    Its WebSocket size limit sits above ours (4x COACH_MAX_FRAME_BYTES at least) so that the
    ingest handlers see oversized frames themselves and answer them with a logged 1009;
    past it uvicorn closes with 1009 itself.
    """
    return {"ws_max_size": max(WS_MAX_SIZE_FLOOR, settings.max_frame_bytes * 4)}


class CoachServer(uvicorn.Server):
    """uvicorn, except that a shutdown first ends this instance's live calls.

    uvicorn's own shutdown fails every open WebSocket with 1012 before the app's shutdown
    runs, so the calls used to end as dropped connections (`AppState.end_calls` says why that
    matters). New connections are refused first, so no call starts meanwhile.
    """

    def __init__(self, config: uvicorn.Config, *, app: FastAPI) -> None:
        super().__init__(config)
        self._app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        state: AppState = self._app.state.coach
        await state.end_calls()
        await super().shutdown(sockets)


def server_for(app: FastAPI, **config: Any) -> CoachServer:
    """A `CoachServer` for `app`, with uvicorn's `Config` options."""
    return CoachServer(uvicorn.Config(app, **config), app=app)


def serve(settings: Settings) -> int:
    app = create_app(settings)
    server = server_for(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=30,
        log_config=None,  # uvicorn logs through our handler (JSON when COACH_LOG_FORMAT=json)
        **uvicorn_limits(settings),
    )
    server.run()
    return 0
