"""Putting an agent on a live call over REST: who may, what changes, and that it is stored."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from coach.api.app import create_app
from coach.api.users import hash_password
from coach.auth import issue_token
from coach.runtime import Runtime
from coach.settings import Settings

SECRET = "unit-test-secret-of-at-least-32-bytes!"


def bearer(user: str, role: str, team: str | None = None) -> dict[str, str]:
    token = issue_token(user=user, role=role, secret=SECRET, ttl_s=600, team=team)  # type: ignore[arg-type]
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def client(tmp_path: Path, runtime: Runtime) -> Iterator[TestClient]:
    h = hash_password("pw", n=2**10)
    users = [
        {"name": "ann", "role": "agent", "team": "blue", "password_hash": h},
        {"name": "ben", "role": "agent", "team": "green", "password_hash": h},
        {"name": "cal", "role": "agent", "team": "blue", "password_hash": h},
        {"name": "sam", "role": "supervisor", "team": "blue", "password_hash": h},
        {"name": "gil", "role": "supervisor", "team": "green", "password_hash": h},
        {"name": "ada", "role": "admin", "password_hash": h},
    ]
    settings = Settings(
        data_dir=tmp_path, auth_secret=SECRET, users=users, ingest_api_key="k", store_enabled=True
    )
    with TestClient(create_app(settings, runtime)) as c:
        yield c


def test_assign_an_agent_to_a_live_call(client: TestClient) -> None:
    with client.websocket_connect("/ingest/pcm?api_key=k") as ws:
        ws.send_json({"call_id": "a1", "sample_rate": 8000, "encoding": "pcm16", "channels": 2})
        assert ws.receive_json()["type"] == "accepted"
        # Nobody is on the call yet: the agent cannot see it, an agent may not assign at all.
        assert client.get("/api/calls/a1", headers=bearer("ann", "agent")).status_code == 403
        put = client.put
        body = {"agent_id": "ann"}
        assert (
            put("/api/calls/a1/agent", json=body, headers=bearer("ann", "agent")).status_code == 403
        )
        assert (
            put("/api/calls/nope/agent", json=body, headers=bearer("ada", "admin")).status_code
            == 404
        )
        unknown = put(
            "/api/calls/a1/agent", json={"agent_id": "zed"}, headers=bearer("ada", "admin")
        )
        assert unknown.status_code == 422
        misspelt = put("/api/calls/a1/agent", json={"agent": "ann"}, headers=bearer("ada", "admin"))
        assert misspelt.status_code == 422 and "agent_id" in misspelt.text
        extra = {"agent_id": "ann", "note": "x"}
        assert (
            put("/api/calls/a1/agent", json=extra, headers=bearer("ada", "admin")).status_code
            == 422
        )

        ok = put("/api/calls/a1/agent", json=body, headers=bearer("ada", "admin"))
        assert ok.status_code == 200 and ok.json()["meta"]["agent_id"] == "ann"
        assert client.get("/api/calls/a1", headers=bearer("ann", "agent")).status_code == 200
        wall = client.get("/api/supervisor/calls", headers=bearer("ada", "admin")).json()
        assert "ann" in str(wall), wall
        assert client.get("/api/calls/a1", headers=bearer("ben", "agent")).status_code == 403
        # Ann's supervisor may now move the call within the team, not to another team.
        other_team = put(
            "/api/calls/a1/agent",
            json={"agent_id": "ben"},
            headers=bearer("sam", "supervisor", "blue"),
        )
        assert other_team.status_code == 403
        ws.send_json({"type": "end"})
    # The stored call carries the agent assigned during the call.
    deadline = time.monotonic() + 15
    while True:
        stored = client.get("/api/history/calls/a1", headers=bearer("ada", "admin"))
        if stored.status_code == 200 and stored.json()["call"].get("ended_at"):
            break
        assert time.monotonic() < deadline, stored.text
        time.sleep(0.2)
    assert stored.json()["call"]["agent_id"] == "ann"


def test_any_team_supervisor_assigns_an_unassigned_call_to_their_team(
    client: TestClient,
) -> None:
    sam, gil = bearer("sam", "supervisor"), bearer("gil", "supervisor")
    with client.websocket_connect("/ingest/pcm?api_key=k") as ws:
        ws.send_json({"call_id": "u1", "sample_rate": 8000, "encoding": "pcm16", "channels": 2})
        assert ws.receive_json()["type"] == "accepted"
        # No agent on it: every team's supervisor sees it (someone has to pick it up).
        for who in (sam, gil):
            assert client.get("/api/calls/u1", headers=who).status_code == 200
            assert "u1" in str(client.get("/api/calls", headers=who).json())
            assert "u1" in str(client.get("/api/supervisor/calls", headers=who).json())
        # ...and may put an agent of their own team on it, not one of another team.
        to_ben = client.put("/api/calls/u1/agent", json={"agent_id": "ben"}, headers=sam)
        assert to_ben.status_code == 403 and "not on your team" in to_ben.text
        to_ann = client.put("/api/calls/u1/agent", json={"agent_id": "ann"}, headers=sam)
        assert to_ann.status_code == 200, to_ann.text
        assert to_ann.json()["meta"]["agent_id"] == "ann"
        # Assigned: the normal team rules from now on.
        assert client.get("/api/calls/u1", headers=gil).status_code == 403
        assert "u1" not in str(client.get("/api/calls", headers=gil).json())
        assert "u1" not in str(client.get("/api/supervisor/calls", headers=gil).json())
        taken = client.put("/api/calls/u1/agent", json={"agent_id": "ben"}, headers=gil)
        assert taken.status_code == 403 and "not your team's call" in taken.text
        assert client.get("/api/calls/u1", headers=bearer("ann", "agent")).status_code == 200
        ws.send_json({"type": "end"})


def test_an_ended_call_is_not_moved_to_another_agent(client: TestClient) -> None:
    """Only a live call takes an agent. An ended call stays in memory for two minutes (its
    panels may still fetch it), and moving it then rewrote the stored call's agent: its own
    agent lost the history of the call they took (found by a README audit)."""
    sam, ann = bearer("sam", "supervisor", "blue"), bearer("ann", "agent", "blue")
    header = {"call_id": "e1", "sample_rate": 8000, "encoding": "pcm16", "channels": 1}
    with client.websocket_connect("/ingest/pcm?api_key=k") as ws:
        ws.send_json({**header, "agent_id": "ann"})
        assert ws.receive_json()["type"] == "accepted"
        ws.send_bytes(b"\x00" * 320)
        ws.send_json({"type": "end"})
        with pytest.raises(WebSocketDisconnect):  # closed once the call is finalized
            while True:
                ws.receive_text()
    assert client.get("/api/calls/e1", headers=sam).json()["state"] == "ended"
    moved = client.put("/api/calls/e1/agent", json={"agent_id": "cal"}, headers=sam)
    assert moved.status_code == 409, moved.text
    # Another team's supervisor is not told that it has ended (an outside UI audit).
    gil = bearer("gil", "supervisor", "green")
    other = client.put("/api/calls/e1/agent", json={"agent_id": "ben"}, headers=gil)
    assert other.status_code == 403 and "ended" not in other.text, other.text
    deadline = time.monotonic() + 15
    while True:
        stored = client.get("/api/history/calls/e1", headers=ann)
        if stored.status_code == 200 and stored.json()["call"].get("ended_at"):
            break
        assert time.monotonic() < deadline, stored.text
        time.sleep(0.2)
    assert stored.json()["call"]["agent_id"] == "ann"
    assert client.get("/api/calls/e1", headers=ann).json()["meta"]["agent_id"] == "ann"
