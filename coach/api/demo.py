"""`POST /api/demo/calls`: play the bundled synthetic call as a live call of the caller.

So a newcomer sees the whole product right after `make run`, with no telephony: the agent
page's "Play demo call" button starts a new live call assigned to the signed-in person, and
a background task feeds the pre-rendered WAV (`web/demo/demo-call.wav`, 8 kHz mu-law stereo,
customer left and agent right, rendered by `scripts/make_test_calls.py` so no speech
synthesiser is needed at run time) through the normal pipeline in 20 ms frames, paced at real
time (or up to 4x faster with `speed`), exactly as an ingest connection would.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from audio.framing import samples_per_frame
from coach.api.security import require_principal
from coach.auth import Principal
from coach.calls import CallManager, CallRejected
from coach.logs import call_fields
from coach.messages import AudioChunk
from coach.replay import CallAudio, read_call
from coach.session import CallEnded, CallSession
from coach.settings import Settings

log = logging.getLogger(__name__)
router = APIRouter(tags=["demo"])
CurrentPrincipal = Annotated[Principal, Depends(require_principal)]
SOURCE = "demo"
MAX_DEMO_CALLS = 8
"""Demo calls running at once on this instance (each costs real model time)."""


class DemoBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    speed: float = Field(1.0, ge=1.0, le=4.0, description="1 = real time")


class DemoCall(BaseModel):
    call_id: str
    agent_id: str
    duration_s: float


@functools.cache
def _audio(path: Path) -> CallAudio:
    return read_call(path)


class DemoPlayer:
    """Owns the demo calls' feeding tasks, so shutdown can stop them cleanly."""

    def __init__(self, wav: Path) -> None:
        self.wav = wav
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.owners: dict[str, str] = {}

    async def start(self, *, manager: CallManager, user: str, speed: float) -> DemoCall:
        if not self.wav.is_file():
            raise HTTPException(404, "no demo call is bundled with this installation")
        if any(owner == user for owner in self.owners.values()):
            raise HTTPException(409, "your demo call is still playing")
        if len(self.tasks) >= MAX_DEMO_CALLS:
            raise HTTPException(429, "too many demo calls are playing; try again shortly")
        audio = await asyncio.to_thread(_audio, self.wav)
        call_id = f"demo-{user}-{secrets.token_hex(3)}"
        try:
            session = await manager.open(
                call_id=call_id,
                source=SOURCE,
                speakers=tuple(audio.channels),
                # A customer of its own per play: one shared id made every play after the
                # first "Has called before" (the store linked them as one caller's calls).
                meta={"agent_id": user, "customer_id": f"{call_id}-caller", "demo": True},
                started_by=user,
            )
        except CallRejected as exc:
            if exc.try_again_later:  # the admission limit (COACH_MAX_CALLS), or stopping
                raise HTTPException(503, str(exc), headers={"Retry-After": "10"}) from exc
            raise HTTPException(409, str(exc)) from exc
        task = asyncio.create_task(self._play(manager, session, audio, speed), name=call_id)
        self.tasks[call_id], self.owners[call_id] = task, user
        task.add_done_callback(lambda _: self._done(call_id))
        n = max(len(x) for x in audio.channels.values())
        log.info(
            "demo call %s started for %s at %.1fx", call_id, user, speed, extra=call_fields(call_id)
        )
        return DemoCall(call_id=call_id, agent_id=user, duration_s=round(n / audio.sample_rate, 3))

    def _done(self, call_id: str) -> None:
        self.tasks.pop(call_id, None)
        self.owners.pop(call_id, None)

    async def _play(
        self, manager: CallManager, session: CallSession, audio: CallAudio, speed: float
    ) -> None:
        step = samples_per_frame(audio.sample_rate)
        n = max(len(x) for x in audio.channels.values())
        t_wall0 = time.monotonic()
        reason = "end"
        try:
            for start in range(0, n, step):
                # Like a live source: a frame is sent once all of it has been spoken.
                delay = t_wall0 + (start + step) / audio.sample_rate / speed - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                t0 = start / audio.sample_rate
                for speaker, samples in audio.channels.items():
                    frame = samples[start : start + step]
                    if frame.size:
                        await session.feed(
                            AudioChunk(session.call_id, speaker, frame, audio.sample_rate, t0)
                        )
        except CallEnded as exc:
            reason = exc.reason
        except asyncio.CancelledError:
            reason = "shutdown"
            raise
        finally:
            await manager.finish(session, reason)  # idempotent: last transcripts, call_end

    async def stop(self) -> None:
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                async with asyncio.timeout(10):
                    await task


def player_of(request: Request) -> DemoPlayer:
    player: DemoPlayer = request.app.state.demo
    return player


@router.post("/api/demo/calls")
async def start_demo_call(
    request: Request, principal: CurrentPrincipal, body: DemoBody | None = None
) -> DemoCall:
    """Start the bundled demo call, assigned to the caller as its agent."""
    settings: Settings = request.app.state.settings
    if not settings.demo_call_enabled:
        raise HTTPException(404, "demo calls are turned off (COACH_DEMO_CALL_ENABLED)")
    manager: CallManager | None = request.app.state.coach.manager
    if manager is None:
        raise HTTPException(503, "models are still loading")
    speed = body.speed if body else 1.0
    return await player_of(request).start(manager=manager, user=principal.user, speed=speed)
