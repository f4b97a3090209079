"""Calls a stopped process left unended: closed at start-up, and streamed from the store.

The store is seeded through the real bus and writer with one call that ended and one that
was cut off (no call_end), as a killed server leaves them; then the whole app starts on that
store, as `coach serve` does after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect
from test_store_support import (
    CARD,
    Backend,
    call_events,
    run,
    seed,
)

from coach.api.app import create_app
from coach.auth import issue_token
from coach.bus import SUPERVISOR_TOPIC, InProcessBus, call_topic
from coach.runtime import Runtime
from coach.settings import Settings
from coach.signals.state import CustomerStateTracker
from coach.store import Spool, Store, StoreWriter
from coach.store.recovered import close_orphans, end_event, stored_events
from tests.coach.test_redis_bus import SHARED_URL, make_bus, needs_redis, prefix, wait_for

__all__ = ["prefix"]  # a fixture: a Redis key prefix of this test's own

SECRET = "r" * 32
CUT = [e for e in call_events("c-cut", agent_id="ann") if e["type"] != "call_end"]
DONE = call_events("c-done", agent_id="ann")


def token(user: str, role: str) -> str:
    return issue_token(user=user, role=role, secret=SECRET, ttl_s=600)  # type: ignore[arg-type]


@pytest.fixture
def restarted(backend: Backend, tmp_path: Path, runtime: Runtime) -> Iterator[TestClient]:
    """The app started on a store that a killed server left behind."""
    run(seed(backend.url, tmp_path / "seed-spool", [CUT, DONE]))
    settings = Settings(
        data_dir=tmp_path,
        auth_secret=SECRET,
        store_enabled=True,
        database_url=backend.url,
        ingest_api_key="k-1",
    )
    with TestClient(create_app(settings, runtime)) as client:
        yield client


def _stored(client: TestClient, call_id: str) -> dict[str, Any]:
    """The history API's view of a call, once it is written and ended (or after 15 s)."""
    deadline = time.monotonic() + 15
    while True:
        resp = client.get(
            f"/api/history/calls/{call_id}",
            headers={"Authorization": f"Bearer {token('ada', 'admin')}"},
        )
        late = time.monotonic() > deadline
        if resp.status_code == 404 and not late:  # not written yet
            time.sleep(0.1)
            continue
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        if body["call"]["ended_at"] is not None or late:
            return body
        time.sleep(0.1)


def _stream(client: TestClient, path: str) -> tuple[list[dict[str, Any]], int]:
    events: list[dict[str, Any]] = []
    with client.websocket_connect(path) as ws, pytest.raises(WebSocketDisconnect) as closed:
        while True:
            events.append(ws.receive_json())
    return events, closed.value.code


def test_a_call_cut_off_is_closed_as_interrupted_at_start_up(restarted: TestClient) -> None:
    body = _stored(restarted, "c-cut")
    call = body["call"]
    assert call["end_reason"] == "interrupted"
    # Heard until its last stored line (8 s), and dated then, not at the restart.
    assert call["duration_s"] == pytest.approx(8.0)
    started = datetime.fromisoformat(call["started_at"])
    ended = datetime.fromisoformat(call["ended_at"])
    assert ended - started == timedelta(seconds=8)
    summary = body["summary"]
    assert summary["cues"] == {"acknowledge_frustration": 1}
    assert summary["arc"] == [[4.0, -0.4]]  # the customer's line, not the agent's
    # The call that ended keeps its own end.
    assert _stored(restarted, "c-done")["call"]["end_reason"] == "hangup"


