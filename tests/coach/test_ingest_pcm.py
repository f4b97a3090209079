"""`/ingest/pcm` and `/ws/calls/{id}/events` driven through Starlette's test client."""

from __future__ import annotations

import json
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

from coach.api.app import create_app
from coach.auth import issue_token
from coach.ingest import closecodes as cc
from coach.ingest.pcm import IngestError, PcmHeader, frame_chunks, parse_header
from coach.runtime import Runtime
from coach.settings import Settings
from tests.support import client_with_watchdog

HEADER = {"call_id": "c1", "sample_rate": 8000, "encoding": "pcm16", "channels": 2}


# -- pure framing -------------------------------------------------------------------------------


@given(st.text(max_size=200))
def test_parse_header_never_crashes_on_text(raw: str) -> None:
    try:
        parse_header(raw)
    except IngestError as exc:
        assert exc.code in (cc.INVALID_PAYLOAD, cc.UNSUPPORTED_DATA)


@given(
    st.dictionaries(
        st.sampled_from(list(HEADER) + ["speakers"]), st.one_of(st.integers(), st.text(), st.none())
    )
)
def test_parse_header_fuzzed_fields(fields: dict[str, Any]) -> None:
    try:
        h = parse_header(json.dumps({**HEADER, **fields}))
    except IngestError as exc:
        assert str(exc)
    else:
        assert h.speakers is not None and len(h.speakers) == h.channels


@pytest.mark.parametrize(
    ("patch", "code", "needle"),
    [
        ({"call_id": None}, cc.INVALID_PAYLOAD, "call_id"),
        ({"encoding": "opus"}, cc.UNSUPPORTED_DATA, "encoding"),
        ({"sample_rate": 11025}, cc.UNSUPPORTED_DATA, "sample_rate"),
        # The wrong type is a malformed field (1007), as the README's table says; 1003 is
        # for a rate or encoding of the right type that the server does not take.
        ({"sample_rate": "8000"}, cc.INVALID_PAYLOAD, "sample_rate"),
        ({"sample_rate": 8000.5}, cc.INVALID_PAYLOAD, "sample_rate"),
        ({"sample_rate": None}, cc.INVALID_PAYLOAD, "sample_rate"),
        ({"encoding": 16}, cc.INVALID_PAYLOAD, "encoding"),
        ({"encoding": ["pcm16"]}, cc.INVALID_PAYLOAD, "encoding"),
        ({"encoding": "PCM16 "}, cc.UNSUPPORTED_DATA, "encoding"),
        # A channel count of the right type that the server does not take is unsupported,
        # as Twilio's two-channel mediaFormat is; the wrong type stays malformed.
        ({"channels": 3}, cc.UNSUPPORTED_DATA, "channels"),
        ({"channels": 0}, cc.UNSUPPORTED_DATA, "channels"),
        ({"channels": "2"}, cc.INVALID_PAYLOAD, "channels"),
        ({"channels": True}, cc.INVALID_PAYLOAD, "channels"),
        ({"call_id": "../etc"}, cc.INVALID_PAYLOAD, "call_id"),
        # Shown on every wall tile and stored: an audit sent a 1 MB agent id.
        ({"agent_id": "a" * 129}, cc.INVALID_PAYLOAD, "agent_id"),
        ({"customer_id": "c" * 129}, cc.INVALID_PAYLOAD, "customer_id"),
        # One line each: "ann\nFORGED" was taken as the call's agent (an ingest audit).
        ({"agent_id": "ann\nFORGED"}, cc.INVALID_PAYLOAD, "control characters"),
        ({"customer_id": "c\t1"}, cc.INVALID_PAYLOAD, "control characters"),
        # Refused by its size before it is parsed (it used to be parsed whole: 1007).
        ({"notes": "n" * 5000}, cc.MESSAGE_TOO_BIG, "header of"),
    ],
)
def test_bad_headers_are_named(patch: dict[str, Any], code: int, needle: str) -> None:
    body = {k: v for k, v in {**HEADER, **patch}.items() if v is not None}
    with pytest.raises(IngestError) as info:
        parse_header(json.dumps(body))
    assert info.value.code == code and needle in str(info.value)


