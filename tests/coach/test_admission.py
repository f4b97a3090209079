"""Admission control: COACH_MAX_CALLS, each protocol's refusal, and readiness at the limit.

The limit is per instance: `CallManager.open()` of a new call while `max_calls` calls hold a
slot raises `CallRejected("over_capacity")`; every ingest turns that into its protocol's
"try again later" and `/health/ready` says 503 so the load balancer routes elsewhere. A call
waiting for its connection to come back (reconnect grace) keeps its slot and is never refused.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from coach.api.app import create_app
from coach.bus import InProcessBus
from coach.calls import DRAINING, OVER_CAPACITY, RETRY_AFTER_S, CallManager, CallRejected
from coach.ingest import closecodes as cc
from coach.ingest.audiosocket import ErrorFrame, ServerError
from coach.messages import AudioChunk
from coach.runtime import Runtime
from coach.session import CallSession
from coach.settings import Settings
from models.runtime import SchedulerLoad
from tests.coach.test_ingest_audiohook import Connect, open_params
from tests.coach.test_ingest_audiosocket import Client, serving, single
from tests.coach.test_ingest_twilio import TwilioClient, close_of

RATE = 8000
PCM_HEADER = {"sample_rate": 8000, "encoding": "pcm16", "channels": 2}


def rejected(reason: str = OVER_CAPACITY) -> float:
    return REGISTRY.get_sample_value("coach_calls_rejected_total", {"reason": reason}) or 0.0


def ingest_errors(protocol: str, reason: str = OVER_CAPACITY) -> float:
    labels = {"protocol": protocol, "reason": reason}
    return REGISTRY.get_sample_value("coach_ingest_errors_total", labels) or 0.0


def limited(settings: Settings, max_calls: int, **more: Any) -> Settings:
    return settings.model_copy(update={"max_calls": max_calls, **more})


def manager_for(runtime: Runtime, settings: Settings) -> CallManager:
    return CallManager(runtime=runtime, settings=settings, bus=InProcessBus())


async def open_call(manager: CallManager, call_id: str, source: str = "pcm") -> CallSession:
    return await manager.open(call_id=call_id, source=source, speakers=("customer",))


# -- the manager -----------------------------------------------------------------------------


async def test_the_call_beyond_the_limit_is_refused_until_one_ends(
    runtime: Runtime, settings: Settings
) -> None:
    manager = manager_for(runtime, limited(settings, 2))
    a = await open_call(manager, "adm-a")
    await open_call(manager, "adm-b")
    assert manager.at_capacity() and manager.holding() == 2
    before = rejected()
    with pytest.raises(CallRejected) as refused:
        await open_call(manager, "adm-c")
    assert refused.value.reason == OVER_CAPACITY and refused.value.try_again_later
    assert "COACH_MAX_CALLS=2" in str(refused.value)
    assert rejected() == before + 1
    assert manager.get("adm-c") is None  # nothing was created for it
    await manager.finish(a, "end")
    assert not manager.at_capacity()
    await open_call(manager, "adm-c")  # the freed slot is taken
    await manager.shutdown()


async def test_calls_people_start_get_one_each_and_half_the_slots(
    runtime: Runtime, settings: Settings
) -> None:
    """Found by a security audit: one agent's eight microphone offers filled the instance
    and the telephony's next call was refused."""
    manager = manager_for(runtime, limited(settings, 4))

    async def personal(call_id: str, person: str) -> CallSession:
        return await manager.open(
            call_id=call_id, source="webrtc", speakers=("customer",), started_by=person
        )

    mine = await personal("p-ann", "ann")
    assert mine.meta["started_by"] == "ann"
    with pytest.raises(CallRejected) as again:
        await personal("p-ann-2", "ann")
    assert again.value.reason == "personal_limit" and not again.value.try_again_later
    await personal("p-ben", "ben")
    with pytest.raises(CallRejected) as full:  # 2 of 4: the rest is kept for telephony
        await personal("p-cal", "cal")
    assert full.value.reason == OVER_CAPACITY and full.value.try_again_later
    await open_call(manager, "tel-1")
    await open_call(manager, "tel-2")
    assert manager.at_capacity()  # telephony may use every slot
    await manager.finish(mine, "end")
    assert (await personal("p-ann-3", "ann")).meta["started_by"] == "ann"  # hers ended
    await manager.shutdown()


