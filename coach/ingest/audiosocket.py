"""Asterisk AudioSocket ingest: a TCP server that Asterisk's `AudioSocket()` connects to.

Wire format (docs.asterisk.org "Configuration/Channel-Drivers/AudioSocket", the same text as
the README of CyCoreSystems/audiosocket; Asterisk `include/asterisk/res_audiosocket.h` and
`res/res_audiosocket.c`): every message is `type (1 byte) | length (2 bytes, unsigned,
big-endian) | payload (length bytes)`.

    0x00       hangup; no payload (closing the socket means the same)
    0x01       the stream's UUID, 16 bytes binary (RFC 4122 byte order, as uuid_parse gives)
    0x03       one DTMF digit, 1 ASCII byte
    0x10       audio: signed linear 16-bit little-endian, 8 kHz mono (20 ms = 320 bytes)
    0x11-0x18  the same at 12, 16, 24, 32, 44.1, 48, 96, 192 kHz (channel driver only)
    0xff       error; payload an optional application-specific code (Asterisk's own are
               0x01 hangup of calling party, 0x02 frame forwarding error, 0x04 memory error)

Asterisk sends the UUID first, then audio (and DTMF digits); when the channel hangs up it just
closes the socket. Any frame we send other than audio makes `AudioSocket()` return and hang
up its channel (for coaching, a ChanSpy tap rather than the call), so an error frame refuses.

Calls and parties. One connection carries one party. The first frame must be the UUID; it
names the call and the party, through an explicit mapping (UUID -> call id, party) or, when
unmapped, by convention. A paired tap's UUID has version digit 0 (the first digit of its third
group), which `${UUID()}` (random, version 4) never produces, and ends in 0 for the customer or
1 for the agent; the call id is that UUID ending in 0. The dialplan takes one `${UUID()}` per
call, zeroes its version digit and appends the party digit (see the README). Any other UUID is
a one-party call (customer) whose id is the UUID itself, so a plain `AudioSocket(${UUID()},...)`
just works. A two-party call (both parties mapped, or a paired UUID) is opened with both
speakers by whichever connection comes first; the other joins it. The call ends, and is
finalized, when no connection of it is left (hangup frame or TCP close); a party may reconnect
while the other is still connected. A connection that breaks the protocol is closed on its own;
its party's audio so far stays in the call, which ends as `error:<reason>` when its last
connection goes.

Time. AudioSocket has no timestamps: a party's audio is placed at the number of samples its
connection has sent, plus how long after the call's first connection this one arrived (wall
time, on the monotonic clock). Under JOIN_GRACE_S counts as 0: taps that the dialplan starts
together connect a few milliseconds apart, and that jitter would only blur the two clocks. A
late join or a reconnect starts where the wall clock says; the pipeline fills the gap with
silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import struct
import time
import uuid
import weakref
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any, Literal, TypeAlias

from audio.codecs import pcm16_to_float
from coach import metrics
from coach.calls import CallManager, CallRejected
from coach.ingest.pcm import CALL_ID
from coach.ingest.receive import watching_end
from coach.logs import call_fields
from coach.messages import SPEAKERS, AudioChunk, Speaker
from coach.session import CallEnded, CallSession
from coach.settings import Settings

log = logging.getLogger(__name__)

PROTOCOL = "audiosocket"
HEADER = struct.Struct(">BH")
MAX_PAYLOAD = 0xFFFF
UUID_BYTES = 16
READ_BYTES = 65536
UUID_TIMEOUT_S = 10.0
"""Asterisk sends the UUID right after connecting; a silent socket is not Asterisk."""
JOIN_GRACE_S = 0.1
"""A party connecting this soon after the call's first one starts with it, at time 0."""
LINGER_S = 1.0
"""After our last frame, wait this long for the peer to close, so that it can read that frame."""
DEFAULT_ALLOW = ("127.0.0.1/32", "::1/128")
VERSION_DIGIT = 14
"""Index of the UUID version digit in its string form: 0 marks a paired tap."""


class Kind(IntEnum):
    HANGUP = 0x00
    UUID = 0x01
    DTMF = 0x03
    AUDIO = 0x10
    ERROR = 0xFF


