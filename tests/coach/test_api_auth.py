"""Sign-in, roles and the supervisor endpoints through the in-process test client."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect
from test_store_support import Backend

from coach.api import accounts
from coach.api import users as users_module
from coach.api.accounts import PasswordChecks, SignInBusy
from coach.api.app import create_app
from coach.api.security import may_view_call
from coach.api.users import LoginRefused, UserDirectory, UserError, hash_password, verify_password
from coach.auth import Principal, issue_token
from coach.bus import SUPERVISOR_TOPIC, agent_topic, call_topic
from coach.runtime import Runtime
from coach.settings import Settings
from coach.store.analytics import coaching_analytics
from coach.store.writes import Received
from tests.coach.test_redis_bus import SHARED_URL, needs_redis

SECRET = "unit-test-secret-of-at-least-32-bytes!"


def users() -> list[dict[str, str]]:
    h = hash_password("pw", n=2**10)
    return [
        {"name": "ann", "role": "agent", "team": "blue", "password_hash": h},
        {"name": "ben", "role": "agent", "team": "green", "password_hash": h},
        {"name": "sam", "role": "supervisor", "team": "blue", "password_hash": h},
        {"name": "ada", "role": "admin", "password_hash": h},
    ]


@pytest.fixture
def client(tmp_path: Path, runtime: Runtime) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path, auth_secret=SECRET, users=users(), store_enabled=False)
    with TestClient(create_app(settings, runtime)) as c:
        yield c


def token(user: str, role: str, team: str | None = None) -> str:
    return issue_token(user=user, role=role, secret=SECRET, ttl_s=600, team=team)  # type: ignore[arg-type]


def bearer(user: str, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user, role)}"}


def publish(client: TestClient, call_id: str, event: dict[str, Any]) -> None:
    bus = client.app.state.coach.bus  # type: ignore[attr-defined]
    ev = {"call_id": call_id, "t_emit": 0.0, **event}
    bus.publish(agent_topic(call_id), ev)
    bus.publish(call_topic(call_id), ev)
    if ev["type"] in ("call_start", "call_end", "cue", "escalation"):
        bus.publish(SUPERVISOR_TOPIC, ev)


def start(client: TestClient, call_id: str, agent: str) -> None:
    publish(client, call_id, {"type": "call_start", "seq": 1, "meta": {"agent_id": agent}})


def test_password_hashes_verify_and_reject() -> None:
    h = hash_password("s3cret", n=2**10)
    assert h.startswith("scrypt$1024$")
    assert verify_password("s3cret", h)
    assert not verify_password("S3cret", h)
    assert not verify_password("s3cret", "plain-text")
    assert hash_password("s3cret", n=2**10) != h  # salted


def test_directory_from_settings_and_demo_logins(tmp_path: Path) -> None:
    demo = UserDirectory.from_settings(Settings(data_dir=tmp_path))
    assert demo.authenticate("ann", "demo").role == "agent"
    assert demo.team_agents("blue") >= {"ann", "cal", "sam"}
    configured = UserDirectory.from_settings(Settings(data_dir=tmp_path, users=users()))
    assert configured.get("cal") is None  # demo logins are off once users are configured
    with pytest.raises(UserError, match="password_hash"):
        UserDirectory.from_settings(
            Settings(
                data_dir=tmp_path, users=[{"name": "x", "role": "agent", "password_hash": "pw"}]
            )
        )
    with pytest.raises(UserError, match="role"):
        UserDirectory.from_settings(
            Settings(
                data_dir=tmp_path, users=[{"name": "x", "role": "boss", "password_hash": "scrypt$"}]
            )
        )


def test_repeated_failures_are_throttled(tmp_path: Path) -> None:
    directory = UserDirectory.from_settings(Settings(data_dir=tmp_path, users=users()))
    now = time.monotonic()
    for _ in range(5):
        with pytest.raises(LoginRefused) as refused:
            directory.authenticate("ann", "nope", now=now)
        assert not refused.value.throttled
    with pytest.raises(LoginRefused) as refused:
        directory.authenticate("ann", "pw", now=now + 1)  # even the right password, for a while
    assert refused.value.throttled
    assert directory.authenticate("ann", "pw", now=now + 120).name == "ann"


def test_an_unknown_name_costs_the_same_scrypt_as_a_wrong_password(tmp_path: Path) -> None:
    """Timing must not tell which names exist: the decoy an unknown name is checked against
    has the users' scrypt cost (it was N=2^10 against 2^14: 6 ms against 45 ms)."""
    entries = [{**u, "password_hash": hash_password("pw", n=2**13)} for u in users()]
    directory = UserDirectory.from_settings(Settings(data_dir=tmp_path, users=entries))
    assert directory._dummy_hash.split("$")[1:4] == ["8192", "8", "1"]

    def slowest(name: str) -> float:
        best = []
        for _ in range(3):
            t0 = time.perf_counter()
            with pytest.raises(LoginRefused):
                directory.authenticate(name, "wrong", now=0.0)
            best.append(time.perf_counter() - t0)
        return min(best)

    assert slowest("nobody") > 0.5 * slowest("ann")