def test_frames_split_into_parties_on_the_sample_clock() -> None:
    header = PcmHeader.model_validate(HEADER)
    inter = np.array([[100, -100]] * 160, dtype="<i2").tobytes()
    chunks = frame_chunks(header, inter, samples_done=8000, max_bytes=10_000)
    assert [c.speaker for c in chunks] == ["customer", "agent"]
    assert chunks[0].t0 == 1.0 and len(chunks[0].pcm) == 160
    assert chunks[0].pcm[0] > 0 > chunks[1].pcm[0]
    with pytest.raises(IngestError) as odd:
        frame_chunks(header, inter[:-1], 0, 10_000)
    assert odd.value.code == cc.INVALID_PAYLOAD
    with pytest.raises(IngestError) as big:
        frame_chunks(header, inter, 0, 100)
    assert big.value.code == cc.MESSAGE_TOO_BIG


# -- over WebSockets ------------------------------------------------------------------------------


@pytest.fixture
def client(runtime: Runtime, settings: Settings) -> Iterator[TestClient]:
    with client_with_watchdog(create_app(settings, runtime)) as c:
        yield c


def stereo_pcm(wav: Path, seconds: float | None = None) -> tuple[bytes, int]:
    data, rate = sf.read(wav, dtype="int16")
    if seconds is not None:
        data = data[: int(seconds * rate)]
    return data.tobytes(), rate


def read_events(ws: Any) -> list[dict[str, Any]]:
    out = []
    while True:
        try:
            out.append(json.loads(ws.receive_text()))
        except WebSocketDisconnect:
            return out


def close_code(ws: Any) -> tuple[int, list[dict[str, Any]]]:
    """Read until the server closes; return its close code and the messages before it."""
    msgs = []
    while True:
        try:
            msgs.append(json.loads(ws.receive_text()))
        except WebSocketDisconnect as exc:
            return exc.code, msgs


def test_health_and_metrics(client: TestClient) -> None:
    assert client.get("/health/live").json() == {"status": "ok"}
    assert client.get("/health/ready").json()["status"] == "ready"
    assert "coach_active_calls" in client.get("/metrics").text


@pytest.mark.parametrize(
    ("first", "code"),
    [
        ({"sample_rate": 8000, "encoding": "pcm16", "channels": 2}, cc.INVALID_PAYLOAD),
        ({**HEADER, "encoding": "gsm"}, cc.UNSUPPORTED_DATA),
        ("not json", cc.INVALID_PAYLOAD),
    ],
)
def test_bad_header_closes_with_a_clear_code(client: TestClient, first: Any, code: int) -> None:
    with client.websocket_connect("/ingest/pcm") as ws:
        ws.send_text(first if isinstance(first, str) else json.dumps(first))
        got, msgs = close_code(ws)
    assert got == code
    assert msgs and msgs[0]["type"] == "error" and msgs[0]["message"]


def test_binary_before_header_is_refused(client: TestClient) -> None:
    with client.websocket_connect("/ingest/pcm") as ws:
        ws.send_bytes(b"\x00\x00")
        assert close_code(ws)[0] == cc.INVALID_PAYLOAD


def test_odd_frame_closes_but_the_call_still_ends_cleanly(
    client: TestClient, billing_call: Any
) -> None:
    pcm, rate = stereo_pcm(billing_call[0], seconds=3)
    with client.websocket_connect("/ws/calls/odd/events") as events:
        with client.websocket_connect("/ingest/pcm") as ws:
            ws.send_text(json.dumps({**HEADER, "call_id": "odd", "sample_rate": rate}))
            assert json.loads(ws.receive_text())["type"] == "accepted"
            ws.send_bytes(pcm[:6400])
            ws.send_bytes(b"\x01\x02\x03")
            code, msgs = close_code(ws)
        assert code == cc.INVALID_PAYLOAD and "whole number" in msgs[-1]["message"]
        evs = read_events(events)
    assert evs[0]["type"] == "call_start" and evs[-1]["type"] == "call_end"
    assert evs[-1]["reason"] == "error:bad_frame"


def test_oversized_frame_gets_1009(client: TestClient) -> None:
    with client.websocket_connect("/ingest/pcm") as ws:
        ws.send_text(json.dumps({**HEADER, "call_id": "big"}))
        ws.receive_text()
        ws.send_bytes(b"\x00" * 200_000)
        assert close_code(ws)[0] == cc.MESSAGE_TOO_BIG


