"""Moving a live call to another agent ends the first agent's unredacted feed."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from coach.api.app import create_app
from coach.api.users import hash_password
from coach.auth import issue_token
from coach.runtime import Runtime
from coach.settings import Settings

SECRET = "unit-test-secret-of-at-least-32-bytes!"


def token(user: str, role: str, team: str | None = None) -> str:
    return issue_token(user=user, role=role, secret=SECRET, ttl_s=600, team=team)  # type: ignore[arg-type]


@pytest.fixture
def client(tmp_path: Path, runtime: Runtime) -> Iterator[TestClient]:
    h = hash_password("pw", n=2**10)
    users = [
        {"name": "ann", "role": "agent", "team": "blue", "password_hash": h},
        {"name": "amy", "role": "agent", "team": "blue", "password_hash": h},
        {"name": "ben", "role": "agent", "team": "green", "password_hash": h},
        {"name": "sam", "role": "supervisor", "team": "blue", "password_hash": h},
        {"name": "ada", "role": "admin", "password_hash": h},
    ]
    settings = Settings(
        data_dir=tmp_path, auth_secret=SECRET, users=users, ingest_api_key="k", store_enabled=False
    )
    with TestClient(create_app(settings, runtime)) as c:
        yield c


@contextlib.contextmanager
def agents_call(client: TestClient, call_id: str, agent: str = "ann") -> Iterator[tuple[Any, str]]:
    """A raw-PCM call of `agent`'s, accepted: its ingest socket and the id it runs under."""
    header = {"call_id": call_id, "sample_rate": 8000, "encoding": "pcm16", "channels": 2}
    with client.websocket_connect("/ingest/pcm?api_key=k") as ingest:
        ingest.send_json({**header, "agent_id": agent})
        accepted = ingest.receive_json()
        assert accepted["type"] == "accepted"
        yield ingest, accepted["call_id"]


def test_the_first_agents_feed_ends_when_the_call_is_moved(client: TestClient) -> None:
    """Found by a security audit: after a supervisor moved the call, the first agent's open
    panel kept receiving the customer's words (card number, email) in clear."""
    with agents_call(client, "mv1") as (ingest, _):
        feed = f"/ws/calls/mv1/events?token={token('ann', 'agent')}"
        with client.websocket_connect(feed) as ws:
            assert ws.receive_json()["type"] == "call_start"
            moved = client.put(
                "/api/calls/mv1/agent",
                json={"agent_id": "amy"},
                headers={"Authorization": f"Bearer {token('sam', 'supervisor', 'blue')}"},
            )
            assert moved.status_code == 200
            ingest.send_json({"type": "end"})  # (without the fix: the feed runs to call_end)
            seen = []
            with pytest.raises(WebSocketDisconnect) as closed:
                while True:
                    seen.append(ws.receive_json())
        assert closed.value.code == 1008
        assert [e["type"] for e in seen][-2:] == ["agent_assigned", "error"]
        assert seen[-1]["code"] == "reassigned"
        # The new agent's feed replays the call, the earlier assignment included, and stays.
        with client.websocket_connect(f"/ws/calls/mv1/events?token={token('amy', 'agent')}") as ws:
            kinds = [ws.receive_json()["type"], ws.receive_json()["type"]]
            assert kinds == ["call_start", "agent_assigned"]
            while ws.receive_json()["type"] != "call_end":
                pass
        amy = {"Authorization": f"Bearer {token('amy', 'agent')}"}
        detail = client.get("/api/calls/mv1", headers=amy).json()
        assert detail["summary"] is not None and "arc" in detail["summary"]  # CONTRACT


def test_a_team_supervisors_feed_ends_when_the_call_leaves_the_team(client: TestClient) -> None:
    with agents_call(client, "mv2") as (ingest, _):
        sam = f"/ws/calls/mv2/events?token={token('sam', 'supervisor', 'blue')}"
        ada = f"/ws/calls/mv2/events?token={token('ada', 'admin')}"
        with client.websocket_connect(sam) as blue, client.websocket_connect(ada) as admin:
            assert blue.receive_json()["type"] == admin.receive_json()["type"] == "call_start"
            moved = client.put(
                "/api/calls/mv2/agent",
                json={"agent_id": "ben"},
                headers={"Authorization": f"Bearer {token('ada', 'admin')}"},
            )
            assert moved.status_code == 200
            ingest.send_json({"type": "end"})
            seen = []
            with pytest.raises(WebSocketDisconnect) as closed:
                while True:
                    seen.append(blue.receive_json())
            assert closed.value.code == 1008 and seen[-1]["code"] == "reassigned"
            # The admin may watch any call: their feed runs on to the call's end.
            kinds = []
            with pytest.raises(WebSocketDisconnect) as ended:
                while True:
                    kinds.append(admin.receive_json()["type"])
            assert ended.value.code == 1000 and kinds[-1] == "call_end"


def test_an_ingest_that_names_a_supervisor_as_agent_gives_them_no_unredacted_feed(
    client: TestClient,
) -> None:
    """Found by an outside PII audit: a PCM header with `agent_id: "sam"` (a supervisor; the
    ingest's agent id is not checked against the directory) gave sam the call's unredacted
    feed. Only a person signed in as an agent gets it; the named agent still does."""
    from coach.bus import agent_topic, call_topic

    bus = client.app.state.coach.bus  # type: ignore[attr-defined]
    said = {"call_id": "named", "t_emit": 1.0, "type": "transcript", "speaker": "customer"}
    for named, role, team, sees in (
        ("sam", "supervisor", "blue", "[CARD]"),
        ("ann", "agent", None, "4111 1111 1111 1111"),
    ):
        with agents_call(client, f"named-{named}", named) as (ingest, call_id):
            feed = f"/ws/calls/{call_id}/events?token={token(named, role, team)}"
            with client.websocket_connect(feed) as ws:
                assert ws.receive_json()["type"] == "call_start"
                ev = {**said, "call_id": call_id, "seq": 900}
                bus.publish(agent_topic(call_id), {**ev, "text": "4111 1111 1111 1111"})
                bus.publish(call_topic(call_id), {**ev, "text": "[CARD]"})
                got = ws.receive_json()
                while got["type"] != "transcript":
                    got = ws.receive_json()
            assert got["text"] == sees, (named, got)
            ingest.send_json({"type": "end"})


def test_the_agents_feed_of_a_call_handed_over_asks_to_connect_again(client: TestClient) -> None:
    """A draining instance hands a dropped call over (CallManager._spawn_hand_over): the
    agent's unredacted feed there gets no more events, and an outside drain test saw the
    panel freeze for the rest of the call. It now closes with 1013 `moved`, which the panel
    answers by connecting again (web/common/stream.js) and resuming after its last seq."""
    from coach.bus import agent_topic

    with agents_call(client, "ho1") as (ingest, _):
        feed = f"/ws/calls/ho1/events?token={token('ann', 'agent')}"
        with client.websocket_connect(feed) as ws:
            assert ws.receive_json()["type"] == "call_start"
            bus = client.app.state.coach.bus  # type: ignore[attr-defined]
            client.portal.call(bus.move_topic, agent_topic("ho1"))  # type: ignore[union-attr]
            with pytest.raises(WebSocketDisconnect) as closed:
                while True:
                    last = ws.receive_json()
        assert closed.value.code == 1013
        assert last == {
            "type": "error",
            "code": "moved",
            "message": "the call moved to another instance",
        }
        ingest.send_json({"type": "end"})