def test_parallel_guesses_get_no_more_tries_than_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sign-ins are checked in worker threads: 40 wrong passwords sent at once let 10
    guesses through, as each passed the failure count before any of them had failed."""

    def slow_check(password: str, encoded: str) -> bool:
        time.sleep(0.05)  # scrypt's time, during which the others arrive
        return False

    monkeypatch.setattr(users_module, "verify_password", slow_check)
    directory = UserDirectory.from_settings(Settings(data_dir=tmp_path, users=users()))
    start = threading.Barrier(20)
    checked: list[bool] = []

    def guess(i: int) -> None:
        start.wait()
        try:
            directory.authenticate("ann", f"guess-{i}")
        except LoginRefused as exc:
            checked.append(not exc.throttled)

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(checked) == 20
    assert sum(checked) == 5  # the rest were refused without a look at the password


def test_made_up_names_cannot_push_a_lockout_out_of_the_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The failure table is bounded; filling it with made-up names used to forget the
    oldest entry, a locked-out user's, and give the attacker five more guesses."""
    monkeypatch.setattr(users_module, "verify_password", lambda _pw, _hash: False)
    directory = UserDirectory.from_settings(Settings(data_dir=tmp_path, users=users()))
    for _ in range(5):
        with pytest.raises(LoginRefused):
            directory.authenticate("ann", "guess", now=100.0)
    for i in range(10_050):
        with pytest.raises(LoginRefused):
            directory.authenticate(f"made-up-{i}", "x", now=101.0)
    with pytest.raises(LoginRefused) as refused:
        directory.authenticate("ann", "guess", now=102.0)
    assert refused.value.throttled
    assert len(directory._failures) <= users_module.MAX_TRACKED_NAMES
    # Names whose failures have left the window go first, and the lockout ends as before.
    with pytest.raises(LoginRefused) as refused:
        directory.authenticate("ann", "guess", now=102.0 + users_module.FAILURE_WINDOW_S)
    assert not refused.value.throttled
    assert list(directory._failures) == ["ann"]


async def test_password_checks_run_one_at_a_time_at_low_priority_with_a_bounded_queue() -> None:
    """A flood of sign-ins must not take the live calls' CPU: checks run on one thread of
    lower priority, and past the queue's bound a sign-in is refused at once."""
    checks = PasswordChecks(max_waiting=3, nice=5)
    release = threading.Event()
    threads: set[int] = set()

    def check(i: int) -> int:
        threads.add(threading.get_native_id())
        release.wait(5)
        return i

    try:
        queued = [asyncio.create_task(checks.run(check, i)) for i in range(3)]
        await asyncio.sleep(0.05)
        with pytest.raises(SignInBusy):
            await checks.run(check, 3)
        release.set()
        assert await asyncio.gather(*queued) == [0, 1, 2]
        assert len(threads) == 1  # one thread, whatever the flood
        assert await checks.run(check, 4) == 4  # room again
        tid = threads.pop()
        assert os.getpriority(os.PRIO_PROCESS, tid) >= os.getpriority(os.PRIO_PROCESS, 0) + 5
    finally:
        release.set()
        checks.close()


def test_a_full_sign_in_queue_answers_429_with_retry_after(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accounts.PASSWORD_CHECKS, "max_waiting", 0)
    r = client.post("/api/login", json={"user": "ann", "password": "pw"})
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert "try again" in r.json()["detail"]


def test_a_locked_out_name_is_told_when_to_try_again(client: TestClient) -> None:
    """The lockout's 429 says when to come back, as the busy queue's does (an outside
    security audit found it without `Retry-After`)."""
    for _ in range(5):
        assert client.post("/api/login", json={"user": "ben", "password": "x"}).status_code == 401
    r = client.post("/api/login", json={"user": "ben", "password": "x"})
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0