@pytest.mark.slow
def test_disconnect_mid_utterance_still_emits_final_and_call_end(
    client: TestClient, billing_call: Any
) -> None:
    pcm, rate = stereo_pcm(billing_call[0])
    cut = int(9.0 * rate) * 4  # 9 s in: the customer is mid-sentence (turn 5.8-11.2 s)
    with client.websocket_connect("/ws/calls/cut/events") as events:
        with client.websocket_connect("/ingest/pcm") as ws:
            ws.send_text(json.dumps({**HEADER, "call_id": "cut", "sample_rate": rate}))
            ws.receive_text()
            for i in range(0, cut, 640):
                ws.send_bytes(pcm[i : i + 640])
        # leaving the block drops the connection without any end message
        evs = read_events(events)
    assert evs[-1]["type"] == "call_end" and evs[-1]["reason"] == "disconnect"
    last_customer = [e for e in evs if e["type"] == "transcript" and e["speaker"] == "customer"][-1]
    assert last_customer["t_end"] > 8.5 and "just looked" in last_customer["text"].lower()


@pytest.mark.slow
def test_ingest_matches_replay_fast_and_survives_a_broken_neighbour(
    client: TestClient, billing_call: Any, billing_replay: list[dict[str, Any]]
) -> None:
    wav = billing_call[0]
    pcm, rate = stereo_pcm(wav)
    with client.websocket_connect("/ws/calls/good/events") as events:
        with (
            client.websocket_connect("/ingest/pcm") as good,
            client.websocket_connect("/ingest/pcm") as bad,
        ):
            good.send_text(json.dumps({**HEADER, "call_id": "good", "sample_rate": rate}))
            bad.send_text(json.dumps({**HEADER, "call_id": "bad", "sample_rate": rate}))
            good.receive_text(), bad.receive_text()
            step = 1280  # 80 ms of 8 kHz stereo PCM16
            for n, i in enumerate(range(0, len(pcm), step)):
                good.send_bytes(pcm[i : i + step])
                if n == 50:
                    bad.send_bytes(b"\x00" * 7)  # the neighbour breaks the protocol
            good.send_text(json.dumps({"type": "end"}))
            assert close_code(good)[0] == cc.NORMAL
            assert close_code(bad)[0] == cc.INVALID_PAYLOAD
        live = read_events(events)
    fast = billing_replay

    def finals(evs: list[dict[str, Any]]) -> list[tuple[str, float, float, str]]:
        return [
            (e["speaker"], e["t_start"], e["t_end"], e["text"])
            for e in evs
            if e["type"] == "transcript"
        ]

    assert sorted(finals(live)) == sorted(finals(fast))
    assert live[-1]["type"] == "call_end" and live[-1]["reason"] == "end"


def test_a_refused_token_is_told_that_ingest_takes_the_key_or_an_admin_token(
    runtime: Runtime, tmp_path: Path
) -> None:
    """An audit streamed with a supervisor's (and with an expired) token and was told "missing
    or invalid API key", on a server that has no API key set: the reason now names both
    credentials the README gives for raw PCM."""
    secure = Settings(data_dir=tmp_path, auth_secret="s" * 32)
    sup = issue_token(user="sue", role="supervisor", secret=secure.signing_secret, ttl_s=60)
    refused = REGISTRY.get_sample_value(
        "coach_ingest_errors_total", {"protocol": "pcm", "reason": "unauthorized"}
    )
    with TestClient(create_app(secure, runtime)) as c:
        for query in (f"?token={sup}", ""):
            with c.websocket_connect(f"/ingest/pcm{query}") as ws:
                code, msgs = close_code(ws)
            assert code == cc.POLICY_VIOLATION
            assert msgs[0]["code"] == "unauthorized"
            assert "API key" in msgs[0]["message"] and "admin token" in msgs[0]["message"]
    # Counted, as Twilio's and AudioHook's refusals are (an outside ingest audit).
    assert (
        REGISTRY.get_sample_value(
            "coach_ingest_errors_total", {"protocol": "pcm", "reason": "unauthorized"}
        )
        == (refused or 0) + 2
    )