def test_a_panel_reconnecting_after_a_restart_keeps_the_call(restarted: TestClient) -> None:
    _stored(restarted, "c-cut")
    events, code = _stream(restarted, f"/ws/calls/c-cut/events?token={token('ann', 'agent')}")
    assert code == 1000
    # It opens with its call_start, as a live call does (a scaling audit: it did not).
    start, events = events[0], events[1:]
    assert start["type"] == "call_start" and start["meta"]["agent_id"] == "ann", start
    kinds = [e["type"] for e in events]
    assert kinds == ["transcript", "transcript", "cue", "escalation", "metrics", "call_end"], kinds
    assert CARD not in str(events)  # the store's redacted text, even for the call's agent
    # The panel's trend and metrics come back too: the customer's line carries the state its
    # live event would have (rebuilt from the stored sentiment and voice), the agent's none,
    # and the call's last metrics are there (a reopened call showed both empty).
    customer, agent = events[0], events[1]
    assert customer["speaker"] == "customer" and "state" not in agent
    live = CustomerStateTracker().update(
        t_end=customer["t_end"],
        duration_s=customer["t_end"] - customer["t_start"],
        sentiment=customer["sentiment"],
        prosody=customer["prosody"],
    )
    assert customer["state"] == live.as_dict()
    assert customer["state"]["valence"] == pytest.approx(-0.4)
    assert events[4]["talk_ratio"] == {"customer": 0.6, "agent": 0.4}
    assert events[4]["final"] is True  # the last metrics event, not an earlier one
    assert events[-1]["reason"] == "interrupted"
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)

    # Resuming after the last line seen: only what came after, then the end.
    after = events[1]["seq"]
    rest, code = _stream(
        restarted, f"/ws/calls/c-cut/events?after_seq={after}&token={token('ann', 'agent')}"
    )
    assert code == 1000
    assert [e["type"] for e in rest] == ["cue", "escalation", "metrics", "call_end"]
    # A panel that saw partials and metrics past every stored seq still takes the end.
    late, _ = _stream(
        restarted, f"/ws/calls/c-cut/events?after_seq=999&token={token('ann', 'agent')}"
    )
    assert [e["type"] for e in late] == ["call_end"] and late[0]["seq"] > 999

    done, code = _stream(restarted, f"/ws/calls/c-done/events?token={token('sam', 'admin')}")
    assert code == 1000 and done[-1]["type"] == "call_end" and done[-1]["reason"] == "hangup"


def _wall(client: TestClient, user: str, team: str | None = None) -> dict[str, Any]:
    bearer = issue_token(user=user, role="supervisor", secret=SECRET, ttl_s=600, team=team)
    resp = client.get("/api/supervisor/calls", headers={"Authorization": f"Bearer {bearer}"})
    assert resp.status_code == 200, resp.text
    return {c["call_id"]: c for c in resp.json()["calls"]}


def test_the_wall_after_a_restart_shows_the_cut_off_call_with_its_open_escalation(
    restarted: TestClient,
) -> None:
    """A restarted process had no tile for the call it was running, so the call vanished
    from the wall, and with it an escalation nobody had acknowledged. It is drawn from the
    store as ended, its escalation still open, for the usual while."""
    stored = _stored(restarted, "c-cut")["call"]
    tiles = _wall(restarted, "sue")
    cut = tiles["c-cut"]
    assert cut["ended_at"] is not None and cut["agent_id"] == "ann"
    assert cut["cues"] == 1 and cut["last_cue"]["cue"] == "acknowledge_frustration"
    # How the customer last sounded, from the store: not "no customer speech yet".
    assert cut["valence"] == pytest.approx(-0.4) and cut["emotion"] == "negative"
    [esc] = cut["escalations"]
    assert esc["urgency"] == "high" and esc["acknowledged_by"] is None
    assert CARD not in str(cut)  # drawn from the store's redacted record
    # The tile's start is the call's, not the restart's.
    started = datetime.fromisoformat(stored["started_at"]).timestamp()
    assert cut["started_at"] == pytest.approx(started)
    # A supervisor takes it from the restarted wall: the tile shows who.
    sue = token("sue", "supervisor")
    resp = restarted.post(
        f"/api/calls/c-cut/escalations/{esc['seq']}/ack",
        headers={"Authorization": f"Bearer {sue}"},
    )
    assert resp.status_code == 200, resp.text
    [esc] = _wall(restarted, "sue")["c-cut"]["escalations"]
    assert esc["acknowledged_by"] == "sue"


