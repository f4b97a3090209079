"""`/ingest/twilio`: Twilio Media Streams, driven frame for frame through Starlette's test client.

The golden frames in `golden/twilio/` are the example messages of Twilio's "Media Streams -
WebSocket Messages" page (twilio.com/docs/voice/media-streams/websocket-messages) with our own
SIDs and real 20 ms payloads in place of the abbreviated ones.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from starlette.websockets import WebSocketDisconnect
from twilio.request_validator import RequestValidator  # type: ignore[import-untyped]

from audio.codecs import encode_mulaw
from coach.api.app import create_app
from coach.ingest import closecodes as cc
from coach.ingest import twilio as tw
from coach.runtime import Runtime
from coach.settings import Settings
from tests.support import client_with_watchdog

GOLDEN = Path(__file__).parent / "golden" / "twilio"
DOC_FRAMES = sorted(p.stem for p in GOLDEN.glob("*.json"))
FRAME = 160  # 20 ms of 8 kHz mu-law: what Twilio sends per media message
SILENCE = encode_mulaw(np.zeros(FRAME, dtype=np.float32))
TOKEN = "twilio-test-auth-token"
PUBLIC_HOST = "coach.example.com"


def golden(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((GOLDEN / f"{name}.json").read_text())
    return data


def errors(reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "coach_ingest_errors_total", {"protocol": "twilio", "reason": reason}
    )
    return value or 0.0


# -- a Twilio client, frame for frame ------------------------------------------------------------


class TwilioClient:
    """Sends exactly what Twilio sends: `connected`, one `start`, `media` per track, `stop`.

    sequenceNumber counts every message after `connected` from 1; `chunk` counts each track's
    media messages from 1; `timestamp` is milliseconds since the stream started.
    """

    def __init__(
        self,
        ws: Any,
        *,
        call_id: str | None,
        tracks: tuple[str, ...] = ("inbound", "outbound"),
        stream_sid: str = "MZ00000000000000000000000000000001",
        call_sid: str = "CA00000000000000000000000000000001",
        params: dict[str, str] | None = None,
    ) -> None:
        self.ws = ws
        self.call_id = call_id
        self.tracks = tracks
        self.stream_sid = stream_sid
        self.call_sid = call_sid
        self.params = {"agent_id": "ann", "customer_id": "cust-7", **(params or {})}
        if call_id is not None:
            self.params["call_id"] = call_id
        self.seq = 0
        self.chunks = dict.fromkeys(tracks, 0)

    def send(self, msg: dict[str, Any]) -> None:
        self.ws.send_text(json.dumps(msg))

    def _next(self) -> str:
        self.seq += 1
        return str(self.seq)

    def connected(self) -> None:
        self.send(golden("connected"))

    def start(self, **media_format: Any) -> None:
        msg = golden("start")
        msg["sequenceNumber"] = self._next()
        msg["streamSid"] = msg["start"]["streamSid"] = self.stream_sid
        msg["start"]["callSid"] = self.call_sid
        msg["start"]["tracks"] = list(self.tracks)
        msg["start"]["customParameters"] = self.params
        msg["start"]["mediaFormat"].update(media_format)
        self.send(msg)

    def handshake(self) -> None:
        self.connected()
        self.start()

    def media_msg(self, track: str, payload: bytes, timestamp_ms: int) -> dict[str, Any]:
        self.chunks[track] = self.chunks.get(track, 0) + 1
        msg = golden(f"media_{track}")
        msg["sequenceNumber"] = self._next()
        msg["streamSid"] = self.stream_sid
        msg["media"].update(
            chunk=str(self.chunks[track]),
            timestamp=str(timestamp_ms),
            payload=base64.b64encode(payload).decode(),
        )
        return msg

    def media(self, track: str, payload: bytes, timestamp_ms: int) -> None:
        self.send(self.media_msg(track, payload, timestamp_ms))

    def mark(self, name: str) -> None:
        msg = golden("mark")
        msg.update(sequenceNumber=self._next(), streamSid=self.stream_sid)
        msg["mark"]["name"] = name
        self.send(msg)

    def dtmf(self, digit: str) -> None:
        msg = golden("dtmf")
        msg.update(sequenceNumber=self._next(), streamSid=self.stream_sid)
        msg["dtmf"]["digit"] = digit
        self.send(msg)

    def stop(self) -> None:
        msg = golden("stop")
        msg.update(sequenceNumber=self._next(), streamSid=self.stream_sid)
        msg["stop"]["callSid"] = self.call_sid
        self.send(msg)

    def silence(self, frames: int, *, first_ms: int = 0) -> None:
        for i in range(frames):
            for track in self.tracks:
                self.media(track, SILENCE, first_ms + i * 20)

    def stream(
        self,
        audio: dict[str, bytes],
        *,
        drop: set[tuple[str, int]] | frozenset[tuple[str, int]] = frozenset(),
        jitter_ms: int = 0,
        every: dict[int, Any] | None = None,
    ) -> None:
        """Both tracks, 20 ms per message, interleaved as Twilio does (order varies)."""
        rng = random.Random(7)
        n = max(len(b) for b in audio.values())
        for i in range(0, (n + FRAME - 1) // FRAME):
            order = list(self.tracks)
            rng.shuffle(order)
            for track in order:
                if (track, i) in drop:
                    continue
                ts = max(0, i * 20 + rng.randint(-jitter_ms, jitter_ms))
                self.media(track, audio[track][i * FRAME : (i + 1) * FRAME], ts)
            if every and i in every:
                every[i](self)


def mulaw_tracks(wav: Path, seconds: float | None = None) -> dict[str, bytes]:
    """The call's raw G.711 bytes per track: channel 0 customer (inbound), 1 agent (outbound)."""
    data, rate = sf.read(wav, dtype="float32", always_2d=True)
    assert rate == 8000
    if seconds is not None:
        data = data[: int(seconds * rate)]
    return {
        "inbound": encode_mulaw(np.ascontiguousarray(data[:, 0])),
        "outbound": encode_mulaw(np.ascontiguousarray(data[:, 1])),
    }


