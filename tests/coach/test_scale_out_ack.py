"""A supervisor on one instance takes an escalation of a call another instance runs: the
call's agent is told (`escalation_taken` on the call's own stream), as when both are on one
instance. Two whole apps on the shared Redis and one PostgreSQL database, as a scaled-out
deployment runs them; the unit side of it (a bare bus playing the other instance) is in
test_app_wiring.py.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from coach.api.app import create_app
from coach.auth import issue_token
from coach.bus import agent_topic
from coach.runtime import Runtime
from coach.settings import Settings
from tests.coach.test_redis_bus import needs_redis
from tests.coach.test_store_support import pg_url

SECRET = "unit-test-secret-of-at-least-32-bytes!"
REDIS_URL = "redis://127.0.0.1:6379/7"  # a database no other test uses: cleared afterwards


def token(user: str, role: str) -> str:
    return issue_token(user=user, role=role, secret=SECRET, ttl_s=600, team="blue")  # type: ignore[arg-type]


def _clear_redis() -> None:
    import redis as sync_redis

    client = sync_redis.Redis.from_url(REDIS_URL)
    try:
        keys = client.keys("coach:*")
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def instances(
    runtime: Runtime, tmp_path: Path, pg_database: str
) -> Iterator[tuple[TestClient, TestClient]]:
    _clear_redis()

    def settings(name: str) -> Settings:
        return Settings(
            data_dir=tmp_path / name,
            auth_secret=SECRET,
            ingest_api_key="k",
            redis_url=REDIS_URL,
            instance_id=name,
            database_url=pg_url(pg_database),
            store_flush_interval_s=0.1,
            idle_timeout_s=0,
        )

    try:
        with (
            TestClient(create_app(settings("A"), runtime)) as a,
            TestClient(create_app(settings("B"), runtime)) as b,
        ):
            yield a, b
    finally:
        _clear_redis()


def _agent_history(client: TestClient, call_id: str) -> list[dict[str, Any]]:
    bus = client.app.state.coach.bus  # type: ignore[attr-defined]
    assert client.portal is not None
    return list(client.portal.call(lambda: bus.history(agent_topic(call_id))))


@needs_redis
def test_an_escalation_taken_on_another_instance_reaches_the_calls_agent(
    instances: tuple[TestClient, TestClient],
) -> None:
    a, b = instances
    call_id = f"ack-{uuid.uuid4().hex[:8]}"
    header = {"call_id": call_id, "sample_rate": 8000, "encoding": "pcm16", "channels": 2}
    with a.websocket_connect("/ingest/pcm?api_key=k") as ingest:
        ingest.send_text(json.dumps({**header, "agent_id": "ann"}))
        assert ingest.receive_json()["type"] == "accepted"
        feed = f"/ws/calls/{call_id}/events?token={token('ann', 'agent')}"
        with a.websocket_connect(feed) as panel:
            assert panel.receive_json()["type"] == "call_start"
            session = a.app.state.coach.manager.get(call_id)  # type: ignore[attr-defined]
            assert session is not None
            assert b.app.state.coach.manager.get(call_id) is None  # type: ignore[attr-defined]
            assert a.portal is not None
            a.portal.call(
                session.emit,
                {
                    "type": "escalation",
                    "reason": "user_request",
                    "urgency": "high",
                    "detail": "escalation_request cue",
                    "summary": {"text": "Customer wants a manager."},
                },
            )
            seq = session.last_event["seq"]
            # The supervisor's wall is on B; B's store has the escalation once A wrote it.
            sam = {"Authorization": f"Bearer {token('sam', 'supervisor')}"}
            deadline = time.monotonic() + 15
            while True:
                taken = b.post(f"/api/calls/{call_id}/escalations/{seq}/ack", headers=sam)
                if taken.status_code != 404 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert taken.status_code == 200, taken.text
            assert taken.json()["acknowledged_by"] == "sam"
            # A hears of it through Redis and tells the call's agent.
            deadline = time.monotonic() + 10
            while not any(e["type"] == "escalation_taken" for e in _agent_history(a, call_id)):
                assert time.monotonic() < deadline, "the acknowledgement never reached A"
                time.sleep(0.1)
            # The live call's record on A says who took it (it never did: a scaling audit).
            ada = {"Authorization": f"Bearer {token('ada', 'admin')}"}
            live = a.get(f"/api/calls/{call_id}", headers=ada).json()
            assert [e.get("acknowledged_by") for e in live["escalations"]] == ["sam"], live
            assert live["escalations"][0]["acknowledged_at"], live
            ingest.send_text(json.dumps({"type": "end"}))
            seen = []
            while not seen or seen[-1]["type"] != "call_end":
                seen.append(panel.receive_json())
    told = [e for e in seen if e["type"] == "escalation_taken"]
    assert len(told) == 1, told
    assert (told[0]["escalation_seq"], told[0]["by"]) == (seq, "sam")
    # The stored call says who took it, read on the instance that ran it.
    stored = a.get(f"/api/history/calls/{call_id}", headers=sam).json()
    assert [e["acknowledged_by"] for e in stored["escalations"]] == ["sam"], stored


@needs_redis
def test_a_call_moved_to_another_agent_ends_the_first_agents_feed_on_another_instance(
    instances: tuple[TestClient, TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outside scaling audit: the call ran on A, ann watched it on B, and a supervisor
    moved it to cal. Ann's feed on A closed; on B it went on to the end of the call: B's
    wall, whose copy of the call's meta the feed checked, learns of the move from another
    stream than the feed, and it can come later. Here it never comes."""
    from starlette.websockets import WebSocketDisconnect

    from coach.api import wall as wall_module

    fold = wall_module._fold
    monkeypatch.setattr(
        wall_module,
        "_fold",
        lambda tile, event, at: (
            None if event["type"] == "agent_assigned" else fold(tile, event, at)
        ),
    )
    a, b = instances
    call_id = f"move-{uuid.uuid4().hex[:8]}"
    header = {"call_id": call_id, "sample_rate": 8000, "encoding": "pcm16", "channels": 2}
    with a.websocket_connect("/ingest/pcm?api_key=k") as ingest:
        ingest.send_text(json.dumps({**header, "agent_id": "ann"}))
        assert ingest.receive_json()["type"] == "accepted"
        feed = f"/ws/calls/{call_id}/events?token={token('ann', 'agent')}"
        deadline = time.monotonic() + 10
        while b.app.state.wall.meta(call_id) is None:  # type: ignore[attr-defined]
            assert time.monotonic() < deadline, "B's wall never saw the call"
            time.sleep(0.1)
        with b.websocket_connect(feed) as panel:
            assert panel.receive_json()["type"] == "call_start"
            ada = {"Authorization": f"Bearer {token('ada', 'admin')}"}
            moved = b.put(f"/api/calls/{call_id}/agent", json={"agent_id": "cal"}, headers=ada)
            assert moved.status_code == 202, moved.text
            seen = []
            # Should the feed stay open, the call's end closes it (1000) within seconds.
            ender = threading.Timer(8.0, lambda: ingest.send_text(json.dumps({"type": "end"})))
            ender.start()
            try:
                with pytest.raises(WebSocketDisconnect) as closed:
                    while True:
                        seen.append(panel.receive_json())
            finally:
                ender.cancel()
            assert closed.value.code == 1008, seen
            assert seen[-1]["type"] == "error" and seen[-1]["code"] == "reassigned", seen
            assert any(e["type"] == "agent_assigned" for e in seen), seen
        ingest.send_text(json.dumps({"type": "end"}))