def test_a_page_learns_how_to_sign_in_without_a_token(
    client: TestClient, tmp_path: Path, runtime: Runtime
) -> None:
    """A page with no stored token asks this, not `/api/me`: every first visit printed that
    401 in the browser's console (an outside audit)."""
    assert client.get("/api/auth").json() == {"required": True, "sign_in": True}
    open_settings = Settings(data_dir=tmp_path / "open", auth_disabled=True, store_enabled=False)
    with TestClient(create_app(open_settings, runtime)) as c:
        assert c.get("/api/auth").json()["required"] is False


def test_login_issues_a_token_that_the_api_accepts(client: TestClient) -> None:
    assert client.post("/api/login", json={"user": "ann", "password": "bad"}).status_code == 401
    assert client.post("/api/login", json={"user": "nobody", "password": "pw"}).status_code == 401
    r = client.post("/api/login", json={"user": "sam", "password": "pw"})
    assert r.status_code == 200
    body = r.json()
    assert (body["user"], body["role"], body["team"]) == ("sam", "supervisor", "blue")
    # A supervisor learns whom they may put on a call: their team, from the directory.
    assert body["team_members"] == ["ann"]  # its agents: not sam himself
    me = client.get("/api/me", headers={"Authorization": f"Bearer {body['token']}"}).json()
    assert me == {
        "user": "sam",
        "role": "supervisor",
        "team": "blue",
        "team_members": ["ann"],
    }
    ann = client.post("/api/login", json={"user": "ann", "password": "pw"}).json()
    assert ann["team_members"] is None  # an agent assigns nobody
    refused = client.get("/api/me")
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert client.get("/api/me", headers={"Authorization": "Bearer junk"}).status_code == 401
    # The address carries a token only where no header can be set: WebSockets.
    r = client.get(f"/api/me?token={body['token']}")
    assert r.status_code == 401 and "missing credentials" in r.text


def test_a_signed_in_token_ends_when_its_user_is_demoted_or_removed(
    tmp_path: Path, runtime: Runtime
) -> None:
    """Found by a security audit: tokens from sign-ins kept their supervisor or admin rights
    for hours after the operator demoted or removed the user and restarted the server."""
    first = Settings(data_dir=tmp_path, auth_secret=SECRET, users=users(), store_enabled=False)
    with TestClient(create_app(first, runtime)) as c:
        signed = {
            name: c.post("/api/login", json={"user": name, "password": "pw"}).json()["token"]
            for name in ("sam", "ada", "ann")
        }
    changed = [u for u in users() if u["name"] != "ada"]  # ada removed
    for u in changed:
        if u["name"] == "sam":
            u["role"] = "agent"  # sam demoted
    later = Settings(data_dir=tmp_path, auth_secret=SECRET, users=changed, store_enabled=False)
    with TestClient(create_app(later, runtime)) as c:

        def me(tok: str) -> Any:
            return c.get("/api/me", headers={"Authorization": f"Bearer {tok}"})

        assert me(signed["sam"]).status_code == 401 and "role changed" in me(signed["sam"]).text
        assert me(signed["ada"]).status_code == 401 and "no longer" in me(signed["ada"]).text
        assert me(signed["ann"]).json()["role"] == "agent"  # unchanged: still in
        path = f"/ws/supervisor?token={signed['sam']}"
        with c.websocket_connect(path) as ws:
            assert ws.receive_json()["code"] == "unauthorized"
        # An operator's own token (`coach token`) is not tied to the directory.
        assert me(token("ops", "admin")).json()["role"] == "admin"


