"""Run the app under uvicorn with the settings' host and port."""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
from collections.abc import Generator
from types import FrameType
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

log = logging.getLogger(__name__)


def uvicorn_limits(settings: Settings) -> dict[str, Any]:
    """What uvicorn enforces before the app sees a message (a Config's keyword arguments).

    Its WebSocket size limit sits above ours (4x COACH_MAX_FRAME_BYTES at least) so that the
    ingest handlers see oversized frames themselves and answer them with a logged 1009;
    past it uvicorn closes with 1009 itself.
    """
    return {"ws_max_size": max(WS_MAX_SIZE_FLOOR, settings.max_frame_bytes * 4)}


class CoachServer(uvicorn.Server):
    """uvicorn, except that a shutdown first drains, then ends this instance's live calls.

    Draining (COACH_DRAIN_TIMEOUT_S > 0): the server still listens, so panels, probes and
    a reconnecting call get through, but new calls are refused with their protocol's "try
    again later" and `/health/ready` says `draining`, while the live calls run to their end.
    A second signal (Ctrl-C twice, or SIGTERM again) stops the wait.

    Then uvicorn's own shutdown would fail every open WebSocket with 1012 before the app's
    shutdown runs, so the calls used to end as dropped connections (`AppState.end_calls`
    says why that matters): they are ended first, after new connections are refused, so
    no call starts meanwhile.
    """

    def __init__(self, config: uvicorn.Config, *, app: FastAPI) -> None:
        super().__init__(config)
        self._app = app
        self.stop_draining = False
        """A second signal came: end the drain's wait (`shutdown`)."""
        self.stopped_by: list[int] = []
        """The signals that stopped the server, in the order they came."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """uvicorn raises the signals it caught again once it has shut down, so that a
        program embedding it learns of them: here Ctrl-C ended a clean shutdown with a
        KeyboardInterrupt traceback and SIGTERM (a deploy, `docker stop`) with the process
        killed by the signal (exit status 143, which process managers report as a failure).
        A stop the server has drained and shut down after is a normal exit: they are kept
        in `stopped_by` instead."""
        with super().capture_signals():
            try:
                yield
            finally:
                captured: list[int] = getattr(self, "_captured_signals", [])
                self.stopped_by = list(captured)
                captured.clear()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit:
            # A second signal ends the drain's wait. uvicorn forces its exit on a second
            # SIGINT only; a drain yields to a second SIGTERM too (Kubernetes, docker stop).
            self.stop_draining = True
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        state: AppState = self._app.state.coach
        await state.drain(abandon=lambda: self.stop_draining or self.force_exit)
        for server in self.servers:
            server.close()
        await state.end_calls()
        await super().shutdown(sockets)
        if self.force_exit:
            # uvicorn's forced exit (a second Ctrl-C) stops waiting for connections, and
            # also skips the app's shutdown, where the store writes the calls' last events:
            # an outside audit's call, ended by two Ctrl-C, stayed unended in the store
            # until another instance's sweep closed it as `interrupted`. That part still runs.
            await self.lifespan.shutdown()


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
    if server.stopped_by:
        names = ", ".join(signal.Signals(sig).name for sig in server.stopped_by)
        log.info("stopped by %s after a graceful shutdown", names)
    return 0