def close_of(ws: Any) -> tuple[int, str, list[str]]:
    """Read until the server closes; its close code, reason and any text before it."""
    texts = []
    while True:
        try:
            texts.append(ws.receive_text())
        except WebSocketDisconnect as exc:
            return exc.code, exc.reason, texts


def read_events(ws: Any) -> list[dict[str, Any]]:
    out = []
    while True:
        try:
            out.append(json.loads(ws.receive_text()))
        except WebSocketDisconnect:
            return out


def finals(events: list[dict[str, Any]], speaker: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == "transcript" and e["speaker"] == speaker]


@pytest.fixture
def client(runtime: Runtime, settings: Settings) -> Iterator[TestClient]:
    with client_with_watchdog(create_app(settings, runtime)) as c:
        yield c


def manager_of(client: TestClient) -> Any:
    return client.app.state.coach.manager  # type: ignore[attr-defined]


# -- golden frames and pure protocol (no sockets) -----------------------------------------------


@pytest.mark.parametrize("name", DOC_FRAMES)
def test_doc_frames_round_trip(name: str) -> None:
    raw = (GOLDEN / f"{name}.json").read_text()
    msg = tw.parse_message(raw, max_bytes=64_000)
    assert msg.event == json.loads(raw)["event"]
    assert msg.model_dump(by_alias=True, exclude_unset=True) == json.loads(raw)
    assert type(msg).model_validate_json(msg.model_dump_json(by_alias=True)) == msg


def test_doc_frames_cover_every_message_twilio_sends() -> None:
    assert {golden(n)["event"] for n in DOC_FRAMES} == set(tw.MODELS)
    for name in ("media_inbound", "media_outbound"):
        payload = base64.b64decode(golden(name)["media"]["payload"])
        assert len(payload) == FRAME


def test_extra_fields_are_ignored() -> None:
    msg = golden("media_inbound")
    msg["future"] = {"x": 1}
    msg["media"]["unknown"] = "y"
    parsed = tw.parse_message(json.dumps(msg), 64_000)
    assert parsed.model_dump(by_alias=True, exclude_unset=True) == golden("media_inbound")


@pytest.mark.parametrize(
    ("state", "event", "after"),
    [
        (tw.StreamState.CONNECTING, "connected", tw.StreamState.CONNECTING),
        (tw.StreamState.CONNECTING, "start", tw.StreamState.STARTED),
        (tw.StreamState.CONNECTING, "stop", tw.StreamState.STOPPED),
        (tw.StreamState.STARTED, "media", tw.StreamState.STARTED),
        (tw.StreamState.STARTED, "mark", tw.StreamState.STARTED),
        (tw.StreamState.STARTED, "dtmf", tw.StreamState.STARTED),
        (tw.StreamState.STARTED, "stop", tw.StreamState.STOPPED),
        (tw.StreamState.CONNECTING, "media", None),
        (tw.StreamState.CONNECTING, "dtmf", None),
        (tw.StreamState.STARTED, "start", None),
        (tw.StreamState.STARTED, "connected", None),
        (tw.StreamState.STOPPED, "media", None),
        (tw.StreamState.STOPPED, "stop", None),
    ],
)
def test_state_machine(state: tw.StreamState, event: str, after: tw.StreamState | None) -> None:
    if after is not None:
        assert tw.transition(state, event) is after
        return
    with pytest.raises(tw.TwilioError) as info:
        tw.transition(state, event)
    assert info.value.code == cc.INVALID_PAYLOAD and info.value.reason == "unexpected_event"


@given(st.text(max_size=300))
def test_parse_never_crashes_on_text(raw: str) -> None:
    try:
        tw.parse_message(raw, 64_000)
    except tw.TwilioError as exc:
        assert exc.code in (cc.INVALID_PAYLOAD, cc.MESSAGE_TOO_BIG) and str(exc)


@given(
    st.dictionaries(
        st.sampled_from(["event", "sequenceNumber", "streamSid", "media", "start", "stop"]),
        st.one_of(st.none(), st.integers(), st.text(max_size=20), st.just({"track": "inbound"})),
    )
)
def test_parse_fuzzed_fields(fields: dict[str, Any]) -> None:
    try:
        tw.parse_message(json.dumps({**golden("media_inbound"), **fields}), 64_000)
    except tw.TwilioError as exc:
        assert exc.reason in ("unknown_event", "bad_message")