AUDIO_RATES: dict[int, int] = {
    0x10: 8000,
    0x11: 12000,
    0x12: 16000,
    0x13: 24000,
    0x14: 32000,
    0x15: 44100,
    0x16: 48000,
    0x17: 96000,
    0x18: 192000,
}
RATE_KINDS = {rate: kind for kind, rate in AUDIO_RATES.items()}
KNOWN_KINDS = frozenset({Kind.HANGUP, Kind.UUID, Kind.DTMF, Kind.ERROR, *AUDIO_RATES})
FIXED_LENGTHS: dict[int, int] = {Kind.HANGUP: 0, Kind.UUID: UUID_BYTES, Kind.DTMF: 1}


class ServerError(IntEnum):
    """Our codes in the error frames we send (application-specific, one byte)."""

    FORBIDDEN = 0x10
    PROTOCOL = 0x11
    REJECTED = 0x12
    TIMEOUT = 0x13
    OVERLOADED = 0x14
    """At capacity (COACH_MAX_CALLS): try again later, or another instance."""


# -- frames -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hangup:
    pass


@dataclass(frozen=True, slots=True)
class UuidFrame:
    uuid: uuid.UUID


@dataclass(frozen=True, slots=True)
class Dtmf:
    digit: str


@dataclass(frozen=True, slots=True)
class Audio:
    pcm: bytes
    """Signed 16-bit little-endian samples."""
    sample_rate: int = 8000


@dataclass(frozen=True, slots=True)
class ErrorFrame:
    payload: bytes = b""

    @property
    def code(self) -> int | None:
        return self.payload[0] if self.payload else None


Frame: TypeAlias = Hangup | UuidFrame | Dtmf | Audio | ErrorFrame
ProtocolReason: TypeAlias = Literal[
    "unknown_type", "bad_length", "odd_audio", "bad_payload", "oversized", "truncated"
]


class ProtocolError(Exception):
    """The byte stream is not AudioSocket; `frames` holds those decoded before the fault."""

    def __init__(self, reason: ProtocolReason, message: str) -> None:
        super().__init__(message)
        self.reason: ProtocolReason = reason
        self.frames: list[Frame] = []


def encode_raw(kind: int, payload: bytes = b"") -> bytes:
    """One frame with any type byte: the building block, and a way to write bad frames."""
    if not 0 <= kind <= 0xFF:
        raise ValueError(f"frame type {kind} is not one byte")
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return HEADER.pack(kind, len(payload)) + payload


def encode(frame: Frame) -> bytes:
    """A valid frame's bytes; raises ValueError for a frame the protocol cannot carry."""
    match frame:
        case Hangup():
            return encode_raw(Kind.HANGUP)
        case UuidFrame(uuid=u):
            return encode_raw(Kind.UUID, u.bytes)
        case Dtmf(digit=d):
            if len(d) != 1 or not 0x21 <= ord(d) <= 0x7E:
                raise ValueError(f"DTMF digit must be one printable ASCII character: {d!r}")
            return encode_raw(Kind.DTMF, d.encode("ascii"))
        case Audio(pcm=pcm, sample_rate=rate):
            if rate not in RATE_KINDS:
                raise ValueError(f"AudioSocket has no audio type for {rate} Hz")
            if len(pcm) % 2:
                raise ValueError(f"audio of {len(pcm)} bytes is not whole 16-bit samples")
            return encode_raw(RATE_KINDS[rate], pcm)
        case ErrorFrame(payload=payload):
            return encode_raw(Kind.ERROR, payload)
    raise TypeError(f"not an AudioSocket frame: {frame!r}")


def _check_header(kind: int, length: int, max_payload: int) -> None:
    """Reject a frame from its header alone, before buffering its payload."""
    if kind not in KNOWN_KINDS:
        raise ProtocolError("unknown_type", f"unknown frame type 0x{kind:02x}")
    if length > max_payload:
        raise ProtocolError(
            "oversized", f"frame type 0x{kind:02x} of {length} bytes > {max_payload}"
        )
    fixed = FIXED_LENGTHS.get(kind)
    if fixed is not None and length != fixed:
        raise ProtocolError(
            "bad_length", f"{Kind(kind).name} frame must carry {fixed} bytes, not {length}"
        )
    if kind in AUDIO_RATES and length % 2:
        raise ProtocolError("odd_audio", f"audio frame of {length} bytes: not whole samples")


