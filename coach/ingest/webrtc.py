"""WebRTC ingest (`POST /webrtc/offer`): a browser or softphone streams its microphone in.

Signalling is one HTTP round trip (no trickle ICE): the client posts its complete offer
`{"sdp", "type": "offer", "call_id"?, "agent_id"?}` and gets back the complete answer
`{"sdp", "type": "answer", "call_id"}`. Media then flows over aiortc. Each incoming audio
track is one party: the first is the customer, a second one (if offered) the agent. aiortc
decodes Opus/G.711 into 20 ms frames of 48 kHz (or 8 kHz) s16, often stereo; channel 0 is
taken as the party's mono audio. Call time is each track's RTP time since its first frame
(`TrackClock`), as Twilio's timestamps and AudioHook's position place their audio: a lost
packet, or a sender's silence suppression (Opus DTX), leaves a gap of silence instead of
pulling the rest of that party's speech early. Each track's first frame is time 0, so the
tracks of one call should start together.

The call ends (`CallManager.finish`) when every track has ended (the client closed or
removed its tracks: reason "end"), when the peer connection fails ("disconnect") or closes
("end"), when ICE never connects ("ice_timeout"), when its tracks deliver no frame for
`FRAME_TIMEOUT_S` ("disconnect": the peer is gone), or when the call was ended under us
(max length, idle timeout). Live peer connections and their tasks are kept in a registry;
`close_all()` closes them at shutdown.

ICE on loopback: neither Chromium (without `--allow-loopback-in-peer-connection`) nor aioice
offers a 127.0.0.1 candidate, so a server and a client on one host without a routable
interface (CI sandboxes) never connect. With `COACH_WEBRTC_LOOPBACK=1` in the environment
the server gathers only the loopback host candidate (127.0.0.1); use it for tests and
single-machine demos only. No STUN/TURN server is used: the server must be reachable
directly from the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import av
import numpy as np
import numpy.typing as npt
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from fastapi import HTTPException
from pydantic import BaseModel, Field, field_validator

from coach import metrics
from coach.calls import RETRY_AFTER_S, CallManager, CallRejected
from coach.ingest.pcm import CALL_ID, PRINTABLE_IDS
from coach.logs import call_fields, client_text
from coach.messages import AudioChunk, Speaker
from coach.session import CallEnded, CallSession

log = logging.getLogger(__name__)
PROTOCOL = "webrtc"
LOOPBACK_ENV = "COACH_WEBRTC_LOOPBACK"
CONNECT_TIMEOUT_S = 30.0  # offer answered but ICE/DTLS never connected
# A track delivering no frame: its peer is gone (a live track sends frames through silence,
# Opus DTX too). Shorter than COACH_IDLE_TIMEOUT_S's default (60 s), which would end the call
# as the server's idle limit, not as the dropped connection it is.
FRAME_TIMEOUT_S = 30.0
MAX_TRACKS = 2
PARTIES: tuple[Speaker, ...] = ("customer", "agent")


class Offer(BaseModel):
    model_config = {"extra": "ignore"}

    sdp: str = Field(min_length=1, max_length=64_000)
    type: Literal["offer"]
    call_id: str | None = None
    agent_id: str | None = Field(default=None, max_length=128)

    @field_validator("call_id")
    @classmethod
    def _call_id(cls, v: str | None) -> str | None:
        if v is not None and not CALL_ID.match(v):
            raise ValueError("call_id: 1-128 characters of letters, digits, . _ : -")
        return v

    @field_validator("agent_id")
    @classmethod
    def _printable(cls, v: str | None) -> str | None:
        # As on the other ingests: "ann\nFORGED" was stored as a call's agent.
        if v is not None and not v.isprintable():
            raise ValueError(PRINTABLE_IDS)
        return v


# -- loopback-only ICE ----------------------------------------------------------------------------

_loopback_only: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "coach_webrtc_loopback_only", default=False
)
_patched = False


def loopback_enabled() -> bool:
    return os.environ.get(LOOPBACK_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _install_loopback_hook() -> None:
    """Wrap aioice's host-address lookup so gathering inside `loopback_only()` sees 127.0.0.1.

    aioice always skips loopback addresses and has no option for them; the wrapper changes
    nothing for gathering outside the context (other peer connections in the process).
    """
    global _patched
    if _patched:
        return
    import aioice.ice

    original = aioice.ice.get_host_addresses

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        if _loopback_only.get():
            return ["127.0.0.1"] if use_ipv4 else ["::1"]
        return original(use_ipv4, use_ipv6)

    aioice.ice.get_host_addresses = host_addresses
    _patched = True


@contextlib.contextmanager
def loopback_only(enabled: bool = True) -> Iterator[None]:
    """Candidates gathered within (e.g. `await pc.setLocalDescription(...)`) are loopback only."""
    _install_loopback_hook()
    token = _loopback_only.set(enabled)
    try:
        yield
    finally:
        _loopback_only.reset(token)


# -- one call -----------------------------------------------------------------------------------


class TrackClock:
    """Where each decoded frame of one track belongs on the call clock, in samples.

    aiortc hands decoded frames over with the RTP timestamp as `pts` (random origin, 32-bit,
    clock = sample rate for Opus and G.711). Positions are the unwrapped timestamp distance from
    the track's first frame, so a missing packet is a gap and a duplicate or late one lands
    where it belongs (the pipeline trims audio it has already heard). A frame without usable
    timing goes right after the previous one.
    """

    def __init__(self) -> None:
        self._last: tuple[int, int] | None = None
        """(RTP timestamp, position) of the last frame placed by its timestamp."""
        self._end = 0
        """Samples from the track's first frame to the end of the furthest frame placed."""

    def place(self, frame: av.AudioFrame) -> int:
        """This frame's first sample, in samples of `frame.sample_rate` since the track began."""
        rate = int(frame.sample_rate)
        pts, base = frame.pts, frame.time_base
        if pts is None or base is None or base * rate != 1:
            start = self._end  # no usable timing: right after what came before
        else:
            if self._last is None:
                start = self._end  # the first frame: 0
            else:
                last_pts, last_start = self._last
                start = last_start + (int(pts) - last_pts + 2**31) % 2**32 - 2**31
            self._last = (int(pts), start)
        self._end = max(self._end, start + int(frame.samples))
        return max(start, 0)  # a packet from before the first one: the pipeline drops it