def test_a_restarted_wall_keeps_acknowledgements_and_teams(
    backend: Backend, tmp_path: Path, runtime: Runtime
) -> None:
    team_call = [
        {**e, "meta": {**e["meta"], "team": "north"}} if e["type"] == "call_start" else e
        for e in call_events("c-team", agent_id="bo")
        if e["type"] != "call_end"
    ]
    run(seed(backend.url, tmp_path / "seed-spool", [CUT, team_call]))

    async def acknowledge() -> None:
        store = Store(url=backend.url)
        try:
            [esc] = (await store.get_call("c-cut")).escalations  # type: ignore[union-attr]
            await store.acknowledge_escalation(call_id="c-cut", seq=esc.seq, user="sue")
        finally:
            await store.aclose()

    run(acknowledge())
    settings = Settings(
        data_dir=tmp_path, auth_secret=SECRET, store_enabled=True, database_url=backend.url
    )
    with TestClient(create_app(settings, runtime)) as client:
        _stored(client, "c-cut")
        _stored(client, "c-team")
        # A panel replaying the call from the store reads who took it, and when.
        replayed, _ = _stream(client, f"/ws/calls/c-cut/events?token={token('ann', 'agent')}")
        [taken] = [e for e in replayed if e["type"] == "escalation"]
        assert taken["acknowledged_by"] == "sue" and taken["acknowledged_at"], taken
        everyone = _wall(client, "sue")
        south = _wall(client, "tom", team="south")
        north = _wall(client, "nia", team="north")
    [esc] = everyone["c-cut"]["escalations"]
    assert esc["acknowledged_by"] == "sue"
    assert "c-team" in everyone and "c-team" in north
    assert "c-team" not in south  # another team's call stays out of sight after a restart


def _started_ago(call_id: str, ago_s: float, *, escalation: bool = True) -> list[dict[str, Any]]:
    """A call cut off (no call_end) that started `ago_s` seconds ago."""
    began = (datetime.now(UTC) - timedelta(seconds=ago_s)).isoformat()
    return [
        {**e, "started_at": began} if e["type"] == "call_start" else e
        for e in call_events(call_id, agent_id="ann", escalation=escalation)
        if e["type"] != "call_end"
    ]


def _ended_as(call_id: str, reason: str, *, escalation: bool = True) -> list[dict[str, Any]]:
    return [
        {**e, "reason": reason} if e["type"] == "call_end" else e
        for e in call_events(call_id, agent_id="ann", escalation=escalation)
    ]


def _wall_once(client: TestClient, call_id: str) -> dict[str, Any]:
    """The wall once the start-up sweep has drawn `call_id` (or after 15 s)."""
    deadline = time.monotonic() + 15
    while True:
        tiles = _wall(client, "sue")
        if call_id in tiles or time.monotonic() > deadline:
            return tiles
        time.sleep(0.1)


def test_a_restarted_wall_dates_a_cut_off_call_when_it_was_last_heard(
    backend: Backend, tmp_path: Path, runtime: Runtime
) -> None:
    """The tile of a call closed at the restart ended when the call was last heard, as the
    store says; it was dated at the restart, so a call cut off half an hour before the
    restart came back as "just ended" for ten more minutes, an old escalation still open."""
    recent = _started_ago("c-recent", 300)
    old = _started_ago("c-old", 1800, escalation=False)
    run(seed(backend.url, tmp_path / "seed-spool", [recent, old]))
    settings = Settings(
        data_dir=tmp_path, auth_secret=SECRET, store_enabled=True, database_url=backend.url
    )
    with TestClient(create_app(settings, runtime)) as client:
        stored = _stored(client, "c-recent")["call"]
        _stored(client, "c-old")  # closed, and so drawn (on_orphan) before its end was stored
        tiles = _wall(client, "sue")
    ended = datetime.fromisoformat(stored["ended_at"]).timestamp()
    assert tiles["c-recent"]["ended_at"] == pytest.approx(ended, abs=0.01)
    assert "c-old" not in tiles  # it ended 30 minutes ago: past the wall's 10


def test_a_restarted_wall_keeps_the_calls_a_graceful_stop_cut_off(
    backend: Backend, tmp_path: Path, runtime: Runtime
) -> None:
    """A SIGTERM (a deploy) ends the calls it cuts off as `shutdown`, so the restarted
    process found no orphan to draw and the calls vanished from its wall, an unacknowledged
    escalation with them; so did a call an earlier restart had closed (restarted twice)."""
    quiet_hangup = _ended_as("c-quiet", "hangup", escalation=False)
    calls = [_ended_as("c-shut", "shutdown"), _ended_as("c-twice", "interrupted"), quiet_hangup]
    run(seed(backend.url, tmp_path / "seed-spool", calls))
    settings = Settings(
        data_dir=tmp_path, auth_secret=SECRET, store_enabled=True, database_url=backend.url
    )
    with TestClient(create_app(settings, runtime)) as client:
        tiles = _wall_once(client, "c-twice")
        stored = _stored(client, "c-shut")["call"]
    shut = tiles["c-shut"]
    assert shut["ended_at"] == pytest.approx(datetime.fromisoformat(stored["ended_at"]).timestamp())
    [esc] = shut["escalations"]
    assert esc["urgency"] == "high" and esc["acknowledged_by"] is None
    assert shut["cues"] == 1 and shut["agent_id"] == "ann"
    assert tiles["c-twice"]["ended_at"] is not None
    assert "c-quiet" not in tiles  # it ended the ordinary way, nothing left open: not news


