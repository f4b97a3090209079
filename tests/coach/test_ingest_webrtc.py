"""`POST /webrtc/offer`: an aiortc client streams a WAV to a real uvicorn server on loopback."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from coach.api.app import create_app
from coach.ingest import webrtc
from coach.runtime import Runtime
from coach.settings import Settings
from tests.conftest import wer
from tests.support import serve_in_thread

SENTENCE = "I was charged twice for my internet bill this month."


# -- pure helpers ---------------------------------------------------------------------------------


def test_stereo_s16_frame_becomes_channel_zero_float() -> None:
    inter = np.array([[16384, -16384]] * 960, dtype=np.int16).reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(inter, format="s16", layout="stereo")
    frame.sample_rate = 48000
    mono = webrtc.frame_to_mono(frame)
    assert mono.dtype == np.float32 and mono.shape == (960,)
    assert np.allclose(mono, 0.5)


def test_planar_and_mono_frames() -> None:
    planar = np.stack([np.full(160, 0.25, np.float32), np.full(160, -1.0, np.float32)])
    frame = av.AudioFrame.from_ndarray(planar, format="fltp", layout="stereo")
    assert np.allclose(webrtc.frame_to_mono(frame), 0.25)
    mono = av.AudioFrame.from_ndarray(
        np.full((1, 160), -8192, np.int16), format="s16", layout="mono"
    )
    assert np.allclose(webrtc.frame_to_mono(mono), -0.25)


def test_loopback_only_is_scoped() -> None:
    import aioice.ice

    with webrtc.loopback_only():
        assert aioice.ice.get_host_addresses(True, False) == ["127.0.0.1"]
    assert "127.0.0.1" not in aioice.ice.get_host_addresses(True, False)


def test_offer_needs_credentials_and_a_valid_body(runtime: Runtime, tmp_path: Path) -> None:
    secure = Settings(data_dir=tmp_path, ingest_api_key="k-123", auth_secret="s" * 32)
    with TestClient(create_app(secure, runtime)) as c:
        offer = {"sdp": "v=0\r\n", "type": "offer"}
        assert c.post("/webrtc/offer", json=offer).status_code == 401
        assert c.post("/webrtc/offer?api_key=wrong", json=offer).status_code == 401
        ok = {"X-API-Key": "k-123"}
        assert c.post("/webrtc/offer", json={"type": "offer"}, headers=ok).status_code == 400
        bad_id = {**offer, "call_id": "../x"}
        assert c.post("/webrtc/offer", json=bad_id, headers=ok).status_code == 400
        assert c.post("/webrtc/offer", json=offer, headers=ok).status_code == 400  # bad SDP


# -- end to end over loopback ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from scripts.make_test_calls import CallScript, Turn, render_call

    script = CallScript(call_id="mic", turns=(Turn("customer", SENTENCE),))
    wav, _ = render_call(
        script,
        tmp_path_factory.mktemp("webrtc"),
        sample_rate=48000,
        encoding="pcm16",
        channels=1,
        mono_party="customer",
        lead_silence_s=0.5,
        tail_silence_s=1.5,
    )
    return wav


async def next_event(ws: Any, want: str, within_s: float) -> list[dict[str, Any]]:
    """Read events until one of type `want`; return all read (the last is that one)."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(within_s):
        while True:
            ev = json.loads(await ws.recv())
            seen.append(ev)
            if ev["type"] == want:
                return seen


@pytest.mark.slow
async def test_aiortc_client_transcribed_and_ended(
    runtime: Runtime, settings: Settings, speech_wav: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.contrib.media import MediaPlayer
    from websockets.asyncio.client import connect

    monkeypatch.setenv(webrtc.LOOPBACK_ENV, "1")
    call_id = "rtc-test"
    with serve_in_thread(create_app(settings, runtime)) as port:
        host = f"127.0.0.1:{port}"
        async with connect(f"ws://{host}/ws/calls/{call_id}/events", open_timeout=10) as events:
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            player = MediaPlayer(str(speech_wav))
            try:
                assert player.audio is not None
                pc.addTrack(player.audio)
                with webrtc.loopback_only():
                    await pc.setLocalDescription(await pc.createOffer())
                async with httpx.AsyncClient(timeout=15) as http:
                    r = await http.post(
                        f"http://{host}/webrtc/offer",
                        json={
                            "sdp": pc.localDescription.sdp,
                            "type": "offer",
                            "call_id": call_id,
                        },
                    )
                assert r.status_code == 200, r.text
                ans = r.json()
                assert ans["type"] == "answer" and ans["call_id"] == call_id
                assert "127.0.0.1" in ans["sdp"]
                await pc.setRemoteDescription(RTCSessionDescription(ans["sdp"], ans["type"]))

                finals: list[str] = []
                async with asyncio.timeout(60):
                    while not finals or wer(SENTENCE, " ".join(finals)) >= 0.5:
                        evs = await next_event(events, "transcript", 60)
                        assert evs[-1]["speaker"] == "customer"
                        finals.append(evs[-1]["text"])
                assert wer(SENTENCE, " ".join(finals)) < 0.5, finals
            finally:
                await pc.close()
                if player.audio is not None:
                    player.audio.stop()
            # the server notices the closed peer connection and ends the call
            end = (await next_event(events, "call_end", 30))[-1]
            assert end["reason"] in ("end", "disconnect")
        assert webrtc.live_calls() == 0


@pytest.mark.slow
async def test_close_all_ends_live_calls_at_shutdown(
    runtime: Runtime, settings: Settings, speech_wav: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.contrib.media import MediaPlayer

    from coach.bus import call_topic

    monkeypatch.setenv(webrtc.LOOPBACK_ENV, "1")
    state = create_app(settings, runtime).state.coach
    sub = state.bus.subscribe(call_topic("rtc-shutdown"))
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    player = MediaPlayer(str(speech_wav))
    try:
        assert player.audio is not None
        pc.addTrack(player.audio)
        with webrtc.loopback_only():
            await pc.setLocalDescription(await pc.createOffer())
        ans = await webrtc.answer(
            {"sdp": pc.localDescription.sdp, "type": "offer", "call_id": "rtc-shutdown"},
            manager=state.manager,
        )
        await pc.setRemoteDescription(RTCSessionDescription(ans["sdp"], ans["type"]))
        for _ in range(150):  # up to 15 s for ICE, DTLS and the first second of audio
            session = state.manager.get("rtc-shutdown")
            if session is not None and session.fed_s >= 1.0:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("no audio arrived over WebRTC")
        assert webrtc.live_calls() == 1
        await webrtc.close_all()
        assert webrtc.live_calls() == 0
        async with asyncio.timeout(15):
            while (ev := await sub.queue.get()) is not None and ev["type"] != "call_end":
                pass
        assert ev is not None and ev["reason"] == "shutdown"
    finally:
        await pc.close()
        if player.audio is not None:
            player.audio.stop()
        state.bus.unsubscribe(sub)
        await state.manager.shutdown()