def test_roles_scope_calls_by_agent_and_team(client: TestClient) -> None:
    start(client, "c-ann", "ann")
    start(client, "c-ben", "ben")
    start(client, "c-none", "")

    def listed(user: str, role: str) -> set[str]:
        r = client.get("/api/calls", headers=bearer(user, role))
        return {c["call_id"] for c in r.json()["calls"]}

    assert listed("ann", "agent") == {"c-ann"}
    assert listed("ben", "agent") == {"c-ben"}
    # Team blue's, and the call nobody is on yet: every supervisor's until it is assigned.
    assert listed("sam", "supervisor") == {"c-ann", "c-none"}
    # Gus supervises team green (from his token: he is not in the directory), ben's team.
    gus = {"Authorization": f"Bearer {token('gus', 'supervisor', 'green')}"}
    assert {c["call_id"] for c in client.get("/api/calls", headers=gus).json()["calls"]} == {
        "c-ben",
        "c-none",
    }
    assert listed("ada", "admin") == {"c-ann", "c-ben", "c-none"}
    assert listed("sue", "supervisor") == {"c-ann", "c-ben", "c-none"}  # no team: everyone

    # The event stream: another agent's call is refused with 1008 and nothing of it.
    with client.websocket_connect(f"/ws/calls/c-ben/events?token={token('ann', 'agent')}") as ws:
        first = ws.receive_json()
        assert first["type"] == "error" and first["code"] == "forbidden"
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 1008
    with client.websocket_connect(
        f"/ws/calls/c-ben/events?token={token('sam', 'supervisor')}"
    ) as ws:
        assert ws.receive_json()["code"] == "forbidden"
    with client.websocket_connect(
        f"/ws/calls/c-ann/events?token={token('sam', 'supervisor')}"
    ) as ws:
        assert ws.receive_json()["type"] == "call_start"
    with client.websocket_connect(
        f"/ws/calls/c-none/events?token={token('sam', 'supervisor')}"
    ) as ws:
        assert ws.receive_json()["type"] == "call_start"
    with client.websocket_connect(f"/ws/calls/c-none/events?token={token('ann', 'agent')}") as ws:
        assert ws.receive_json()["code"] == "forbidden"

    # The pages' way: the token as a subprotocol, out of the address (a browser prints a
    # failed socket's address in its console); the server picks the pages' own protocol.
    offered = ["coach.v1", f"bearer.{token('sam', 'supervisor')}"]
    with client.websocket_connect("/ws/calls/c-ann/events", subprotocols=offered) as ws:
        assert ws.accepted_subprotocol == "coach.v1"
        assert ws.receive_json()["type"] == "call_start"
    with client.websocket_connect("/ws/supervisor", subprotocols=offered) as ws:
        assert ws.accepted_subprotocol == "coach.v1"
        assert ws.receive_json()["type"] == "snapshot"
    for refused in (["coach.v1", "bearer.not-a-token"], ["coach.v1"]):
        with client.websocket_connect("/ws/calls/c-ann/events", subprotocols=refused) as ws:
            assert ws.receive_json()["code"] == "unauthorized"
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
            assert closed.value.code == 1008


def test_a_malformed_after_seq_is_refused_with_1007(client: TestClient) -> None:
    """ "²" passes str.isdigit but not int(): it used to drop the socket (1006)."""
    start(client, "c-ann", "ann")
    publish(client, "c-ann", {"type": "transcript", "seq": 2, "speaker": "agent", "text": "hi"})
    ann = token("ann", "agent")
    for bad in ("%C2%B2", "9" * 23, str(2**31), "-1", "x"):
        with client.websocket_connect(f"/ws/calls/c-ann/events?after_seq={bad}&token={ann}") as ws:
            first = ws.receive_json()
            assert first["type"] == "error" and first["code"] == "invalid_query", first
            assert "after_seq" in first["message"]
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
            assert closed.value.code == 1007, bad
    with client.websocket_connect(f"/ws/calls/c-ann/events?after_seq=1&token={ann}") as ws:
        assert ws.receive_json()["seq"] == 2  # a good one resumes as before


def test_a_call_named_after_anothers_agent_feed_gets_none_of_it(client: TestClient) -> None:
    """Found by a security audit: a call `c-ann:agent` had the name of the unredacted feed of
    ann's call `c-ann`, so whoever watched it (its agent by REST, an admin or a team-less
    supervisor by WebSocket) read ann's customer's card number in clear."""
    start(client, "c-ann", "ann")
    start(client, "c-ann:agent", "ben")
    card = "4111 1111 1111 1111"
    said = {"type": "transcript", "seq": 2, "speaker": "customer", "text": card}
    for watcher in (token("ada", "admin"), token("sue", "supervisor")):
        with client.websocket_connect(f"/ws/calls/c-ann:agent/events?token={watcher}") as ws:
            assert ws.receive_json()["call_id"] == "c-ann:agent"  # its own call_start
            publish(client, "c-ann", said)
            publish(client, "c-ann:agent", {**said, "text": "its own line"})
            got = ws.receive_json()
        assert got["call_id"] == "c-ann:agent" and got["text"] == "its own line"
    bus = client.app.state.coach.bus  # type: ignore[attr-defined]
    assert card not in str(bus.history(call_topic("c-ann:agent")))


