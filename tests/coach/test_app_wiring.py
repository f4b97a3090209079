"""The app starts what the settings ask for: the AudioSocket listener, the store."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from coach.api.app import create_app
from coach.ingest.audiosocket import Hangup, UuidFrame, encode
from coach.runtime import Runtime
from coach.settings import Settings
from tests.coach.test_redis_bus import needs_redis
from tests.support import free_port


def test_audiosocket_listener_follows_the_settings(runtime: Runtime, tmp_path: Path) -> None:
    port = free_port()
    settings = Settings(data_dir=tmp_path, auth_disabled=True, audiosocket_port=port)
    with TestClient(create_app(settings, runtime)) as client:
        assert client.get("/health/ready").status_code == 200
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            import uuid

            conn.sendall(encode(UuidFrame(uuid.uuid4())) + encode(Hangup()))
    with socket.socket() as s:  # closed again on shutdown
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_the_browsers_favicon_request_is_answered_without_an_error(
    runtime: Runtime, tmp_path: Path
) -> None:
    """A UI audit: every page load logged a 404 for /favicon.ico, in the browser console and
    the server log."""
    app = create_app(Settings(data_dir=tmp_path, auth_disabled=True), runtime)
    with TestClient(app) as client:
        resp = client.get("/favicon.ico")
    assert resp.status_code == 204 and not resp.content
    assert "/favicon.ico" not in app.openapi()["paths"]


def test_the_log_says_where_the_pages_are_once_the_models_are_up(
    runtime: Runtime, tmp_path: Path, caplog: Any
) -> None:
    """A newcomer's `make run` ended on library lines, with no word of where to go."""
    caplog.set_level("INFO", logger="coach.api.app")
    settings = Settings(data_dir=tmp_path, host="0.0.0.0", port=8123, store_enabled=False)
    with TestClient(create_app(settings, runtime)):
        pass
    assert (
        "models up: agents at http://127.0.0.1:8123/agent/, supervisors at "
        "http://127.0.0.1:8123/supervisor/"
    ) in caplog.messages


def test_no_listener_by_default(runtime: Runtime, tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path, auth_disabled=True), runtime)
    with TestClient(app):
        assert app.state.coach.audiosocket is None


def test_without_redis_a_remote_call_panel_is_told_to_retry(
    runtime: Runtime, tmp_path: Path
) -> None:
    import time

    from starlette.websockets import WebSocketDisconnect

    settings = Settings(data_dir=tmp_path, auth_disabled=True, redis_url="redis://127.0.0.1:1/0")
    with TestClient(create_app(settings, runtime)) as client:
        deadline = time.monotonic() + 5
        while not client.get("/health/ready").json().get("redis_degraded"):
            assert time.monotonic() < deadline, "bus never reported degraded"
            time.sleep(0.1)
        ready = client.get("/health/ready")
        assert ready.status_code == 200  # its own calls still work without Redis
        with client.websocket_connect("/ws/calls/elsewhere/events") as ws:
            try:
                while True:
                    ws.receive_text()
            except WebSocketDisconnect as exc:
                assert exc.code == 1013