def test_a_restarted_wall_keeps_an_ended_calls_unacknowledged_escalation_for_an_hour(
    backend: Backend, tmp_path: Path, runtime: Runtime
) -> None:
    """An escalation nobody acknowledged keeps its ended call on the wall for an hour, not
    ten minutes, whatever ended the call; after a restart too (a hang-up with an open page
    used to vanish with the restart)."""
    hung_up = _ended_as("c-open", "hangup")
    cut_long_ago = _started_ago("c-cut-40", 2400)  # last heard 40 min ago, page still open
    run(seed(backend.url, tmp_path / "seed-spool", [hung_up, cut_long_ago]))
    settings = Settings(
        data_dir=tmp_path, auth_secret=SECRET, store_enabled=True, database_url=backend.url
    )
    with TestClient(create_app(settings, runtime)) as client:
        _stored(client, "c-cut-40")
        tiles = _wall_once(client, "c-open")
    [esc] = tiles["c-open"]["escalations"]
    assert esc["acknowledged_by"] is None and tiles["c-open"]["ended_at"] is not None
    assert tiles["c-cut-40"]["ended_at"] < time.time() - 2000


def test_unknown_and_forbidden_calls_are_told_apart(restarted: TestClient) -> None:
    events, code = _stream(restarted, f"/ws/calls/nope/events?token={token('ann', 'agent')}")
    assert code == 4404 and events[0]["code"] == "unknown_call"
    # (An admin, who may watch any call, waits for it instead: a panel may learn a call id
    # before its audio arrives. tests/e2e/test_two_servers.py relies on that.)
    # Another agent's stored call stays refused.
    events, code = _stream(restarted, f"/ws/calls/c-cut/events?token={token('ben', 'agent')}")
    assert code == 1008 and events[0]["code"] == "forbidden"


def test_a_call_id_used_again_after_a_restart_opens_a_new_leg(restarted: TestClient) -> None:
    """Before a restart this process's memory told a reused id from a reconnect; after one,
    only the store knows the id's call ended (hung up, or closed as interrupted)."""
    _stored(restarted, "c-cut")  # closed by the start-up sweep

    def opened(call_id: str) -> str:
        header = {"call_id": call_id, "sample_rate": 8000, "encoding": "pcm16", "channels": 1}
        with restarted.websocket_connect("/ingest/pcm?api_key=k-1") as ws:
            ws.send_json(header)
            accepted = ws.receive_json()
            ws.send_json({"type": "end"})
        assert accepted["type"] == "accepted", accepted
        return str(accepted["call_id"])

    assert opened("c-done") == "c-done~2"
    assert opened("c-cut") == "c-cut~2"
    assert opened("c-new") == "c-new"
    # The ended calls keep their own records; each leg names the telephony's id.
    assert _stored(restarted, "c-done")["call"]["end_reason"] == "hangup"
    leg = _stored(restarted, "c-done~2")["call"]
    assert leg["meta"]["telephony_call_id"] == "c-done"


def test_a_call_that_ended_minutes_ago_streams_from_the_store(restarted: TestClient) -> None:
    """Found by a docs audit: once this process dropped an ended call's events (after
    ENDED_RETENTION_S) while the wall still listed it, its stream sent nothing and closed."""
    manager = restarted.app.state.coach.manager  # type: ignore[attr-defined]
    manager.ended_retention_s = 0.0  # dropped at once instead of after two minutes
    header = {"call_id": "c-gone", "sample_rate": 8000, "encoding": "pcm16", "channels": 1}
    with restarted.websocket_connect("/ingest/pcm?api_key=k-1") as ws:
        ws.send_json({**header, "agent_id": "ann"})
        assert ws.receive_json()["type"] == "accepted"
        ws.send_bytes(bytes(16000))  # one second of silence
        ws.send_json({"type": "end"})
    assert _stored(restarted, "c-gone")["call"]["ended_at"] is not None
    deadline = time.monotonic() + 5
    while manager.get("c-gone") is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert manager.get("c-gone") is None
    wall = restarted.app.state.wall  # type: ignore[attr-defined]
    assert wall.meta("c-gone") is not None  # the wall still knows it
    for who in (token("ann", "agent"), token("ada", "admin")):
        events, code = _stream(restarted, f"/ws/calls/c-gone/events?token={who}")
        assert code == 1000 and events and events[-1]["type"] == "call_end", events