@dataclass(eq=False)
class WebRtcCall:
    pc: RTCPeerConnection
    session: CallSession
    manager: CallManager
    tracks: list[MediaStreamTrack] = field(default_factory=list)
    consumers: list[asyncio.Task[None]] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str = "end"
    live_tracks: int = 0

    def end(self, reason: str) -> None:
        if not self.ended.is_set():
            self.reason = reason
            self.ended.set()

    def start_track(self, track: MediaStreamTrack, speaker: Speaker) -> None:
        self.live_tracks += 1
        self.consumers.append(asyncio.create_task(self._consume(track, speaker)))

    async def _consume(self, track: MediaStreamTrack, speaker: Speaker) -> None:
        clock = TrackClock()
        reason = "end"
        try:
            while True:
                try:
                    async with asyncio.timeout(FRAME_TIMEOUT_S):
                        frame = await track.recv()
                except MediaStreamError:
                    break
                except TimeoutError:
                    # No frame at all (a live track sends them through silence, DTX too):
                    # never connected, or the peer is gone. Both were stored as the server's
                    # `idle_timeout` (an outside ingest audit), and the panels start clean
                    # after that instead of resuming a dropped call.
                    reason = "disconnect" if self.connected.is_set() else "ice_timeout"
                    log.warning(
                        "webrtc call %s: no %s audio for %.0f s (%s)",
                        self.session.call_id,
                        speaker,
                        FRAME_TIMEOUT_S,
                        reason,
                        extra=call_fields(self.session.call_id),
                    )
                    break
                if not isinstance(frame, av.AudioFrame):
                    continue
                rate = int(frame.sample_rate)
                t0 = clock.place(frame) / rate
                await self.session.feed(
                    AudioChunk(self.session.call_id, speaker, frame_to_mono(frame), rate, t0)
                )
        except CallEnded as exc:
            self.end(exc.reason)
            return
        except Exception:
            log.exception(
                "webrtc call %s: %s track failed",
                self.session.call_id,
                speaker,
                extra=call_fields(self.session.call_id),
            )
            reason = "error:track"
            self.end(reason)
            return
        self.live_tracks -= 1
        if self.live_tracks <= 0:
            self.end(reason)

    async def run(self) -> None:
        """Wait for the end of the call, then tear down media and finalize the call."""
        try:
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    await self.connected.wait()
            except TimeoutError:
                log.warning(
                    "webrtc call %s: ICE never connected",
                    self.session.call_id,
                    extra=call_fields(self.session.call_id),
                )
                self.end("ice_timeout")
            await self.ended.wait()
        finally:
            for task in self.consumers:
                task.cancel()
            for task in self.consumers:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            with contextlib.suppress(Exception):
                await self.pc.close()
            await self.manager.finish(self.session, self.reason)


