"""Genesys AudioHook ingest (`/ingest/audiohook`): protocol v2 framing, auth and call clock.

Wire format (Genesys AudioHook protocol v2, as implemented by the public reference
`purecloudlabs/audiohook-reference-implementation`): text frames are JSON messages
`{version: "2", id, type, seq, parameters}`; the client's also carry `serverseq` (last server
`seq` seen) and `position` (ISO-8601 duration of its stream, "PT1.2S"), the server's carry
`clientseq` (last client `seq` seen). Both sides number their own messages 1, 2, 3...
Binary frames are interleaved audio in the media the server chose in `opened`.

Client messages: open, ping, update, discarded, paused, resumed, error, close.
Server messages used here: opened, pong, closed, disconnect (`event`, `pause`, `resume` and
`reconnect` are optional and not sent). A protocol error is answered, as the reference server
does, with `disconnect {reason: "error", info}`; the client then runs its close transaction
(`close` -> `closed`) and drops the socket. Authentication happens on the HTTP upgrade, before
any audio: an API key (`X-API-KEY`) and, when a client secret is configured, an RFC 9421
HTTP message signature (HMAC-SHA256). A failure is an HTTP 401, as the reference server sends.

The call clock is the stream position: samples received plus every gap the client reported
(`discarded`, or the `discarded` span of `resumed` after a pause). Network timing never moves
audio. `external` is the customer, `internal` the agent.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any, Literal, TypeAlias, cast, get_args

from fastapi import WebSocket, WebSocketDisconnect
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError
from starlette.responses import PlainTextResponse

from audio import codecs
from coach import metrics
from coach.api.security import ingest_authorized
from coach.calls import CallManager, CallRejected
from coach.ingest import MAX_SKIPPED_AUDIO_S
from coach.ingest import closecodes as cc
from coach.ingest.pcm import MAX_ID_CHARS
from coach.ingest.receive import closed_as_oversized, receive_unless_ended
from coach.logs import call_fields, client_text, upgrade_denied_var
from coach.messages import AudioChunk, Speaker
from coach.session import CallEnded, CallSession
from coach.settings import Settings

log = logging.getLogger(__name__)
PROTOCOL = "audiohook"
VERSION = "2"
SAMPLE_RATE = 8000
NULL_UUID = "00000000-0000-0000-0000-000000000000"
"""conversationId and participant.id of a connection probe (no call behind it)."""
MAX_TEXT_CHARS = 65535
OPEN_TIMEOUT_S = 10.0
CLOSE_WAIT_S = 5.0
"""How long to wait for the client's `close` after a `disconnect`, or its hang-up after `closed`."""
FINALIZE_WAIT_S = 5.0
"""Longest wait for last transcripts before `closed` (the reference client gives up at 10 s)."""
MAX_SIGNATURE_AGE_S = 10
MAX_CLOCK_SKEW_S = 3
MIN_NONCE_CHARS = 22
SUPPORTED_LANGUAGES = ["en-US"]


def _supported(language: str) -> bool:
    """English of any region: the bundled models are English-only (`*.en`, and base is
    run as English)."""
    return language.lower().split("-")[0] == "en"


CHANNEL_SPEAKER: dict[str, Speaker] = {"external": "customer", "internal": "agent"}
MEDIA_PREFERENCE: tuple[tuple[str, ...], ...] = (
    ("external", "internal"),
    ("internal", "external"),
    ("external",),
    ("internal",),
)
SIGNED_COMPONENTS = (
    "@request-target",
    "@authority",
    "audiohook-organization-id",
    "audiohook-session-id",
    "audiohook-correlation-id",
    "x-api-key",
)

# -- wire messages -------------------------------------------------------------------------------

UUID = re.compile(
    r"^(?:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[1-5][0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}"
    r"-[0-9a-fA-F]{12}|00000000-0000-0000-0000-000000000000)$"
)
"""The reference validator's UUID (RFC 4122 versions 1-5, or the null UUID)."""
Uuid = Annotated[str, Field(pattern=UUID.pattern)]
Duration = Annotated[str, Field(pattern=r"^PT(?:\d*\.)?\d+S$")]
SeqNo = Annotated[StrictInt, Field(ge=0)]
ClientType: TypeAlias = Literal[
    "open", "ping", "update", "discarded", "paused", "resumed", "error", "close"
]
CLIENT_TYPES: frozenset[str] = frozenset(get_args(ClientType))


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class ClientMessage(_Wire):
    """The envelope of every client message; `parameters` are checked per type afterwards."""

    version: Literal["2"]
    id: Uuid
    type: str
    seq: SeqNo
    serverseq: SeqNo
    position: Duration
    parameters: dict[str, Any]


class ServerMessage(_Wire):
    version: Literal["2"] = "2"
    type: str
    seq: SeqNo
    clientseq: SeqNo
    id: Uuid
    parameters: dict[str, Any] = Field(default_factory=dict)


class MediaParameter(_Wire):
    type: Literal["audio"]
    format: Literal["PCMU", "L16"]
    channels: list[Literal["external", "internal"]] = Field(min_length=1, max_length=2)
    rate: Literal[8000]