def test_call_setup_names_call_and_parties() -> None:
    start = golden("start")
    setup = tw.call_setup(tw.Start.model_validate(start))
    assert setup.call_id == start["start"]["callSid"]  # no call_id parameter: the callSid
    assert setup.speakers == ("customer",)
    assert "agent_id" not in setup.meta and setup.meta["twilio"]["tracks"] == ["inbound"]
    start["start"]["tracks"] = ["outbound", "inbound"]
    start["start"]["customParameters"] = {"call_id": "c-9", "agent_id": "ann", "customer_id": "k"}
    setup = tw.call_setup(tw.Start.model_validate(start))
    assert setup.call_id == "c-9" and setup.speakers == ("customer", "agent")
    assert setup.meta["agent_id"] == "ann" and setup.meta["customer_id"] == "k"
    start["start"]["tracks"] = ["outbound"]
    assert tw.call_setup(tw.Start.model_validate(start)).speakers == ("agent",)


def test_media_is_placed_by_timestamp_not_by_arrival() -> None:
    proto = tw.StreamProtocol(max_message_bytes=64_000)
    c = TwilioClient(None, call_id="p1", tracks=("inbound", "outbound"))
    proto.receive(json.dumps(golden("connected")))
    start = golden("start")
    start["start"].update(tracks=["inbound", "outbound"], streamSid=c.stream_sid)
    start["streamSid"] = c.stream_sid
    proto.receive(json.dumps(start))

    def place(track: str, ts: int, n: int = FRAME) -> float:
        msg = proto.receive(json.dumps(c.media_msg(track, SILENCE[:1] * n, ts)))
        assert isinstance(msg, tw.Media)
        chunk = proto.chunk(msg)
        assert len(chunk.pcm) == n and chunk.sample_rate == 8000
        return chunk.t0

    assert place("inbound", 5) == 0.0  # the docs' first timestamp "5": jitter, not a gap
    assert place("inbound", 17) == 0.02  # 3 ms early: continues the track, nothing clipped
    assert place("inbound", 48) == 0.04  # 8 ms late: still seamless
    assert place("inbound", 260) == 0.26  # 200 ms lost: placed at its time, gap filled later
    assert place("outbound", 240) == 0.24  # the other track has its own position
    assert place("inbound", 100) == 0.1  # a repeat: placed where it says (pipeline drops it)
    assert place("inbound", 280) == 0.28
    assert place("inbound", 347) == 0.34  # two packets lost, the next one 7 ms late
    assert place("inbound", 361) == 0.36


def test_timestamp_jumps_may_not_skip_more_than_their_bound_in_all() -> None:
    """Thirty jumps of 599 s, each under the one-jump bound, ended a call as if at its
    maximum length in a second, stored as a 4-hour call (an outside ingest audit)."""
    proto = tw.StreamProtocol(max_message_bytes=64_000)
    c = TwilioClient(None, call_id="p2", tracks=("inbound",))
    proto.receive(json.dumps(golden("connected")))
    start = golden("start")
    start["start"].update(tracks=["inbound"], streamSid=c.stream_sid)
    start["streamSid"] = c.stream_sid
    proto.receive(json.dumps(start))

    def send(ts: int) -> None:
        msg = proto.receive(json.dumps(c.media_msg("inbound", SILENCE[:1] * FRAME, ts)))
        assert isinstance(msg, tw.Media)
        proto.chunk(msg)

    send(0)
    send(400_000)  # 400 s lost: odd, but a gap
    with pytest.raises(tw.TwilioError) as refused:
        send(800_000)  # 400 s more: 800 s skipped in all
    assert refused.value.reason == "bad_timestamp"
    assert refused.value.code == cc.INVALID_PAYLOAD


def test_out_of_order_sequence_numbers_are_counted() -> None:
    proto = tw.StreamProtocol(max_message_bytes=64_000)
    before = errors("out_of_order")
    msgs = [proto.receive(json.dumps(golden(n))) for n in ("connected", "start")]
    media = [tw.Media.model_validate(golden("media_inbound")) for _ in range(2)]
    assert all(proto.in_order(m) for m in msgs)
    assert proto.in_order(media[0]) and not proto.in_order(media[1])
    assert proto.out_of_order == 1 and errors("out_of_order") == before + 1