def _parse(kind: int, payload: bytes) -> Frame:
    if kind in AUDIO_RATES:
        return Audio(payload, AUDIO_RATES[kind])
    match kind:
        case Kind.HANGUP:
            return Hangup()
        case Kind.UUID:
            return UuidFrame(uuid.UUID(bytes=payload))
        case Kind.DTMF:
            if not 0x21 <= payload[0] <= 0x7E:
                raise ProtocolError("bad_payload", f"DTMF byte 0x{payload[0]:02x} is not ASCII")
            return Dtmf(chr(payload[0]))
        case _:
            return ErrorFrame(payload)


class FrameDecoder:
    """Incremental decoder: bytes as they arrive from TCP in, whole frames out.

    A frame may span reads and a read may hold many frames. The first fault raises
    ProtocolError (with the frames decoded before it) and the decoder refuses further input.
    """

    def __init__(self, *, max_payload: int = MAX_PAYLOAD) -> None:
        if not UUID_BYTES <= max_payload <= MAX_PAYLOAD:
            raise ValueError(f"max_payload must be {UUID_BYTES}..{MAX_PAYLOAD}")
        self._max = max_payload
        self._buf = bytearray()
        self._failed: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame waiting for the rest."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        if self._failed is not None:
            raise ProtocolError(self._failed.reason, f"stream already failed: {self._failed}")
        self._buf += data
        frames: list[Frame] = []
        pos = 0
        try:
            while len(self._buf) - pos >= HEADER.size:
                kind, length = HEADER.unpack_from(self._buf, pos)
                _check_header(kind, length, self._max)
                end = pos + HEADER.size + length
                if end > len(self._buf):
                    break
                frames.append(_parse(kind, bytes(self._buf[pos + HEADER.size : end])))
                pos = end
        except ProtocolError as exc:
            exc.frames = frames
            self._failed = exc
            self._buf.clear()
            raise
        del self._buf[:pos]
        return frames

    def eof(self) -> None:
        """The stream ended: raise if it ended inside a frame."""
        if self._buf and self._failed is None:
            n = len(self._buf)
            self._buf.clear()
            self._failed = ProtocolError(
                "truncated", f"connection closed inside a frame ({n} bytes of it received)"
            )
            raise self._failed


# -- routing: which call and party a UUID is ----------------------------------------------------

RouteMap: TypeAlias = dict[str, tuple[str, Speaker]]


@dataclass(frozen=True, slots=True)
class Route:
    call_id: str
    party: Speaker
    speakers: tuple[Speaker, ...]
    """Every party the call will have, fixed when the call opens."""