async def test_no_limit_when_zero(runtime: Runtime, settings: Settings) -> None:
    manager = manager_for(runtime, limited(settings, 0))
    for i in range(6):
        await open_call(manager, f"adm-free-{i}")
    assert not manager.at_capacity()
    await manager.shutdown()


async def test_a_duplicate_is_not_a_capacity_refusal(runtime: Runtime, settings: Settings) -> None:
    manager = manager_for(runtime, limited(settings, 1))
    await open_call(manager, "adm-dup")
    with pytest.raises(CallRejected) as refused:
        await open_call(manager, "adm-dup")
    assert refused.value.reason == "duplicate_call" and not refused.value.try_again_later
    await manager.shutdown()


async def test_a_reconnect_within_grace_is_never_refused(
    runtime: Runtime, settings: Settings
) -> None:
    manager = manager_for(runtime, limited(settings, 2, reconnect_grace_s=30.0))
    a = await open_call(manager, "adm-r1")
    await open_call(manager, "adm-r2")
    await a.feed(AudioChunk("adm-r1", "customer", np.zeros(160, np.float32), RATE, 0.0))
    await manager.detach(a, "disconnect")
    assert manager.is_detached("adm-r1")
    # The detached call keeps its slot: a new call is still refused...
    with pytest.raises(CallRejected):
        await open_call(manager, "adm-r3")
    # ...but the call itself comes back, at the limit, as the same session.
    again = await open_call(manager, "adm-r1")
    assert again is a and a.reconnects == 1
    assert not manager.is_detached("adm-r1")
    await manager.shutdown()


async def test_a_draining_manager_refuses_new_calls_but_takes_back_a_reconnect(
    runtime: Runtime, settings: Settings
) -> None:
    manager = manager_for(runtime, limited(settings, 0, reconnect_grace_s=30.0))
    a = await open_call(manager, "adm-d1")
    await a.feed(AudioChunk("adm-d1", "customer", np.zeros(160, np.float32), RATE, 0.0))
    await manager.detach(a, "disconnect")
    stop = asyncio.Event()
    drain = asyncio.create_task(manager.drain(60.0, abandon=stop.is_set))
    await asyncio.sleep(0.05)
    before = rejected(DRAINING)
    with pytest.raises(CallRejected) as refused:
        await open_call(manager, "adm-d2")
    assert refused.value.try_again_later and cc.for_rejection(DRAINING) == cc.TRY_AGAIN_LATER
    assert rejected(DRAINING) == before + 1
    assert REGISTRY.get_sample_value("coach_draining") == 1.0
    # The dropped call comes back to finish here: refusing it would cut it short.
    assert await open_call(manager, "adm-d1") is a
    # Still live: the drain waits, until a second signal says to stop waiting.
    await asyncio.sleep(0.5)
    assert not drain.done()
    stop.set()
    assert await asyncio.wait_for(drain, 2) == 1
    await manager.shutdown()