def test_an_agent_follows_their_call_from_another_instance_redacted(
    runtime: Runtime, tmp_path: Path
) -> None:
    """Found by an audit: on an instance that does not run the call, its own agent (and their
    supervisor) were refused with 1008 "not your call", because only the local wall's calls
    were known. The wall now shows every instance's calls; the agent gets the redacted view
    there, since unredacted text never leaves the instance that runs the call."""
    import asyncio
    import threading
    import uuid

    import redis as sync_redis

    from coach.auth import issue_token
    from coach.bus import COMMAND_TOPIC, SUPERVISOR_TOPIC, agent_topic, call_topic
    from coach.redis_bus import RedisBus

    url, secret = "redis://127.0.0.1:6379/8", "unit-test-secret-of-at-least-32-bytes!"
    commands: list[dict[str, Any]] = []
    call_id = f"remote-{uuid.uuid4().hex[:8]}"
    meta = {"agent_id": "ann"}

    async def run_instance_a(started: threading.Event, stop: threading.Event) -> None:
        bus = RedisBus(url, instance_id="A", heartbeat_s=0.1, block_ms=100)
        await bus.start()
        bus.watch_remote(COMMAND_TOPIC, lambda _t, ev, _at: commands.append(ev))
        start = {"seq": 1, "call_id": call_id, "type": "call_start", "meta": meta}
        start |= {"source": "twilio", "channels": ["customer", "agent"]}
        said = {"seq": 2, "call_id": call_id, "type": "transcript", "speaker": "customer"}
        bus.publish(SUPERVISOR_TOPIC, start)
        bus.publish(call_topic(call_id), start)
        bus.publish(agent_topic(call_id), {**said, "text": "my card is 4111 1111 1111 1111"})
        bus.publish(call_topic(call_id), {**said, "text": "my card is [CARD]"})
        started.set()
        await asyncio.to_thread(stop.wait, 60)
        await bus.stop()

    started, stop = threading.Event(), threading.Event()
    instance_a = threading.Thread(target=asyncio.run, args=(run_instance_a(started, stop),))
    instance_a.start()
    settings = Settings(data_dir=tmp_path, auth_secret=secret, redis_url=url, store_enabled=False)
    token = issue_token(user="ann", role="agent", secret=secret, ttl_s=600)
    try:
        assert started.wait(10)
        with TestClient(create_app(settings, runtime)) as client:
            import time

            deadline = time.monotonic() + 10
            while not (
                listed := [
                    c
                    for c in client.get(
                        "/api/calls", headers={"Authorization": f"Bearer {token}"}
                    ).json()["calls"]
                    if c["call_id"] == call_id
                ]
            ):
                assert time.monotonic() < deadline, "instance B's wall never saw A's call"
                time.sleep(0.1)
            # Listed as A lists it: who is on which channel, not an empty list.
            assert listed[0]["source"] == "twilio", listed
            assert listed[0]["speakers"] == ["customer", "agent"], listed
            with client.websocket_connect(f"/ws/calls/{call_id}/events?token={token}") as ws:
                first, second = ws.receive_json(), ws.receive_json()
            # Her supervisor, on this wall, puts another agent on the call: the instance that
            # runs it gets the request.
            sup = issue_token(user="sam", role="supervisor", secret=secret, ttl_s=600)
            moved = client.put(
                f"/api/calls/{call_id}/agent",
                json={"agent_id": "cal"},
                headers={"Authorization": f"Bearer {sup}"},
            )
            assert moved.status_code == 202 and moved.json()["forwarded"] is True
            deadline = time.monotonic() + 5
            while not commands:
                assert time.monotonic() < deadline, "the request never reached instance A"
                time.sleep(0.05)
            # Instance A stops (killed, its tile here until the orphan sweep): a request for
            # its call is refused, not forwarded to nobody with a 202.
            stop.set()
            instance_a.join(10)
            gone = client.put(
                f"/api/calls/{call_id}/agent",
                json={"agent_id": "ann"},
                headers={"Authorization": f"Bearer {sup}"},
            )
            assert gone.status_code == 409 and "no longer running" in gone.text, gone.text
            assert len(commands) == 1
        assert first["type"] == "call_start"
        assert second["text"] == "my card is [CARD]"
        assert commands[0]["type"] == "assign_agent" and commands[0]["agent_id"] == "cal"
    finally:
        stop.set()
        instance_a.join(10)
        client_r = sync_redis.Redis.from_url(url)
        client_r.delete(*client_r.keys("coach:*"))
        client_r.close()