def test_open_streams_end_when_their_token_expires(client: TestClient) -> None:
    """A token is checked when a socket opens: a wall and a call's feed streamed on for as
    long as they stayed open, long after the token had expired (found by a security audit,
    events still arriving 20 s after a 4 s token's end). They now close with 1008
    `unauthorized`, which the pages answer with the sign-in form."""
    for user, role, call_id, path in (
        ("sam", "supervisor", "c-1", "/ws/supervisor"),
        ("ann", "agent", "c-2", "/ws/calls/c-2/events"),
    ):
        start(client, call_id, "ann")
        short = issue_token(user=user, role=role, secret=SECRET, ttl_s=2)  # type: ignore[arg-type]
        with client.websocket_connect(f"{path}?token={short}") as ws:
            assert ws.receive_json()["type"] in ("snapshot", "call_start")
            time.sleep(2.2)
            publish(client, call_id, {"type": "cue", "seq": 9, "cue": "churn_risk"})
            got = ws.receive_json()
            assert got["type"] == "error" and got["code"] == "unauthorized", (path, got)
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
            assert closed.value.code == 1008


def test_may_view_call_rules() -> None:
    sup = Principal("sam", "supervisor", team="blue", team_agents=frozenset({"ann"}))
    assert may_view_call(sup, {"agent_id": "ann"})
    assert not may_view_call(sup, {"agent_id": "ben"})
    assert may_view_call(sup, {"agent_id": "zed", "team": "blue"})
    assert not may_view_call(sup, None)  # a call not known at all
    # No agent on it yet: every supervisor's (to assign it), unless its meta names a team.
    for unassigned in ({}, {"agent_id": None}, {"agent_id": ""}, {"customer_id": "c1"}):
        assert may_view_call(sup, unassigned), unassigned
        assert not may_view_call(Principal("ann", "agent"), unassigned)
    assert not may_view_call(sup, {"team": "green"})
    assert may_view_call(sup, {"team": "blue"})
    assert may_view_call(Principal("ada", "admin"), None)
    assert not may_view_call(Principal("ann", "agent"), {"agent_id": None})


def test_supervisor_socket_snapshot_then_live_events_filtered_by_team(client: TestClient) -> None:
    start(client, "c-ann", "ann")
    publish(client, "c-ann", {"type": "cue", "seq": 2, "cue": "frustration", "title": "Frustrated"})
    start(client, "c-ben", "ben")
    with client.websocket_connect(f"/ws/supervisor?token={token('ann', 'agent')}") as ws:
        assert ws.receive_json()["code"] == "forbidden"
    with client.websocket_connect("/ws/supervisor") as ws:
        assert ws.receive_json()["code"] == "unauthorized"
    with client.websocket_connect(f"/ws/supervisor?token={token('sam', 'supervisor')}") as ws:
        snap = ws.receive_json()
        assert snap["type"] == "snapshot"
        assert [c["call_id"] for c in snap["calls"]] == ["c-ann"]
        assert snap["calls"][0]["last_cue"]["cue"] == "frustration"
        assert snap["calls"][0]["cues"] == 1
        esc = {"type": "escalation", "seq": 3, "reason": "user_request", "urgency": "high"}
        publish(client, "c-ben", {**esc})  # other team: not sent
        publish(
            client,
            "c-ann",
            {**esc, "detail": "escalation_request cue", "summary": {"text": "wants a manager"}},
        )
        got = ws.receive_json()
        assert got["call_id"] == "c-ann" and got["type"] == "escalation"
        # A customer transcript with state becomes a call_update for the wall.
        publish(
            client,
            "c-ann",
            {
                "type": "transcript",
                "seq": 4,
                "speaker": "customer",
                "text": "hm",
                "state": {
                    "valence": -0.4,
                    "arousal": 0.6,
                    "emotion": "frustrated",
                    "trend": {"valence": -0.2},
                },
            },
        )
        upd = ws.receive_json()
        assert upd["type"] == "call_update" and upd["valence"] == -0.4
    snap = client.get("/api/supervisor/calls", headers=bearer("sam", "supervisor")).json()
    tile = snap["calls"][0]
    assert tile["valence"] == -0.4 and tile["escalations"][0]["reason"] == "user_request"
    assert tile["escalations"][0]["detail"] == "escalation_request cue"  # the wall's "Raised by"
    assert client.get("/api/supervisor/calls", headers=bearer("ann", "agent")).status_code == 403