class Participant(_Wire):
    id: Uuid
    ani: str = ""
    aniName: str = ""
    dnis: str = ""


class OpenParameters(_Wire):
    organizationId: Uuid
    conversationId: Uuid
    participant: Participant
    media: list[dict[str, Any]]
    language: str | None = None
    supportedLanguages: bool | None = None
    customConfig: dict[str, Any] | None = None
    continuedSessions: list[dict[str, Any]] | None = None


class GapParameters(_Wire):
    """`discarded` and `resumed`: the stream skipped `discarded` from position `start`."""

    start: Duration
    discarded: Duration


class ErrorParameters(_Wire):
    code: Annotated[StrictInt, Field(ge=400, lt=10000)]
    message: str
    retryAfter: Duration | None = None


class CloseParameters(_Wire):
    reason: Literal["end", "error", "disconnect", "reconnect"]


class PingParameters(_Wire):
    rtt: Duration | None = None


class UpdateParameters(_Wire):
    language: str | None = None


PARAMETERS: dict[str, type[_Wire]] = {
    "open": OpenParameters,
    "ping": PingParameters,
    "update": UpdateParameters,
    "discarded": GapParameters,
    "resumed": GapParameters,
    "paused": _Wire,
    "error": ErrorParameters,
    "close": CloseParameters,
}


def parse_duration(value: str) -> float:
    """Seconds of an AudioHook duration ("PT1.25S")."""
    if not re.fullmatch(r"PT(?:\d*\.)?\d+S", value):
        raise ValueError(f"not an AudioHook duration: {value!r}")
    return float(value[2:-1])


def format_duration(seconds: float) -> str:
    text = f"{max(seconds, 0.0):.3f}".rstrip("0").rstrip(".")
    return f"PT{text or '0'}S"


def choose_media(offered: Iterable[Any]) -> dict[str, Any] | None:
    """The offered entry to use, returned exactly as offered: PCMU 8 kHz, both parties first."""
    best: tuple[int, dict[str, Any]] | None = None
    for entry in offered:
        try:
            media = MediaParameter.model_validate(entry)
        except ValidationError:
            continue
        channels = tuple(media.channels)
        if media.format != "PCMU" or channels not in MEDIA_PREFERENCE:
            continue
        rank = MEDIA_PREFERENCE.index(channels)
        if best is None or rank < best[0]:
            best = (rank, entry)
    return None if best is None else best[1]


# -- session state machine -----------------------------------------------------------------------


class SessionState(Enum):
    CONNECTED = "connected"  # socket accepted, waiting for `open`
    ACTIVE = "active"  # `opened` sent, audio flowing
    PAUSED = "paused"  # the client reported `paused`: audio is not expected
    DISCONNECTING = "disconnecting"  # we sent `disconnect`, waiting for the client's `close`
    CLOSED = "closed"  # `closed` sent, waiting for the client to drop the socket


Event: TypeAlias = ClientType | Literal["audio", "disconnect"]
_S = SessionState


class ProtocolError(Exception):
    """Bad client input: answered with `disconnect`, counted under `reason`."""

    def __init__(self, reason: str, info: str, *, code: int = cc.INVALID_PAYLOAD) -> None:
        super().__init__(info)
        self.reason = reason
        self.code = code
        self.disconnect_reason: Literal["error", "unauthorized"] = (
            "unauthorized" if code == cc.POLICY_VIOLATION else "error"
        )


class IllegalTransition(ProtocolError):
    def __init__(self, state: SessionState, event: str) -> None:
        reason = "audio_before_open" if (state, event) == (_S.CONNECTED, "audio") else "unexpected"
        super().__init__(reason, f"unexpected {event!r} in state {state.value}")


def transition(state: SessionState, event: Event) -> SessionState:
    """The state after `event`; raises IllegalTransition where the protocol does not allow it."""
    match state, event:
        case _S.CONNECTED, "open":
            return _S.ACTIVE
        case ((_S.CONNECTED | _S.ACTIVE | _S.PAUSED), ("ping" | "error")):
            return state
        case ((_S.ACTIVE | _S.PAUSED), ("update" | "discarded" | "audio")):
            return state  # audio while paused is dropped, never placed on the clock
        case ((_S.ACTIVE | _S.PAUSED), "paused"):
            return _S.PAUSED  # a repeated `paused` is idempotent
        case ((_S.ACTIVE | _S.PAUSED), "resumed"):
            return _S.ACTIVE  # `resumed` while streaming reports a zero gap
        case ((_S.CONNECTED | _S.ACTIVE | _S.PAUSED | _S.DISCONNECTING), "close"):
            return _S.CLOSED
        case ((_S.CONNECTED | _S.ACTIVE | _S.PAUSED), "disconnect"):
            return _S.DISCONNECTING
    raise IllegalTransition(state, event)


# -- RFC 8941 structured fields (the subset RFC 9421 signatures use) -----------------------------


class Token(str):
    """An sf-token: serialized bare, unlike an sf-string."""


BareItem: TypeAlias = bool | int | float | str | bytes
Params: TypeAlias = tuple[tuple[str, BareItem], ...]


@dataclass(frozen=True, slots=True)
class SfItem:
    value: BareItem
    params: Params = ()


