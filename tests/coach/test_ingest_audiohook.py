"""`/ingest/audiohook`: Genesys AudioHook v2, driven through Starlette's test client.

`AudioHookClient` speaks the wire format of the public reference client
(purecloudlabs/audiohook-reference-implementation, `app/audiohook/src/client/clientsessionimpl.ts`):
its `buildMessage` envelope, its `seq`/`serverseq` bookkeeping and `position` as samples sent
plus gaps. The protocol cases are ported from the reference's `test/audiohook-api-messages.test.ts`;
the golden frames in `golden/audiohook/` follow the reference's message types
(`app/audiohook/src/protocol/message.ts`) and `signature_example.json` is the AudioHook
documentation's signature example that the reference verifies in
`app/audiohook/test/httpsignature/signature-verifier.test.ts`. `golden/audiohook/docs/` holds
only what was copied verbatim from the documentation's examples (its README names each source
and what could not be found).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from starlette.testclient import WebSocketDenialResponse
from starlette.websockets import WebSocketDisconnect

from audio.codecs import encode_mulaw
from coach.api.app import create_app
from coach.ingest import audiohook as ah
from coach.ingest import closecodes as cc
from coach.runtime import Runtime
from coach.settings import Settings
from tests.support import client_with_watchdog

GOLDEN = Path(__file__).parent / "golden" / "audiohook"
CLIENT_FRAMES = ["open", "ping", "update", "discarded", "paused", "resumed", "error", "close"]
SERVER_FRAMES = ["opened", "pong", "closed", "disconnect"]
PATH = "/ingest/audiohook"
API_KEY = "SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh"
SECRET = base64.b64encode(b"MySuperSecretKeyTellNo-1!2@3#4$5").decode()
FRAME_SAMPLES = 1600  # the reference client's 200 ms frames
CHANNELS = {"stereo": ["external", "internal"], "ext": ["external"], "int": ["internal"]}


def golden(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((GOLDEN / f"{name}.json").read_text())
    return data


def media(*channels: list[str], fmt: str = "PCMU") -> list[dict[str, Any]]:
    return [{"type": "audio", "format": fmt, "channels": c, "rate": 8000} for c in channels]


def errors(reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "coach_ingest_errors_total", {"protocol": "audiohook", "reason": reason}
    )
    return value or 0.0


def tone(seconds: float, channels: int) -> bytes:
    """A quiet 1 kHz tone as interleaved PCMU (what the reference tone source sends)."""
    t = np.arange(int(seconds * 8000)) / 8000
    mono = (0.05 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    return encode_mulaw(np.repeat(mono, channels))


# -- a client that speaks the exact wire format ---------------------------------------------------


class AudioHookClient:
    """The reference client's side of a session, one message at a time."""

    def __init__(
        self,
        ws: Any,
        *,
        session_id: str,
        org_id: str,
        conversation_id: str | None = None,
        agent_id: str | None = "ann",
    ) -> None:
        self.ws = ws
        self.id = session_id
        self.org_id = org_id
        self.conversation_id = conversation_id or str(uuid.uuid4())
        self.agent_id = agent_id
        self.seq = 0
        self.serverseq = 0
        self.samples = 0
        self.channels = 2
        self.paused_at: str | None = None

    @property
    def position(self) -> str:
        return ah.format_duration(self.samples / 8000)

    def message(self, type_: str, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
        self.seq += 1
        return {
            "version": "2",
            "id": self.id,
            "type": type_,
            "seq": self.seq,
            "serverseq": self.serverseq,
            "position": self.position,
            "parameters": parameters or {},
        }

    def send(self, type_: str, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
        msg = self.message(type_, parameters)
        self.ws.send_text(json.dumps(msg))
        return msg

    def receive(self) -> dict[str, Any]:
        """The next server message, checked as the reference client checks it."""
        msg: dict[str, Any] = json.loads(self.ws.receive_text())
        assert msg["version"] == "2" and msg["id"] == self.id
        assert msg["seq"] == self.serverseq + 1, "server seq must count up by one"
        assert set(msg) == {"version", "type", "seq", "clientseq", "id", "parameters"}
        self.serverseq = msg["seq"]
        return msg

    def open(self, offered: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
        params = {
            "organizationId": self.org_id,
            "conversationId": self.conversation_id,
            "participant": {
                "id": str(uuid.uuid4()),
                "ani": "+1-555-555-1234",
                "aniName": "John Doe",
                "dnis": "+1-800-555-6789",
            },
            "media": offered if offered is not None else media(*CHANNELS.values()),
            "language": "en-US",
            **({"customConfig": {"agentId": self.agent_id}} if self.agent_id else {}),
            **extra,
        }
        self.send("open", params)
        opened = self.receive()
        assert opened["type"] == "opened", opened
        if opened["parameters"]["media"]:
            self.channels = len(opened["parameters"]["media"][0]["channels"])
        return opened

    def audio(self, payload: bytes) -> None:
        self.ws.send_bytes(payload)
        if self.paused_at is None:
            self.samples += len(payload) // self.channels

    def stream(self, payload: bytes, frame_samples: int = FRAME_SAMPLES) -> None:
        step = frame_samples * self.channels
        for i in range(0, len(payload), step):
            self.audio(payload[i : i + step])

    def pause(self) -> dict[str, Any]:
        msg = self.send("paused")
        self.paused_at = msg["position"]
        return msg

    def resume(self, gap_s: float) -> dict[str, Any]:
        """End a pause that lasted `gap_s`: the position moves on by the pause."""
        start, self.paused_at = self.paused_at or self.position, None
        self.samples += round(gap_s * 8000)
        return self.send("resumed", {"start": start, "discarded": ah.format_duration(gap_s)})

    def discarded(self, start: str, span: str) -> dict[str, Any]:
        msg = self.send("discarded", {"start": start, "discarded": span})
        self.samples = max(self.samples, round(ah.parse_duration(start) * 8000)) + round(
            ah.parse_duration(span) * 8000
        )
        return msg

    def close(self, reason: str = "end") -> dict[str, Any]:
        self.send("close", {"reason": reason})
        return self.until("closed")

    def until(self, type_: str) -> dict[str, Any]:
        while (msg := self.receive())["type"] != type_:
            pass
        return msg

    def assert_common(self, msg: dict[str, Any]) -> None:
        """The reference test's `commonValidations`."""
        assert msg["version"] == "2" and msg["id"] == self.id
        assert msg["seq"] == self.serverseq and msg["clientseq"] == self.seq


def ah_headers(
    session_id: str, org_id: str, correlation_id: str | None = None, api_key: str | None = None
) -> dict[str, str]:
    headers = {
        "Audiohook-Organization-Id": org_id,
        "Audiohook-Session-Id": session_id,
        "Audiohook-Correlation-Id": correlation_id or str(uuid.uuid4()),
    }
    if api_key is not None:
        headers["X-API-KEY"] = api_key
    return headers


class Connect:
    """`with Connect(tc) as c:` opens a socket with the AudioHook headers and gives a client."""

    def __init__(
        self, tc: TestClient, *, api_key: str | None = None, signed: bool = False, **kw: Any
    ) -> None:
        self.session_id = str(uuid.uuid4())
        self.org_id = str(uuid.uuid4())
        self.conversation_id = kw.pop("conversation_id", None) or str(uuid.uuid4())
        self.tc = tc
        self.headers = ah_headers(self.session_id, self.org_id, api_key=api_key)
        if signed:
            self.headers = sign(self.headers)
        self.kw = kw

    def __enter__(self) -> AudioHookClient:
        self._cm = self.tc.websocket_connect(PATH, headers=self.headers)
        ws = self._cm.__enter__()
        return AudioHookClient(
            ws,
            session_id=self.session_id,
            org_id=self.org_id,
            conversation_id=self.conversation_id,
            **self.kw,
        )

    def events(self) -> Any:
        """This call's event stream (`/ws/calls/{id}/events`)."""
        return self.tc.websocket_connect(f"/ws/calls/{self.conversation_id}/events")

    def __exit__(self, *exc: Any) -> None:
        self._cm.__exit__(*exc)


def read_events(ws: Any) -> list[dict[str, Any]]:
    out = []
    while True:
        try:
            out.append(json.loads(ws.receive_text()))
        except WebSocketDisconnect:
            return out


def close_code(ws: Any) -> int:
    while True:
        try:
            ws.receive_text()
        except WebSocketDisconnect as exc:
            return exc.code


@pytest.fixture
def client(runtime: Runtime, settings: Settings) -> Iterator[TestClient]:
    with client_with_watchdog(create_app(settings, runtime)) as c:
        yield c


def live_calls(tc: TestClient) -> list[str]:
    manager = tc.app.state.coach.manager
    return [c.call_id for c in manager.live()]


# -- wire messages, golden frames ----------------------------------------------------------------


@pytest.mark.parametrize("name", CLIENT_FRAMES)
def test_client_golden_frames_parse_unchanged(name: str) -> None:
    frame = golden(name)
    msg = ah.ClientMessage.model_validate(frame)
    assert msg.model_dump() == frame
    params = ah.PARAMETERS[msg.type].model_validate(msg.parameters)
    assert params.model_dump(exclude_unset=True) == frame["parameters"]


@pytest.mark.parametrize("name", SERVER_FRAMES)
def test_server_golden_frames_parse_unchanged(name: str) -> None:
    frame = golden(name)
    assert ah.ServerMessage.model_validate(frame).model_dump() == frame
    assert list(ah.ServerMessage.model_validate(frame).model_dump()) == list(frame)


def test_golden_conversation_is_answered_frame_for_frame(client: TestClient) -> None:
    """The client goldens, in order, get exactly the server goldens back."""
    session = golden("open")["id"]
    org = golden("open")["parameters"]["organizationId"]
    call = golden("open")["parameters"]["conversationId"]
    with (
        client.websocket_connect(f"/ws/calls/{call}/events") as events,
        client.websocket_connect(PATH, headers=ah_headers(session, org)) as ws,
    ):

        def send(name: str) -> None:
            ws.send_text(json.dumps(golden(name)))

        send("open")
        assert json.loads(ws.receive_text()) == golden("opened")
        ws.send_bytes(tone(0.2, 2))
        send("ping")
        assert json.loads(ws.receive_text()) == golden("pong")
        for name in ("update", "discarded"):
            send(name)
        ws.send_bytes(tone(0.2, 2))
        send("paused")
        ws.send_bytes(tone(0.2, 2))  # in flight when the pause began: dropped, off the clock
        send("resumed")
        ws.send_bytes(tone(0.2, 2))
        for name in ("error", "close"):
            send(name)
        assert json.loads(ws.receive_text()) == golden("closed")
        evs = read_events(events)
    start, end = evs[0], evs[-1]
    assert start["type"] == "call_start" and start["source"] == "audiohook"
    assert start["channels"] == ["customer", "agent"]
    assert start["meta"]["agent_id"] == "ann" and start["meta"]["session_id"] == session
    assert start["meta"]["organization_id"] == org
    # The caller's number and name stay out of the call's metadata. (Not just "555": the
    # metadata holds random ids, which contain "555" about once in a hundred runs.)
    meta = json.dumps(start["meta"])
    assert "555-555-1234" not in meta and "5555551234" not in meta and "John" not in meta
    assert end["type"] == "call_end" and end["reason"] == "end"
    assert end["duration_s"] == pytest.approx(10.9, abs=0.001)  # golden position PT10.9S


def test_server_disconnect_matches_golden(client: TestClient) -> None:
    frame = golden("open")
    headers = ah_headers(frame["id"], frame["parameters"]["organizationId"])
    with client.websocket_connect(PATH, headers=headers) as ws:
        ws.send_text(json.dumps(frame))
        assert json.loads(ws.receive_text()) == golden("opened")
        ws.send_text(json.dumps({**golden("update"), "seq": 2, "serverseq": 1}))
        ws.send_text(json.dumps({**golden("ping"), "seq": 5}))
        assert json.loads(ws.receive_text()) == golden("disconnect")
        ws.send_text(json.dumps({**golden("close"), "seq": 6, "serverseq": 2}))
        assert json.loads(ws.receive_text())["type"] == "closed"


def test_durations() -> None:
    assert ah.parse_duration("PT6.3S") == 6.3 and ah.parse_duration("PT.5S") == 0.5
    assert ah.format_duration(0) == "PT0S" and ah.format_duration(10) == "PT10S"
    assert ah.format_duration(0.2) == "PT0.2S" and ah.format_duration(1.2345) == "PT1.234S"
    with pytest.raises(ValueError):
        ah.parse_duration("6.3s")


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        (media(["external", "internal"], ["external"], ["internal"]), 0),
        (media(["internal"], ["external"], ["external", "internal"]), 2),
        (media(["internal", "external"], ["internal"], ["external"]), 0),
        (media(["internal"], ["external"]), 1),
        (media(["internal"]), 0),
        (media(["external", "internal"], fmt="L16") + media(["external"]), 1),
        (media(["external", "internal"], fmt="L16"), None),
        ([{"type": "video"}, "junk", *media(["external"])], 2),
    ],
)
def test_media_choice_prefers_pcmu_stereo_and_echoes_the_entry(
    offered: list[Any], chosen: int | None
) -> None:
    got = ah.choose_media(offered)
    assert got is (None if chosen is None else offered[chosen])


def test_frames_split_by_the_chosen_channel_order() -> None:
    stereo = encode_mulaw(np.array([0.5, -0.5] * 160, dtype=np.float32))
    chunks = ah.frame_chunks(stereo, speakers=("agent", "customer"), clock=8000, call_id="c")
    assert [c.speaker for c in chunks] == ["agent", "customer"]
    assert chunks[0].t0 == 1.0 and len(chunks[0].pcm) == 160
    assert chunks[0].pcm[0] > 0 > chunks[1].pcm[0]


S = ah.SessionState


@pytest.mark.parametrize(
    ("state", "event", "after"),
    [
        (S.CONNECTED, "open", S.ACTIVE),
        (S.CONNECTED, "ping", S.CONNECTED),
        (S.CONNECTED, "close", S.CLOSED),
        (S.CONNECTED, "audio", None),
        (S.CONNECTED, "paused", None),
        (S.CONNECTED, "discarded", None),
        (S.ACTIVE, "open", None),
        (S.ACTIVE, "audio", S.ACTIVE),
        (S.ACTIVE, "paused", S.PAUSED),
        (S.ACTIVE, "resumed", S.ACTIVE),
        (S.PAUSED, "paused", S.PAUSED),
        (S.PAUSED, "ping", S.PAUSED),
        (S.PAUSED, "audio", S.PAUSED),
        (S.PAUSED, "resumed", S.ACTIVE),
        (S.PAUSED, "close", S.CLOSED),
        (S.ACTIVE, "disconnect", S.DISCONNECTING),
        (S.DISCONNECTING, "close", S.CLOSED),
        (S.DISCONNECTING, "disconnect", None),
        (S.CLOSED, "ping", None),
        (S.CLOSED, "close", None),
    ],
)
def test_state_machine(state: ah.SessionState, event: Any, after: ah.SessionState | None) -> None:
    if after is None:
        with pytest.raises(ah.IllegalTransition):
            ah.transition(state, event)
    else:
        assert ah.transition(state, event) is after


# -- the reference's protocol tests (test/audiohook-api-messages.test.ts) ------------------------


@pytest.mark.parametrize(
    "channels",
    [
        [["external", "internal"], ["external"], ["internal"]],  # Double Stream Double Channel
        [["internal", "external"], ["internal"], ["external"]],  # ... Inverted
        [["external", "internal"]],  # Single Stream Double Channel
        [["external"]],  # Single Stream Single Channel External
        [["internal"]],  # Single Stream Single Channel Internal
    ],
)
def test_open_selects_one_offered_media_exactly(client: TestClient, channels: Any) -> None:
    offered = media(*channels)
    with Connect(client) as c:
        opened = c.open(offered)
        c.assert_common(opened)
        assert opened["parameters"]["media"] == [offered[0]]
        assert opened["parameters"]["startPaused"] is False
        c.stream(tone(0.25, len(offered[0]["channels"])))
        c.assert_common(c.close())


def test_ping_pong(client: TestClient) -> None:
    with Connect(client) as c:
        c.open()
        ping = c.send("ping")
        pong = c.receive()
        assert (ping["seq"], ping["serverseq"]) == (2, 1)
        assert pong["type"] == "pong" and (pong["seq"], pong["clientseq"]) == (2, 2)
        c.assert_common(c.close())


def test_ping_pong_close(client: TestClient) -> None:
    with Connect(client) as c:
        c.open()
        c.send("ping")
        c.send("close", {"reason": "end"})  # before the pong has arrived
        pong, closed = c.receive(), c.receive()
        assert (pong["type"], pong["seq"], pong["clientseq"]) == ("pong", 2, 2)
        assert closed["type"] == "closed" and closed["seq"] == 3
        c.assert_common(closed)


def test_update(client: TestClient) -> None:
    with Connect(client) as c:
        c.open()
        c.send("update", {"language": "en-US"})
        closed = c.close()
        assert closed["seq"] == 2  # `update` needs no answer
        c.assert_common(closed)


def test_discarded(client: TestClient) -> None:
    with Connect(client) as c:
        c.open()
        c.discarded("PT6.3S", "PT0.3S")
        c.assert_common(c.close())


def test_client_error_is_logged_and_the_session_goes_on(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """The client's own text is quoted redacted and on one line: an outside ingest audit saw
    a card number and an email in an error message and an update logged as sent."""
    caplog.set_level(logging.INFO, logger="coach.ingest.audiohook")
    before = errors("client_error")
    with Connect(client) as c:
        c.open()
        c.send("error", {"code": 400, "message": "caller 4532015112830366\nbob@example.com"})
        c.send("update", {"language": "en-US", "note": "card 4532015112830366 bob@example.com"})
        c.assert_common(c.close())
    assert errors("client_error") == before + 1
    said = [r.getMessage() for r in caplog.records if r.name == "coach.ingest.audiohook"]
    error = next(m for m in said if "client error 400" in m)
    update = next(m for m in said if ": update " in m)
    for line in (error, update):
        assert "4532" not in line and "bob@" not in line and "\n" not in line, line
        assert "[CARD]" in line and "[EMAIL]" in line


def test_an_unknown_message_type_is_skipped_and_the_call_goes_on(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A type a later protocol version adds must not end the call: AudioHook does not
    re-establish a session, so the rest of the call would go uncoached. Its seq still counts."""
    caplog.set_level(logging.INFO, logger="coach.ingest.audiohook")
    before = errors("unknown_type")
    conn = Connect(client)
    with conn.events() as events, conn as c:
        c.open()
        c.stream(tone(0.4, 2))
        for _ in range(2):
            c.send("dance\n4532015112830366", {"steps": 3})
        ping = c.send("ping")
        pong = c.receive()
        assert pong["type"] == "pong" and pong["clientseq"] == ping["seq"] == 4
        c.stream(tone(0.4, 2))
        c.assert_common(c.close())
        evs = read_events(events)
    assert errors("unknown_type") == before + 2
    assert evs[-1]["type"] == "call_end" and evs[-1]["reason"] == "end"
    assert evs[-1]["duration_s"] == pytest.approx(0.8)
    said = [r.getMessage() for r in caplog.records if "unknown message type" in r.getMessage()]
    assert len(said) == 1 and "4532" not in said[0] and "\n" not in said[0], said


def test_pause_and_resume(client: TestClient) -> None:
    with Connect(client) as c:
        c.open()
        c.stream(tone(0.4, 2))
        c.pause()
        c.send("ping")
        assert c.receive()["type"] == "pong"  # pings go on while paused
        c.resume(10.0)
        c.stream(tone(0.2, 2))
        c.assert_common(c.close())


def test_close(client: TestClient) -> None:
    with Connect(client) as c:
        c.open()
        closed = c.close()
        assert closed["type"] == "closed" and closed["parameters"] == {}
        c.assert_common(closed)


# -- the call clock ------------------------------------------------------------------------------


def test_audio_is_placed_by_position_not_by_arrival(client: TestClient) -> None:
    """Received samples plus reported gaps: 0.45 + 0.3 (discarded) + 0.2 + 1.0 (pause) + 0.2."""
    conn = Connect(client)
    with conn.events() as events, conn as c:
        c.open()
        c.stream(tone(0.45, 2))  # two 200 ms frames and a short last one
        c.discarded(c.position, "PT0.3S")
        c.stream(tone(0.2, 2))
        c.pause()
        c.audio(tone(0.2, 2))  # sent while paused: dropped, and not on the clock
        c.resume(1.0)
        c.stream(tone(0.2, 2))
        c.send("ping")
        assert c.receive()["type"] == "pong"
        assert c.position == "PT2.15S"
        c.close()
        evs = read_events(events)
    assert evs[-1]["type"] == "call_end" and evs[-1]["duration_s"] == pytest.approx(2.15)


def test_connection_probe_opens_without_a_call(client: TestClient) -> None:
    before = len(live_calls(client))
    with Connect(client, conversation_id=ah.NULL_UUID) as c:
        opened = c.open(supportedLanguages=True)
        assert opened["parameters"]["supportedLanguages"] == ["en-US"]
        c.stream(tone(0.4, 2))
        assert len(live_calls(client)) == before
        c.assert_common(c.close())


def test_a_language_the_models_cannot_hear_is_said_in_the_log(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """An `open` in es-ES was accepted silently and transcribed by English models (an outside
    ingest audit): the call still opens (its timing cues help), with a warning."""
    caplog.set_level(logging.WARNING, logger="coach.ingest.audiohook")
    with Connect(client) as c:
        c.open(language="es-ES")
        c.assert_common(c.close())
    with Connect(client) as c:
        c.open(language="en-GB")
        c.assert_common(c.close())
    said = [r.getMessage() for r in caplog.records if "is not supported" in r.getMessage()]
    assert len(said) == 1 and "'es-ES'" in said[0]


def test_session_id_is_echoed_as_the_client_wrote_it(client: TestClient) -> None:
    sid, org = str(uuid.uuid4()).upper(), str(uuid.uuid4())
    with client.websocket_connect(PATH, headers=ah_headers(sid, org)) as ws:
        c = AudioHookClient(ws, session_id=sid, org_id=org)
        c.open()  # receive() checks every server message's id against the upper-case one
        c.assert_common(c.close())


def test_close_before_open_is_answered(client: TestClient) -> None:
    with Connect(client) as c:
        closed = c.close()
        c.assert_common(closed)


# -- bad input -----------------------------------------------------------------------------------


def open_params(c: AudioHookClient) -> dict[str, Any]:
    """The golden `open` parameters for this client's organization and conversation."""
    params = golden("open")["parameters"]
    return {**params, "organizationId": c.org_id, "conversationId": c.conversation_id}


def _send_raw(text: str) -> Callable[[AudioHookClient], None]:
    return lambda c: c.ws.send_text(text)


def _with(**fields: Any) -> Callable[[AudioHookClient], None]:
    def send(c: AudioHookClient) -> None:
        c.ws.send_text(json.dumps({**c.message("ping"), **fields}))

    return send


BAD_INPUT: dict[str, tuple[str, Callable[[AudioHookClient], None]]] = {
    "malformed JSON": ("bad_json", _send_raw('{"version": "2", "type": ')),
    "not a message": ("bad_message", _send_raw('{"version": "2", "type": "ping"}')),
    "out-of-order seq": ("bad_seq", _with(seq=5)),
    "repeated seq": ("bad_seq", _with(seq=1)),
    "serverseq from the future": ("bad_serverseq", _with(serverseq=7)),
    "another session's id": ("bad_session_id", _with(id=str(uuid.uuid4()))),
    "bad parameters": ("bad_parameters", lambda c: c.send("discarded", {"start": "6.3s"})),
    "second open": ("unexpected", lambda c: c.send("open", open_params(c))),
    "odd-sized stereo frame": ("bad_frame", lambda c: c.ws.send_bytes(b"\xff" * 3201)),
    "oversized frame": ("oversized", lambda c: c.ws.send_bytes(b"\xff" * 64_002)),
    "oversized text": ("oversized", _send_raw(" " * 70_000)),
    # Years of audio said to be dropped ended the call as if at its maximum length, stored
    # as a 4-hour call (an outside ingest audit).
    "discarded beyond the time connected": (
        "bad_timestamp",
        lambda c: c.send("discarded", {"start": "PT0.4S", "discarded": "PT999999999S"}),
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_disconnects_and_finalizes_the_call(client: TestClient, case: str) -> None:
    reason, breaker = BAD_INPUT[case]
    before = errors(reason)
    conn = Connect(client)
    with conn.events() as events, conn as c:
        c.open()
        c.stream(tone(0.4, 2))
        breaker(c)
        disconnect = c.receive()
        assert disconnect["type"] == "disconnect"
        assert disconnect["parameters"]["reason"] == "error"
        assert disconnect["parameters"]["info"]
        assert disconnect["clientseq"] <= c.seq
        closed = c.close("disconnect")  # the client's close transaction still completes
        assert closed["type"] == "closed"
        evs = read_events(events)
    assert errors(reason) == before + 1
    assert evs[0]["type"] == "call_start" and evs[-1]["type"] == "call_end"
    assert evs[-1]["reason"] == f"error:{reason}"
    assert evs[-1]["duration_s"] == pytest.approx(0.4)


@pytest.mark.parametrize(
    ("reason", "how"),
    [
        ("audio_before_open", "audio"),
        ("unsupported_media", "l16"),
        ("unauthorized", "org"),
        ("bad_json", "json"),
    ],
)
def test_bad_input_before_open(client: TestClient, reason: str, how: str) -> None:
    before = errors(reason)
    with Connect(client) as c:
        match how:
            case "audio":
                c.ws.send_bytes(tone(0.2, 2))
            case "l16":
                c.send("open", {**open_params(c), "media": media(["external"], fmt="L16")})
            case "org":
                c.send("open", {**open_params(c), "organizationId": str(uuid.uuid4())})
            case _:
                c.ws.send_text("not json")
        disconnect = c.receive()
        expected = "unauthorized" if reason == "unauthorized" else "error"
        assert disconnect["type"] == "disconnect"
        assert disconnect["parameters"]["reason"] == expected
        assert c.close("disconnect")["type"] == "closed"
    assert errors(reason) == before + 1


def test_a_client_that_never_closes_is_dropped_with_a_code(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ah, "CLOSE_WAIT_S", 0.2)
    with Connect(client) as c:
        c.open()
        c.ws.send_bytes(b"\xff" * 64_002)
        assert c.receive()["type"] == "disconnect"
        assert close_code(c.ws) == cc.MESSAGE_TOO_BIG


def test_no_open_in_time(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """Like any other error: `disconnect`, and the client's `close` is answered with `closed`
    (an outside audit found the socket closed at once, the client's `close` unanswered)."""
    monkeypatch.setattr(ah, "OPEN_TIMEOUT_S", 0.2)
    before = errors("open_timeout")
    with Connect(client) as c:
        disconnect = c.receive()
        assert disconnect["type"] == "disconnect"
        assert disconnect["parameters"]["reason"] == "error"
        assert c.close("disconnect")["type"] == "closed"
    assert errors("open_timeout") == before + 1


def test_pings_do_not_put_off_the_open_deadline(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wait for `open` ran from the last message: a client that pinged every few seconds
    held a session without a call for good (an outside ingest audit)."""
    monkeypatch.setattr(ah, "OPEN_TIMEOUT_S", 0.5)
    seen = []
    with Connect(client) as c:
        for _ in range(8):
            c.send("ping")
            seen.append(c.receive()["type"])
            if seen[-1] == "disconnect":
                break
            time.sleep(0.15)
        assert seen[-1] == "disconnect" and len(seen) <= 6
        assert c.close("disconnect")["type"] == "closed"


def test_audio_after_our_disconnect_does_not_put_off_the_close(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that streamed on after `disconnect` and never sent `close` kept its socket
    (and handler) open as long as it streamed: the wait restarted on every frame."""
    caplog.set_level(logging.WARNING, logger="coach.ingest.audiohook")
    monkeypatch.setattr(ah, "CLOSE_WAIT_S", 0.4)
    with Connect(client) as c:
        c.open()
        c.ws.send_bytes(b"\xff" * 3201)  # an odd-sized frame
        assert c.receive()["type"] == "disconnect"
        told = time.time()
        for _ in range(20):
            c.ws.send_bytes(tone(0.02, 2))
            time.sleep(0.1)
        assert close_code(c.ws) == cc.INVALID_PAYLOAD
    [closing] = [r for r in caplog.records if "no answer in" in r.getMessage()]
    assert closing.created - told < 1.5  # not after the last frame (2 s) plus the wait


def test_no_open_in_time_and_no_close_either(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ah, "OPEN_TIMEOUT_S", 0.2)
    monkeypatch.setattr(ah, "CLOSE_WAIT_S", 0.2)
    with Connect(client) as c:
        assert c.receive()["parameters"]["reason"] == "error"
        assert close_code(c.ws) == cc.HEADER_TIMEOUT


def test_a_conversation_already_live_is_refused(client: TestClient) -> None:
    with Connect(client) as first:
        first.open()
        with Connect(client, conversation_id=first.conversation_id) as second:
            second.send("open", open_params(second))
            assert second.receive()["parameters"]["info"].endswith("already live")
            second.close("disconnect")
        first.stream(tone(0.2, 2))
        first.assert_common(first.close())


def test_a_broken_session_leaves_its_neighbour_untouched(client: TestClient) -> None:
    conn = Connect(client)
    with conn.events() as events, conn as good, Connect(client) as bad:
        good.open(), bad.open()
        for i in range(5):
            good.stream(tone(0.2, 2))
            if i == 2:
                bad.ws.send_text("{oops")
                assert bad.receive()["type"] == "disconnect"
        bad.close("disconnect")
        good.send("ping")
        assert good.receive()["type"] == "pong"
        good.assert_common(good.close())
        evs = read_events(events)
    assert evs[-1]["reason"] == "end" and evs[-1]["duration_s"] == pytest.approx(1.0)


def test_dropped_socket_still_ends_the_call(client: TestClient) -> None:
    sid, org, call = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    with client.websocket_connect(f"/ws/calls/{call}/events") as events:
        with client.websocket_connect(PATH, headers=ah_headers(sid, org)) as ws:
            c = AudioHookClient(ws, session_id=sid, org_id=org, conversation_id=call)
            c.open()
            c.stream(tone(0.4, 2))
        # leaving the block hangs up without a close transaction
        evs = read_events(events)
    assert evs[-1]["type"] == "call_end" and evs[-1]["reason"] == "disconnect"


# -- structured fields and signatures ------------------------------------------------------------


@given(st.text(max_size=120))
def test_structured_field_parser_only_raises_value_error(text: str) -> None:
    with contextlib.suppress(ValueError):
        ah.sf_dictionary(text)


def test_structured_fields_round_trip() -> None:
    raw = '("@request-target" "x-api-key");keyid="k\\"1";nonce="n";created=1;alg=tok;f;d=1.5'
    parsed = ah.sf_dictionary(f"sig1={raw}, other=:AAEC:;x")
    inner, other = parsed["sig1"], parsed["other"]
    assert isinstance(inner, ah.SfInnerList) and ah.sf_serialize_inner_list(inner) == raw
    assert isinstance(other, ah.SfItem) and other.value == b"\x00\x01\x02"
    assert other.params == (("x", True),)
    assert ah.sf_dictionary("a=1;f=?1;f=?0")["a"] == ah.SfItem(1, (("f", False),))
    for bad in ["sig1=(", 'sig1=("a");k="unterminated', "Sig1=1", "a=1,", "a=:!!:"]:
        with pytest.raises(ValueError):
            ah.sf_dictionary(bad)


def test_documentation_signature_example_verifies() -> None:
    ex = golden("signature_example")
    headers = list(ex["headers"].items())
    secret = base64.b64decode(ex["client_secret"])
    kw: dict[str, Any] = {"request_target": ex["request_target"], "secret": secret, "nonces": None}
    assert ah.verify_signature(headers, now=ex["now"], **kw) is None
    assert ah.verify_signature(headers, now=ex["now"] + 60, **kw) == "signature expired (too old)"
    tampered = [(k, "x" + v if k == "audiohook-session-id" else v) for k, v in headers]
    assert ah.verify_signature(tampered, now=ex["now"], **kw) == "signature does not match"
    other_path = {**kw, "request_target": "/ingest/audiohook"}
    assert ah.verify_signature(headers, now=ex["now"], **other_path) == "signature does not match"
    nonces = ah.NonceCache()
    assert ah.verify_signature(headers, now=ex["now"], **{**kw, "nonces": nonces}) is None
    replay = ah.verify_signature(headers, now=ex["now"] + 1, **{**kw, "nonces": nonces})
    assert replay == "nonce was already used"


DOCS = GOLDEN / "docs"


@pytest.mark.parametrize("name", sorted(p.stem for p in DOCS.glob("signature_*.json")))
def test_docs_signature_example_verifies_unchanged(name: str) -> None:
    """The documentation's signed upgrade request, header fields exactly as published."""
    ex = json.loads((DOCS / f"{name}.json").read_text())
    headers = list(ex["headers"].items())
    inputs = ah.sf_dictionary(ex["headers"]["signature-input"])
    base = inputs["sig1"]
    assert isinstance(base, ah.SfInnerList)
    # it covers exactly the components this server requires, and serializes back unchanged
    assert tuple(i.value for i in base.items) == ah.SIGNED_COMPONENTS
    assert "sig1=" + ah.sf_serialize_inner_list(base) == ex["headers"]["signature-input"]
    created = dict(base.params)["created"]
    assert isinstance(created, int)
    kw: dict[str, Any] = {
        "request_target": ex["request_target"],
        "secret": base64.b64decode(ex["client_secret"]),
        "nonces": None,
    }
    assert ah.verify_signature(headers, now=created, **kw) is None
    assert ah.verify_signature(list(reversed(headers)), now=created + 5, **kw) is None


def test_docs_folder_names_the_source_of_every_example() -> None:
    readme = (DOCS / "README.md").read_text()
    for path in DOCS.glob("*.json"):
        assert f"`{path.name}`" in readme, path.name


def sign(
    headers: dict[str, str],
    *,
    target: str = PATH,
    authority: str = "testserver",
    secret: str = SECRET,
    created: int | None = None,
    keyid: str = API_KEY,
    components: tuple[str, ...] = ah.SIGNED_COMPONENTS,
    nonce: str | None = None,
) -> dict[str, str]:
    """Sign as the reference client's SignatureBuilder does (hmac-sha256, 30 s lifetime)."""
    created = int(time.time()) if created is None else created
    nonce = nonce or base64.b64encode(os.urandom(18)).decode()
    lower = {k.lower(): v for k, v in headers.items()}
    values = {"@request-target": target, "@authority": authority, **lower}
    params = (
        "(" + " ".join(f'"{c}"' for c in components) + ")"
        f';keyid="{keyid}";nonce="{nonce}";alg="hmac-sha256";created={created}'
        f";expires={created + 30}"
    )
    base = "\n".join(
        [*(f'"{c}": {values[c]}' for c in components), f'"@signature-params": {params}']
    )
    sig = hmac.new(base64.b64decode(secret), base.encode(), hashlib.sha256).digest()
    return {
        **headers,
        "Signature-Input": f"sig1={params}",
        "Signature": f"sig1=:{base64.b64encode(sig).decode()}:",
    }


@pytest.fixture
def secure(
    runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    monkeypatch.setenv("COACH_AUDIOHOOK_CLIENT_SECRET", SECRET)
    settings = Settings(data_dir=tmp_path, ingest_api_key=API_KEY, auth_secret="s" * 32)
    with client_with_watchdog(create_app(settings, runtime)) as c:
        yield c


def denied(tc: TestClient, headers: dict[str, str]) -> int:
    with (
        pytest.raises(WebSocketDenialResponse) as info,
        tc.websocket_connect(PATH, headers=headers),
    ):
        pass
    return info.value.status_code


def test_api_key_is_required(runtime: Runtime, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, ingest_api_key=API_KEY, auth_secret="s" * 32)
    sid, org = str(uuid.uuid4()), str(uuid.uuid4())
    before = errors("unauthorized")
    with TestClient(create_app(settings, runtime)) as tc:
        assert denied(tc, ah_headers(sid, org)) == 401
        assert denied(tc, ah_headers(sid, org, api_key="wrong")) == 401
        with Connect(tc, api_key=API_KEY) as c:
            c.open()
            c.assert_common(c.close())
    assert errors("unauthorized") == before + 2


def test_signed_request_is_accepted(secure: TestClient) -> None:
    with Connect(secure, api_key=API_KEY, signed=True) as c:
        c.open()
        c.stream(tone(0.2, 2))
        c.assert_common(c.close())


@pytest.mark.parametrize(
    "breakage",
    ["unsigned", "tampered", "old", "future", "keyid", "uncovered", "secret", "nonce", "path"],
)
def test_bad_signatures_are_refused_before_any_audio(secure: TestClient, breakage: str) -> None:
    headers = ah_headers(str(uuid.uuid4()), str(uuid.uuid4()), api_key=API_KEY)
    now = int(time.time())
    signed = {
        "unsigned": headers,
        "tampered": {**sign(headers), "Audiohook-Organization-Id": str(uuid.uuid4())},
        "old": sign(headers, created=now - 60),
        "future": sign(headers, created=now + 60),
        "keyid": sign(headers, keyid="someone-else"),
        "uncovered": sign(headers, components=ah.SIGNED_COMPONENTS[:-1]),
        "secret": sign(headers, secret=base64.b64encode(b"not the secret").decode()),
        "nonce": sign(headers, nonce="short"),
        "path": sign(headers, target="/ingest/pcm"),
    }[breakage]
    before = errors("unauthorized")
    assert denied(secure, signed) == 401
    assert errors("unauthorized") == before + 1
    assert live_calls(secure) == []


def test_a_signature_for_the_host_a_proxy_forwarded_is_accepted() -> None:
    """Behind a proxy that rewrites Host, Genesys signed the host it dialled, which the proxy
    passes on as X-Forwarded-Host; a signature for any other host is still refused."""
    headers = ah_headers(str(uuid.uuid4()), str(uuid.uuid4()), api_key=API_KEY)

    def check(signed_for: str, **extra: str) -> str | None:
        signed = sign({**headers, "Host": "coach-internal:8000", **extra}, authority=signed_for)
        return ah.verify_signature(
            [(k.lower(), v) for k, v in signed.items()],
            request_target=PATH,
            secret=base64.b64decode(SECRET),
            now=time.time(),
            nonces=None,
        )

    forwarded = {"X-Forwarded-Host": "coach.example.com"}
    assert check("coach.example.com", **forwarded) is None
    assert check("coach-internal:8000", **forwarded) is None  # a proxy that keeps Host
    assert check("coach.example.com") == "signature does not match"  # not forwarded
    assert check("elsewhere.example.com", **forwarded) == "signature does not match"


def test_a_signed_request_cannot_be_replayed(secure: TestClient) -> None:
    conn = Connect(secure, api_key=API_KEY, signed=True)
    with conn as c:
        c.close()
    assert denied(secure, conn.headers) == 401


def test_session_id_header_must_be_a_uuid(client: TestClient) -> None:
    assert denied(client, ah_headers("not-a-uuid", str(uuid.uuid4()))) == 400


def test_not_ready_is_503(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(settings: Settings) -> Runtime:
        raise RuntimeError("no models in this test")

    monkeypatch.setattr(Runtime, "load", staticmethod(fail))
    settings = Settings(data_dir=tmp_path, auth_disabled=True)
    with TestClient(create_app(settings)) as tc:
        assert denied(tc, ah_headers(str(uuid.uuid4()), str(uuid.uuid4()))) == 503


# -- a whole call --------------------------------------------------------------------------------


@pytest.mark.slow
def test_full_call_matches_replay(
    billing_call: Any, billing_replay: list[dict[str, Any]], runtime: Runtime, settings: Settings
) -> None:
    wav = billing_call[0]
    data, rate = sf.read(wav, dtype="float32")
    assert rate == 8000 and data.shape[1] == 2  # channel 0 customer (external), 1 agent
    pcmu = encode_mulaw(data.reshape(-1))  # interleaved external/internal
    # A live call narrows the final beam and decodes finals with the small model while the
    # ASR is busy, and this client streams faster than real time (replay --fast never adapts):
    # both pinned, so that the comparison is about the ingest, not about load.
    pinned = settings.model_copy(
        update={"asr_min_beam_size": settings.asr_beam_size, "asr_final_fallback": False}
    )
    with TestClient(create_app(pinned, runtime)) as client:
        live = _stream_billing_call(client, pcmu)
    fast = billing_replay

    def finals(evs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return sorted(
            (e for e in evs if e["type"] == "transcript"),
            key=lambda e: (e["speaker"], e["t_start"]),
        )

    got, want = finals(live), finals(fast)
    assert len(got) == len(want) > 4
    for g, w in zip(got, want, strict=True):
        assert (g["speaker"], g["text"]) == (w["speaker"], w["text"])
        assert abs(g["t_start"] - w["t_start"]) <= 0.1 and abs(g["t_end"] - w["t_end"]) <= 0.1
    assert live[-1]["type"] == "call_end" and live[-1]["reason"] == "end"


def _stream_billing_call(client: TestClient, pcmu: bytes) -> list[dict[str, Any]]:
    conn = Connect(client)
    with conn.events() as events, conn as c:
        c.open()
        step = FRAME_SAMPLES * 2
        for n, i in enumerate(range(0, len(pcmu), step)):
            c.audio(pcmu[i : i + step])  # 200 ms frames, a short last one
            if n % 25 == 24:  # the reference client pings every 5 s
                c.send("ping")
        assert c.close()["type"] == "closed"
        return read_events(events)


def test_a_dropped_session_reconnects_within_the_grace_period(
    runtime: Runtime, settings: Settings
) -> None:
    """A connection lost without `close` detaches the call as on every other ingest (it used
    to end it at once, whatever COACH_RECONNECT_GRACE_S said); the client's next session for
    the conversation re-attaches it, its position 0 placed after the audio already heard."""
    graced = settings.model_copy(update={"reconnect_grace_s": 10.0})
    conversation = str(uuid.uuid4())
    with TestClient(create_app(graced, runtime)) as tc:
        first = Connect(tc, conversation_id=conversation)
        with first.events() as events:
            with first as c:
                c.open()
                c.stream(tone(2.0, 2))
            # Dropped without `close`: the call waits for its connection to come back.
            manager = tc.app.state.coach.manager  # type: ignore[attr-defined]
            deadline = time.monotonic() + 10
            while not manager.is_detached(conversation) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert manager.is_detached(conversation)
            with Connect(tc, conversation_id=conversation) as c:
                c.open(continuedSessions=[{"id": first.session_id}])
                c.stream(tone(1.0, 2))
                assert c.close()["type"] == "closed"
            evs = read_events(events)
    assert [e["type"] for e in evs].count("call_start") == 1
    assert evs[-1]["type"] == "call_end"
    assert evs[-1]["duration_s"] == pytest.approx(3.0, abs=0.05)


def test_a_silent_session_is_told_when_the_idle_timeout_ends_its_call(
    runtime: Runtime, tmp_path: Path
) -> None:
    """A paused client sends nothing: when the idle watchdog ended its call, the session
    stayed open and the client was never told (as on raw PCM and Twilio, a docs audit)."""
    quiet = Settings(data_dir=tmp_path, idle_timeout_s=1.0, store_enabled=False, auth_disabled=True)
    with TestClient(create_app(quiet, runtime)) as tc, Connect(tc) as c:
        c.open()
        c.stream(tone(0.4, 2))
        told = c.until("disconnect")
        assert told["parameters"] == {"reason": "completed", "info": "idle_timeout"}
        c.assert_common(told)
        c.assert_common(c.close("end"))


def test_a_paused_session_that_pings_outlives_the_idle_timeout(
    runtime: Runtime, tmp_path: Path
) -> None:
    """A hold or secure pause sends no audio for minutes, but the client pings every 5 s:
    the idle watchdog ended such a call (`disconnect {completed, idle_timeout}`) and the rest
    of the conversation went uncoached (a protocol audit). Pings while paused keep it."""
    quiet = Settings(data_dir=tmp_path, idle_timeout_s=1.0, store_enabled=False, auth_disabled=True)
    with TestClient(create_app(quiet, runtime)) as tc:
        conn = Connect(tc)
        with conn.events() as events:
            with conn as c:
                c.open()
                c.stream(tone(0.4, 2))
                c.pause()
                deadline = time.monotonic() + 3.0  # three idle timeouts on hold
                while time.monotonic() < deadline:
                    time.sleep(0.3)
                    c.send("ping")
                    assert c.receive()["type"] == "pong"
                c.resume(3.0)
                c.stream(tone(0.4, 2))
                c.assert_common(c.close())
            evs = read_events(events)
    assert evs[-1]["type"] == "call_end" and evs[-1]["reason"] == "end"