def test_the_wall_follows_an_unassigned_call_to_its_team(client: TestClient) -> None:
    """An unassigned call is on every supervisor's wall; once it is given to an agent, the
    walls of other teams get a fresh snapshot without it (a single event cannot remove it)."""
    publish(client, "c-open", {"type": "call_start", "seq": 1, "meta": {}})
    with (
        client.websocket_connect(f"/ws/supervisor?token={token('sam', 'supervisor')}") as blue,
        client.websocket_connect(
            f"/ws/supervisor?token={token('gus', 'supervisor', 'green')}"
        ) as green,
    ):
        for wall in (blue, green):
            snap = wall.receive_json()
            assert [c["call_id"] for c in snap["calls"]] == ["c-open"], snap
        client.app.state.coach.bus.publish(  # type: ignore[attr-defined]
            SUPERVISOR_TOPIC,
            {"type": "agent_assigned", "call_id": "c-open", "seq": 2, "agent_id": "ann"},
        )
        # From now on the normal team rules: green hears nothing more of it. (Another call
        # follows, so that a wall that missed the change gets something instead of waiting.)
        publish(client, "c-open", {"type": "cue", "seq": 3, "cue": "frustration", "title": "F"})
        publish(client, "c-other", {"type": "call_start", "seq": 1, "meta": {"agent_id": "ben"}})
        got = blue.receive_json()
        assert got["type"] == "agent_assigned" and got["agent_id"] == "ann"
        assert blue.receive_json()["type"] == "cue"
        resync = green.receive_json()
        assert resync["type"] == "snapshot", resync
        shown = [c["call_id"] for c in resync["calls"]]
        assert "c-open" not in shown
        if not shown:  # taken before c-other started: its call_start comes next
            assert green.receive_json()["call_id"] == "c-other"
    wall = client.get("/api/supervisor/calls", headers=bearer("sam", "supervisor")).json()
    assert [c["call_id"] for c in wall["calls"]] == ["c-open"]
    gus = {"Authorization": f"Bearer {token('gus', 'supervisor', 'green')}"}
    wall = client.get("/api/supervisor/calls", headers=gus).json()
    assert [c["call_id"] for c in wall["calls"]] == ["c-other"]


def test_pages_and_demo_endpoint_guards(
    client: TestClient, tmp_path: Path, runtime: Runtime
) -> None:
    for path in ("/agent/", "/supervisor/"):
        r = client.get(path)
        assert r.status_code == 200 and "/web/common/auth.js" in r.text
    for asset in ("common/auth.js", "common/callview.js", "supervisor/wall.js", "agent/agent.js"):
        assert client.get(f"/web/{asset}").status_code == 200
    assert client.post("/api/demo/calls").status_code == 401
    off = Settings(
        data_dir=tmp_path / "off", auth_secret=SECRET, demo_call_enabled=False, store_enabled=False
    )
    with TestClient(create_app(off, runtime)) as c:
        assert c.post("/api/demo/calls", headers=bearer("ann", "agent")).status_code == 404


def test_each_demo_call_has_a_caller_of_its_own(client: TestClient) -> None:
    """One shared demo customer id made every play after the first "Has called before"."""
    callers = []
    for user in ("ann", "ben"):
        started = client.post("/api/demo/calls", headers=bearer(user, "agent"))
        assert started.status_code == 200, started.text
        call_id = started.json()["call_id"]
        call = client.get(f"/api/calls/{call_id}", headers=bearer("root", "admin")).json()
        callers.append(call["meta"]["customer_id"])
    assert len(set(callers)) == 2 and all(callers)


async def _analytics_store(backend: Backend) -> Any:
    from coach.store import Store

    store = Store(url=backend.url)
    await store.ensure_schema()
    return store