@dataclass(frozen=True, slots=True)
class SfInnerList:
    items: tuple[SfItem, ...]
    params: Params = ()


class _SfParser:
    _KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*")
    _TOKEN = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")
    _NUMBER = re.compile(r"-?[0-9]{1,15}(?:\.[0-9]{1,3})?")

    def __init__(self, text: str) -> None:
        self.s = text.strip(" ")
        self.i = 0

    def _peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def _take(self, pattern: re.Pattern[str], what: str) -> str:
        m = pattern.match(self.s, self.i)
        if not m:
            raise ValueError(f"expected {what} at {self.i}")
        self.i = m.end()
        return m.group()

    def dictionary(self) -> dict[str, SfItem | SfInnerList]:
        out: dict[str, SfItem | SfInnerList] = {}
        while self.i < len(self.s):
            key = self._take(self._KEY, "key")
            if self._peek() == "=":
                self.i += 1
                out[key] = self._inner_list() if self._peek() == "(" else self._item()
            else:
                out[key] = SfItem(True, self._params())
            while self._peek() in (" ", "\t"):
                self.i += 1
            if self.i < len(self.s):
                if self._peek() != ",":
                    raise ValueError(f"expected ',' at {self.i}")
                self.i += 1
                while self._peek() in (" ", "\t"):
                    self.i += 1
                if self.i >= len(self.s):
                    raise ValueError("trailing comma")
        return out

    def _inner_list(self) -> SfInnerList:
        self.i += 1
        items: list[SfItem] = []
        while True:
            while self._peek() == " ":
                self.i += 1
            if self._peek() == ")":
                self.i += 1
                return SfInnerList(tuple(items), self._params())
            items.append(self._item())
            if self._peek() not in (" ", ")"):
                raise ValueError(f"bad inner list at {self.i}")

    def _item(self) -> SfItem:
        return SfItem(self._bare(), self._params())

    def _params(self) -> Params:
        params: list[tuple[str, BareItem]] = []
        while self._peek() == ";":
            self.i += 1
            while self._peek() == " ":
                self.i += 1
            key = self._take(self._KEY, "parameter key")
            value: BareItem = True
            if self._peek() == "=":
                self.i += 1
                value = self._bare()
            params = [p for p in params if p[0] != key] + [(key, value)]
        return tuple(params)

    def _bare(self) -> BareItem:
        c = self._peek()
        if c == '"':
            return self._string()
        if c == ":":
            end = self.s.find(":", self.i + 1)
            if end < 0:
                raise ValueError("unterminated byte sequence")
            raw, self.i = self.s[self.i + 1 : end], end + 1
            try:
                return base64.b64decode(raw, validate=True)
            except binascii.Error as exc:
                raise ValueError("bad byte sequence") from exc
        if c == "?":
            flag = self.s[self.i + 1 : self.i + 2]
            if flag not in ("0", "1"):
                raise ValueError("bad boolean")
            self.i += 2
            return flag == "1"
        if c == "-" or c.isdigit():
            number = self._take(self._NUMBER, "number")
            return float(number) if "." in number else int(number)
        return Token(self._take(self._TOKEN, "token"))

    def _string(self) -> str:
        out: list[str] = []
        self.i += 1
        while self.i < len(self.s):
            c = self.s[self.i]
            self.i += 1
            if c == "\\":
                nxt = self._peek()
                if nxt not in ('"', "\\"):
                    raise ValueError("bad escape in string")
                out.append(nxt)
                self.i += 1
            elif c == '"':
                return "".join(out)
            elif not " " <= c <= "~":
                raise ValueError("bad character in string")
            else:
                out.append(c)
        raise ValueError("unterminated string")


def sf_dictionary(text: str) -> dict[str, SfItem | SfInnerList]:
    """Parse an RFC 8941 Dictionary; raises ValueError on anything malformed."""
    return _SfParser(text).dictionary()


def sf_serialize_bare(value: BareItem) -> str:
    match value:
        case bool():
            return "?1" if value else "?0"
        case int():
            return str(value)
        case float():
            return f"{value:.3f}".rstrip("0").rstrip(".") if value % 1 else f"{value:.1f}"
        case bytes():
            return f":{base64.b64encode(value).decode()}:"
        case Token():
            return str(value)
        case str():
            return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise TypeError(f"not a structured field value: {value!r}")


def sf_serialize_params(params: Params) -> str:
    return "".join(f";{k}" if v is True else f";{k}={sf_serialize_bare(v)}" for k, v in params)


def sf_serialize_inner_list(inner: SfInnerList) -> str:
    items = " ".join(
        sf_serialize_bare(i.value) + sf_serialize_params(i.params) for i in inner.items
    )
    return f"({items}){sf_serialize_params(inner.params)}"


# -- RFC 9421 HTTP message signature, as Genesys signs the upgrade request ------------------------


class NonceCache:
    """Nonces seen within the signature lifetime: a captured upgrade request cannot be replayed."""

    def __init__(self, *, max_entries: int = 100_000) -> None:
        self._seen: dict[str, float] = {}
        self._max = max_entries

    def add(self, nonce: str, *, until: float, now: float) -> bool:
        """Remember a nonce; False if it was already used."""
        if len(self._seen) >= self._max:
            self._seen = {n: t for n, t in self._seen.items() if t >= now}
        if self._seen.get(nonce, -1.0) >= now:
            return False
        if len(self._seen) < self._max:
            self._seen[nonce] = until
        return True