def test_close_orphans_spares_live_and_recent_calls(backend: Backend, tmp_path: Path) -> None:
    run(seed(backend.url, tmp_path / "seed-spool", [CUT, call_events("c-live")[:-1]]))

    async def scenario() -> tuple[list[str], list[str], dict[str, Any]]:
        store = Store(url=backend.url)
        writer = StoreWriter(store=store, spool=Spool(directory=tmp_path / "spool"))
        bus = InProcessBus()
        bus.add_listener(writer)
        sub = bus.subscribe(call_topic("c-cut"))
        wall = bus.subscribe(SUPERVISOR_TOPIC)

        async def is_live(call_id: str) -> bool:
            return call_id == "c-live"

        # Calls that started after the cut-off are not looked at at all.
        none = await close_orphans(
            store, bus, is_live=is_live, started_before=datetime.now(UTC) - timedelta(hours=1)
        )
        closed = await close_orphans(
            store, bus, is_live=is_live, started_before=datetime.now(UTC) + timedelta(seconds=1)
        )
        await writer.flush()
        seen = sub.queue.get_nowait()
        walled = wall.queue.get_nowait()
        assert walled is not None and walled["type"] == "call_end"
        live = await store.get_call("c-live")
        await writer.aclose()
        await store.aclose()
        assert live is not None and live.call.ended_at is None
        assert seen is not None
        return none, closed, seen

    none, closed, seen = run(scenario())
    assert none == [] and closed == ["c-cut"]
    assert seen["type"] == "call_end" and seen["reason"] == "interrupted"
    assert seen["agent_id"] == "ann"


def test_stored_events_and_end_event_are_pure() -> None:
    """Without a database: the conversion itself, on records built from a seeded call."""
    from coach.store.records import CallDetail, CallRecord, CueRecord, UtteranceRecord

    start = datetime(2026, 1, 1, tzinfo=UTC)
    detail = CallDetail(
        call=CallRecord(
            "c", "pcm", "ann", None, [], None, start, None, None, None, None, None, None
        ),
        transcript=[
            UtteranceRecord(3, "customer", 1.0, 2.5, 2.9, "hello", [], {"valence": -0.5}, None),
            UtteranceRecord(1, "agent", 0.0, 0.9, 1.0, "hi", [], {"valence": 0.1}, None),
        ],
        cues=[CueRecord(5, "frustration", "t", "a", "w", 2, {"t_start": 1.0, "t_end": 2.5}, 3.1)],
        escalations=[],
        summary=None,
        metrics=None,
    )
    evs = stored_events(detail)
    assert [e["seq"] for e in evs] == [1, 3, 5]
    assert evs[-1]["label"] == "AI suggestion" and evs[-1]["t_end"] == 2.5
    end = end_event(detail, after_seq=10)
    assert end["seq"] == 11 and end["duration_s"] == pytest.approx(3.1)
    assert end["summary"]["arc"] == [[2.5, -0.5]]
    assert end["ended_at"] == (start + timedelta(seconds=3.1)).isoformat()


def test_a_call_still_being_written_is_not_an_orphan(backend: Backend, tmp_path: Path) -> None:
    """Found by an audit of two instances: B, started with a wrong Redis URL, kept no owner
    key for its 35 s call, and A's sweep closed that live call as `interrupted` at ~20 s.
    A call the store received events of since the cut-off is being written: not an orphan."""
    from coach.store.writes import Received

    old = time.time() - 600
    busy = [e for e in call_events("c-busy", agent_id="ann") if e["type"] != "call_end"]

    async def scenario() -> tuple[list[str], list[str]]:
        store = Store(url=backend.url)
        writer = StoreWriter(store=store, spool=Spool(directory=tmp_path / "spool"))
        bus = InProcessBus()
        bus.add_listener(writer)  # writes the interrupted call_ends

        async def nobody_runs_it(call_id: str) -> bool:
            return False  # no owner key anywhere, as for B's calls

        try:
            # Both started ten minutes ago; only c-busy is still being written.
            await store.write_events([Received(e, old) for e in CUT])
            await store.write_events([Received(busy[0], old)])
            await store.write_events([Received(e, time.time()) for e in busy[1:]])
            cutoff = datetime.now(UTC) - timedelta(seconds=60)  # 2 x the owner key's TTL
            first = await close_orphans(store, bus, is_live=nobody_runs_it, started_before=cutoff)
            await writer.flush()
            # Once nothing more comes for the whole window, it was cut off after all.
            later = datetime.now(UTC) + timedelta(seconds=1)
            second = await close_orphans(store, bus, is_live=nobody_runs_it, started_before=later)
        finally:
            await writer.aclose()
            await store.aclose()
        return first, second

    first, second = run(scenario())
    assert first == ["c-cut"]
    assert second == ["c-busy"]