@needs_redis
def test_an_agent_assigned_on_another_instances_wall_is_put_on_the_call(
    runtime: Runtime, tmp_path: Path
) -> None:
    """Walls show every instance's calls, so a supervisor may assign an agent to a call
    another instance runs: the request goes to that instance through Redis (202), which
    assigns the agent and announces it. Here the app is the instance that runs the call, and
    a bare bus plays the other instance's wall."""
    import asyncio
    import json
    import threading
    import time
    import uuid

    from coach.bus import COMMAND_TOPIC
    from coach.redis_bus import RedisBus

    url = "redis://127.0.0.1:6379/8"
    call_id = f"local-{uuid.uuid4().hex[:8]}"
    settings = Settings(data_dir=tmp_path, auth_disabled=True, redis_url=url, store_enabled=False)

    async def other_instance_assigns() -> None:
        bus = RedisBus(url, instance_id="B", heartbeat_s=0.1, block_ms=100)
        await bus.start()
        command = {"type": "assign_agent", "call_id": call_id, "agent_id": "ben", "by": "sam"}
        bus.publish(COMMAND_TOPIC, command)
        await asyncio.sleep(0.5)
        await bus.stop()

    try:
        with TestClient(create_app(settings, runtime)) as client:
            header = {"call_id": call_id, "sample_rate": 8000, "encoding": "pcm16", "channels": 2}
            with client.websocket_connect("/ingest/pcm") as ingest:
                ingest.send_text(json.dumps(header))
                assert ingest.receive_json()["type"] == "accepted"
                ingest.send_bytes(bytes(3200))
                other = threading.Thread(target=asyncio.run, args=(other_instance_assigns(),))
                other.start()
                other.join(10)
                deadline = time.monotonic() + 10
                while client.get(f"/api/calls/{call_id}").json()["meta"].get("agent_id") != "ben":
                    assert time.monotonic() < deadline, "the forwarded assignment never came"
                    time.sleep(0.1)
                ingest.send_text(json.dumps({"type": "end"}))
    finally:
        _forget_coach_keys(url)


def test_a_cue_rated_the_moment_it_arrives_is_rated(runtime: Runtime, tmp_path: Path) -> None:
    """An outside audit with two servers: a rating posted within half a second of its cue got
    404 "has no cue" (the store writes every COACH_STORE_FLUSH_INTERVAL_S). On a call the
    server knows, a rating waits for the write (a few seconds at most)."""
    import time

    from coach.bus import SUPERVISOR_TOPIC, call_topic

    settings = Settings(data_dir=tmp_path, auth_disabled=True, store_flush_interval_s=1.0)
    start = {
        "type": "call_start",
        "call_id": "fb-now",
        "seq": 1,
        "source": "pcm",
        "channels": ["customer"],
        "meta": {"agent_id": "ann"},
        "t_emit": 0.0,
    }
    cue = {
        "type": "cue",
        "call_id": "fb-now",
        "seq": 2,
        "cue": "frustration",
        "title": "Customer is frustrated",
        "advice": "Acknowledge it.",
        "why": "words",
        "priority": 2,
        "t_emit": 3.0,
        "evidence": {},
    }
    with TestClient(create_app(settings, runtime)) as client:
        escalation = {
            "type": "escalation",
            "call_id": "fb-now",
            "seq": 3,
            "reason": "user_request",
            "urgency": "high",
            "summary": {"text": "Wants a manager."},
            "t_emit": 4.0,
        }

        async def show() -> None:
            bus = client.app.state.coach.bus  # type: ignore[attr-defined]
            for ev in (start, cue):
                bus.publish(call_topic("fb-now"), ev)
                bus.publish(SUPERVISOR_TOPIC, ev)

        assert client.portal is not None
        client.portal.call(show)
        rated = client.post("/api/calls/fb-now/cues/2/feedback", json={"verdict": "helpful"})
        assert rated.status_code == 200, rated.text
        assert rated.json()["verdict"] == "helpful"
        # An escalation taken the moment it shows waits for its write too (it was a 404).

        async def raise_it() -> None:
            bus = client.app.state.coach.bus  # type: ignore[attr-defined]
            bus.publish(call_topic("fb-now"), escalation)
            bus.publish(SUPERVISOR_TOPIC, escalation)

        client.portal.call(raise_it)
        taken = client.post("/api/calls/fb-now/escalations/3/ack")
        assert taken.status_code == 200, taken.text
        # A call nobody knows, or a cue the call never had, is told at once (a flood of the
        # latter held each request for the whole wait: an outside security audit).
        unknown = client.post("/api/calls/nobody/cues/1/feedback", json={"verdict": "helpful"})
        assert unknown.status_code == 404
        began = time.monotonic()
        never = client.post("/api/calls/fb-now/cues/99999/feedback", json={"verdict": "helpful"})
        assert never.status_code == 404 and time.monotonic() - began < 1.0