NONCES = NonceCache()


def canonical_field(values: list[str]) -> str | None:
    if not values:
        return None
    return ", ".join(re.sub(r"[ \t]*\r\n[ \t]+", " ", v.strip()) for v in values)


def verify_signature(
    headers: list[tuple[str, str]],
    *,
    request_target: str,
    secret: bytes,
    now: float,
    nonces: NonceCache | None = NONCES,
) -> str | None:
    """Check the `Signature-Input`/`Signature` headers; None if valid, else why not.

    As the reference server: the first signature is used; it must cover SIGNED_COMPONENTS,
    carry `keyid` equal to X-API-KEY, a `nonce` of at least 22 characters and a `created`
    no older than MAX_SIGNATURE_AGE_S; `alg`, if given, is hmac-sha256. The signature base is
    rebuilt from the parsed (not the received) parameters, so padding tricks cannot pass.
    """

    def field(name: str) -> str | None:
        return canonical_field([v for k, v in headers if k == name])

    try:
        inputs = sf_dictionary(field("signature-input") or "")
        signatures = sf_dictionary(field("signature") or "")
    except ValueError as exc:
        return f"malformed signature header: {exc}"
    if not inputs or not signatures:
        return "request is not signed (Signature-Input and Signature headers)"
    label, base = next(iter(inputs.items()))
    sig = signatures.get(label)
    if not isinstance(base, SfInnerList) or not isinstance(sig, SfItem):
        return f"signature {label!r}: malformed"
    if not isinstance(sig.value, bytes):
        return f"signature {label!r} is not a byte sequence"
    params = dict(base.params)
    problem = _check_signature_params(params, api_key=field("x-api-key"), now=now)
    if problem:
        return problem
    # The authority Genesys signed is the host it dialled: Host, or behind a proxy that
    # rewrites Host, the proxy's X-Forwarded-Host (as for Twilio's signatures). Either may
    # be tried: without the secret no signature matches any of them.
    authorities = [(field("host") or "").lower()]
    forwarded = (field("x-forwarded-host") or "").split(",")[0].strip().lower()
    if forwarded and forwarded not in authorities:
        authorities.append(forwarded)
    lines: list[str] = []
    for item in base.items:
        name = item.value
        if not isinstance(name, str) or isinstance(name, Token) or item.params:
            return "covered components must be plain strings"
        if name == "@request-target":
            value = request_target
        elif name == "@authority":
            value = "{authority}"  # filled in below, once per candidate
        elif name == "@method":
            value = "GET"
        elif name.startswith("@") or name == "signature":
            return f"component {name!r} is not supported"
        else:
            value = field(name) or ""
            if not value:
                return f"signed header {name!r} is missing"
        lines.append(f'"{name}": {value}')
    covered = {i.value for i in base.items}
    missing = [c for c in SIGNED_COMPONENTS if c not in covered]
    if missing or len(covered) != len(base.items):
        return f"signature must cover each of {', '.join(SIGNED_COMPONENTS)} once"
    lines.append(f'"@signature-params": {sf_serialize_inner_list(base)}')
    at = next(i for i, item in enumerate(base.items) if item.value == "@authority")
    for authority in authorities:
        signed = [*lines[:at], f'"@authority": {authority}', *lines[at + 1 :]]
        expected = hmac.new(secret, "\n".join(signed).encode(), hashlib.sha256).digest()
        if hmac.compare_digest(expected, sig.value):
            break
    else:
        return "signature does not match"
    nonce = str(params["nonce"])
    if nonces is not None and not nonces.add(
        nonce, until=float(params["created"]) + MAX_SIGNATURE_AGE_S + MAX_CLOCK_SKEW_S, now=now
    ):
        return "nonce was already used"
    return None


def _check_signature_params(
    params: dict[str, BareItem], *, api_key: str | None, now: float
) -> str | None:
    kinds = {"alg": str, "keyid": str, "nonce": str, "created": int, "expires": int}
    for key, value in params.items():
        kind = kinds.get(key)
        if kind is None:
            return f"unknown signature parameter {key!r}"
        if isinstance(value, bool) or not isinstance(value, kind):
            return f"signature parameter {key!r} has the wrong type"
    if params.get("alg", "hmac-sha256") != "hmac-sha256":
        return f"signature algorithm {params['alg']!r} is not supported"
    if not api_key or params.get("keyid") != api_key:
        return "signature keyid does not match X-API-KEY"
    if len(str(params.get("nonce", ""))) < MIN_NONCE_CHARS:
        return "signature nonce missing or too short"
    created, expires = params.get("created"), params.get("expires")
    if not isinstance(created, int):
        return "signature has no created time"
    if created > now + MAX_CLOCK_SKEW_S:
        return "signature created in the future"
    if created + MAX_SIGNATURE_AGE_S + MAX_CLOCK_SKEW_S < now:
        return "signature expired (too old)"
    if isinstance(expires, int) and expires + MAX_CLOCK_SKEW_S < now:
        return "signature expired"
    return None


