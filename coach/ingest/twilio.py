"""Twilio Media Streams ingest (`/ingest/twilio`): Twilio's WebSocket messages in, AudioChunks out.

Wire format (twilio.com/docs/voice/media-streams/websocket-messages): JSON text messages
`connected`, then one `start` (call SIDs, `tracks`, `customParameters`, `mediaFormat`), then
`media` (base64 8 kHz mu-law, `track`, `chunk`, `timestamp` in ms since the stream started),
`mark`, `dtmf`, and a final `stop`. Every message but `connected` carries a `sequenceNumber`.

One stream is one call: `inbound` audio is the customer, `outbound` the agent. Audio is placed
on the call clock by `timestamp`, not by counting bytes, so a lost or late message never shifts
later audio. Errors close the socket with a code and a reason; no error *message* is sent,
because Twilio treats any server message other than `media`/`mark`/`clear` as a protocol
error (Twilio error 31924), and a unidirectional stream accepts no messages at all.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
from dataclasses import dataclass, field
from enum import Enum
from typing import Annotated, Any, Literal, TypeAlias

from fastapi import WebSocket, WebSocketDisconnect
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from audio import codecs
from coach import metrics
from coach.api.security import ingest_authorized
from coach.calls import CallManager, CallRejected
from coach.ingest import MAX_SKIPPED_AUDIO_S
from coach.ingest import closecodes as cc
from coach.ingest.pcm import CALL_ID, MAX_ID_CHARS, PRINTABLE_IDS
from coach.ingest.receive import closed_as_oversized, receive_unless_ended, watching_end
from coach.logs import call_fields, client_text
from coach.messages import SPEAKERS, AudioChunk, Speaker
from coach.redaction import redact_text
from coach.session import CallEnded, CallSession
from coach.settings import Settings

log = logging.getLogger(__name__)
OUT_OF_ORDER_LOG_EVERY = 50
PROTOCOL = "twilio"
START_TIMEOUT_S = 10.0
SAMPLE_RATE = 8000
ENCODING = "audio/x-mulaw"
MAX_PAYLOAD_BYTES = 8000
"""One second of 8 kHz mu-law; Twilio sends 160 bytes (20 ms) per message."""
TRACK_SPEAKER: dict[str, Speaker] = {"inbound": "customer", "outbound": "agent"}
SIGNATURE_SCHEMES = ("wss", "https")

# -- wire messages ---------------------------------------------------------------------------

Digits = Annotated[str, Field(pattern=r"^[0-9]{1,15}$")]
"""Twilio sends every counter (`sequenceNumber`, `chunk`, `timestamp`) as a decimal string."""


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class Connected(_Wire):
    event: Literal["connected"]
    protocol: str | None = None
    version: str | None = None


class MediaFormat(_Wire):
    encoding: str
    # Numbers, as Twilio sends them and as raw PCM's header requires: "8000" as a string was
    # taken as 8000 here and refused there (an outside ingest audit).
    sample_rate: StrictInt = Field(alias="sampleRate")
    channels: StrictInt = 1


class StartInfo(_Wire):
    account_sid: str = Field(alias="accountSid")
    call_sid: str = Field(alias="callSid")
    stream_sid: str | None = Field(None, alias="streamSid")
    tracks: list[str] = Field(min_length=1, max_length=2)
    custom_parameters: dict[str, str] = Field(default_factory=dict, alias="customParameters")
    media_format: MediaFormat = Field(alias="mediaFormat")


class Start(_Wire):
    event: Literal["start"]
    sequence_number: Digits = Field(alias="sequenceNumber")
    stream_sid: str | None = Field(None, alias="streamSid")
    start: StartInfo


class MediaInfo(_Wire):
    track: str
    chunk: Digits
    timestamp: Digits
    payload: str


class Media(_Wire):
    event: Literal["media"]
    sequence_number: Digits = Field(alias="sequenceNumber")
    stream_sid: str = Field(alias="streamSid")
    media: MediaInfo


class MarkInfo(_Wire):
    name: str


class Mark(_Wire):
    event: Literal["mark"]
    sequence_number: Digits = Field(alias="sequenceNumber")
    stream_sid: str = Field(alias="streamSid")
    mark: MarkInfo


class DtmfInfo(_Wire):
    track: str
    digit: str


class Dtmf(_Wire):
    event: Literal["dtmf"]
    sequence_number: Digits = Field(alias="sequenceNumber")
    stream_sid: str = Field(alias="streamSid")
    dtmf: DtmfInfo


class StopInfo(_Wire):
    account_sid: str = Field(alias="accountSid")
    call_sid: str = Field(alias="callSid")


class Stop(_Wire):
    event: Literal["stop"]
    sequence_number: Digits = Field(alias="sequenceNumber")
    stream_sid: str = Field(alias="streamSid")
    stop: StopInfo


@dataclass(frozen=True, slots=True)
class Unrecognized:
    """A message of a type this server does not know (Twilio adds types: `dtmf` came late).
    Skipped and counted: Twilio does not reconnect a stream, so closing it would lose the
    rest of the call's coaching (found by a protocol audit)."""

    event: str