def test_a_call_taken_over_keeps_its_stored_start(backend: Backend) -> None:
    """Found by the same audit: a call that reconnected into another instance after its own
    was killed had its stored `started_at` overwritten by the reconnect time. The new
    instance's call_start names the call's first start (coach/session.py); the store keeps it."""
    from coach.store.writes import Received

    first_start = time.time() - 30
    start = call_events("c-moved", agent_id="ann")[0]
    assert start["type"] == "call_start"
    again = {
        **start,
        "seq": 9,
        "meta": {**start["meta"], "resumed": True},
        "started_at": datetime.fromtimestamp(first_start, UTC).isoformat(),
    }

    async def scenario() -> datetime:
        store = Store(url=backend.url)
        try:
            await store.write_events([Received(start, first_start)])
            await store.write_events([Received(again, time.time())])
            record = await store.get_call_record("c-moved")
        finally:
            await store.aclose()
        assert record is not None
        return record.started_at

    assert run(scenario()).timestamp() == pytest.approx(first_start, abs=1e-3)


def test_a_long_call_another_instance_still_writes_is_not_streamed_as_ended(
    backend: Backend, tmp_path: Path, runtime: Runtime
) -> None:
    """A call started long ago whose owner key is gone (its instance lost Redis) but whose
    events still reach the store is live: a panel waits for its events instead of being sent
    the stored part and an `interrupted` end. The store's last activity decides, as for the
    orphan sweep; the start time alone used to."""
    import uuid

    import redis as sync_redis

    from coach.store.writes import Received

    call_id = f"c-long-{uuid.uuid4().hex[:8]}"
    events = [e for e in call_events(call_id, agent_id="ann") if e["type"] != "call_end"]

    async def write() -> None:
        store = Store(url=backend.url)
        try:
            await store.write_events([Received(events[0], time.time() - 600)])
            await store.write_events([Received(e, time.time()) for e in events[1:]])
        finally:
            await store.aclose()

    run(write())
    url = "redis://127.0.0.1:6379/10"  # test_app_wiring runs instances on 8 meanwhile
    settings = Settings(
        data_dir=tmp_path,
        auth_secret=SECRET,
        store_enabled=True,
        database_url=backend.url,
        redis_url=url,
    )
    later = {"seq": 50, "call_id": call_id, "type": "transcript", "speaker": "agent", "text": "ok"}
    try:
        with TestClient(create_app(settings, runtime)) as client:
            deadline = time.monotonic() + 10
            while client.get("/health/ready").json().get("redis_degraded"):
                # Until the bus reaches Redis, a call run elsewhere is "retry later" (1013).
                assert time.monotonic() < deadline, "the bus never reached Redis"
                time.sleep(0.05)
            path = f"/ws/calls/{call_id}/events?after_seq=49&token={token('ada', 'admin')}"
            with client.websocket_connect(path) as ws:
                time.sleep(0.5)  # the panel is subscribed (or, before, already sent the end)
                bus = client.app.state.coach.bus  # type: ignore[attr-defined]
                assert client.portal is not None
                client.portal.call(bus.publish, call_topic(call_id), later)
                got = ws.receive_json()
            assert got["type"] == "transcript" and got["seq"] == 50, got
            stored = client.get(
                f"/api/history/calls/{call_id}",
                headers={"Authorization": f"Bearer {token('ada', 'admin')}"},
            )
            assert stored.json()["call"]["ended_at"] is None  # not swept either
    finally:
        client_r = sync_redis.Redis.from_url(url)
        keys = client_r.keys(f"coach:*{call_id}*")
        if keys:
            client_r.delete(*keys)
        client_r.close()