def frame_to_mono(frame: av.AudioFrame) -> npt.NDArray[np.float32]:
    """An av.AudioFrame (s16/s16p/flt/fltp, any layout) as float32 mono: channel 0."""
    arr = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if frame.format.is_planar:
        mono = arr[0]
    else:
        mono = arr.reshape(-1, channels)[:, 0] if channels > 1 else arr.reshape(-1)
    out: npt.NDArray[np.float32] = mono.astype(np.float32)
    if np.issubdtype(mono.dtype, np.integer):
        out /= np.float32(np.iinfo(mono.dtype).max + 1)
    return out


# -- registry -----------------------------------------------------------------------------------

_calls: set[WebRtcCall] = set()
_runners: set[asyncio.Task[None]] = set()


def live_calls() -> int:
    return len(_calls)


async def close_all() -> None:
    """Close every peer connection and wait for their calls to be finalized (app shutdown)."""
    for call in list(_calls):
        call.end("shutdown")
    runners = list(_runners)
    if runners:
        _, pending = await asyncio.wait(runners, timeout=10.0)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    _calls.clear()
    _runners.clear()


def refused(status: int, reason: str, detail: str, **kwargs: Any) -> HTTPException:
    """An offer refused: counted under `coach_ingest_errors_total{protocol="webrtc"}` and
    logged, as the other ingests' refusals are (they were answered, neither counted nor
    logged: an outside ingest audit)."""
    metrics.INGEST_ERRORS.labels(protocol=PROTOCOL, reason=reason).inc()
    log.warning("webrtc offer refused (%d %s): %s", status, reason, client_text(detail))
    return HTTPException(status, detail, **kwargs)


async def answer(
    body: dict[str, Any], *, manager: CallManager | None, started_by: str | None = None
) -> dict[str, str]:
    """Handle one offer: open the call, answer it, and start consuming its audio tracks.

    `started_by`: the signed-in person posting it (their own microphone), not telephony."""
    try:
        offer = Offer.model_validate(body)
    except Exception as exc:
        raise refused(400, "bad_offer", f"bad offer: {exc}") from exc
    if manager is None:
        raise HTTPException(503, "models are still loading")

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    tracks: list[MediaStreamTrack] = []

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        if track.kind == "audio" and len(tracks) < MAX_TRACKS:
            tracks.append(track)

    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
    except Exception as exc:
        await pc.close()
        raise refused(400, "bad_sdp", f"bad offer SDP: {exc}") from exc
    if not tracks:
        await pc.close()
        raise refused(400, "no_audio", "the offer has no audio track to receive")

    call_id = offer.call_id or f"webrtc-{uuid.uuid4().hex[:12]}"
    speakers = PARTIES[: len(tracks)]
    try:
        session = await manager.open(
            call_id=call_id,
            source=PROTOCOL,
            speakers=speakers,
            meta={"agent_id": offer.agent_id} if offer.agent_id else {},
            started_by=started_by,
        )
    except CallRejected as exc:
        await pc.close()
        if exc.try_again_later:  # at capacity: another instance, or this one later
            raise refused(
                503, exc.reason, str(exc), headers={"Retry-After": str(RETRY_AFTER_S)}
            ) from exc
        raise refused(409, exc.reason, str(exc)) from exc

    call = WebRtcCall(pc=pc, session=session, manager=manager, tracks=tracks)

    @pc.on("connectionstatechange")
    def on_state() -> None:
        state = pc.connectionState
        log.info("webrtc call %s: connection %s", call_id, state, extra=call_fields(call_id))
        if state == "connected":
            call.connected.set()
        elif state == "failed":
            call.connected.set()
            call.end("disconnect")
        elif state == "closed":
            call.connected.set()
            call.end("end")

    try:
        with loopback_only(manager.settings.webrtc_loopback or loopback_enabled()):
            await pc.setLocalDescription(await pc.createAnswer())
    except Exception as exc:
        await pc.close()
        await manager.finish(session, "error:answer")
        raise HTTPException(500, f"could not answer the offer: {exc}") from exc

    for track, speaker in zip(tracks, speakers, strict=True):
        call.start_track(track, speaker)
    _calls.add(call)
    runner = asyncio.create_task(call.run(), name=f"webrtc-{call_id}")
    _runners.add(runner)

    def forget(task: asyncio.Task[None]) -> None:
        _runners.discard(task)
        _calls.discard(call)
        if not task.cancelled() and task.exception() is not None:
            log.error("webrtc call %s: %s", call_id, task.exception(), extra=call_fields(call_id))

    runner.add_done_callback(forget)
    log.info(
        "webrtc call %s answered (%s)", call_id, ",".join(speakers), extra=call_fields(call_id)
    )
    local = pc.localDescription
    return {"sdp": local.sdp, "type": local.type, "call_id": call_id}