def client_secret(settings: Settings) -> str | None:
    return settings.audiohook_client_secret or None


def authenticate(ws: WebSocket, settings: Settings, *, now: float | None = None) -> str | None:
    """Check the upgrade request; None if it may connect, else why not."""
    if settings.auth_disabled:
        return None
    if not ingest_authorized(ws, settings):
        return "missing or invalid X-API-KEY"
    secret = client_secret(settings)
    if secret is None:
        return None
    try:
        key = base64.b64decode(secret, validate=True)
    except binascii.Error:
        log.error("audiohook client secret is not base64: every signed request will fail")
        return "server misconfigured"
    raw = ws.scope.get("raw_path") or ws.scope.get("path", "").encode()
    query = ws.scope.get("query_string", b"")
    target = raw.decode("latin-1") + (f"?{query.decode('latin-1')}" if query else "")
    headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in ws.headers.raw]
    return verify_signature(
        headers, request_target=target, secret=key, now=time.time() if now is None else now
    )


async def _deny(ws: WebSocket, status: int, reason: str, message: str) -> None:
    """Refuse the upgrade with an HTTP status (401, 503), or a 403 where that is unavailable."""
    metrics.INGEST_ERRORS.labels(protocol=PROTOCOL, reason=reason).inc()
    log.warning("audiohook upgrade refused (%s, HTTP %d): %s", reason, status, message)
    with contextlib.suppress(RuntimeError, WebSocketDisconnect):
        if "websocket.http.response" in ws.scope.get("extensions", {}):
            upgrade_denied_var.set(True)  # see coach/logs.py DeniedUpgradeFilter
            await ws.send_denial_response(PlainTextResponse(message, status_code=status))
        else:
            await ws.close(code=cc.POLICY_VIOLATION, reason=message[:120])


async def serve(ws: WebSocket, *, manager: CallManager | None, settings: Settings) -> None:
    """Entry point of the route: authenticate the upgrade, then run the session."""
    session_id = ws.headers.get("audiohook-session-id")
    if session_id is not None and not UUID.match(session_id.strip()):
        await _deny(ws, 400, "bad_headers", "Audiohook-Session-Id is not a UUID")
        return
    problem = authenticate(ws, settings)
    if problem is not None:
        await _deny(ws, 401, "unauthorized", problem)
        return
    if manager is None:
        await _deny(ws, 503, "not_ready", "models are still loading")
        return
    await ws.accept()
    await AudioHookSession(ws=ws, manager=manager, settings=settings).run()


# -- one session ---------------------------------------------------------------------------------

_FINISHING: set[asyncio.Task[None]] = set()