async def test_overloaded_follows_the_asr_queue_delay(
    runtime: Runtime, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = manager_for(runtime, settings)
    sched = runtime.asr_scheduler
    monkeypatch.setattr(sched, "load", lambda now=None: SchedulerLoad(depth=9, wait_s=2.5))
    assert manager.overloaded()
    monkeypatch.setattr(sched, "load", lambda now=None: SchedulerLoad(depth=1, wait_s=0.2))
    assert not manager.overloaded()


# -- readiness ---------------------------------------------------------------------------------


@pytest.fixture
def one_call(runtime: Runtime, settings: Settings) -> Iterator[TestClient]:
    """An app that admits one call."""
    with TestClient(create_app(limited(settings, 1), runtime)) as c:
        yield c


def pcm_call(tc: TestClient, call_id: str) -> Any:
    ws = tc.websocket_connect("/ingest/pcm")
    conn = ws.__enter__()
    conn.send_text(json.dumps({"call_id": call_id, **PCM_HEADER}))
    assert json.loads(conn.receive_text())["type"] == "accepted"
    return ws, conn


def end_pcm_call(ws: Any, conn: Any) -> None:
    conn.send_bytes(bytes(4 * 160))
    conn.send_text(json.dumps({"type": "end"}))
    code, _, _ = close_of(conn)
    assert code == cc.NORMAL
    ws.__exit__(None, None, None)


def test_ready_is_503_at_the_limit_and_200_again_after(one_call: TestClient) -> None:
    ready = one_call.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["max_calls"] == 1
    ws, conn = pcm_call(one_call, "adm-ready")
    at_limit = one_call.get("/health/ready")
    assert at_limit.status_code == 503
    assert at_limit.json()["status"] == "at_capacity" and at_limit.json()["active_calls"] == 1
    assert one_call.get("/health/live").status_code == 200  # alive, just full
    end_pcm_call(ws, conn)
    assert one_call.get("/health/ready").status_code == 200


def test_ready_is_503_while_the_asr_queue_lags(
    runtime: Runtime, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        runtime.asr_scheduler, "load", lambda now=None: SchedulerLoad(depth=12, wait_s=3.0)
    )
    with TestClient(create_app(settings, runtime)) as c:
        r = c.get("/health/ready")
    assert r.status_code == 503 and r.json()["status"] == "overloaded"


# -- each protocol's refusal -------------------------------------------------------------------


def test_pcm_refusal_is_an_error_message_and_1013(one_call: TestClient) -> None:
    ws, conn = pcm_call(one_call, "adm-pcm-1")
    before = ingest_errors("pcm")
    with one_call.websocket_connect("/ingest/pcm") as second:
        second.send_text(json.dumps({"call_id": "adm-pcm-2", **PCM_HEADER}))
        code, reason, texts = close_of(second)
    assert code == cc.TRY_AGAIN_LATER
    assert json.loads(texts[0])["code"] == OVER_CAPACITY
    assert "COACH_MAX_CALLS" in reason
    assert ingest_errors("pcm") == before + 1
    end_pcm_call(ws, conn)


def test_twilio_refusal_is_1013_with_a_reason_and_no_message(one_call: TestClient) -> None:
    ws, conn = pcm_call(one_call, "adm-tw-1")
    before = ingest_errors("twilio")
    with one_call.websocket_connect("/ingest/twilio") as sock:
        TwilioClient(sock, call_id="adm-tw-2").handshake()
        code, reason, texts = close_of(sock)
    assert code == cc.TRY_AGAIN_LATER
    assert reason.startswith(f"{OVER_CAPACITY}: ")
    assert texts == []  # Twilio treats any unexpected server message as an error
    assert ingest_errors("twilio") == before + 1
    end_pcm_call(ws, conn)


def test_audiohook_refusal_is_disconnect_then_the_close_transaction(
    one_call: TestClient,
) -> None:
    ws, conn = pcm_call(one_call, "adm-ah-1")
    before = ingest_errors("audiohook")
    with Connect(one_call) as ah:
        ah.send("open", open_params(ah))
        msg = ah.receive()
        # The spec's server-initiated end: `disconnect` instead of `opened`, no audio wanted.
        assert msg["type"] == "disconnect"
        assert msg["parameters"]["reason"] == "error"
        assert OVER_CAPACITY in msg["parameters"]["info"] or "capacity" in msg["parameters"]["info"]
        ah.assert_common(ah.close("disconnect"))  # the client's close is answered with closed
    assert ingest_errors("audiohook") == before + 1
    manager = one_call.app.state.coach.manager  # type: ignore[attr-defined]
    assert [c.call_id for c in manager.live()] == ["adm-ah-1"]
    end_pcm_call(ws, conn)


async def test_audiosocket_refusal_is_an_error_frame_then_close(
    runtime: Runtime, settings: Settings
) -> None:
    manager = manager_for(runtime, limited(settings, 1))
    await open_call(manager, "adm-as-1")
    before = ingest_errors("audiosocket")
    async with serving(manager) as port:
        client = await Client.connect(port, single(77))
        got = await client.received()
    assert got == [ErrorFrame(bytes([ServerError.OVERLOADED]))]
    assert ingest_errors("audiosocket") == before + 1
    assert manager.get(str(single(77))) is None
    await manager.shutdown()


async def _offer_sdp() -> str:
    from aiortc import RTCConfiguration, RTCPeerConnection
    from aiortc.mediastreams import AudioStreamTrack

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTrack(AudioStreamTrack())
    await pc.setLocalDescription(await pc.createOffer())
    sdp = str(pc.localDescription.sdp)
    await pc.close()
    return sdp


def test_webrtc_refusal_is_503_with_retry_after(one_call: TestClient, tmp_path: Path) -> None:
    sdp = asyncio.run(_offer_sdp())
    ws, conn = pcm_call(one_call, "adm-rtc-1")
    before = ingest_errors("webrtc")
    r = one_call.post(
        "/webrtc/offer",
        json={"sdp": sdp, "type": "offer", "call_id": f"adm-{uuid.uuid4().hex[:8]}"},
    )
    assert r.status_code == 503
    assert r.headers["retry-after"] == str(RETRY_AFTER_S)
    assert "capacity" in r.json()["detail"]
    assert ingest_errors("webrtc") == before + 1
    end_pcm_call(ws, conn)


# -- ended calls do not accumulate --------------------------------------------------------------


async def test_an_ended_call_is_kept_a_while_then_released(
    runtime: Runtime, settings: Settings
) -> None:
    import gc
    import weakref

    from coach.bus import agent_topic, call_topic

    manager = manager_for(runtime, settings)
    manager.ended_retention_s = 0.2
    session = await open_call(manager, "adm-end-1")
    await session.feed(AudioChunk("adm-end-1", "customer", np.zeros(1600, np.float32), RATE, 0.0))
    await manager.finish(session, "end")
    await asyncio.sleep(0)  # the end task's done callbacks
    # Right after the end: still there for a late panel or GET /api/calls/{id}.
    assert manager.get("adm-end-1") is session and manager.ended_kept() == 1
    assert manager.bus.history(call_topic("adm-end-1"))[-1]["type"] == "call_end"
    await asyncio.sleep(0.4)
    assert manager.get("adm-end-1") is None and manager.ended_kept() == 0
    assert manager.bus.history(call_topic("adm-end-1")) == []
    assert manager.bus.is_closed(call_topic("adm-end-1"))  # a late panel is told it is over
    assert manager.bus.is_closed(agent_topic("adm-end-1"))
    ref = weakref.ref(session)
    del session
    gc.collect()
    assert ref() is None  # nothing else holds the call (its audio ring, pipelines)
    await manager.shutdown()


async def test_ended_calls_beyond_the_cap_go_at_once(
    runtime: Runtime, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import coach.calls as calls_module

    monkeypatch.setattr(calls_module, "MAX_ENDED_KEPT", 2)
    manager = manager_for(runtime, limited(settings, 0))
    for i in range(4):
        await manager.finish(await open_call(manager, f"adm-cap-{i}"), "end")
        await asyncio.sleep(0)
    assert manager.ended_kept() == 2
    assert manager.get("adm-cap-0") is None and manager.get("adm-cap-1") is None
    assert manager.get("adm-cap-3") is not None
    await manager.shutdown()


async def test_a_call_id_used_again_after_its_end_is_retired_again(
    runtime: Runtime, settings: Settings
) -> None:
    manager = manager_for(runtime, settings)
    manager.ended_retention_s = 0.2
    first = await open_call(manager, "adm-again")
    await manager.finish(first, "end")
    await asyncio.sleep(0)
    second = await open_call(manager, "adm-again")
    assert second is not first and second.call_id == "adm-again~2"  # a new leg (calls.py)
    await asyncio.sleep(0.3)  # the first call's timer must not drop the second one
    assert manager.get("adm-again") is None and manager.get("adm-again~2") is second
    await manager.finish(second, "end")
    await asyncio.sleep(0.4)
    assert manager.get("adm-again~2") is None
    await manager.shutdown()