def test_auth_is_enforced(runtime: Runtime, tmp_path: Path) -> None:
    secure = Settings(data_dir=tmp_path, ingest_api_key="k-123", auth_secret="s" * 32)
    with TestClient(create_app(secure, runtime)) as c:
        with c.websocket_connect("/ingest/pcm") as ws:
            assert close_code(ws)[0] == cc.POLICY_VIOLATION
        with c.websocket_connect("/ingest/pcm?api_key=wrong") as ws:
            assert close_code(ws)[0] == cc.POLICY_VIOLATION
        with c.websocket_connect("/ingest/pcm", headers={"X-API-Key": "k-123"}) as ws:
            ws.send_text(json.dumps({**HEADER, "call_id": "authd"}))
            assert json.loads(ws.receive_text())["type"] == "accepted"
            ws.send_text(json.dumps({"type": "end"}))
            assert close_code(ws)[0] == cc.NORMAL
        with c.websocket_connect("/ws/calls/authd/events") as ws:
            assert close_code(ws)[0] == cc.POLICY_VIOLATION
        agent = issue_token(user="ann", role="agent", secret=secure.signing_secret, ttl_s=60)
        with c.websocket_connect(f"/ws/calls/authd/events?token={agent}") as ws:
            assert close_code(ws)[0] == cc.POLICY_VIOLATION  # not ann's call
        sup = issue_token(user="sue", role="supervisor", secret=secure.signing_secret, ttl_s=60)
        with c.websocket_connect(f"/ws/calls/authd/events?token={sup}") as ws:
            evs = read_events(ws)
        assert evs[0]["type"] == "call_start" and evs[-1]["type"] == "call_end"
        assert c.get("/api/calls").status_code == 401
        assert c.get("/api/calls", headers={"Authorization": f"Bearer {sup}"}).status_code == 200
        expired = issue_token(
            user="sue", role="supervisor", secret=secure.signing_secret, ttl_s=-10
        )
        assert (
            c.get("/api/calls", headers={"Authorization": f"Bearer {expired}"}).status_code == 401
        )


