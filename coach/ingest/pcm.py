"""Raw PCM WebSocket ingest (`/ingest/pcm`), the simplest way to stream a call in.

Protocol: the first message is text JSON `{"call_id", "sample_rate", "encoding", "channels"}`
(optional `speakers`, `agent_id`, `customer_id`); the server answers `{"type": "accepted"}`.
Then binary frames of interleaved samples (any length that is a whole number of sample
frames), and optionally a text `{"type": "end"}` before closing. Time is the count of
samples received, so the call clock never depends on network jitter.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re

from fastapi import WebSocket, WebSocketDisconnect
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from audio import codecs
from audio.types import Encoding
from coach import metrics
from coach.calls import CallManager, CallRejected
from coach.ingest import closecodes as cc
from coach.ingest.receive import closed_as_oversized, receive_unless_ended, watching_end
from coach.logs import call_fields
from coach.messages import SPEAKERS, AudioChunk, Speaker
from coach.session import CallEnded, CallSession
from coach.settings import Settings

log = logging.getLogger(__name__)
PROTOCOL = "pcm"
HEADER_TIMEOUT_S = 10.0
MAX_ID_CHARS = 128
MAX_TEXT_CHARS = 4096
"""Largest text message (the header, `{"type": "end"}`): a real header is a few hundred
characters; a bigger one is refused as oversized (1009) before it is parsed."""
"""Longest agent or customer id an ingest takes (they are shown on walls and stored)."""
CALL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
PRINTABLE_IDS = "agent_id, customer_id: no control characters (a newline, a tab)"
"""Agent and customer ids are names from the telephony, free in form (an email, a phone
number, "Ann Lee"), but one line: "ann\nFORGED" was taken as a call's agent (an outside
ingest audit)."""


class PcmHeader(BaseModel):
    model_config = {"extra": "ignore"}

    call_id: str
    # Strict: "8000" or 8000.5 is a client bug to report, not a rate to guess at.
    sample_rate: int = Field(ge=8000, le=48000, strict=True)
    encoding: Encoding
    # Strict, like the rate: "2" is malformed (1007); 3 is well formed but unsupported (1003).
    channels: int = Field(strict=True)
    speakers: list[Speaker] | None = None
    agent_id: str | None = Field(default=None, max_length=MAX_ID_CHARS)
    customer_id: str | None = Field(default=None, max_length=MAX_ID_CHARS)

    @field_validator("agent_id", "customer_id")
    @classmethod
    def _printable(cls, v: str | None) -> str | None:
        if v is not None and not v.isprintable():
            raise ValueError(PRINTABLE_IDS)
        return v

    @field_validator("call_id")
    @classmethod
    def _call_id(cls, v: str) -> str:
        if not CALL_ID.match(v):
            raise ValueError("call_id: 1-128 characters of letters, digits, . _ : -")
        return v

    @field_validator("sample_rate")
    @classmethod
    def _rate(cls, v: int) -> int:
        if v * 20 % 1000:
            raise ValueError("sample_rate must give whole 20 ms frames (e.g. 8000, 16000, 48000)")
        return v

    @field_validator("channels")
    @classmethod
    def _channels(cls, v: int) -> int:
        if v not in (1, 2):
            raise ValueError("channels must be 1 (mono) or 2 (interleaved stereo)")
        return v

    @model_validator(mode="after")
    def _speakers(self) -> PcmHeader:
        if self.speakers is None:
            self.speakers = list(SPEAKERS[: self.channels])
        if len(self.speakers) != self.channels or len(set(self.speakers)) != self.channels:
            raise ValueError("speakers must name each channel once")
        return self


class IngestError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


async def _refuse(ws: WebSocket, code: int, reason: str, message: str) -> None:
    metrics.INGEST_ERRORS.labels(protocol=PROTOCOL, reason=reason).inc()
    log.warning("pcm ingest refused (%s): %s", reason, message)
    try:
        await ws.send_text(json.dumps({"type": "error", "code": reason, "message": message}))
        await ws.close(code=code, reason=message[:120])
    except (RuntimeError, WebSocketDisconnect):
        pass


def parse_header(raw: str) -> PcmHeader:
    _check_text_size(raw, "header")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise IngestError(cc.INVALID_PAYLOAD, "bad_header", f"header is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise IngestError(cc.INVALID_PAYLOAD, "bad_header", "header must be a JSON object")
    try:
        return PcmHeader.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "header"
        # A rate or encoding of the right type that this server does not take is unsupported
        # (1003); a field of the wrong type ("8000") or a missing one is malformed (1007).
        malformed = first["type"] == "missing" or first["type"].endswith("_type")
        # The encoding is a name: a number or null there is the wrong type, not an unknown
        # codec (pydantic reports both as not one of the allowed names).
        malformed = malformed or (where == "encoding" and not isinstance(data.get(where), str))
        # A channel count other than 1 or 2 is unsupported too, as Twilio's mediaFormat with
        # two channels is (1003): it used to be 1007, "malformed" (found by a protocol audit).
        unsupported = where in ("encoding", "sample_rate", "channels") and not malformed
        code = cc.UNSUPPORTED_DATA if unsupported else cc.INVALID_PAYLOAD
        raise IngestError(code, "bad_header", f"{where}: {first['msg']}") from exc


def frame_chunks(
    header: PcmHeader, payload: bytes, samples_done: int, max_bytes: int
) -> list[AudioChunk]:
    """Decode one binary frame into one chunk per party; raise IngestError if malformed."""
    if len(payload) > max_bytes:
        raise IngestError(
            cc.MESSAGE_TOO_BIG, "oversized", f"frame of {len(payload)} bytes > {max_bytes}"
        )
    width = codecs.bytes_per_sample(header.encoding) * header.channels
    if len(payload) == 0 or len(payload) % width:
        raise IngestError(
            cc.INVALID_PAYLOAD,
            "bad_frame",
            f"frame of {len(payload)} bytes is not a whole number of {width}-byte sample frames",
        )
    samples = codecs.decode(header.encoding, payload)
    t0 = samples_done / header.sample_rate
    assert header.speakers is not None
    return [
        AudioChunk(header.call_id, speaker, chan, header.sample_rate, t0)
        for speaker, chan in zip(
            header.speakers, codecs.deinterleave(samples, header.channels), strict=True
        )
    ]


async def handle(ws: WebSocket, *, manager: CallManager, settings: Settings) -> None:
    """Run one connection. The WebSocket is already accepted and authorised."""
    try:
        async with asyncio.timeout(HEADER_TIMEOUT_S):
            raw = await ws.receive()
    except TimeoutError:
        await _refuse(ws, cc.HEADER_TIMEOUT, "header_timeout", "no header within 10 s")
        return
    if raw.get("type") == "websocket.disconnect":
        if oversized := closed_as_oversized(raw):
            await _refuse(ws, cc.MESSAGE_TOO_BIG, "oversized", oversized)
        return
    text = raw.get("text")
    if text is None:
        await _refuse(
            ws, cc.INVALID_PAYLOAD, "bad_header", "first message must be the JSON header (text)"
        )
        return
    try:
        header = parse_header(text)
        meta = {
            k: v
            for k, v in (("agent_id", header.agent_id), ("customer_id", header.customer_id))
            if v
        }
        session = await manager.open(
            call_id=header.call_id,
            source=PROTOCOL,
            speakers=tuple(header.speakers or ()),
            meta=meta,
        )
    except IngestError as exc:
        await _refuse(ws, exc.code, exc.reason, str(exc))
        return
    except CallRejected as exc:
        await _refuse(ws, cc.for_rejection(exc.reason), exc.reason, str(exc))
        return
    try:
        # The id the call runs under: a leg suffix when the id was used before (calls.py).
        # A client gone already (it dropped after its header, or the server closed it for
        # an oversized first frame) fails this send; `_stream` then reads why. Unguarded, it
        # left the call open with nobody feeding it, holding a slot until the idle timeout
        # (never, with that off), and its reconnect refused as a duplicate (an outside
        # ingest audit).
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            await ws.send_text(json.dumps({"type": "accepted", "call_id": session.call_id}))
        end_reason = await _stream(ws, header, session, settings)
    except asyncio.CancelledError:
        await manager.detach(session, "disconnect")  # the connection went away
        raise
    except (WebSocketDisconnect, RuntimeError, OSError) as exc:
        log.info(
            "call %s: connection lost (%r)",
            session.call_id,
            exc,
            extra=call_fields(session.call_id),
        )
        end_reason = "disconnect"
    except Exception:
        await manager.stream_ended(session, "disconnect")  # a bug must not leave it live
        raise
    # Whatever ended the stream, everything already heard is finalized and emitted; a
    # dropped connection may come back within COACH_RECONNECT_GRACE_S and resume the call.
    await manager.stream_ended(session, end_reason)
    if end_reason in ("end", "max_length", "idle_timeout", "shutdown"):
        # Closing only now tells the client that every transcript of its call is out.
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await ws.close(code=cc.NORMAL, reason=end_reason)


async def _stream(
    ws: WebSocket, header: PcmHeader, session: CallSession, settings: Settings
) -> str:
    """Feed frames until the client ends, or the server ends the call; returns why."""
    # A resumed call continues where the audio already heard ends.
    samples_done = round(session.fed_s * header.sample_rate)
    # The server can end the call while the client sends nothing (coach/ingest/receive.py).
    async with watching_end(session) as ended:
        while True:
            msg = await receive_unless_ended(ws, ended)
            if msg is None:  # the call ended first
                return session.end_reason or "ended"
            payload = msg.get("bytes")
            try:
                if msg["type"] == "websocket.disconnect":
                    if oversized := closed_as_oversized(msg):
                        raise IngestError(cc.MESSAGE_TOO_BIG, "oversized", oversized)
                    return "disconnect"
                if payload is not None:
                    for chunk in frame_chunks(
                        header, payload, samples_done, settings.max_frame_bytes
                    ):
                        await session.feed(chunk)
                    samples_done += len(payload) // (
                        codecs.bytes_per_sample(header.encoding) * header.channels
                    )
                    continue
                _check_text_size(msg.get("text") or "", "text message")
                if _is_end(msg.get("text")):
                    return "end"
                raise IngestError(
                    cc.INVALID_PAYLOAD,
                    "bad_control",
                    'text messages after the header: only {"type": "end"}',
                )
            except IngestError as exc:
                await _refuse(ws, exc.code, exc.reason, str(exc))
                return f"error:{exc.reason}"
            except CallEnded as exc:  # max call length or idle timeout ended it under us
                return exc.reason


def _check_text_size(text: str, what: str) -> None:
    if len(text) > MAX_TEXT_CHARS:
        raise IngestError(
            cc.MESSAGE_TOO_BIG, "oversized", f"{what} of {len(text)} characters > {MAX_TEXT_CHARS}"
        )


def _is_end(text: str | None) -> bool:
    try:
        return bool(text) and json.loads(text or "").get("type") == "end"
    except (json.JSONDecodeError, AttributeError):
        return False