TwilioMessage: TypeAlias = Connected | Start | Media | Mark | Dtmf | Stop
MODELS: dict[str, type[TwilioMessage]] = {
    "connected": Connected,
    "start": Start,
    "media": Media,
    "mark": Mark,
    "dtmf": Dtmf,
    "stop": Stop,
}


class TwilioError(Exception):
    """Input that ends the stream: `code` is the close code, `reason` the metric label."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


def parse_message(text: str, max_bytes: int) -> TwilioMessage | Unrecognized:
    if len(text.encode("utf-8")) > max_bytes:
        raise TwilioError(cc.MESSAGE_TOO_BIG, "oversized", f"message larger than {max_bytes} bytes")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TwilioError(cc.INVALID_PAYLOAD, "bad_json", f"message is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise TwilioError(cc.INVALID_PAYLOAD, "bad_json", "message must be a JSON object")
    event = data.get("event")
    if isinstance(event, str) and event and event not in MODELS:
        return Unrecognized(event[:64])
    model = MODELS.get(event) if isinstance(event, str) else None
    if model is None:
        raise TwilioError(
            cc.INVALID_PAYLOAD, "unknown_event", f"unknown event {client_text(event, 64)}"
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "message"
        raise TwilioError(
            cc.INVALID_PAYLOAD, "bad_message", f"{event}: {where}: {first['msg']}"
        ) from exc


# -- protocol state ----------------------------------------------------------------------------


class StreamState(Enum):
    CONNECTING = "connecting"
    STARTED = "started"
    STOPPED = "stopped"


def transition(state: StreamState, event: str) -> StreamState:
    """The only legal orders: connected* start (media|mark|dtmf)* stop."""
    match state, event:
        case StreamState.CONNECTING, "connected":
            return StreamState.CONNECTING
        case StreamState.CONNECTING, "start":
            return StreamState.STARTED
        case StreamState.STARTED, "media" | "mark" | "dtmf":
            return StreamState.STARTED
        case StreamState.CONNECTING | StreamState.STARTED, "stop":
            return StreamState.STOPPED
    raise TwilioError(
        cc.INVALID_PAYLOAD, "unexpected_event", f"{event!r} not allowed when {state.value}"
    )


@dataclass(frozen=True, slots=True)
class CallSetup:
    call_id: str
    speakers: tuple[Speaker, ...]
    meta: dict[str, Any]


def _track(name: str) -> str:
    """`inbound_track` (TwiML, DTMF) and `inbound` (start, media) name the same track."""
    return name.removesuffix("_track")


def call_setup(start: Start) -> CallSetup:
    """Check the stream's format and name the call and its parties; raise TwilioError."""
    info = start.start
    fmt = info.media_format
    if (fmt.encoding, fmt.sample_rate, fmt.channels) != (ENCODING, SAMPLE_RATE, 1):
        raise TwilioError(
            cc.UNSUPPORTED_DATA,
            "unsupported_format",
            f"mediaFormat {fmt.encoding} {fmt.sample_rate} Hz x{fmt.channels}: "
            f"only {ENCODING} {SAMPLE_RATE} Hz mono",
        )
    tracks = {_track(t) for t in info.tracks}
    if not tracks <= TRACK_SPEAKER.keys():
        raise TwilioError(cc.INVALID_PAYLOAD, "bad_start", f"unknown tracks {info.tracks}")
    params = info.custom_parameters
    call_id = params.get("call_id") or info.call_sid
    if not CALL_ID.match(call_id):
        raise TwilioError(
            cc.INVALID_PAYLOAD, "bad_start", "call_id: 1-128 letters, digits, . _ : -"
        )
    meta: dict[str, Any] = {k: params[k] for k in ("agent_id", "customer_id") if params.get(k)}
    if any(len(str(v)) > MAX_ID_CHARS for v in meta.values()):
        raise TwilioError(
            cc.INVALID_PAYLOAD, "bad_start", f"agent_id, customer_id: at most {MAX_ID_CHARS} chars"
        )
    if not all(str(v).isprintable() for v in meta.values()):
        raise TwilioError(cc.INVALID_PAYLOAD, "bad_start", PRINTABLE_IDS)
    meta["twilio"] = {
        "call_sid": info.call_sid,
        "stream_sid": info.stream_sid or start.stream_sid,
        "tracks": sorted(tracks),
        "marks": 0,
        "dtmf": 0,
    }
    speakers = tuple(s for s in SPEAKERS if s in {TRACK_SPEAKER[t] for t in tracks})
    return CallSetup(call_id=call_id, speakers=speakers, meta=meta)