def test_a_streamed_call_lands_in_the_store_redacted(client: TestClient, billing_call: Any) -> None:
    import time

    pcm, rate = stereo_pcm(billing_call[0], seconds=12)
    with client.websocket_connect("/ingest/pcm") as ws:
        ws.send_text(
            json.dumps({**HEADER, "call_id": "stored", "sample_rate": rate, "agent_id": "ann"})
        )
        ws.receive_text()
        for i in range(0, len(pcm), 3200):
            ws.send_bytes(pcm[i : i + 3200])
        ws.send_text(json.dumps({"type": "end"}))
        assert close_code(ws)[0] == cc.NORMAL
    deadline = time.monotonic() + 10
    while True:
        got = client.get("/api/history/calls/stored")
        if got.status_code == 200 and got.json()["call"]["ended_at"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    body = got.json()
    assert got.status_code == 200, body
    call = body["call"]
    assert call["agent_id"] == "ann" and call["source"] == "pcm" and call["end_reason"] == "end"
    texts = [u["text"] for u in body["transcript"]]
    assert texts and any("looked" in t.lower() for t in texts)
    assert body["summary"] is not None


def test_a_silent_client_hears_that_the_idle_timeout_ended_its_call(
    runtime: Runtime, tmp_path: Path
) -> None:
    """Found by a docs audit: the call ended (idle_timeout) but the socket stayed open, so the
    sender could not tell its call was gone."""
    quiet = Settings(data_dir=tmp_path, idle_timeout_s=1.0, store_enabled=False, auth_disabled=True)
    with TestClient(create_app(quiet, runtime)) as c:
        with c.websocket_connect("/ingest/pcm") as ws:
            ws.send_text(json.dumps({**HEADER, "call_id": "idle-1"}))
            assert json.loads(ws.receive_text())["type"] == "accepted"
            ws.send_bytes(bytes(3200))  # 200 ms, then nothing
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_text()
        assert closed.value.code == cc.NORMAL and closed.value.reason == "idle_timeout"


def test_a_customer_id_that_is_a_phone_number_is_kept_as_an_alias(client: TestClient) -> None:
    """An outside PII audit: a customer id that is the caller's phone number (as telephony
    often gives it) reached the wall, the history and the store verbatim. It becomes a keyed
    alias at the door; a supervisor still finds the customer's calls by the number, in any
    format, and the repeat-contact lookup links the calls."""
    import time
    from urllib.parse import quote

    silence = b"\x00" * 3200  # 0.1 s of 8 kHz stereo PCM16
    for call_id, number in (("ph-1", "+1 (415) 555-0100"), ("ph-2", "14155550100")):
        with client.websocket_connect("/ingest/pcm") as ws:
            ws.send_text(json.dumps({**HEADER, "call_id": call_id, "customer_id": number}))
            ws.receive_text()
            for _ in range(5):
                ws.send_bytes(silence)
            wall = client.get("/api/supervisor/calls").text
            live = client.get(f"/api/calls/{call_id}").text
            ws.send_text(json.dumps({"type": "end"}))
            assert close_code(ws)[0] == cc.NORMAL
        for shown in (wall, live):  # not the number, in any of its forms
            assert "555-0100" not in shown and "4155550100" not in shown, shown
        assert '"customer_id":"phone-' in live.replace(" ", "")
    deadline = time.monotonic() + 10
    while True:
        stored = [client.get(f"/api/history/calls/ph-{i}") for i in (1, 2)]
        done = all(r.status_code == 200 and r.json()["call"]["ended_at"] for r in stored)
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    aliases = {r.json()["call"]["customer_id"] for r in stored}
    assert len(aliases) == 1
    assert all("555-0100" not in r.text and "4155550100" not in r.text for r in stored)
    (alias,) = aliases
    assert alias.startswith("phone-") and len(alias) == len("phone-") + 16
    for asked in ("+14155550100", "1 (415) 555-0100", alias):
        found = client.get(f"/api/customers/{quote(asked)}/history")
        assert found.status_code == 200, found.text
        assert sorted(c["call_id"] for c in found.json()["calls"]) == ["ph-1", "ph-2"], asked
        assert found.json()["customer_id"] == alias
    search = client.get("/api/history/calls", params={"customer_id": "+1 415 555 0100"})
    assert sorted(c["call_id"] for c in search.json()["calls"]) == ["ph-1", "ph-2"]
    # Erasure on a caller's request, by the number they give.
    erased = client.delete(f"/api/customers/{quote('+1 415-555-0100')}/history")
    assert erased.status_code == 200 and sorted(erased.json()["erased"]) == ["ph-1", "ph-2"]


def test_an_erased_call_leaves_no_copy_for_late_panels(
    client: TestClient, billing_call: Any
) -> None:
    """An outside audit: after an admin's erasure answered 204, the call's instance still
    replayed the whole call (card number included) to its agent's panel from the events it
    keeps for late panels. Erasure drops those too."""
    import time

    from coach.bus import agent_topic, call_topic

    pcm, rate = stereo_pcm(billing_call[0], seconds=8)
    with client.websocket_connect("/ingest/pcm") as ws:
        ws.send_text(json.dumps({**HEADER, "call_id": "erased", "sample_rate": rate}))
        ws.receive_text()
        for i in range(0, len(pcm), 3200):
            ws.send_bytes(pcm[i : i + 3200])
        ws.send_text(json.dumps({"type": "end"}))
        assert close_code(ws)[0] == cc.NORMAL
    state = client.app.state.coach  # type: ignore[attr-defined]
    kept = [e["type"] for e in state.bus.history(agent_topic("erased"))]
    assert "transcript" in kept and state.manager.get("erased") is not None
    deadline = time.monotonic() + 10
    while (r := client.get("/api/history/calls/erased")).status_code != 200 or not r.json()["call"][
        "ended_at"
    ]:
        assert time.monotonic() < deadline, "never stored"
        time.sleep(0.2)
    on_wall = [c["call_id"] for c in client.get("/api/supervisor/calls").json()["calls"]]
    assert "erased" in on_wall  # an ended call stays on the wall for a while
    assert client.delete("/api/history/calls/erased").status_code == 204
    assert client.get("/api/history/calls/erased").status_code == 404
    # Nor on the supervisors' wall: its tile quoted the caller in its handoffs.
    on_wall = [c["call_id"] for c in client.get("/api/supervisor/calls").json()["calls"]]
    assert "erased" not in on_wall
    assert state.bus.history(agent_topic("erased")) == []
    assert state.bus.history(call_topic("erased")) == []
    assert state.manager.get("erased") is None