def _canonical_uuid(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError as exc:
        raise ValueError(f"audiosocket mapping: {text!r} is not a UUID") from exc


def normalize_mapping(mapping: Mapping[str, tuple[str, str]]) -> RouteMap:
    """Validate a UUID -> (call id, party) mapping; keys become canonical lowercase UUIDs."""
    out: RouteMap = {}
    seen: set[tuple[str, str]] = set()
    for key, (call_id, party) in mapping.items():
        if not CALL_ID.match(call_id):
            raise ValueError(f"audiosocket mapping: bad call id {call_id!r}")
        speaker = next((s for s in SPEAKERS if s == party), None)
        if speaker is None:
            raise ValueError(f"audiosocket mapping: party must be customer or agent: {party!r}")
        if (call_id, speaker) in seen:
            raise ValueError(f"audiosocket mapping: {call_id} {speaker} is mapped twice")
        seen.add((call_id, speaker))
        out[_canonical_uuid(key)] = (call_id, speaker)
    return out


def parse_mapping(entries: Mapping[str, str]) -> RouteMap:
    """`{"<uuid>": "<call_id>:<party>"}` (the settings format) -> a validated mapping."""
    pairs: dict[str, tuple[str, str]] = {}
    for key, value in entries.items():
        call_id, sep, party = str(value).rpartition(":")
        if not sep:
            raise ValueError(f"audiosocket mapping for {key}: expected 'call_id:party'")
        pairs[key] = (call_id, party)
    return normalize_mapping(pairs)


def read_mapping_file(path: Path) -> RouteMap:
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of uuid -> 'call_id:party'")
    return parse_mapping(data)


def route_for(stream: uuid.UUID, mapping: RouteMap) -> Route:
    """Which call and party a stream's UUID is: the mapping, else the paired-tap convention."""
    key = str(stream)
    if key in mapping:
        call_id, party = mapping[key]
        parties = {p for c, p in mapping.values() if c == call_id}
        return Route(call_id, party, tuple(s for s in SPEAKERS if s in parties))
    if key[VERSION_DIGIT] != "0" or key[-1] not in "01":
        return Route(key, "customer", ("customer",))
    return Route(key[:-1] + "0", "customer" if key[-1] == "0" else "agent", SPEAKERS)


def parse_allow(allow: Iterable[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    try:
        return [ipaddress.ip_network(a, strict=False) for a in allow]
    except ValueError as exc:
        raise ValueError(f"audiosocket allow-list: {exc}") from exc


# -- the server ---------------------------------------------------------------------------------


class _Refusal(Exception):
    def __init__(self, reason: str, code: ServerError, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.code = code


@dataclass(eq=False)
class _Call:
    call_id: str
    speakers: tuple[Speaker, ...]
    t0: float
    """Monotonic time at which the call's first connection named it."""
    ready: asyncio.Future[CallSession]
    connected: set[Speaker] = field(default_factory=set)
    rates: dict[Speaker, int] = field(default_factory=dict)
    error: str | None = None
    base_s: float = 0.0
    """Call time at t0: 0, or where a call taken over from a lost instance had got to."""


@dataclass(eq=False)
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    peer: str
    frames: _FrameReader
    task: asyncio.Task[Any] | None


class _FrameReader:
    """Frames off a stream in order; a protocol fault surfaces after the frames before it."""

    def __init__(self, reader: asyncio.StreamReader, decoder: FrameDecoder) -> None:
        self._reader = reader
        self._decoder = decoder
        self._pending: deque[Frame] = deque()
        self._error: ProtocolError | None = None
        self._eof = False

    async def next(self, timeout_s: float | None) -> Frame | None:
        """The next frame, or None at a clean end of stream.

        Raises ProtocolError, TimeoutError (nothing for `timeout_s`; None: wait for ever) or
        ConnectionError.
        """
        while not self._pending:
            if self._error is not None:
                raise self._error
            if self._eof:
                return None
            async with asyncio.timeout(timeout_s):
                data = await self._reader.read(READ_BYTES)
            if not data:
                self._eof = True
                self._decoder.eof()
                continue
            try:
                self._pending.extend(self._decoder.feed(data))
            except ProtocolError as exc:
                self._pending.extend(exc.frames)
                self._error = exc
        return self._pending.popleft()


class AudioSocketService:
    """Connections, calls and pairing behind one listening socket."""

    def __init__(
        self,
        *,
        manager: CallManager,
        settings: Settings,
        mapping: Mapping[str, tuple[str, Speaker]] | None = None,
        allow: Iterable[str] | None = None,
        uuid_timeout_s: float = UUID_TIMEOUT_S,
        idle_timeout_s: float | None = None,
    ) -> None:
        """`idle_timeout_s`: how long a tap may send no frame at all before it is taken for a
        dead peer (error frame, call ended); by default COACH_IDLE_TIMEOUT_S, 0 = never. A
        tap sends a frame every 20 ms, silence included. It was a fixed 60 s, whatever the
        setting, so an operator's longer timeout or "off" did not hold for AudioSocket."""
        self._manager = manager
        self._max_payload = max(UUID_BYTES, min(settings.max_frame_bytes, MAX_PAYLOAD))
        self._mapping = normalize_mapping(mapping or {})
        self._allow = parse_allow(DEFAULT_ALLOW if allow is None else allow)
        self._uuid_timeout_s = uuid_timeout_s
        if idle_timeout_s is None:
            idle_timeout_s = float(settings.idle_timeout_s)
        self._idle_timeout_s = idle_timeout_s if idle_timeout_s > 0 else None
        self._calls: dict[str, _Call] = {}
        self._conns: set[_Conn] = set()
        self._closing = False

    def allowed(self, peer: object) -> bool:
        if not isinstance(peer, tuple) or not peer:
            return False
        try:
            ip = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self._allow)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection, start to close. This is the root of its task: it never raises."""
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else str(peername)
        conn = _Conn(
            reader,
            writer,
            peer,
            _FrameReader(reader, FrameDecoder(max_payload=self._max_payload)),
            asyncio.current_task(),
        )
        try:
            if self._closing:
                await _close(conn, encode(Hangup()))
            elif not self.allowed(peername):
                await self._refuse(
                    conn, _Refusal("forbidden", ServerError.FORBIDDEN, "source not allowed")
                )
            else:
                self._conns.add(conn)
                await self._run(conn)
        except asyncio.CancelledError:
            log.info("audiosocket %s: connection cancelled", peer)
        except Exception:
            log.exception("audiosocket %s: connection failed", peer)
        finally:
            self._conns.discard(conn)
            writer.close()

    async def aclose(self, timeout_s: float = 10.0) -> None:
        """Hang up every connection (each call is finalized) and wait for them to finish."""
        self._closing = True
        conns = list(self._conns)
        for conn in conns:
            # close() sends what is queued (the hangup), stops reading at once, and ends
            # the handler's stream with EOF: it then finalizes its call as "shutdown".
            with contextlib.suppress(ConnectionError, RuntimeError):
                conn.writer.write(encode(Hangup()))
            conn.writer.close()
        tasks = [c.task for c in conns if c.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout_s)
            for task in pending:
                log.warning(
                    "audiosocket: connection %s did not finish; cancelling", task.get_name()
                )
                task.cancel()

    async def _refuse(self, conn: _Conn, refusal: _Refusal) -> None:
        metrics.INGEST_ERRORS.labels(protocol=PROTOCOL, reason=refusal.reason).inc()
        log.warning("audiosocket %s refused (%s): %s", conn.peer, refusal.reason, refusal)
        await _close(conn, encode(ErrorFrame(bytes([refusal.code]))))

    async def _run(self, conn: _Conn) -> None:
        try:
            first = await self._first_frame(conn)
            route = route_for(first.uuid, self._mapping)
            call, session, offset_s = await self._join(route, conn)
        except _Refusal as refusal:
            await self._refuse(conn, refusal)
            return
        except ConnectionError:
            return
        reason = "disconnect"
        try:
            reason, last = await self._stream(conn, call, route.party, session, offset_s)
            await _close(conn, last)
        finally:
            # Also when cancelled: what this party said is finalized with the call.
            await self._leave(call, route.party, reason)

    async def _first_frame(self, conn: _Conn) -> UuidFrame:
        try:
            # The whole frame within the time, not each read: a UUID sent a byte every 4 s
            # held the connection for good (an outside ingest audit).
            async with asyncio.timeout(self._uuid_timeout_s):
                frame = await conn.frames.next(None)
        except TimeoutError as exc:
            raise _Refusal("uuid_timeout", ServerError.TIMEOUT, "no UUID frame") from exc
        except ProtocolError as exc:
            raise _Refusal(exc.reason, ServerError.PROTOCOL, str(exc)) from exc
        if frame is None:
            raise ConnectionError("closed before its UUID")
        if not isinstance(frame, UuidFrame):
            raise _Refusal(
                "no_uuid",
                ServerError.PROTOCOL,
                f"first frame must be the UUID, not {type(frame).__name__}",
            )
        if frame.uuid.int == 0 and str(frame.uuid) not in self._mapping:
            # Every client that sends it would join one call, and hear as one caller (an
            # outside ingest audit): a placeholder, not a call's id.
            raise _Refusal("nil_uuid", ServerError.PROTOCOL, "the nil UUID names no call")
        return frame

    async def _join(self, route: Route, conn: _Conn) -> tuple[_Call, CallSession, float]:
        call = self._calls.get(route.call_id)
        if call is None:
            ready: asyncio.Future[CallSession] = asyncio.get_running_loop().create_future()
            ready.add_done_callback(lambda f: f.cancelled() or f.exception())
            call = _Call(route.call_id, route.speakers, time.monotonic(), ready, {route.party})
            self._calls[route.call_id] = call
            try:
                session = await self._manager.open(
                    call_id=route.call_id, source=PROTOCOL, speakers=route.speakers
                )
            except BaseException as exc:
                self._calls.pop(route.call_id, None)
                refusal = (
                    _Refusal(
                        exc.reason,
                        ServerError.OVERLOADED if exc.try_again_later else ServerError.REJECTED,
                        str(exc),
                    )
                    if isinstance(exc, CallRejected)
                    else _Refusal("unavailable", ServerError.REJECTED, "call could not open")
                )
                ready.set_exception(refusal)
                if isinstance(exc, CallRejected):
                    raise refusal from exc
                raise
            call.base_s = session.fed_s
            ready.set_result(session)
            log.info(
                "audiosocket %s: call %s %s connected",
                conn.peer,
                route.call_id,
                route.party,
                extra=call_fields(route.call_id),
            )
            return call, session, call.base_s
        if route.party not in call.speakers:
            raise _Refusal(
                "unknown_party", ServerError.REJECTED, f"call {route.call_id} has no {route.party}"
            )
        if route.party in call.connected:
            raise _Refusal(
                "duplicate_party",
                ServerError.REJECTED,
                f"{route.party} of {route.call_id} is already connected",
            )
        call.connected.add(route.party)
        offset_s = time.monotonic() - call.t0
        if offset_s < JOIN_GRACE_S:
            offset_s = 0.0  # taps started together: the difference is connection setup
        try:
            session = await asyncio.shield(call.ready)
        except BaseException:
            call.connected.discard(route.party)
            raise
        offset_s += call.base_s
        log.info(
            "audiosocket %s: call %s %s joined at %.3f s",
            conn.peer,
            route.call_id,
            route.party,
            offset_s,
            extra=call_fields(route.call_id),
        )
        return call, session, offset_s

    async def _stream(
        self, conn: _Conn, call: _Call, party: Speaker, session: CallSession, offset_s: float
    ) -> tuple[str, bytes | None]:
        """Feed this party's audio until it ends: why, and the last frame to send it."""
        async with watching_end(session) as ended:
            return await self._stream_until(conn, call, party, session, offset_s, ended)

    async def _stream_until(
        self,
        conn: _Conn,
        call: _Call,
        party: Speaker,
        session: CallSession,
        offset_s: float,
        ended: asyncio.Future[None],
    ) -> tuple[str, bytes | None]:
        samples = 0
        while True:
            read = asyncio.ensure_future(conn.frames.next(self._idle_timeout_s))
            waiting: set[asyncio.Future[Any]] = {read, ended}
            try:
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not read.done():  # cancelling is safe: only the socket read was pending
                    read.cancel()
            if not read.done() or read.cancelled():
                # The server ended the call (idle timeout, max length, another party's
                # error) while this peer sent nothing: hang it up instead of leaving the
                # socket open for a call that is gone.
                return session.end_reason or "ended", encode(Hangup())
            try:
                frame = read.result()
            except ProtocolError as exc:
                if self._closing and exc.reason == "truncated":
                    return "shutdown", None  # we cut the stream ourselves, mid-frame
                # A truncated frame means the peer has gone: nobody to tell.
                tell = None if exc.reason == "truncated" else ServerError.PROTOCOL
                return self._failed(conn, exc.reason, str(exc), tell)
            except TimeoutError:
                return self._failed(conn, "idle_timeout", "no frame", ServerError.TIMEOUT)
            except ConnectionError:
                return "disconnect", None
            match frame:
                case None | Hangup():
                    return ("shutdown", encode(Hangup())) if self._closing else ("hangup", None)
                case Audio(pcm=pcm, sample_rate=rate):
                    if call.rates.setdefault(party, rate) != rate:
                        msg = f"audio switched from {call.rates[party]} to {rate} Hz"
                        return self._failed(conn, "rate_change", msg, ServerError.PROTOCOL)
                    if not pcm:
                        continue
                    t0 = offset_s + samples / rate
                    chunk = AudioChunk(session.call_id, party, pcm16_to_float(pcm), rate, t0)
                    try:
                        await session.feed(chunk)
                    except CallEnded as exc:  # max length, idle timeout or shutdown
                        return exc.reason, encode(Hangup())
                    except RuntimeError:  # the call was ended under us (server shutdown)
                        return "shutdown", encode(Hangup())
                    samples += len(pcm) // 2
                case Dtmf():
                    # Digits may be card numbers or PINs: never log them (as on Twilio); the
                    # digit used to be logged at debug level (found by a protocol audit).
                    log.debug("audiosocket %s: %s sent a DTMF digit", session.call_id, party)
                case UuidFrame():
                    msg = "a second UUID frame"
                    return self._failed(conn, "duplicate_uuid", msg, ServerError.PROTOCOL)
                case ErrorFrame(code=peer_code):
                    if peer_code == 0x01:  # Asterisk's "hangup of calling party": a normal end
                        return "hangup", None
                    msg = f"peer sent error code {peer_code}"
                    return self._failed(conn, "peer_error", msg, None)

    def _failed(
        self, conn: _Conn, reason: str, message: str, code: ServerError | None
    ) -> tuple[str, bytes | None]:
        metrics.INGEST_ERRORS.labels(protocol=PROTOCOL, reason=reason).inc()
        log.warning("audiosocket %s: closing (%s): %s", conn.peer, reason, message)
        return f"error:{reason}", None if code is None else encode(ErrorFrame(bytes([code])))

    async def _leave(self, call: _Call, party: Speaker, reason: str) -> None:
        call.connected.discard(party)
        if reason.startswith("error:") and call.error is None:
            call.error = reason
        if call.connected:
            log.info(
                "audiosocket: call %s %s left (%s)",
                call.call_id,
                party,
                reason,
                extra=call_fields(call.call_id),
            )
            return
        if self._calls.get(call.call_id) is call:
            del self._calls[call.call_id]
        await self._manager.finish(call.ready.result(), call.error or reason)


async def _close(conn: _Conn, last: bytes | None) -> None:
    """Send a last frame, then close so that the peer can still read it.

    Closing with the peer's data unread makes the kernel send a reset, which can destroy
    our last frame in flight; so we half-close and drain until the peer closes (bounded).
    """
    writer = conn.writer
    try:
        if last is not None:
            writer.write(last)
        async with asyncio.timeout(LINGER_S):
            await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
            while await conn.reader.read(READ_BYTES):
                pass
    except (TimeoutError, ConnectionError, RuntimeError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, RuntimeError, TimeoutError):
            async with asyncio.timeout(LINGER_S):
                await writer.wait_closed()


_SERVICES: weakref.WeakKeyDictionary[asyncio.Server, AudioSocketService] = (
    weakref.WeakKeyDictionary()
)


async def start_audiosocket_server(
    *,
    manager: CallManager,
    settings: Settings,
    host: str,
    port: int,
    mapping: dict[str, tuple[str, Speaker]] | None = None,
    allow: list[str] | None = None,
    uuid_timeout_s: float = UUID_TIMEOUT_S,
    idle_timeout_s: float | None = None,
) -> asyncio.Server:
    """Listen for Asterisk AudioSocket connections; stop with `close_audiosocket_server`.

    `allow`: source networks (CIDR) that may connect, default loopback only. `mapping`:
    UUID -> (call id, party); unmapped UUIDs follow the convention in the module docstring.
    """
    service = AudioSocketService(
        manager=manager,
        settings=settings,
        mapping=mapping,
        allow=allow,
        uuid_timeout_s=uuid_timeout_s,
        idle_timeout_s=idle_timeout_s,
    )
    server = await asyncio.start_server(service.handle, host=host, port=port)
    _SERVICES[server] = service
    names = ", ".join(str(s.getsockname()) for s in server.sockets)
    log.info("audiosocket listening on %s", names)
    return server


async def close_audiosocket_server(server: asyncio.Server, *, timeout_s: float = 10.0) -> None:
    """Stop listening, hang up every connection and wait until their calls are finalized."""
    server.close()
    service = _SERVICES.pop(server, None)
    if service is not None:
        await service.aclose(timeout_s)
    await server.wait_closed()