class AudioHookSession:
    """One AudioHook connection: sequence numbers, state, the call clock and the call."""

    def __init__(self, *, ws: WebSocket, manager: CallManager, settings: Settings) -> None:
        self.ws = ws
        self.manager = manager
        self.settings = settings
        self.state = SessionState.CONNECTED
        # Echoed exactly as the client wrote it; compared without regard to case.
        self.id = ws.headers.get("audiohook-session-id", "").strip() or None
        self.seq = 0
        self.clientseq = 0
        self.clock = 0
        """Stream position in samples per channel: audio received plus reported gaps."""
        self._connected_at = time.monotonic()
        self.call_offset = 0
        """Where this session's position 0 is on the call clock: the audio already heard when
        it re-attaches a call whose connection dropped (COACH_RECONNECT_GRACE_S)."""
        self.media: dict[str, Any] | None = None
        self.speakers: tuple[Speaker, ...] = ()
        self.call: CallSession | None = None
        self._ended_watch: tuple[CallSession, asyncio.Future[None]] | None = None
        """The call and the future `_call_ended` hands out for it."""
        self.call_id: str | None = None
        self.error: ProtocolError | None = None
        self.skipped_types: set[str] = set()
        """Message types this server does not know, seen in this session (each logged once)."""

    @property
    def position_s(self) -> float:
        return self.clock / SAMPLE_RATE

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            if self._ended_watch is not None:
                self._ended_watch[1].cancel()

    async def _run(self) -> None:
        try:
            await self._loop()
        except asyncio.CancelledError:
            await self._finish_call("disconnect", dropped=True)
            raise
        except (WebSocketDisconnect, RuntimeError) as exc:
            log.info("audiohook %s: connection lost (%s)", self.id, exc)
            await self._finish_call("disconnect", dropped=True)

    async def _loop(self) -> None:
        # The wait for `open` and for the client's `close` runs from when it began, not from
        # each message: a client that pinged and never opened, or streamed on after our
        # `disconnect`, held its socket open for good (an outside ingest audit).
        deadline: tuple[SessionState, float] | None = None
        while self.state is not SessionState.CLOSED:
            limit = {_S.CONNECTED: OPEN_TIMEOUT_S, _S.DISCONNECTING: CLOSE_WAIT_S}.get(self.state)
            if limit is None:
                deadline = None
            elif deadline is None or deadline[0] is not self.state:
                deadline = (self.state, asyncio.get_running_loop().time() + limit)
            ended = self._call_ended()
            try:
                async with asyncio.timeout_at(None if deadline is None else deadline[1]):
                    msg = await (
                        self.ws.receive() if ended is None else receive_unless_ended(self.ws, ended)
                    )
            except TimeoutError:
                if await self._timed_out():
                    return
                continue
            if msg is None:
                await self._server_ended()
                continue
            if msg["type"] == "websocket.disconnect":
                if oversized := closed_as_oversized(msg):
                    await self._signal_error(
                        ProtocolError("oversized", oversized, code=cc.MESSAGE_TOO_BIG)
                    )
                await self._finish_call("disconnect", dropped=True)
                return
            try:
                if msg.get("bytes") is not None:
                    await self._on_audio(msg["bytes"])
                else:
                    await self._on_text(msg.get("text") or "")
            except ProtocolError as exc:
                await self._signal_error(exc)
        # `closed` is out: the client hangs up; a client that does not is closed after a while.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_WAIT_S):
                while (await self.ws.receive())["type"] != "websocket.disconnect":
                    pass
            return
        await self._close_socket(cc.NORMAL, "closed")

    def _call_ended(self) -> asyncio.Future[None] | None:
        """While a call runs: a future that is done when the server ends it (the idle watchdog
        ends a paused session that sends nothing; the maximum length; a shutdown)."""
        if self.call is None or self.state not in (SessionState.ACTIVE, SessionState.PAUSED):
            return None
        if self._ended_watch is None or self._ended_watch[0] is not self.call:
            if self._ended_watch is not None:
                self._ended_watch[1].cancel()
            self._ended_watch = (self.call, asyncio.ensure_future(self.call.wait_ended()))
        return self._ended_watch[1]

    async def _server_ended(self) -> None:
        """The call ended under a silent client: say so (`disconnect`), wait for its `close`."""
        reason = (self.call.end_reason if self.call else None) or "ended"
        self.state = transition(self.state, "disconnect")
        await self._send("disconnect", {"reason": "completed", "info": reason})
        await self._finish_call(reason)

    async def _timed_out(self) -> bool:
        """A client that kept us waiting: True once its socket is closed. No `open` in time is
        an error like any other (`disconnect`, then the client's `close` is answered with
        `closed`); a client silent after our `disconnect` is closed with the error's code."""
        if self.state is SessionState.CONNECTED:
            exc = ProtocolError("open_timeout", "no 'open' message in time", code=cc.HEADER_TIMEOUT)
            await self._signal_error(exc)
            return False
        code = self.error.code if self.error else cc.NORMAL
        log.warning(
            "audiohook %s: no answer in %s, closing with %d", self.id, self.state.value, code
        )
        await self._close_socket(code, "timed out")
        return True

    # -- client text messages ------------------------------------------------------------------

    async def _on_text(self, text: str) -> None:
        msg = self._parse(text)
        if self.state is SessionState.DISCONNECTING:
            # After our `disconnect` only the client's `close` matters; its seq is taken as is.
            if msg.type == "close" and msg.seq > self.clientseq:
                self.clientseq = msg.seq
                await self._on_close(msg)
            return
        if msg.seq != self.clientseq + 1:
            raise ProtocolError(
                "bad_seq", f"seq {msg.seq} out of order: expected {self.clientseq + 1}"
            )
        self.clientseq = msg.seq
        if msg.serverseq > self.seq:
            raise ProtocolError("bad_serverseq", f"serverseq {msg.serverseq} > {self.seq} sent")
        if self.id is None:
            self.id = msg.id
        elif msg.id.lower() != self.id.lower():
            raise ProtocolError("bad_session_id", f"message id {msg.id} is not session {self.id}")
        if msg.type not in CLIENT_TYPES:
            self._skip_unknown(msg.type)
            return
        try:
            params = PARAMETERS[msg.type].model_validate(msg.parameters)
        except ValidationError as exc:
            raise ProtocolError(
                "bad_parameters", f"'{msg.type}' parameters: {_first_error(exc)}"
            ) from exc
        await self._dispatch(msg, params)

    def _skip_unknown(self, type_: str) -> None:
        """A message type this server does not know (one a later protocol version adds): its
        seq is taken, and it is skipped, counted and logged once per type. AudioHook does not
        re-establish a session, so ending it, as this server did, would lose the rest of
        the call's coaching; Twilio's unknown events are skipped in the same way."""
        metrics.INGEST_ERRORS.labels(protocol=PROTOCOL, reason="unknown_type").inc()
        if type_ not in self.skipped_types:
            self.skipped_types.add(type_)
            log.warning(
                "audiohook %s: skipping %s messages (unknown message type)",
                self.id,
                client_text(type_, 64),
            )

    def _parse(self, text: str) -> ClientMessage:
        if len(text) > MAX_TEXT_CHARS:
            raise ProtocolError(
                "oversized", f"text message of {len(text)} characters", code=cc.MESSAGE_TOO_BIG
            )
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ProtocolError("bad_json", f"text message is not JSON: {exc}") from exc
        try:
            return ClientMessage.model_validate(data)
        except ValidationError as exc:
            raise ProtocolError(
                "bad_message", f"not a client message: {_first_error(exc)}"
            ) from exc

    async def _dispatch(self, msg: ClientMessage, params: _Wire) -> None:
        after = transition(self.state, cast(Event, msg.type))
        if after is SessionState.PAUSED and self.call is not None:
            # A paused client (hold, secure pause) sends no audio but keeps pinging every few
            # seconds: it is alive, so the idle watchdog must not end its call. Only a paused
            # session that sends nothing at all is idle (found by a protocol audit: a hold
            # longer than COACH_IDLE_TIMEOUT_S ended the call with `disconnect`).
            self.call.touch()
        if self.state is SessionState.ACTIVE and msg.type != "open":
            drift = parse_duration(msg.position) - self.position_s
            if abs(drift) > 0.02:
                log.debug("audiohook %s: client position off by %.3f s", self.id, drift)
        match params:
            case OpenParameters():
                await self._on_open(params)
                return  # _on_open sets the state: it may also end in `disconnect`
            case PingParameters():
                await self._send("pong")
            case GapParameters():
                self._skip_gap(params, what=msg.type)
            case ErrorParameters():
                metrics.INGEST_ERRORS.labels(protocol=PROTOCOL, reason="client_error").inc()
                log.warning(
                    "audiohook %s: client error %d: %s",
                    self.id,
                    params.code,
                    client_text(params.message),
                )
            case CloseParameters():
                await self._on_close(msg)
                return
            case UpdateParameters():
                said = params.model_dump(exclude_none=True)
                log.info("audiohook %s: update %s", self.id, client_text(said, limit=300))
            case _:  # paused
                log.info("audiohook %s: paused at %s", self.id, msg.position)
        self.state = after

    async def _on_open(self, params: OpenParameters) -> None:
        org = self.ws.headers.get("audiohook-organization-id")
        if org is not None and org.strip().lower() != params.organizationId.lower():
            raise ProtocolError(
                "unauthorized", "organizationId differs from the header", code=cc.POLICY_VIOLATION
            )
        media = choose_media(params.media)
        if media is None:
            raise ProtocolError(
                "unsupported_media", "no offered media is PCMU 8 kHz", code=cc.UNSUPPORTED_DATA
            )
        self.media = media
        self.speakers = tuple(CHANNEL_SPEAKER[c] for c in media["channels"])
        if params.conversationId != NULL_UUID:
            self.call_id = params.conversationId.lower()
            try:
                self.call = await self.manager.open(
                    call_id=self.call_id,
                    source=PROTOCOL,
                    speakers=self.speakers,
                    meta=self._meta(params),
                )
                self.call_offset = round(self.call.fed_s * SAMPLE_RATE)
            except CallRejected as exc:
                # Answered with `disconnect {reason: "error", info}` instead of `opened`; the
                # client closes the session (`close` -> `closed`) and sends no audio.
                raise ProtocolError(
                    exc.reason, str(exc), code=cc.for_rejection(exc.reason)
                ) from exc
        else:
            log.info("audiohook %s: connection probe", self.id)
        if params.language and not _supported(params.language):
            # Accepted, not refused: the transcript and the timing cues still help, but the
            # models are English only, so the words will be poor (an outside ingest audit).
            log.warning(
                "audiohook %s: language %s is not supported (%s); transcribed as English",
                self.id,
                client_text(params.language, limit=40),
                ", ".join(SUPPORTED_LANGUAGES),
            )
        opened: dict[str, Any] = {"media": [media], "startPaused": False}
        if params.supportedLanguages:
            opened["supportedLanguages"] = SUPPORTED_LANGUAGES
        self.state = transition(self.state, "open")
        await self._send("opened", opened)

    def _meta(self, params: OpenParameters) -> dict[str, Any]:
        custom = params.customConfig or {}
        extra = params.participant.model_extra or {}
        agent = next(
            (str(d[k]) for d in (custom, extra) for k in ("agentId", "agent_id") if d.get(k)),
            None,
        )
        if agent is not None and len(agent) > MAX_ID_CHARS:
            log.warning("audiohook %s: agent id of %d chars ignored", self.id, len(agent))
            agent = None
        if agent is not None and not agent.isprintable():
            log.warning("audiohook %s: agent id with control characters ignored", self.id)
            agent = None
        meta = {
            "organization_id": params.organizationId,
            "conversation_id": params.conversationId,
            "session_id": self.id,
            "correlation_id": self.ws.headers.get("audiohook-correlation-id"),
            "customer_id": params.participant.id,
            "agent_id": agent,
            "language": params.language,
            "channels": list(self.media["channels"]) if self.media else [],
        }
        return {k: v for k, v in meta.items() if v}

    def _skip_gap(self, gap: GapParameters, *, what: str) -> None:
        """The client dropped audio (`discarded`, or a pause ended by `resumed`): move the clock."""
        start, span = parse_duration(gap.start), parse_duration(gap.discarded)
        # A pause (hold) skips as long as it lasted, so the bound is the time the session has
        # been connected: a client cannot have dropped more audio than there has been.
        connected_s = time.monotonic() - self._connected_at
        if start + span > connected_s + MAX_SKIPPED_AUDIO_S:
            raise ProtocolError(
                "bad_timestamp",
                f"{what} ends at {start + span:.0f} s of audio after {connected_s:.0f} s connected",
            )
        if abs(start - self.position_s) > 0.02:
            log.warning(
                "audiohook %s: %s starts at %.3f s, stream is at %.3f s",
                self.id,
                what,
                start,
                self.position_s,
            )
        self.clock = max(self.clock, round((start + span) * SAMPLE_RATE))

    async def _on_close(self, msg: ClientMessage) -> None:
        reason = str(msg.parameters.get("reason", "end"))
        ended = "end" if reason == "end" else f"close:{reason}"
        if self.error is not None:
            ended = f"error:{self.error.reason}"
        await self._finish_call(ended)
        self.state = transition(self.state, "close")
        await self._send("closed")

    # -- audio ---------------------------------------------------------------------------------

    async def _on_audio(self, payload: bytes) -> None:
        if self.state in (SessionState.DISCONNECTING, SessionState.CLOSED):
            return  # frames in flight when we gave up on the session
        self.state = transition(self.state, "audio")
        if len(payload) > self.settings.max_frame_bytes:
            raise ProtocolError(
                "oversized",
                f"audio frame of {len(payload)} bytes > {self.settings.max_frame_bytes}",
                code=cc.MESSAGE_TOO_BIG,
            )
        channels = len(self.speakers)
        if not payload or len(payload) % channels:
            raise ProtocolError(
                "bad_frame", f"audio frame of {len(payload)} bytes for {channels} channels"
            )
        if self.state is SessionState.PAUSED:
            metrics.DROPPED_FRAMES.labels(reason="paused").inc()
            return
        if self.call is not None:  # a connection probe has no call: its audio only moves the clock
            for chunk in frame_chunks(
                payload,
                speakers=self.speakers,
                clock=self.call_offset + self.clock,
                call_id=self.call.call_id,
            ):
                try:
                    await self.call.feed(chunk)
                except CallEnded as exc:  # max call length or idle timeout: end the session
                    if self.state not in (SessionState.DISCONNECTING, SessionState.CLOSED):
                        self.state = transition(self.state, "disconnect")
                        await self._send("disconnect", {"reason": "completed", "info": exc.reason})
                    await self._finish_call(exc.reason)
                    return
        self.clock += len(payload) // channels

    # -- server messages and endings -----------------------------------------------------------

    async def _send(self, type_: str, parameters: dict[str, Any] | None = None) -> None:
        self.seq += 1
        msg = ServerMessage(
            type=type_,
            seq=self.seq,
            clientseq=self.clientseq,
            id=self.id or NULL_UUID,
            parameters=parameters or {},
        )
        await self.ws.send_text(json.dumps(msg.model_dump()))

    async def _signal_error(self, exc: ProtocolError) -> None:
        if self.state in (SessionState.DISCONNECTING, SessionState.CLOSED):
            log.info("audiohook %s: after disconnect, ignored (%s): %s", self.id, exc.reason, exc)
            return  # one `disconnect` per session, as the reference server
        metrics.INGEST_ERRORS.labels(protocol=PROTOCOL, reason=exc.reason).inc()
        log.warning("audiohook %s refused (%s): %s", self.id, exc.reason, exc)
        self.error = exc
        self.state = transition(self.state, "disconnect")
        # A connection already closed under us (uvicorn's own 1009) cannot hear it; the call
        # still ends for the error, not as a dropped connection.
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await self._send("disconnect", {"reason": exc.disconnect_reason, "info": str(exc)})
        await self._finish_call(f"error:{exc.reason}")

    async def _finish_call(self, reason: str, *, dropped: bool = False) -> None:
        """Finalize the call (last transcripts, call_end), waiting at most FINALIZE_WAIT_S.

        The manager owns the ending, so it completes even if this connection goes away. A
        connection that `dropped` (no `close` from the client) may come back within the
        reconnect grace period, as on every other ingest: the call is detached, not ended.
        """
        if self.call is None:
            return
        call, self.call = self.call, None
        ending = (
            self.manager.stream_ended(call, reason)
            if dropped
            else self.manager.finish(call, reason)
        )
        task = asyncio.ensure_future(ending)
        _FINISHING.add(task)
        task.add_done_callback(_FINISHING.discard)
        _, pending = await asyncio.wait({task}, timeout=FINALIZE_WAIT_S)
        if pending:
            log.warning(
                "audiohook %s: call %s still finalizing",
                self.id,
                call.call_id,
                extra=call_fields(call.call_id),
            )

    async def _close_socket(self, code: int, reason: str) -> None:
        await self._finish_call("disconnect")
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await self.ws.close(code=code, reason=reason[:120])


def frame_chunks(
    payload: bytes, *, speakers: tuple[Speaker, ...], clock: int, call_id: str
) -> list[AudioChunk]:
    """Split one interleaved PCMU frame into one chunk per party, placed at `clock` samples."""
    samples = codecs.deinterleave(codecs.decode("mulaw", payload), len(speakers))
    t0 = clock / SAMPLE_RATE
    return [
        AudioChunk(call_id, speaker, pcm, SAMPLE_RATE, t0)
        for speaker, pcm in zip(speakers, samples, strict=True)
    ]


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "message"
    return f"{where}: {first['msg']}"