def test_a_stream_that_keeps_reordering_is_logged_now_and_then(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every out-of-order message was a warning line: ~25 a second per call on a stream that
    keeps reordering (an outside ingest audit). The first and every 50th are logged; the
    metric counts each."""
    proto = tw.StreamProtocol(max_message_bytes=64_000)
    before = errors("out_of_order")
    for n in ("connected", "start"):
        proto.in_order(proto.receive(json.dumps(golden(n))))
    media = tw.Media.model_validate(golden("media_inbound"))
    caplog.set_level(logging.WARNING, logger="coach.ingest.twilio")
    assert proto.in_order(media)
    for _ in range(100):
        assert not proto.in_order(media)
    lines = [r for r in caplog.records if "out of order so far" in r.getMessage()]
    assert [r.getMessage().split("(")[1] for r in lines] == [
        "1 out of order so far)",
        "50 out of order so far)",
        "100 out of order so far)",
    ]
    assert errors("out_of_order") == before + 100


def test_signed_urls_are_wss_first_behind_a_tls_proxy() -> None:
    class FakeWs:
        headers = {"host": "10.0.0.5:8000", "x-forwarded-host": PUBLIC_HOST}

        class url:  # mimics starlette's URL attributes
            path = "/ingest/twilio"
            query = ""
            netloc = "10.0.0.5:8000"

    urls = tw.signed_urls(FakeWs())  # type: ignore[arg-type]
    assert urls == [f"wss://{PUBLIC_HOST}/ingest/twilio", f"https://{PUBLIC_HOST}/ingest/twilio"]


# -- over WebSockets -----------------------------------------------------------------------------


def test_handshake_media_mark_dtmf_stop(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="coach.ingest.twilio")
    with client.websocket_connect("/ws/calls/tw-hs/events") as events:
        with client.websocket_connect("/ingest/twilio") as ws:
            c = TwilioClient(ws, call_id="tw-hs")
            c.handshake()
            c.silence(10)
            c.mark("greeting-played")
            c.mark("card 4532015112830366 john@example.com")
            c.dtmf("4")
            c.dtmf("2")
            c.silence(5, first_ms=200)
            c.stop()
            code, reason, texts = close_of(ws)
        evs = read_events(events)
    session = manager_of(client).get("tw-hs")  # ended calls stay listed
    assert (code, texts) == (cc.NORMAL, [])  # nothing is sent to Twilio, only the close
    start, end = evs[0], evs[-1]
    assert start["type"] == "call_start" and start["source"] == "twilio"
    assert start["channels"] == ["customer", "agent"]
    assert start["meta"]["agent_id"] == "ann" and start["meta"]["customer_id"] == "cust-7"
    assert start["meta"]["twilio"]["call_sid"] == c.call_sid
    assert end["type"] == "call_end" and end["reason"] == "stop"
    assert end["duration_s"] == pytest.approx(0.3, abs=0.021)
    twilio_meta = session.meta["twilio"]
    assert twilio_meta["marks"] == 2 and twilio_meta["last_mark"] == "card [CARD] [EMAIL]"
    # Nor in the log (an outside ingest audit found the mark's name there as sent).
    marks = [r.getMessage() for r in caplog.records if ": mark " in r.getMessage()]
    assert marks[0].endswith("mark 'greeting-played'")
    assert marks[1].endswith("mark 'card [CARD] [EMAIL]'"), marks
    assert twilio_meta["dtmf"] == 2 and "4" not in json.dumps(twilio_meta)  # digits not kept
    # call_end carries the meta as the call ended, so the store keeps these counts too.
    assert end["meta"]["twilio"] == twilio_meta


def test_an_unknown_event_type_is_skipped_and_counted(client: TestClient) -> None:
    """Found by a protocol audit: a message type this server does not know closed the stream
    (1007), and Twilio does not reconnect one, so a type Twilio adds later would cost every
    call its coaching. It is skipped, counted and logged once."""
    before = errors("unknown_event")
    with client.websocket_connect("/ws/calls/tw-new/events") as events:
        with client.websocket_connect("/ingest/twilio") as ws:
            c = TwilioClient(ws, call_id="tw-new")
            c.connected()
            c.send({"event": "somePreStartEvent", "sequenceNumber": "2", "streamSid": "x"})
            c.start()
            c.silence(5)
            for _ in range(2):
                c.send({"event": "someFutureEvent", "sequenceNumber": "90", "streamSid": "x"})
            c.silence(5, first_ms=100)
            c.stop()
            code, reason, _ = close_of(ws)
        evs = read_events(events)
    assert (code, reason) == (cc.NORMAL, "stop")
    assert evs[-1]["type"] == "call_end" and evs[-1]["reason"] == "stop"
    assert errors("unknown_event") == before + 3  # one before start, counted as well


def test_inbound_only_stream_is_one_party_named_by_callsid(client: TestClient) -> None:
    sid = "CA0123456789abcdef0123456789abcdef"
    with client.websocket_connect(f"/ws/calls/{sid}/events") as events:
        with client.websocket_connect("/ingest/twilio") as ws:
            c = TwilioClient(ws, call_id=None, tracks=("inbound",), call_sid=sid)
            c.handshake()
            c.silence(3)
            c.stop()
            assert close_of(ws)[0] == cc.NORMAL
        evs = read_events(events)
    assert evs[0]["channels"] == ["customer"] and evs[-1]["reason"] == "stop"


def test_out_of_order_media_is_dropped_and_the_call_goes_on(client: TestClient) -> None:
    before = errors("out_of_order")
    with client.websocket_connect("/ingest/twilio") as ws:
        c = TwilioClient(ws, call_id="tw-ooo", tracks=("inbound",))
        c.handshake()
        first = c.media_msg("inbound", SILENCE, 0)
        c.send(first)
        c.media("inbound", SILENCE, 20)
        c.send(first)  # a billing_replay message: same sequenceNumber
        c.media("inbound", SILENCE, 40)
        c.stop()
        assert close_of(ws)[0] == cc.NORMAL
    assert errors("out_of_order") == before + 1


def test_stop_before_start_closes_normally_without_a_call(client: TestClient) -> None:
    with client.websocket_connect("/ingest/twilio") as ws:
        c = TwilioClient(ws, call_id="tw-early-stop")
        c.connected()
        c.stop()
        assert close_of(ws)[0] == cc.NORMAL
    assert manager_of(client).get("tw-early-stop") is None


def test_hang_up_without_stop_still_ends_the_call(client: TestClient) -> None:
    with client.websocket_connect("/ws/calls/tw-drop/events") as events:
        with client.websocket_connect("/ingest/twilio") as ws:
            c = TwilioClient(ws, call_id="tw-drop")
            c.handshake()
            c.silence(5)
            # The call is up before the hang-up. (Leaving the block cancels the handler, as
            # TestClient does: a hang-up while the call was still being set up leaves no call,
            # and the test waited for ever, about one run in two.)
            first = json.loads(events.receive_text())
            assert first["type"] == "call_start"
        evs = [first, *read_events(events)]
    assert evs[-1]["type"] == "call_end" and evs[-1]["reason"] == "disconnect"


# -- bad input: one test each; the close code, the metric, and call_end for what was heard --------


def break_call(
    client: TestClient, call_id: str, bad: Any, *, tracks: tuple[str, ...] = ("inbound", "outbound")
) -> tuple[int, str, list[dict[str, Any]]]:
    """Start a call, stream 100 ms, send `bad` (text, bytes, or a function of the client)."""
    with client.websocket_connect(f"/ws/calls/{call_id}/events") as events:
        with client.websocket_connect("/ingest/twilio") as ws:
            c = TwilioClient(ws, call_id=call_id, tracks=tracks)
            c.handshake()
            c.silence(5)
            if isinstance(bad, bytes):
                ws.send_bytes(bad)
            elif isinstance(bad, str):
                ws.send_text(bad)
            else:
                bad(c)
            code, reason, texts = close_of(ws)
        assert texts == []
        return code, reason, read_events(events)


def media_with(**media: Any) -> Any:
    def send(c: TwilioClient) -> None:
        msg = c.media_msg("inbound", SILENCE, 100)
        msg["media"].update(media)
        c.send(msg)

    return send


@pytest.mark.parametrize(
    ("bad", "code", "reason"),
    [
        ("{not json", cc.INVALID_PAYLOAD, "bad_json"),
        ('["media"]', cc.INVALID_PAYLOAD, "bad_json"),
        ('{"sequenceNumber": "7"}', cc.INVALID_PAYLOAD, "unknown_event"),
        (media_with(payload="@@not base64@@"), cc.INVALID_PAYLOAD, "bad_payload"),
        (media_with(payload=""), cc.INVALID_PAYLOAD, "bad_payload"),
        (
            media_with(payload=base64.b64encode(b"\xff" * 8001).decode()),
            cc.MESSAGE_TOO_BIG,
            "oversized",
        ),
        (media_with(timestamp="-20"), cc.INVALID_PAYLOAD, "bad_message"),
        # Years ahead: it ended the call as max_length (an outside ingest audit).
        (media_with(timestamp="99999999999"), cc.INVALID_PAYLOAD, "bad_timestamp"),
        (media_with(track="conference"), cc.INVALID_PAYLOAD, "bad_track"),
        ('{"event": "media", "x": "' + "a" * 70_000 + '"}', cc.MESSAGE_TOO_BIG, "oversized"),
        (b"\xff" * 160, cc.UNSUPPORTED_DATA, "binary"),
        (lambda c: c.start(), cc.INVALID_PAYLOAD, "unexpected_event"),
        (lambda c: c.connected(), cc.INVALID_PAYLOAD, "unexpected_event"),
    ],
    ids=[
        "malformed-json",
        "not-an-object",
        "no-event",
        "bad-base64",
        "empty-payload",
        "oversized-payload",
        "bad-timestamp",
        "timestamp-years-ahead",
        "unknown-track",
        "oversized-message",
        "binary-frame",
        "second-start",
        "connected-after-start",
    ],
)
def test_bad_input_closes_and_finalizes(
    client: TestClient, bad: Any, code: int, reason: str, request: pytest.FixtureRequest
) -> None:
    call_id = f"tw-bad-{request.node.callspec.id}"
    before = errors(reason)
    got, why, evs = break_call(client, call_id, bad)
    assert got == code and why.startswith(f"{reason}: ") and len(why.encode()) <= 123
    assert errors(reason) == before + 1
    assert evs[0]["type"] == "call_start" and evs[-1]["type"] == "call_end"
    assert evs[-1]["reason"] == f"error:{reason}"
    assert evs[-1]["duration_s"] == pytest.approx(0.1, abs=0.021)  # what was heard is kept


def test_media_for_an_undeclared_track_is_refused(client: TestClient) -> None:
    def outbound(c: TwilioClient) -> None:
        c.send(c.media_msg("outbound", SILENCE, 100))

    code, why, evs = break_call(client, "tw-bad-undeclared", outbound, tracks=("inbound",))
    assert code == cc.INVALID_PAYLOAD and why.startswith("bad_track")
    assert evs[-1]["reason"] == "error:bad_track"


def test_media_of_another_stream_is_refused(client: TestClient) -> None:
    def foreign(c: TwilioClient) -> None:
        msg = c.media_msg("inbound", SILENCE, 100)
        msg["streamSid"] = "MZ99999999999999999999999999999999"
        c.send(msg)

    code, why, evs = break_call(client, "tw-bad-foreign", foreign)
    assert code == cc.INVALID_PAYLOAD and why.startswith("stream_mismatch")
    assert evs[-1]["reason"] == "error:stream_mismatch"


def test_media_before_start_is_refused_without_a_call(client: TestClient) -> None:
    before = errors("unexpected_event")
    with client.websocket_connect("/ingest/twilio") as ws:
        c = TwilioClient(ws, call_id="tw-nostart")
        c.connected()
        c.media("inbound", SILENCE, 0)
        code, why, _ = close_of(ws)
    assert code == cc.INVALID_PAYLOAD and "'media' not allowed when connecting" in why
    assert errors("unexpected_event") == before + 1
    assert manager_of(client).get("tw-nostart") is None


@pytest.mark.parametrize(
    "media_format",
    [{"encoding": "audio/x-l16"}, {"sampleRate": 16000}, {"channels": 2}],
    ids=["l16", "16khz", "stereo"],
)
def test_unsupported_media_format_is_refused_at_start(
    client: TestClient, media_format: dict[str, Any]
) -> None:
    before = errors("unsupported_format")
    with client.websocket_connect("/ingest/twilio") as ws:
        c = TwilioClient(ws, call_id="tw-l16")
        c.connected()
        c.start(**media_format)
        code, why, _ = close_of(ws)
    assert code == cc.UNSUPPORTED_DATA and "only audio/x-mulaw 8000 Hz mono" in why
    assert errors("unsupported_format") == before + 1
    assert manager_of(client).get("tw-l16") is None


@pytest.mark.parametrize("media_format", [{"sampleRate": "8000"}, {"channels": "1"}])
def test_media_format_numbers_must_be_numbers(
    client: TestClient, media_format: dict[str, Any]
) -> None:
    with client.websocket_connect("/ingest/twilio") as ws:
        c = TwilioClient(ws, call_id="tw-strings")
        c.connected()
        c.start(**media_format)
        code, why, _ = close_of(ws)
    assert code == cc.INVALID_PAYLOAD and why.startswith("bad_message")
    assert "valid integer" in why
    assert manager_of(client).get("tw-strings") is None


def test_bad_call_id_parameter_is_refused(client: TestClient) -> None:
    with client.websocket_connect("/ingest/twilio") as ws:
        TwilioClient(ws, call_id="../../etc").handshake()
        code, why, _ = close_of(ws)
    assert code == cc.INVALID_PAYLOAD and why.startswith("bad_start")


@pytest.mark.parametrize("agent", ["a" * 129, "ann\nFORGED3"])
def test_an_oversized_or_multi_line_agent_id_parameter_is_refused(
    client: TestClient, agent: str
) -> None:
    """A newline in it was taken as the call's agent (an outside ingest audit)."""
    with client.websocket_connect("/ingest/twilio") as ws:
        TwilioClient(ws, call_id="tw-long", params={"agent_id": agent}).handshake()
        code, why, _ = close_of(ws)
    assert code == cc.INVALID_PAYLOAD and why.startswith("bad_start") and "agent_id" in why
    assert manager_of(client).get("tw-long") is None


def test_a_call_already_live_is_refused(client: TestClient) -> None:
    with (
        client.websocket_connect("/ws/calls/tw-dup/events") as events,
        client.websocket_connect("/ingest/twilio") as first,
    ):
        a = TwilioClient(first, call_id="tw-dup")
        a.handshake()
        assert json.loads(events.receive_text())["type"] == "call_start"  # the call is live
        with client.websocket_connect("/ingest/twilio") as second:
            TwilioClient(second, call_id="tw-dup").handshake()
            assert close_of(second)[0] == cc.DUPLICATE_CALL
        a.stop()
        assert close_of(first)[0] == cc.NORMAL


def test_no_start_in_time_is_refused(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tw, "START_TIMEOUT_S", 0.2)
    with client.websocket_connect("/ingest/twilio") as ws:
        TwilioClient(ws, call_id="tw-slow").connected()
        code, why, _ = close_of(ws)
    assert code == cc.HEADER_TIMEOUT and why.startswith("start_timeout")


def test_a_broken_stream_leaves_its_neighbour_untouched(
    client: TestClient, billing_call: Any
) -> None:
    audio = mulaw_tracks(billing_call[0], seconds=6.0)  # the agent's greeting, 0.5-5.2 s
    with client.websocket_connect("/ws/calls/tw-good/events") as events:
        with (
            client.websocket_connect("/ingest/twilio") as good,
            client.websocket_connect("/ingest/twilio") as bad,
        ):
            g = TwilioClient(good, call_id="tw-good")
            b = TwilioClient(bad, call_id="tw-broken", stream_sid="MZ2", call_sid="CA2")
            g.handshake()
            b.handshake()
            g.stream(audio, every={50: lambda _c: bad.send_text("{garbage")})
            assert close_of(bad)[0] == cc.INVALID_PAYLOAD
            g.stop()
            assert close_of(good)[0] == cc.NORMAL
        evs = read_events(events)
    assert evs[-1]["reason"] == "stop"
    agent = finals(evs, "agent")
    assert agent and "thank you for calling" in agent[0]["text"].lower()
    assert abs(agent[0]["t_start"] - 0.5) < 0.3


# -- auth: X-Twilio-Signature on the upgrade request -----------------------------------------------


@pytest.fixture
def secure(
    runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    monkeypatch.setenv("COACH_TWILIO_AUTH_TOKEN", TOKEN)
    settings = Settings(data_dir=tmp_path, ingest_api_key="k-123", auth_secret="s" * 32)
    with client_with_watchdog(create_app(settings, runtime)) as c:
        yield c


def sign(url: str, token: str = TOKEN) -> str:
    signature: str = RequestValidator(token).compute_signature(url, {})
    return signature


def proxied(signature: str | None) -> dict[str, str]:
    """Headers as a TLS-terminating proxy forwards Twilio's wss upgrade to us."""
    headers = {"x-forwarded-proto": "https", "x-forwarded-host": PUBLIC_HOST}
    if signature is not None:
        headers["x-twilio-signature"] = signature
    return headers


@pytest.mark.parametrize("scheme", ["wss", "https"])
def test_valid_signature_is_accepted(secure: TestClient, scheme: str) -> None:
    signature = sign(f"{scheme}://{PUBLIC_HOST}/ingest/twilio")
    with secure.websocket_connect("/ingest/twilio", headers=proxied(signature)) as ws:
        c = TwilioClient(ws, call_id=f"tw-signed-{scheme}")
        c.handshake()
        c.silence(3)
        c.stop()
        assert close_of(ws)[0] == cc.NORMAL


def test_signature_checked_against_the_host_header_without_a_proxy(secure: TestClient) -> None:
    signature = sign(f"wss://{PUBLIC_HOST}/ingest/twilio")
    headers = {"host": f"{PUBLIC_HOST}:443", "x-twilio-signature": signature}
    with secure.websocket_connect("/ingest/twilio", headers=headers) as ws:
        c = TwilioClient(ws, call_id="tw-signed-port")
        c.handshake()
        c.stop()
        assert close_of(ws)[0] == cc.NORMAL


@pytest.mark.parametrize(
    "headers",
    [
        proxied(None),
        proxied("not-a-signature"),
        proxied(sign(f"wss://{PUBLIC_HOST}/ingest/twilio", token="another-account")),
        proxied(sign(f"wss://{PUBLIC_HOST}/ingest/pcm")),
        proxied(sign("wss://attacker.example/ingest/twilio")),
        {"x-api-key": "k-123"},  # the ingest key is not enough once Twilio auth is on
    ],
    ids=["missing", "garbage", "other-token", "other-path", "other-host", "api-key-only"],
)
def test_bad_signature_is_refused_before_any_audio(
    secure: TestClient, headers: dict[str, str]
) -> None:
    before = errors("unauthorized")
    with secure.websocket_connect("/ingest/twilio", headers=headers) as ws:
        code, why, texts = close_of(ws)  # closed before we send a single frame
    assert (code, texts) == (cc.POLICY_VIOLATION, [])
    assert why.startswith("unauthorized")
    assert errors("unauthorized") == before + 1
    assert manager_of(secure).live() == []


def test_without_a_twilio_token_the_ingest_key_is_required(
    runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COACH_TWILIO_AUTH_TOKEN", raising=False)
    settings = Settings(data_dir=tmp_path, ingest_api_key="k-123", auth_secret="s" * 32)
    with client_with_watchdog(create_app(settings, runtime)) as c:
        with c.websocket_connect("/ingest/twilio") as ws:
            assert close_of(ws)[0] == cc.POLICY_VIOLATION
        signed = {"x-twilio-signature": sign("wss://testserver/ingest/twilio")}
        with c.websocket_connect("/ingest/twilio", headers=signed) as ws:
            assert close_of(ws)[0] == cc.POLICY_VIOLATION  # no token: nothing to check it with
        with c.websocket_connect("/ingest/twilio?api_key=k-123") as ws:
            t = TwilioClient(ws, call_id="tw-keyed")
            t.handshake()
            t.stop()
            assert close_of(ws)[0] == cc.NORMAL


# -- the whole call against replay --fast ----------------------------------------------------------


def assert_matches_replay(live: list[dict[str, Any]], fast: list[dict[str, Any]]) -> None:
    for speaker in ("customer", "agent"):
        got, want = finals(live, speaker), finals(fast, speaker)
        assert [e["text"] for e in got] == [e["text"] for e in want], speaker
        for g, w in zip(got, want, strict=True):
            assert abs(g["t_start"] - w["t_start"]) <= 0.1, (g, w)
            assert abs(g["t_end"] - w["t_end"]) <= 0.1, (g, w)


@pytest.mark.slow
def test_full_call_matches_replay(
    client: TestClient, billing_call: Any, billing_replay: list[dict[str, Any]]
) -> None:
    audio = mulaw_tracks(billing_call[0])
    marks = {
        100: lambda c: c.mark("intro"),
        1600: lambda c: c.dtmf("7"),
        2400: lambda c: c.mark("hold-music-done"),
    }
    with client.websocket_connect("/ws/calls/tw-full/events") as events:
        with client.websocket_connect("/ingest/twilio") as ws:
            c = TwilioClient(ws, call_id="tw-full")
            c.handshake()
            c.stream(audio, every=marks)
            c.stop()
            code, _, texts = close_of(ws)
        live = read_events(events)
    assert (code, texts) == (cc.NORMAL, [])
    assert live[0]["type"] == "call_start" and live[-1]["reason"] == "stop"
    assert live[-1]["duration_s"] == pytest.approx(billing_replay[-1]["duration_s"], abs=0.021)
    assert_matches_replay(live, billing_replay)


@pytest.mark.slow
def test_lost_and_jittered_frames_keep_call_time(
    client: TestClient, billing_call: Any, billing_replay: list[dict[str, Any]]
) -> None:
    audio = mulaw_tracks(billing_call[0])
    # 200 ms of the customer's track lost during the hold (25.0-25.2 s): counting bytes instead
    # of reading timestamps would pull every later customer turn 200 ms early.
    lost = {("inbound", i) for i in range(1250, 1260)}
    with client.websocket_connect("/ws/calls/tw-lossy/events") as events:
        with client.websocket_connect("/ingest/twilio") as ws:
            c = TwilioClient(ws, call_id="tw-lossy")
            c.handshake()
            c.stream(audio, drop=lost, jitter_ms=7)
            c.stop()
            assert close_of(ws)[0] == cc.NORMAL
        live = read_events(events)
    later = [e for e in finals(live, "customer") if e["t_start"] > 25.2]
    assert later and abs(later[0]["t_start"] - 35.82) < 0.3  # the script's next customer turn
    assert_matches_replay(live, billing_replay)


# -- the public docs' own examples, verbatim --------------------------------------------------------

DOCS = GOLDEN / "docs"


@pytest.mark.parametrize("name", sorted(p.stem for p in (GOLDEN / "docs").glob("*.json")))
def test_docs_example_frames_parse_unchanged(name: str) -> None:
    """Twilio's "Media Streams - WebSocket Messages" examples, copied as published
    (placeholder SIDs, abbreviated payloads): every field we read parses as given."""
    raw = (DOCS / f"{name}.json").read_text()
    data = json.loads(raw)
    msg = tw.parse_message(raw, max_bytes=65_536)
    dumped = msg.model_dump(by_alias=True, exclude_none=True)
    for key, value in data.items():
        if isinstance(value, dict):
            for sub, subvalue in value.items():
                assert dumped[key][sub] == subvalue, (name, key, sub)
        else:
            assert dumped[key] == value, (name, key)


def test_docs_start_example_sets_up_a_one_party_call() -> None:
    start = tw.parse_message((DOCS / "start.json").read_text(), max_bytes=65_536)
    assert isinstance(start, tw.Start)
    setup = tw.call_setup(start)
    assert setup.call_id == "CAXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"
    assert list(setup.speakers) == ["customer"]


def test_a_stream_that_reconnects_continues_the_call_where_it_left_off(
    runtime: Runtime, settings: Settings, billing_call: Any
) -> None:
    """Within COACH_RECONNECT_GRACE_S a new stream for the call re-attaches it; its media
    timestamps start again at 0, so they are placed after the audio already heard. (They used
    to be dropped as repeats: the second half of the call was silently lost.)"""
    audio = mulaw_tracks(billing_call[0], seconds=24.0)
    half = 12 * 8000
    first = {t: b[:half] for t, b in audio.items()}
    second = {t: b[half:] for t, b in audio.items()}
    later = [
        t
        for t in billing_call[1]["turns"]
        if t["speaker"] == "customer" and 12.5 < t["t_start"] and t["t_end"] < 23.0
    ]
    assert later, "the call has a customer turn in its second half"
    graced = settings.model_copy(update={"reconnect_grace_s": 10.0})
    with (
        TestClient(create_app(graced, runtime)) as client,
        client.websocket_connect("/ws/calls/tw-rc/events") as events,
    ):
        with client.websocket_connect("/ingest/twilio") as ws:
            c = TwilioClient(ws, call_id="tw-rc")
            c.handshake()
            c.stream(first)
        # The connection dropped without `stop`: the call waits for it.
        deadline = time.monotonic() + 10
        while not manager_of(client).is_detached("tw-rc") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert manager_of(client).is_detached("tw-rc")
        with client.websocket_connect("/ingest/twilio") as ws:
            c = TwilioClient(ws, call_id="tw-rc", stream_sid="MZ00000000000000000000000000000002")
            c.handshake()
            c.stream(second)  # timestamps from 0 again, as every new Twilio stream's
            c.stop()
            assert close_of(ws)[0] == cc.NORMAL
        live = read_events(events)
    assert [e["type"] for e in live].count("call_start") == 1
    end = live[-1]
    assert end["type"] == "call_end" and end["duration_s"] == pytest.approx(24.0, abs=0.1)
    heard = [e for e in finals(live, "customer") if e["t_start"] > 12.0]
    assert heard and abs(heard[0]["t_start"] - later[0]["t_start"]) < 0.3, (heard, later[0])


def test_a_silent_stream_hears_that_the_idle_timeout_ended_its_call(
    runtime: Runtime, tmp_path: Path
) -> None:
    """The idle watchdog ended the call, but the stream's socket stayed open: the peer could
    not tell its call was gone (as on raw PCM, found by a docs audit)."""
    quiet = Settings(data_dir=tmp_path, idle_timeout_s=1.0, store_enabled=False, auth_disabled=True)
    with TestClient(create_app(quiet, runtime)) as c, c.websocket_connect("/ingest/twilio") as ws:
        TwilioClient(ws, call_id="tw-idle").handshake()
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
    assert closed.value.code == cc.NORMAL and closed.value.reason == "idle_timeout"