MAX_TIMESTAMP_JUMP_S = MAX_SKIPPED_AUDIO_S
"""A media timestamp this far past the end of its track's audio is malformed, not a gap:
Twilio streams audio all through a call, silence and hold included. One of 99999999999 ms
ended the call as if it had run to its maximum length (an outside ingest audit). The jumps
of a track together may not skip more either (`MAX_SKIPPED_AUDIO_S`)."""


@dataclass(slots=True)
class StreamProtocol:
    """Twilio's message order and media framing, without I/O (unit-testable on its own)."""

    max_message_bytes: int
    state: StreamState = StreamState.CONNECTING
    setup: CallSetup | None = None
    stream_sid: str | None = None
    last_seq: int = 0
    out_of_order: int = 0
    _next_sample: dict[str, int] = field(default_factory=dict)
    _skipped_s: dict[str, float] = field(default_factory=dict)
    """Per track, the seconds its timestamps have jumped past its audio so far."""
    skipped: set[str] = field(default_factory=set)
    """Unknown event types seen (each logged once)."""
    base_sample: int = 0
    """Where this stream starts on the call clock: 0, or the audio already heard when it
    re-attaches a call after a dropped connection (its timestamps start again at 0)."""

    def receive(self, text: str) -> TwilioMessage | Unrecognized:
        msg = parse_message(text, self.max_message_bytes)
        if isinstance(msg, Unrecognized):
            return msg
        self.state = transition(self.state, msg.event)
        if isinstance(msg, Start):
            self.setup = call_setup(msg)
            self.stream_sid = msg.start.stream_sid or msg.stream_sid
        elif (
            not isinstance(msg, Connected) and self.stream_sid and msg.stream_sid != self.stream_sid
        ):
            raise TwilioError(
                cc.INVALID_PAYLOAD,
                "stream_mismatch",
                f"streamSid {msg.stream_sid} is not this stream's {self.stream_sid}",
            )
        return msg

    def in_order(self, msg: TwilioMessage | Unrecognized) -> bool:
        """Check sequenceNumber; False (logged and counted) when it does not increase."""
        if isinstance(msg, Connected | Unrecognized):
            return True
        seq = int(msg.sequence_number)
        if seq > self.last_seq:
            self.last_seq = seq
            return True
        self.out_of_order += 1
        metrics.INGEST_ERRORS.labels(protocol=PROTOCOL, reason="out_of_order").inc()
        if self.out_of_order == 1 or self.out_of_order % OUT_OF_ORDER_LOG_EVERY == 0:
            # The first and then every 50th: a stream that keeps reordering wrote ~25
            # lines a second per call (an outside ingest audit); the metric counts them all.
            log.warning(
                "twilio stream %s: %s sequenceNumber %d after %d (%d out of order so far)",
                self.stream_sid,
                msg.event,
                seq,
                self.last_seq,
                self.out_of_order,
            )
        return False

    def chunk(self, msg: Media) -> AudioChunk:
        """Decode one media message and place it on the call clock by its timestamp."""
        assert self.setup is not None
        track = _track(msg.media.track)
        speaker = TRACK_SPEAKER.get(track)
        if speaker is None or speaker not in self.setup.speakers:
            raise TwilioError(
                cc.INVALID_PAYLOAD, "bad_track", f"media for track {msg.media.track!r}"
            )
        try:
            payload = base64.b64decode(msg.media.payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise TwilioError(cc.INVALID_PAYLOAD, "bad_payload", f"payload: {exc}") from exc
        if not payload:
            raise TwilioError(cc.INVALID_PAYLOAD, "bad_payload", "empty media payload")
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise TwilioError(
                cc.MESSAGE_TOO_BIG,
                "oversized",
                f"media payload of {len(payload)} bytes > {MAX_PAYLOAD_BYTES}",
            )
        timestamp_ms = int(msg.media.timestamp)
        ahead_s = timestamp_ms / 1000 - self._next_sample.get(track, 0) / SAMPLE_RATE
        if ahead_s > MAX_TIMESTAMP_JUMP_S:
            raise TwilioError(
                cc.INVALID_PAYLOAD,
                "bad_timestamp",
                f"media timestamp {timestamp_ms} ms is {ahead_s:.0f} s past the track's audio",
            )
        skipped_s = self._skipped_s.get(track, 0.0) + max(0.0, ahead_s)
        if skipped_s > MAX_SKIPPED_AUDIO_S:
            raise TwilioError(
                cc.INVALID_PAYLOAD,
                "bad_timestamp",
                f"media timestamps have skipped {skipped_s:.0f} s of the track's audio",
            )
        self._skipped_s[track] = skipped_s
        start = self._place(track, timestamp_ms, len(payload))
        pcm = codecs.decode_mulaw(payload)
        t0 = (self.base_sample + start) / SAMPLE_RATE
        return AudioChunk(self.setup.call_id, speaker, pcm, SAMPLE_RATE, t0)

    def _place(self, track: str, timestamp_ms: int, n: int) -> int:
        """First sample of this payload on the call clock, read from its timestamp.

        Audio travels in whole packets, so a timestamp is read to the nearest whole packet
        from where the track's audio ends: jitter of up to half a packet (10 ms at 20 ms)
        continues the track seamlessly, neither clipping audio nor inserting silence; a jump
        of k packets is k lost packets (the pipeline fills them with silence); a step back is
        a repeat (the pipeline drops what it already has). Call time thus follows the
        timestamps to within half a packet, whatever arrives late, twice or never.
        """
        expected = self._next_sample.get(track, 0)
        at = round(timestamp_ms * SAMPLE_RATE / 1000)
        start = expected + round((at - expected) / n) * n
        self._next_sample[track] = max(expected, start + n)
        return start


# -- auth --------------------------------------------------------------------------------------


def twilio_auth_token(settings: Settings) -> str | None:
    return settings.twilio_auth_token or None


def signed_urls(ws: WebSocket) -> list[str]:
    """The URLs Twilio may have signed for this upgrade request.

    Twilio only dials `wss://` (the `<Stream>` docs: "wss is the only supported protocol"), so
    the scheme it signed is secure whatever a TLS-terminating proxy forwards to us: `wss://`
    first (what Twilio's own twilio-agent-connect-python validates, and twilio-aspnet#162
    reports), then the same URL as `https://`. The host is the one Twilio dialled: the
    proxy's X-Forwarded-Host, else Host. RequestValidator tries each with and without port.
    """
    host = (
        (ws.headers.get("x-forwarded-host") or ws.headers.get("host") or ws.url.netloc)
        .split(",")[0]
        .strip()
    )
    rest = ws.url.path + (f"?{ws.url.query}" if ws.url.query else "")
    return [f"{scheme}://{host}{rest}" for scheme in SIGNATURE_SCHEMES]


def signature_valid(ws: WebSocket, token: str) -> bool:
    from twilio.request_validator import RequestValidator

    signature = ws.headers.get("x-twilio-signature")
    if not signature:
        return False
    validator = RequestValidator(token)
    return any(bool(validator.validate(url, {}, signature)) for url in signed_urls(ws))


def authorized(ws: WebSocket, settings: Settings) -> bool:
    """X-Twilio-Signature when a Twilio auth token is configured, else the ingest API key."""
    if settings.auth_disabled:
        return True
    token = twilio_auth_token(settings)
    if token:
        return signature_valid(ws, token)
    return ingest_authorized(ws, settings)


# -- the connection ---------------------------------------------------------------------------


def _close_reason(reason: str, message: str) -> str:
    """A close frame's reason is at most 123 bytes of UTF-8."""
    return f"{reason}: {message}".encode()[:123].decode("utf-8", "ignore")


async def refuse(ws: WebSocket, code: int, reason: str, message: str) -> None:
    metrics.INGEST_ERRORS.labels(protocol=PROTOCOL, reason=reason).inc()
    log.warning("twilio ingest refused (%s): %s", reason, message)
    with contextlib.suppress(RuntimeError, WebSocketDisconnect):
        await ws.close(code=code, reason=_close_reason(reason, message))


CALL_ENDED = ""
"""What `_next_text` returns when the server ended the call first (no Twilio message is "")."""


async def _next_text(ws: WebSocket, ended: asyncio.Future[None] | None = None) -> str | None:
    """The next text message; None when the peer went away, CALL_ENDED when `ended` (the
    call's end) came first; binary is refused."""
    msg = await (ws.receive() if ended is None else receive_unless_ended(ws, ended))
    if msg is None:
        return CALL_ENDED
    if msg["type"] == "websocket.disconnect":
        if oversized := closed_as_oversized(msg):
            raise TwilioError(cc.MESSAGE_TOO_BIG, "oversized", oversized)
        return None
    text = msg.get("text")
    if text is None:
        raise TwilioError(cc.UNSUPPORTED_DATA, "binary", "Twilio sends JSON text messages only")
    return str(text)


async def _until_start(ws: WebSocket, proto: StreamProtocol) -> bool:
    """Read `connected` and `start`; False if the stream ended (hang-up, stop) before start."""
    while proto.state is StreamState.CONNECTING:
        text = await _next_text(ws)
        if text is None:
            return False
        msg = proto.receive(text)
        proto.in_order(msg)
        if isinstance(msg, Unrecognized):
            _skip_unknown(proto, msg.event)
    return proto.state is StreamState.STARTED


def _skip_unknown(proto: StreamProtocol, event: str) -> None:
    """A message type this server does not know (one Twilio adds later): skipped, counted,
    and logged once per type, before `start` as after it."""
    metrics.INGEST_ERRORS.labels(protocol=PROTOCOL, reason="unknown_event").inc()
    if event not in proto.skipped:
        proto.skipped.add(event)
        log.warning(
            "twilio stream %s: skipping %s messages (unknown event type)",
            proto.stream_sid or "(not started)",
            client_text(event, 64),
        )


async def handle(ws: WebSocket, *, manager: CallManager, settings: Settings) -> None:
    """Run one stream. The WebSocket is already accepted and authorised."""
    proto = StreamProtocol(max_message_bytes=settings.max_frame_bytes)
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            started = await _until_start(ws, proto)
        if not started or proto.setup is None:
            with contextlib.suppress(RuntimeError, WebSocketDisconnect):
                await ws.close(code=cc.NORMAL)
            return
        setup = proto.setup
        session = await manager.open(
            call_id=setup.call_id, source=PROTOCOL, speakers=setup.speakers, meta=setup.meta
        )
    except TimeoutError:
        await refuse(ws, cc.HEADER_TIMEOUT, "start_timeout", "no start message within 10 s")
        return
    except TwilioError as exc:
        await refuse(ws, exc.code, exc.reason, str(exc))
        return
    except CallRejected as exc:
        # At capacity: 1013 (try again later). Twilio does not retry a stream by itself; the
        # call goes on without coaching, and readiness already steers new calls elsewhere.
        await refuse(ws, cc.for_rejection(exc.reason), exc.reason, str(exc))
        return
    proto.base_sample = round(session.fed_s * SAMPLE_RATE)
    log.info(
        "twilio stream %s -> call %s",
        proto.stream_sid,
        session.call_id,
        extra=call_fields(session.call_id),
    )
    try:
        end_reason = await _stream(ws, proto, session)
    except asyncio.CancelledError:
        await manager.detach(session, "disconnect")  # the connection went away
        raise
    except CallEnded as exc:  # max call length or idle timeout ended it under us
        end_reason = exc.reason
    except Exception:
        log.exception("twilio stream %s: internal error", proto.stream_sid)
        await refuse(ws, cc.INTERNAL_ERROR, "internal", "internal error")
        end_reason = "error:internal"
    # Whatever ended the stream, everything already heard is finalized and emitted.
    await manager.stream_ended(session, end_reason)
    if end_reason in ("stop", "max_length", "idle_timeout", "shutdown"):
        # Closing only now tells the peer that every transcript of its call is out.
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await ws.close(code=cc.NORMAL, reason=end_reason)


async def _stream(ws: WebSocket, proto: StreamProtocol, session: CallSession) -> str:
    """Feed media until `stop` or hang-up, or the server ends the call; returns why."""
    async with watching_end(session) as ended:
        while True:
            try:
                text = await _next_text(ws, ended)
                if text is None:
                    return "disconnect"
                if text == CALL_ENDED:
                    return session.end_reason or "ended"
                msg = proto.receive(text)
                in_order = proto.in_order(msg)
                match msg:
                    case Media():
                        # A repeated or late sequenceNumber is a replayed message: its audio is
                        # already placed, so it is dropped (counted). Control messages never are.
                        if in_order:
                            await session.feed(proto.chunk(msg))
                    case Unrecognized(event=event):
                        _skip_unknown(proto, event)
                    case Mark():
                        # A name is free text: redacted once, for the meta and the log.
                        name = redact_text(msg.mark.name[:64])
                        _note(session, "marks", last_mark=name)
                        log.info(
                            "call %s: mark %r",
                            session.call_id,
                            name,
                            extra=call_fields(session.call_id),
                        )
                    case Dtmf():
                        # Digits may be card numbers or PINs: count them, never store or log them.
                        _note(session, "dtmf")
                        log.info(
                            "call %s: dtmf on %s",
                            session.call_id,
                            msg.dtmf.track,
                            extra=call_fields(session.call_id),
                        )
                    case Stop():
                        return "stop"
            except TwilioError as exc:
                await refuse(ws, exc.code, exc.reason, str(exc))
                return f"error:{exc.reason}"


def _note(session: CallSession, counter: str, **values: str) -> None:
    twilio_meta = session.meta.setdefault("twilio", {})
    twilio_meta[counter] = int(twilio_meta.get(counter, 0)) + 1
    twilio_meta.update(values)