async def test_coaching_analytics_counts(backend: Backend) -> None:
    store = await _analytics_store(backend)
    now = time.time()

    def ev(call_id: str, seq: int, **e: Any) -> Received:
        return Received({"call_id": call_id, "seq": seq, "t_emit": float(seq), **e}, now)

    await store.write_events(
        [
            ev("a1", 1, type="call_start", source="x", channels=[], meta={"agent_id": "ann"}),
            ev("a1", 2, type="cue", cue="frustration", title="F", priority=2),
            ev("a1", 3, type="cue", cue="confusion", title="C", priority=3),
            ev("a1", 4, type="escalation", reason="user_request", urgency="high", summary={}),
            ev(
                "a1",
                5,
                type="call_end",
                duration_s=9.0,
                reason="end",
                summary={"arc": [[0, -0.6], [5, 0.4]], "cues": {}},
            ),
            ev("b1", 1, type="call_start", source="x", channels=[], meta={"agent_id": "ben"}),
            ev("b1", 2, type="cue", cue="frustration", title="F", priority=2),
            ev(
                "b1",
                4,
                type="transcript",
                speaker="customer",
                text="we're off to your rivals",
                t_start=1.0,
                t_end=2.0,
                words=[],
            ),
            ev(
                "b1",
                3,
                type="call_end",
                duration_s=9.0,
                reason="end",
                summary={"arc": [[0, 0.2], [5, -0.5]], "cues": {}},
            ),
        ]
    )
    await store.add_feedback(call_id="a1", cue_seq=2, verdict="helpful", user="ann")
    await store.add_feedback(call_id="a1", cue_seq=3, verdict="dismissed", user="ann")
    await store.add_feedback(call_id="b1", cue_seq=2, verdict="not_helpful", user="ben")
    await store.add_missed_cue(call_id="b1", utterance_seq=4, cue="churn_risk", user="sue")
    await store.add_missed_cue(call_id="b1", utterance_seq=4, cue="churn_risk", user="tom")
    # Two calls the agents marked escalated: one with warning (a1 had its escalation), one
    # with none (c1 showed only confusion), which is listed for review.
    await store.write_events(
        [
            ev("c1", 1, type="call_start", source="x", channels=[], meta={"agent_id": "ann"}),
            ev("c1", 2, type="cue", cue="confusion", title="C", priority=3),
            ev("c1", 3, type="cue", cue="confusion", title="C", priority=3),
            ev("c1", 4, type="call_end", duration_s=9.0, reason="end", summary={"cues": {}}),
        ]
    )
    for call_id, outcome in (
        ("a1", "escalated"),
        ("b1", "said she'd ring back"),
        ("c1", "Escalated "),  # typed in the free-text box
    ):
        await store.set_outcome(call_id=call_id, outcome=outcome, user="ann")
    try:
        result = await coaching_analytics(store)
        cues = {c["cue"]: c for c in result["cues"]}
        assert cues["frustration"]["shown"] == 2
        assert cues["frustration"]["helpful_rate"] == 0.5
        assert cues["frustration"]["not_helpful_rate"] == 0.5
        assert cues["confusion"]["dismissed"] == 1
        assert result["outcome"] == {"better": 1, "worse": 1, "same": 0, "unknown": 1}
        # The outcomes of the calls each cue showed in, a call once however often it showed;
        # free text counts as "other", never quoted.
        assert cues["frustration"]["outcomes"] == {"escalated": 1, "other": 1}
        assert cues["confusion"]["outcomes"] == {"escalated": 2}
        assert result["escalated_unflagged"] == ["c1"]
        assert result["escalations"] == [{"reason": "user_request", "total": 1, "high": 1}]
        agents = {a["agent_id"]: a for a in result["agents"]}
        assert agents["ann"]["better"] == 1 and agents["ann"]["escalations"] == 1
        assert agents["ben"]["worse"] == 1
        assert cues["churn_risk"]["missed_reports"] == 2 and cues["churn_risk"]["shown"] == 0
        assert cues["frustration"]["missed_reports"] == 0
        assert agents["ben"]["missed_reports"] == 2 and agents["ann"]["missed_reports"] == 0
        only_ann = await coaching_analytics(store, agents={"ann"})
        assert only_ann["calls"] == 2
        future = datetime.now(UTC) + timedelta(days=1)
        assert (await coaching_analytics(store, since=future))["calls"] == 0
    finally:
        await store.aclose()
    await asyncio.sleep(0)


async def test_coaching_rates_count_each_cue_once_by_its_latest_verdict(backend: Backend) -> None:
    """Three people rating one frustration cue gave `not_helpful_rate` 2.0: verdicts were
    counted per rater and divided by cues shown. Each cue now counts once, by its latest
    verdict, so every rate is a share of the cues shown, in [0, 1]."""
    store = await _analytics_store(backend)
    now = time.time()
    await store.write_events(
        [
            Received(
                {
                    "call_id": "a1",
                    "seq": 1,
                    "t_emit": 1.0,
                    "type": "call_start",
                    "source": "x",
                    "channels": [],
                    "meta": {"agent_id": "ann"},
                },
                now,
            ),
            Received(
                {"call_id": "a1", "seq": 2, "t_emit": 2.0, "type": "cue", "cue": "frustration"},
                now,
            ),
        ]
    )
    t0 = datetime.now(UTC)
    for i, (user, verdict) in enumerate(
        [("ann", "not_helpful"), ("sue", "not_helpful"), ("tom", "dismissed")]
    ):
        at = t0 + timedelta(seconds=i)
        await store.add_feedback(call_id="a1", cue_seq=2, verdict=verdict, user=user, at=at)
    try:
        result = await coaching_analytics(store)
        (cue,) = result["cues"]
        assert (cue["shown"], cue["rated"], cue["ratings"]) == (1, 1, 3)
        assert (cue["helpful"], cue["not_helpful"], cue["dismissed"]) == (0, 0, 1)
        assert cue["dismissed_rate"] == 1.0 and cue["not_helpful_rate"] == 0.0
        (agent,) = result["agents"]
        for row in (cue, agent):
            rates = [row[f"{v}_rate"] for v in ("helpful", "not_helpful", "dismissed")]
            assert all(0.0 <= r <= 1.0 for r in rates) and sum(rates) <= 1.0
    finally:
        await store.aclose()
    await asyncio.sleep(0)