def test_a_long_live_calls_detail_starts_at_its_start(
    backend: Backend, tmp_path: Path, runtime: Runtime
) -> None:
    """`GET /api/calls/{id}` read only the bus's recent events (COACH_EVENT_REPLAY, 500 by
    default: six to eight minutes of a two-party call with its partials), so a longer call's
    early transcript lines and cues were silently missing. The store supplies them now."""
    settings = Settings(
        data_dir=tmp_path,
        auth_secret=SECRET,
        database_url=backend.url,
        ingest_api_key="k-1",
        event_replay=5,
    )
    admin = {"Authorization": f"Bearer {token('ada', 'admin')}"}
    header = {"call_id": "c-long", "sample_rate": 8000, "encoding": "pcm16", "channels": 1}
    said = [
        {"type": "transcript", "seq": 100 + i, "speaker": "customer", "text": f"line {i}"}
        for i in range(3)
    ]
    cue = {"type": "cue", "seq": 103, "cue": "frustration", "title": "t", "why": "w"}
    later = [{"type": "partial", "seq": 104 + i, "speaker": "customer"} for i in range(10)]
    with TestClient(create_app(settings, runtime)) as client:
        bus = client.app.state.coach.bus  # type: ignore[attr-defined]
        with client.websocket_connect("/ingest/pcm?api_key=k-1") as ws:
            ws.send_json({**header, "agent_id": "ann"})
            assert ws.receive_json()["type"] == "accepted"
            ws.send_bytes(bytes(16000))

            def emit() -> None:  # on the app's loop, as the session publishes
                for ev in [*said, cue, *later]:
                    ev = {**ev, "call_id": "c-long", "t_start": 1.0, "t_end": 2.0, "t_emit": 2.0}
                    bus.publish(call_topic("c-long"), ev)

            assert client.portal is not None
            client.portal.call(emit)
            deadline = time.monotonic() + 15
            while len(_stored_now(client, "c-long", admin)["cues"]) < 1:
                assert time.monotonic() < deadline, "never stored"
                time.sleep(0.1)
            detail = client.get("/api/calls/c-long", headers=admin).json()
            assert [t["text"] for t in detail["transcript"]] == ["line 0", "line 1", "line 2"]
            assert [c["seq"] for c in detail["cues"]] == [103] and detail["complete"] is True
            ws.send_json({"type": "end"})


def _stored_now(client: TestClient, call_id: str, headers: dict[str, str]) -> dict[str, Any]:
    resp = client.get(f"/api/history/calls/{call_id}", headers=headers)
    return resp.json() if resp.status_code == 200 else {"cues": []}


@needs_redis
async def test_a_killed_instances_call_is_closed_soon_after_it_went_quiet(
    tmp_path: Path, prefix: str
) -> None:
    """Found by an outside audit with two real servers: after a kill -9 of the instance that
    ran a call, the other instance's wall showed it live (its panels waiting) for 106 s. It
    may be closed once nothing was heard of it for twice the owner key's TTL; the sweep
    only looked every two TTLs, so up to four passed. It now looks every third of one."""
    from coach.api.app import AppState, _close_orphans
    from coach.api.wall import WallTracker
    from coach.store.writes import Received

    ttl = 3.0
    settings = Settings(data_dir=tmp_path, redis_session_ttl_s=ttl)
    state = AppState(settings, runtime=None)
    state.bus = make_bus(SHARED_URL, prefix, "survivor")  # no owner key: nobody runs c-cut
    await state.bus.start()
    store = Store(url=f"sqlite+aiosqlite:///{tmp_path / 'coach.db'}")
    writer = StoreWriter(store=store, spool=Spool(directory=tmp_path / "spool"))
    state.bus.add_listener(writer)  # writes the interrupted call_end
    # Last heard just under two TTLs ago: it becomes an orphan half a second from now.
    await store.write_events([Received(e, time.time() - 2 * ttl + 0.5) for e in CUT])
    closed_at: list[float] = []
    closed = asyncio.Event()

    def note_end(_topic: str, ev: dict[str, Any]) -> None:
        if ev["type"] == "call_end":
            closed_at.append(time.monotonic())
            closed.set()

    state.bus.add_listener(note_end)
    began = time.monotonic()
    wall = WallTracker()
    sweeper = asyncio.create_task(_close_orphans(state, store, wall, started=datetime.now(UTC)))
    try:
        async with asyncio.timeout(2 * ttl + 1):
            await closed.wait()
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        await writer.aclose()
        await store.aclose()
        await state.bus.stop()
    # At the first look after it went quiet (every TTL/3 = 1 s), not two TTLs (6 s) later.
    assert closed_at[0] - began < 0.5 + ttl / 3 + 1.0