@needs_redis
def test_a_call_whose_instance_dies_is_marked_lost_on_this_instances_wall(
    runtime: Runtime, tmp_path: Path
) -> None:
    """The app wires a ContactWatcher to its wall: a bare bus plays another instance that
    runs a call and is then killed (its tasks stop; its keys are left to expire)."""
    import asyncio
    import threading
    import time
    import uuid

    from coach.bus import SUPERVISOR_TOPIC, call_topic
    from coach.redis_bus import RedisBus
    from tests.coach.test_scale_out import kill

    url = "redis://127.0.0.1:6379/9"
    call_id = f"remote-{uuid.uuid4().hex[:8]}"
    settings = Settings(data_dir=tmp_path, auth_disabled=True, redis_url=url, store_enabled=False)

    async def other_instance_runs_then_dies() -> None:
        bus = RedisBus(url, instance_id="B", heartbeat_s=0.1, block_ms=100, instance_ttl_s=1.0)
        await bus.start()
        start = {"seq": 1, "type": "call_start", "call_id": call_id, "source": "pcm", "meta": {}}
        bus.publish(call_topic(call_id), start)
        bus.publish(SUPERVISOR_TOPIC, start)
        await asyncio.sleep(0.5)
        await kill(bus)

    def tile(client: TestClient) -> dict[str, Any] | None:
        calls = client.get("/api/supervisor/calls").json()["calls"]
        return next((c for c in calls if c["call_id"] == call_id), None)

    try:
        with TestClient(create_app(settings, runtime)) as client:
            time.sleep(0.5)  # the app's bus follows the streams
            other = threading.Thread(target=asyncio.run, args=(other_instance_runs_then_dies(),))
            other.start()
            other.join(10)
            deadline = time.monotonic() + 15
            while (t := tile(client)) is None or t["contact_lost_at"] is None:
                assert time.monotonic() < deadline, f"never marked lost: {t}"
                time.sleep(0.2)
            assert t["ended_at"] is None  # not ended: the sweep decides that, later
    finally:
        _forget_coach_keys(url)


def _forget_coach_keys(url: str) -> None:
    """Delete what a test's instances left in its Redis database (the `coach:` keys)."""
    import redis as sync_redis

    client = sync_redis.Redis.from_url(url)
    keys = client.keys("coach:*")
    if keys:
        client.delete(*keys)
    client.close()


def test_an_audiosocket_port_in_use_keeps_the_instance_not_ready(
    runtime: Runtime, tmp_path: Path, caplog: Any
) -> None:
    """An outside operator audit: the listener failed in a background task, nothing was
    logged until shutdown, and /health/ready said 200 with nothing listening for Asterisk."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = Settings(data_dir=tmp_path, auth_disabled=True, audiosocket_port=port)
        with TestClient(create_app(settings, runtime)) as client:
            ready = client.get("/health/ready")
    assert ready.status_code == 503, ready.text
    body = ready.json()
    assert body["status"] == "error" and "AudioSocket ingest could not start" in body["error"]
    assert "AudioSocket ingest could not start" in caplog.text


def test_a_bad_audiosocket_allow_list_is_refused_with_the_settings() -> None:
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="not a network"):
        Settings(audiosocket_allow=["notacidr"])