def test_the_hash_command_answers_help_instead_of_asking_for_a_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An audit's `python -m coach.api.users --help` was taken as "read a password": at a
    terminal it prompted, with stdin not a terminal it said "error: empty password"."""
    import io

    from coach.api import users

    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    with pytest.raises(SystemExit) as done:
        users.main(["--help"])
    assert done.value.code == 0
    assert "COACH_USERS" in capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.StringIO("pw\n"))
    assert users.main([]) == 0
    assert verify_password("pw", capsys.readouterr().out.strip())


def test_a_refused_sign_in_logs_no_email_typed_as_the_name(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by an outside PII audit: people type their email as the user name."""
    with caplog.at_level(logging.WARNING, logger="coach.api.accounts"):
        r = client.post("/api/login", json={"user": "john.smith@gmail.com", "password": "x"})
    assert r.status_code == 401
    assert "sign-in refused for '[EMAIL]'" in caplog.text, caplog.text
    assert "john.smith" not in caplog.text


@needs_redis
def test_failed_sign_ins_are_counted_across_instances(tmp_path: Path, runtime: Runtime) -> None:
    """An outside scale-out audit: each instance counted a name's failed sign-ins alone, so
    after A blocked a name, B took five more guesses (5 x N a minute with N instances). With
    Redis they are counted once for all."""
    import uuid

    name = f"eve-{uuid.uuid4().hex[:8]}"  # nobody's: this run's count only
    entries = [
        *users(),
        {"name": name, "role": "agent", "password_hash": users()[0]["password_hash"]},
    ]

    def app(sub: str) -> TestClient:
        settings = Settings(
            data_dir=tmp_path / sub,
            auth_secret=SECRET,
            users=entries,
            store_enabled=False,
            redis_url=SHARED_URL,
        )
        return TestClient(create_app(settings, runtime))

    with app("a") as a, app("b") as b:
        for _ in range(5):
            assert a.post("/api/login", json={"user": name, "password": "bad"}).status_code == 401
        refused = b.post("/api/login", json={"user": name, "password": "pw"})
        assert refused.status_code == 429, refused.text  # even the right password, for now
        assert int(refused.headers["retry-after"]) > 0  # and says for how long
        # Another name on B is not held up.
        assert b.post("/api/login", json={"user": "ann", "password": "pw"}).status_code == 200


def test_one_user_may_hold_only_so_many_event_streams(tmp_path: Path, runtime: Runtime) -> None:
    """An outside security audit opened 300 walls with one token. Past the cap a stream is
    closed 1008 `too_many_streams`; closing one makes room, and other users are not held."""
    settings = Settings(
        data_dir=tmp_path,
        auth_secret=SECRET,
        users=users(),
        store_enabled=False,
        max_streams_per_user=2,
    )
    with TestClient(create_app(settings, runtime)) as client:
        start(client, "c-ann", "ann")
        sam = f"?token={token('sam', 'supervisor', 'blue')}"
        with (
            client.websocket_connect(f"/ws/supervisor{sam}") as wall,
            client.websocket_connect(f"/ws/calls/c-ann/events{sam}") as panel,
        ):
            assert wall.receive_json()["type"] == "snapshot"
            assert panel.receive_json()["type"] == "call_start"
            with client.websocket_connect(f"/ws/supervisor{sam}") as third:
                refused = third.receive_json()
                assert refused["code"] == "too_many_streams"
                with pytest.raises(WebSocketDisconnect) as closed:
                    third.receive_json()
                assert closed.value.code == 1008
            with client.websocket_connect(f"/ws/calls/c-ann/events{sam}") as fourth:
                assert fourth.receive_json()["code"] == "too_many_streams"
            ada = f"?token={token('ada', 'admin')}"
            with client.websocket_connect(f"/ws/supervisor{ada}") as other:
                assert other.receive_json()["type"] == "snapshot"
        with client.websocket_connect(f"/ws/supervisor{sam}") as again:  # room once closed
            assert again.receive_json()["type"] == "snapshot"