@needs_redis
async def test_with_redis_a_restarted_wall_also_draws_the_calls_a_stop_cut_off(
    tmp_path: Path, prefix: str
) -> None:
    """With Redis a restarted wall had only the event stream to go on: a call whose events
    had scrolled out of it (a busy center, `COACH_REDIS_STREAM_MAXLEN`) vanished, and an
    escalation nobody acknowledged with it. The store draws it too, unless it runs on another
    instance now (resumed there after the stop), which the stream brings live."""
    from coach.api.app import AppState, _close_orphans
    from coach.api.wall import WallTracker
    from coach.auth import Principal
    from coach.store.writes import Received

    state = AppState(Settings(data_dir=tmp_path), runtime=None)
    state.bus = make_bus(SHARED_URL, prefix, "restarted")
    elsewhere = make_bus(SHARED_URL, prefix, "other")
    await state.bus.start()
    await elsewhere.start()
    store = Store(url=f"sqlite+aiosqlite:///{tmp_path / 'coach.db'}")
    ended = time.time() - 30
    for call_id in ("c-shut", "c-resumed"):
        await store.write_events([Received(e, ended) for e in _ended_as(call_id, "shutdown")])
    assert await elsewhere.claim_call("c-resumed") is None
    wall = WallTracker()
    sweeper = asyncio.create_task(_close_orphans(state, store, wall, started=datetime.now(UTC)))
    try:
        await wait_for(lambda: "c-shut" in wall.calls, within=10)
        await asyncio.sleep(0.3)  # c-resumed would have been drawn in the same pass
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        await store.aclose()
        await elsewhere.stop()
        await state.bus.stop()
    (tile,) = wall.snapshot(Principal(user="sue", role="supervisor"))
    assert tile["call_id"] == "c-shut" and tile["end_reason"] == "shutdown"
    [esc] = tile["escalations"]
    assert esc["acknowledged_by"] is None


def test_an_orphans_end_comes_after_every_seq_its_instance_sent(
    backend: Backend, tmp_path: Path
) -> None:
    """Found by an outside audit with two servers: partials and metrics are not stored, so
    the orphan's call_end at the last stored seq + 1 (51) came after partials 51 and 52, and
    the other instance's bus dropped it as a replay: the agent's feed there stayed live. The
    call's saved session state says how far its instance got."""
    run(seed(backend.url, tmp_path / "seed-spool", [CUT]))
    stored_last = max(int(e["seq"]) for e in CUT)

    async def scenario() -> dict[str, Any]:
        store = Store(url=backend.url)
        bus = InProcessBus()
        bus.save_session_state("c-cut", {"seq": stored_last + 40, "ended": False})
        sub = bus.subscribe(call_topic("c-cut"))

        async def nobody_runs_it(call_id: str) -> bool:
            return False

        try:
            closed = await close_orphans(
                store, bus, is_live=nobody_runs_it, started_before=datetime.now(UTC)
            )
            assert closed == ["c-cut"]
            ev: dict[str, Any] = sub.queue.get_nowait()
            return ev
        finally:
            await store.aclose()

    end = run(scenario())
    assert end["type"] == "call_end" and end["reason"] == "interrupted"
    assert end["seq"] > stored_last + 40


async def test_a_call_whose_owner_key_vanished_for_a_moment_is_no_orphan() -> None:
    """An outside audit flushed Redis (as a restart without persistence does): the sweep
    found a silent live call without its owner key and closed it as `interrupted` on every
    wall, 1-6 s later, while its instance went on coaching it. A call is an orphan only when
    it is found ownerless twice, `confirm_s` apart; its instance writes the key again before."""
    from coach.store.recovered import OwnerlessTwice

    now = [0.0]
    owners = {"held": False, "gone": False}

    async def owned(call_id: str) -> bool:
        return owners[call_id]

    is_live = OwnerlessTwice(owned, confirm_s=15.0, clock=lambda: now[0])
    # The first look without an owner: not yet an orphan.
    assert await is_live("held") and await is_live("gone")
    now[0] = 10.0
    owners["held"] = True  # its instance refreshed its keys (every 10 s)
    assert await is_live("held") and await is_live("gone")
    now[0] = 20.0
    owners["held"] = False  # ...and a second flush: its clock starts again
    assert await is_live("held")
    assert not await is_live("gone")  # ownerless at every look for 20 s: cut off
    is_live.keep_only({"held"})
    now[0] = 40.0
    assert not await is_live("held")
    assert await is_live("gone")  # forgotten, then found again: a first look
