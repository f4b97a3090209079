"""The history REST API through FastAPI's TestClient, on SQLite and PostgreSQL.

A small app mounts only the store's router, with `app.state.store` and `app.state.settings`
as the real application sets them; calls are recorded beforehand through the bus and writer.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from test_store_support import (
    CARD,
    Backend,
    call_events,
    run,
    seed,
)

from coach.api import supervisor
from coach.api.users import UserDirectory, hash_password
from coach.auth import Role, issue_token
from coach.settings import Settings
from coach.store import Store
from coach.store.api import router

SECRET = "s" * 32
CALLS = {
    "c-alice": ("alice", "cust-1"),
    "c-bob": ("bob", "cust-1"),
    "c-alice2": ("alice", "cust-2"),
}
EVENTS = {
    call_id: call_events(call_id, agent_id=a, customer_id=c) for call_id, (a, c) in CALLS.items()
}
CUE_SEQ = next(e["seq"] for e in EVENTS["c-alice"] if e["type"] == "cue")
ESC_SEQ = next(e["seq"] for e in EVENTS["c-alice"] if e["type"] == "escalation")


def _app(url: str, data_dir: Path) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.store = Store(url=url)  # on the app's own event loop
        yield
        await app.state.store.aclose()

    app = FastAPI(lifespan=lifespan)
    app.state.settings = Settings(data_dir=data_dir, auth_secret=SECRET)
    app.include_router(router)
    return app


@pytest.fixture
def client(backend: Backend, tmp_path: Path) -> Iterator[TestClient]:
    run(seed(backend.url, tmp_path / "spool", EVENTS.values()))
    with TestClient(_app(backend.url, tmp_path)) as c:
        yield c


def auth(user: str, role: Role = "agent") -> dict[str, str]:
    # A day, not minutes: these are made at collection time, and a slow run must not
    # turn them into "expired" failures long before the tests that use them.
    return {
        "Authorization": f"Bearer {issue_token(user=user, role=role, secret=SECRET, ttl_s=86_400)}"
    }


ALICE, BOB, SUE = auth("alice"), auth("bob"), auth("sue", "supervisor")
FEEDBACK = f"/api/calls/c-alice/cues/{CUE_SEQ}/feedback"


def test_every_route_needs_a_token(client: TestClient) -> None:
    routes: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", "/api/history/calls", None),
        ("GET", "/api/history/calls/c-alice", None),
        ("GET", "/api/customers/cust-1/history", None),
        ("POST", FEEDBACK, {"verdict": "helpful"}),
        ("POST", f"/api/calls/c-alice/escalations/{ESC_SEQ}/ack", None),
        ("PUT", "/api/calls/c-alice/outcome", {"outcome": "resolved"}),
    ]
    for method, path, body in routes:
        assert client.request(method, path, json=body).status_code == 401, path
        bad = {"Authorization": "Bearer not-a-token"}
        assert client.request(method, path, json=body, headers=bad).status_code == 401, path


def _ids(resp: Any) -> list[str]:
    assert resp.status_code == 200, resp.text
    return sorted(c["call_id"] for c in resp.json()["calls"])


def test_search_is_filtered_by_role(client: TestClient) -> None:
    assert _ids(client.get("/api/history/calls", headers=ALICE)) == ["c-alice", "c-alice2"]
    assert _ids(client.get("/api/history/calls", headers=BOB)) == ["c-bob"]
    assert client.get("/api/history/calls?agent_id=bob", headers=ALICE).status_code == 403
    assert _ids(client.get("/api/history/calls", headers=SUE)) == sorted(CALLS)
    admin = auth("root", "admin")
    assert _ids(client.get("/api/history/calls?agent_id=bob", headers=admin)) == ["c-bob"]
    assert _ids(client.get("/api/history/calls?customer_id=cust-1", headers=SUE)) == [
        "c-alice",
        "c-bob",
    ]
    assert _ids(client.get("/api/history/calls?q=BILLING&customer_id=cust-2", headers=SUE)) == [
        "c-alice2"
    ]
    assert _ids(client.get("/api/history/calls?q=nothing-said", headers=SUE)) == []
    page = client.get("/api/history/calls?limit=1&offset=1", headers=SUE).json()
    assert len(page["calls"]) == 1 and (page["limit"], page["offset"]) == (1, 1)
    assert client.get("/api/history/calls?limit=0", headers=SUE).status_code == 422
    # By what happened on the call (each call here had one cue and one high escalation).
    calls = "/api/history/calls"
    assert _ids(client.get(f"{calls}?cue=acknowledge_frustration", headers=SUE)) == sorted(CALLS)
    assert _ids(client.get(f"{calls}?cue=crisis", headers=SUE)) == []
    assert _ids(client.get(f"{calls}?escalation=high", headers=ALICE)) == ["c-alice", "c-alice2"]
    assert _ids(client.get(f"{calls}?escalation=critical", headers=SUE)) == []
    bad = client.get(f"{calls}?escalation=urgent", headers=SUE)
    assert bad.status_code == 422 and "critical" in bad.text


def test_one_call_for_its_agent_and_supervisors(client: TestClient) -> None:
    resp = client.get("/api/history/calls/c-alice", headers=ALICE)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["call"]["agent_id"] == "alice" and body["call"]["end_reason"] == "hangup"
    assert len(body["transcript"]) == 2 and "[CARD]" in body["transcript"][0]["text"]
    assert CARD not in resp.text
    assert [c["seq"] for c in body["cues"]] == [CUE_SEQ]
    assert [e["seq"] for e in body["escalations"]] == [ESC_SEQ]
    assert body["summary"]["cues"] == {"acknowledge_frustration": 1}
    assert client.get("/api/history/calls/c-alice", headers=BOB).status_code == 403
    assert client.get("/api/history/calls/c-alice", headers=SUE).status_code == 200
    assert client.get("/api/history/calls/nope", headers=SUE).status_code == 404


def test_customer_history_is_for_supervisors(client: TestClient) -> None:
    assert client.get("/api/customers/cust-1/history", headers=ALICE).status_code == 403
    resp = client.get("/api/customers/cust-1/history?limit=5", headers=SUE)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["customer_id"] == "cust-1"
    assert sorted(c["call_id"] for c in body["calls"]) == ["c-alice", "c-bob"]
    assert all(c["cue_counts"] == {"acknowledge_frustration": 1} for c in body["calls"])
    assert client.get("/api/customers/nobody/history", headers=SUE).json()["calls"] == []


def test_cue_feedback(client: TestClient) -> None:
    assert client.post(FEEDBACK, json={"verdict": "helpful"}).status_code == 401
    assert client.post(FEEDBACK, json={"verdict": "helpful"}, headers=BOB).status_code == 403
    resp = client.post(FEEDBACK, json={"verdict": "helpful"}, headers=ALICE)
    assert resp.status_code == 200, resp.text
    assert resp.json()["verdict"] == "helpful" and resp.json()["user"] == "alice"
    # The CONTRACT path with the cue id instead of its seq: the latest such cue.
    by_id = "/api/calls/c-alice/cues/acknowledge_frustration/feedback"
    resp = client.post(by_id, json={"verdict": "not_helpful"}, headers=ALICE)
    assert resp.status_code == 200 and resp.json()["cue_seq"] == CUE_SEQ
    assert client.post(FEEDBACK, json={"verdict": "dismissed"}, headers=SUE).status_code == 200
    assert client.post(FEEDBACK, json={"verdict": "meh"}, headers=ALICE).status_code == 422
    assert client.post(FEEDBACK, json={}, headers=ALICE).status_code == 422
    # The CONTRACT body inside a client's own envelope: the verdict counts, the rest is not ours.
    wrapped = {"verdict": "dismissed", "source": "crm"}
    assert client.post(FEEDBACK, json=wrapped, headers=SUE).status_code == 200
    unknown = "/api/calls/c-alice/cues/999/feedback"
    assert client.post(unknown, json={"verdict": "helpful"}, headers=ALICE).status_code == 404
    no_cue = "/api/calls/c-alice/cues/no_such_cue/feedback"
    assert client.post(no_cue, json={"verdict": "helpful"}, headers=ALICE).status_code == 404
    no_call = "/api/calls/nope/cues/1/feedback"
    assert client.post(no_call, json={"verdict": "helpful"}, headers=SUE).status_code == 404

    cue = client.get("/api/history/calls/c-alice", headers=SUE).json()["cues"][0]
    assert {(f["user"], f["verdict"]) for f in cue["feedback"]} == {
        ("alice", "not_helpful"),
        ("sue", "dismissed"),
    }

    # Each person takes back their own rating only.
    assert client.delete(FEEDBACK).status_code == 401
    assert client.delete(FEEDBACK, headers=BOB).status_code == 403
    assert client.delete(FEEDBACK, headers=ALICE).status_code == 204
    assert client.delete(FEEDBACK, headers=ALICE).status_code == 404
    assert client.delete("/api/calls/c-alice/cues/x/feedback", headers=ALICE).status_code == 422
    cue = client.get("/api/history/calls/c-alice", headers=SUE).json()["cues"][0]
    assert [(f["user"], f["verdict"]) for f in cue["feedback"]] == [("sue", "dismissed")]


def _counted(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_repeated_verdict_or_report_is_counted_once(client: TestClient) -> None:
    """A retried POST (a double click, a client's retry) is one verdict in the metrics, as
    it is one row in the store; a changed verdict is counted as given."""
    cue = next(e["cue"] for e in EVENTS["c-alice"] if e["type"] == "cue")
    feedback = "coach_cue_feedback_total"
    helpful = _counted(feedback, cue=cue, verdict="helpful")
    for _ in range(3):
        assert client.post(FEEDBACK, json={"verdict": "helpful"}, headers=ALICE).status_code == 200
    assert _counted(feedback, cue=cue, verdict="helpful") == helpful + 1
    not_helpful = _counted(feedback, cue=cue, verdict="not_helpful")
    assert client.post(FEEDBACK, json={"verdict": "not_helpful"}, headers=ALICE).status_code == 200
    assert _counted(feedback, cue=cue, verdict="not_helpful") == not_helpful + 1
    assert client.post(FEEDBACK, json={"verdict": "helpful"}, headers=SUE).status_code == 200
    assert _counted(feedback, cue=cue, verdict="helpful") == helpful + 2  # another person

    customer = next(
        e["seq"]
        for e in EVENTS["c-alice"]
        if e["type"] == "transcript" and e["speaker"] == "customer"
    )
    path = f"/api/calls/c-alice/utterances/{customer}/missed-cue"
    reports = _counted("coach_missed_cue_reports_total", cue="churn_risk")
    for _ in range(2):
        assert client.post(path, json={"cue": "churn_risk"}, headers=ALICE).status_code == 200
    assert _counted("coach_missed_cue_reports_total", cue="churn_risk") == reports + 1


def test_missed_cue_reports(client: TestClient) -> None:
    said = [e for e in EVENTS["c-alice"] if e["type"] == "transcript"]
    customer = next(e["seq"] for e in said if e["speaker"] == "customer")
    agent = next(e["seq"] for e in said if e["speaker"] == "agent")
    path = f"/api/calls/c-alice/utterances/{customer}/missed-cue"
    assert client.post(path, json={"cue": "churn_risk"}).status_code == 401
    assert client.post(path, json={"cue": "churn_risk"}, headers=BOB).status_code == 403
    resp = client.post(path, json={"cue": "churn_risk"}, headers=ALICE)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["cue"], body["user"], body["utterance_seq"]) == ("churn_risk", "alice", customer)
    assert "[CARD]" in body["text"] and CARD not in body["text"]  # the redacted text only
    assert client.post(path, json={"cue": "crisis"}, headers=SUE).status_code == 200
    # Only the customer's language cues: not timing cues, not unknown ids.
    for cue in ("dead_air", "agent_pace_fast", "no_such_cue", ""):
        resp = client.post(path, json={"cue": cue}, headers=ALICE)
        assert resp.status_code == 422 and "churn_risk" in resp.text
    assert client.post(path, json={}, headers=ALICE).status_code == 422
    misspelt = client.post(path, json={"cue": "crisis", "cues": "churn_risk"}, headers=ALICE)
    assert misspelt.status_code == 422 and "cues" in misspelt.text
    agent_path = f"/api/calls/c-alice/utterances/{agent}/missed-cue"
    resp = client.post(agent_path, json={"cue": "frustration"}, headers=ALICE)
    assert resp.status_code == 409 and "customer" in resp.text
    gone = "/api/calls/c-alice/utterances/999/missed-cue"
    assert client.post(gone, json={"cue": "frustration"}, headers=ALICE).status_code == 404
    no_call = "/api/calls/nope/utterances/1/missed-cue"
    assert client.post(no_call, json={"cue": "frustration"}, headers=SUE).status_code == 404

    missed = client.get("/api/history/calls/c-alice", headers=SUE).json()["missed_cues"]
    assert [(m["cue"], m["user"], m["utterance_seq"]) for m in missed] == [
        ("churn_risk", "alice", customer),
        ("crisis", "sue", customer),
    ]

    # A wrong report is taken back by its author; nobody else's goes with it.
    mine = f"{path}/churn_risk"
    assert client.delete(mine).status_code == 401
    assert client.delete(mine, headers=BOB).status_code == 403
    assert client.delete(mine, headers=SUE).status_code == 404  # sue reported crisis, not this
    assert client.delete(mine, headers=ALICE).status_code == 204
    assert client.delete(mine, headers=ALICE).status_code == 404
    missed = client.get("/api/history/calls/c-alice", headers=SUE).json()["missed_cues"]
    assert [(m["cue"], m["user"]) for m in missed] == [("crisis", "sue")]


def test_escalation_acknowledgement(client: TestClient) -> None:
    path = f"/api/calls/c-alice/escalations/{ESC_SEQ}/ack"
    assert client.post(path, headers=ALICE).status_code == 403
    first = client.post(path, headers=SUE)
    assert first.status_code == 200, first.text
    assert first.json()["acknowledged_by"] == "sue"
    again = client.post(path, headers=auth("tom", "supervisor"))
    assert again.status_code == 200 and again.json()["acknowledged_by"] == "sue"
    assert client.post("/api/calls/c-alice/escalations/999/ack", headers=SUE).status_code == 404


def test_outcome(client: TestClient) -> None:
    path = "/api/calls/c-alice/outcome"
    resp = client.put(path, json={"outcome": "resolved"}, headers=ALICE)
    assert resp.status_code == 200, resp.text
    assert resp.json()["outcome"] == "resolved" and resp.json()["outcome_by"] == "alice"
    assert client.put(path, json={"outcome": "x"}, headers=BOB).status_code == 403
    assert client.put(path, json={"outcome": "x" * 201}, headers=ALICE).status_code == 422
    assert client.put(path, json={"outcome": "callback"}, headers=SUE).status_code == 200
    assert (
        client.put("/api/calls/nope/outcome", json={"outcome": "x"}, headers=SUE).status_code == 404
    )
    history = client.get("/api/customers/cust-1/history", headers=SUE).json()["calls"]
    assert {c["call_id"]: c["outcome"] for c in history}["c-alice"] == "callback"


def test_an_outcome_is_cleared_only_on_purpose(client: TestClient) -> None:
    """`{}` (or a misspelt field) cleared a stored outcome with 200. Only an explicit
    `{"outcome": null}` clears it; an empty body, a blank outcome or an unknown field is 422
    and leaves the outcome as it was."""
    path = "/api/calls/c-alice/outcome"
    assert client.put(path, json={"outcome": "resolved"}, headers=ALICE).status_code == 200
    for body in ({}, {"outcome": ""}, {"outcome": "   "}, {"result": "callback"}):
        resp = client.put(path, json=body, headers=ALICE)
        assert resp.status_code == 422, (body, resp.text)
    history = client.get("/api/customers/cust-1/history", headers=SUE).json()["calls"]
    assert {c["call_id"]: c["outcome"] for c in history}["c-alice"] == "resolved"
    cleared = client.put(path, json={"outcome": None}, headers=ALICE)
    assert cleared.status_code == 200 and cleared.json()["outcome"] is None


def test_an_unreachable_store_answers_503(tmp_path: Path) -> None:
    (tmp_path / "blocked").write_text("a file where the database directory should be")
    url = f"sqlite+aiosqlite:///{tmp_path / 'blocked' / 'coach.db'}"
    with TestClient(_app(url, tmp_path)) as client:
        assert client.get("/api/history/calls", headers=SUE).status_code == 503
        assert client.post(FEEDBACK, json={"verdict": "helpful"}, headers=ALICE).status_code == 503


def test_no_store_configured_answers_503(tmp_path: Path) -> None:
    app = FastAPI()
    app.state.settings = Settings(data_dir=tmp_path, auth_secret=SECRET)
    app.include_router(router)
    with TestClient(app) as client:
        assert client.get("/api/history/calls", headers=SUE).status_code == 503


TOO_BIG = "9" * 23  # beyond 64 bits: the drivers cannot even bind it


def test_out_of_range_numbers_are_refused_not_500(client: TestClient) -> None:
    """Path and query integers are bounded by validation: 422, never a driver error (500)."""
    verdict = {"verdict": "helpful"}
    for seq in (TOO_BIG, str(2**31)):  # 2**31: past PostgreSQL's 32-bit seq columns
        for method, path, body in (
            ("POST", f"/api/calls/c-alice/cues/{seq}/feedback", verdict),
            ("DELETE", f"/api/calls/c-alice/cues/{seq}/feedback", None),
            ("POST", f"/api/calls/c-alice/utterances/{seq}/missed-cue", {"cue": "churn_risk"}),
            ("DELETE", f"/api/calls/c-alice/utterances/{seq}/missed-cue/churn_risk", None),
            ("POST", f"/api/calls/c-alice/escalations/{seq}/ack", None),
        ):
            resp = client.request(method, path, json=body, headers=SUE)
            assert resp.status_code == 422, (method, path, resp.text)
    negative = client.delete("/api/calls/c-alice/cues/-1/feedback", headers=SUE)
    assert negative.status_code == 422, negative.text
    for offset in (2**63, 2**62 + 1, -1):
        resp = client.get(f"/api/history/calls?offset={offset}", headers=SUE)
        assert resp.status_code == 422, resp.text
    far = client.get(f"/api/history/calls?offset={2**62}", headers=SUE)
    assert far.status_code == 200 and far.json()["calls"] == []
    # "²" passes str.isdigit but int() may refuse it: it is taken as a cue id, and no cue has it.
    sup = client.post("/api/calls/c-alice/cues/%C2%B2/feedback", json=verdict, headers=SUE)
    assert sup.status_code == 404, sup.text
    last = client.post(f"/api/calls/c-alice/cues/{2**31 - 1}/feedback", json=verdict, headers=SUE)
    assert last.status_code == 404, last.text  # in range, just no such cue
    long_id = "/api/calls/c-alice/cues/" + "x" * 65 + "/feedback"
    assert client.post(long_id, json=verdict, headers=SUE).status_code == 422


# Team blue (alice, amy) and green (bob); "c-open-*" had no agent on it when it was stored.
TEAM_CALLS = {
    **{f"c-blue-{i}": ("alice" if i % 2 else "amy", "cust-1") for i in range(3)},
    **{f"c-green-{i}": ("bob", "cust-1") for i in range(6)},
    "c-open-1": (None, "cust-1"),
}


@pytest.fixture
def team_client(backend: Backend, tmp_path: Path) -> Iterator[TestClient]:
    events = [call_events(cid, agent_id=a, customer_id=c) for cid, (a, c) in TEAM_CALLS.items()]  # type: ignore[arg-type]
    run(seed(backend.url, tmp_path / "spool", events))
    app = _app(backend.url, tmp_path)
    h = hash_password("pw", n=2**10)
    app.state.users = UserDirectory.from_settings(
        Settings(
            data_dir=tmp_path,
            users=[
                {"name": n, "role": r, "team": t, "password_hash": h}
                for n, r, t in (
                    ("alice", "agent", "blue"),
                    ("amy", "agent", "blue"),
                    ("bob", "agent", "green"),
                    ("sam", "supervisor", "blue"),
                )
            ],
        )
    )
    with TestClient(app) as c:
        yield c


def test_a_team_supervisors_pages_are_full(team_client: TestClient) -> None:
    """The team filter is applied before LIMIT/OFFSET: every page is full until the last,
    offsets count the team's calls, and nothing shows twice or goes missing."""
    sam = auth("sam", "supervisor")
    mine = {c for c, (a, _) in TEAM_CALLS.items() if a != "bob"}  # blue's, and the open one
    everything = team_client.get("/api/history/calls?limit=500", headers=sam)
    assert _ids(everything) == sorted(mine)
    seen: list[str] = []
    for offset in range(0, 6, 2):
        page = team_client.get(f"/api/history/calls?limit=2&offset={offset}", headers=sam)
        seen += _ids(page)
        assert len(page.json()["calls"]) == min(2, max(0, len(mine) - offset)), offset
    assert sorted(seen) == sorted(mine)
    # A customer's previous calls: the limit counts the team's calls too.
    history = team_client.get("/api/customers/cust-1/history?limit=4", headers=sam).json()
    assert sorted(c["call_id"] for c in history["calls"]) == sorted(mine)
    # Calls with no agent are every supervisor's (someone has to assign them), not agents'.
    assert team_client.get("/api/history/calls/c-open-1", headers=sam).status_code == 200
    assert team_client.get("/api/history/calls/c-green-0", headers=sam).status_code == 403
    assert team_client.get("/api/history/calls/c-open-1", headers=ALICE).status_code == 403
    assert _ids(team_client.get("/api/history/calls", headers=ALICE)) == ["c-blue-1"]


def _assigned_live_call(call_id: str, agent_id: str) -> list[dict[str, Any]]:
    """A call that started with no agent, had one put on it (PUT /api/calls/{id}/agent) and
    is still live: no call_end yet."""
    events = [e for e in call_events(call_id, agent_id="") if e["type"] != "call_end"]
    seq = max(e["seq"] for e in events) + 1
    events.append({"type": "agent_assigned", "agent_id": agent_id, "seq": seq, "call_id": call_id})
    return events


def test_an_agent_put_on_a_live_call_may_review_it_before_it_ends(
    backend: Backend, tmp_path: Path
) -> None:
    """`agent_assigned` was not stored: until call_end the store said nobody was on the
    call, so the agent a supervisor put on it got 403 rating its cues, reporting a missed
    cue or setting its outcome from the live panel; and a call cut off before its end stayed
    every team's 'no agent yet' call and never became the agent's."""
    events = _assigned_live_call("c-live", "alice")
    run(seed(backend.url, tmp_path / "spool", [events]))
    cue = next(e["seq"] for e in events if e["type"] == "cue")
    said = next(
        e["seq"] for e in events if e["type"] == "transcript" and e["speaker"] == "customer"
    )
    with TestClient(_app(backend.url, tmp_path)) as client:
        feedback = f"/api/calls/c-live/cues/{cue}/feedback"
        resp = client.post(feedback, json={"verdict": "helpful"}, headers=ALICE)
        assert resp.status_code == 200, resp.text
        missed = f"/api/calls/c-live/utterances/{said}/missed-cue"
        assert client.post(missed, json={"cue": "churn_risk"}, headers=ALICE).status_code == 200
        outcome = client.put("/api/calls/c-live/outcome", json={"outcome": "ok"}, headers=ALICE)
        assert outcome.status_code == 200, outcome.text
        assert _ids(client.get("/api/history/calls", headers=ALICE)) == ["c-live"]
        record = client.get("/api/history/calls/c-live", headers=ALICE).json()["call"]
        assert record["agent_id"] == "alice" and record["ended_at"] is None
        # Once assigned it is that agent's call only.
        assert client.post(feedback, json={"verdict": "helpful"}, headers=BOB).status_code == 403


def test_an_outcome_is_stored_redacted(client: TestClient) -> None:
    """The outcome is free text a person types; it was stored and shown to every supervisor
    verbatim, card numbers and phone numbers included."""
    said = f"paid with {CARD}, call back on 212 555 0147 or jane.doe@example.com"
    resp = client.put("/api/calls/c-alice/outcome", json={"outcome": said}, headers=ALICE)
    assert resp.status_code == 200, resp.text
    for shown in (
        resp.json()["outcome"],
        client.get("/api/history/calls/c-alice", headers=SUE).json()["call"]["outcome"],
    ):
        assert shown == "paid with [CARD], call back on [PHONE] or [EMAIL]"


def test_malformed_filters_are_422_on_both_stores(client: TestClient) -> None:
    """A NUL in an id or a filter was a 409 quoting the PostgreSQL driver, and on SQLite
    `?q=%00` searched for "" and listed every call; a date that has no UTC time (year 9999
    at -23:59) was a 503, 'try again later', for a request that can never succeed."""
    client.app.include_router(supervisor.router)  # type: ignore[attr-defined]
    admin = auth("root", "admin")
    for path in (
        "/api/history/calls?q=%00",
        "/api/history/calls?customer_id=a%00",
        "/api/history/calls/c-alice%00",
        "/api/customers/%00/history",
        "/api/analytics/coaching?agent_id=%00",
        "/api/history/calls?since=9999-12-31T23:59:59-23:59",
        "/api/history/calls?until=0001-01-01T00:00:00%2B01:00",
        "/api/analytics/coaching?since=0001-01-01T00:00:00%2B01:00",
    ):
        resp = client.get(path, headers=admin)
        assert resp.status_code == 422, (path, resp.text)
        assert "sqlalchemy" not in resp.text and "asyncpg" not in resp.text
    for path in (
        f"/api/calls/c-alice%00/cues/{CUE_SEQ}/feedback",
        "/api/calls/c-alice/cues/a%00/feedback",
    ):
        assert client.post(path, json={"verdict": "helpful"}, headers=admin).status_code == 422
    # A NUL typed into an outcome is dropped, as in every other stored text.
    resp = client.put("/api/calls/c-alice/outcome", json={"outcome": "re\x00solved"}, headers=ALICE)
    assert resp.status_code == 200 and resp.json()["outcome"] == "resolved", resp.text
    # Dates with an offset, and the extremes that do have a UTC time, still work.
    ok = "/api/history/calls?since=2000-01-01T00:00:00%2B05:00&until=9999-12-31T00:00:00"
    assert _ids(client.get(ok, headers=admin)) == sorted(CALLS)
    analytics = client.get("/api/analytics/coaching?since=2000-01-01T00:00:00-08:00", headers=admin)
    assert analytics.status_code == 200 and analytics.json()["calls"] == len(CALLS)


def test_an_erasure_asked_as_the_call_ends_waits_for_its_end_to_be_written(
    client: TestClient, backend: Backend, tmp_path: Path
) -> None:
    """An outside review audit: erasing a call the moment it ended answered 409 "not ended"
    (and a customer's erasure listed it as live) until the store had written its end, about
    a second later. The wall has seen the end: the erasure waits for the store instead."""
    import threading

    from coach.api.wall import WallTracker

    admin = auth("root", "admin")
    events = {c: call_events(c, customer_id="cust-9") for c in ("c-end1", "c-end2")}
    run(
        seed(
            backend.url,
            tmp_path / "spool-open",
            [[e for e in evs if e["type"] != "call_end"] for evs in events.values()],
        )
    )
    wall = WallTracker()
    for evs in events.values():
        wall.apply(evs[0])
        wall.apply(evs[-1])
        assert evs[-1]["type"] == "call_end" and wall.has_ended(evs[0]["call_id"])
    client.app.state.wall = wall  # type: ignore[attr-defined]

    def erase_while_the_end_is_written(call_id: str, path: str) -> Any:
        end = [[events[call_id][-1]]]
        writer = threading.Timer(0.6, lambda: run(seed(backend.url, tmp_path / call_id, end)))
        writer.start()
        try:
            return client.delete(path, headers=admin)
        finally:
            writer.join()

    resp = erase_while_the_end_is_written("c-end1", "/api/history/calls/c-end1")
    assert resp.status_code == 204, resp.text
    resp = erase_while_the_end_is_written("c-end2", "/api/customers/cust-9/history")
    assert resp.json() == {"erased": ["c-end2"], "live": []}


def test_a_record_read_as_its_call_ends_carries_its_end(
    client: TestClient, backend: Backend, tmp_path: Path
) -> None:
    """An outside ingest audit: the record read the moment a call ended was 404, or a call
    with no end, for about half a second. The wall has seen the end: the read waits for it."""
    import threading

    from coach.api.wall import WallTracker

    events = call_events("c-read", customer_id="cust-8")
    run(seed(backend.url, tmp_path / "open", [events[:-1]]))
    wall = WallTracker()
    wall.apply(events[0])
    wall.apply(events[-1])
    client.app.state.wall = wall  # type: ignore[attr-defined]
    end = [[events[-1]]]
    writer = threading.Timer(0.6, lambda: run(seed(backend.url, tmp_path / "end", end)))
    writer.start()
    try:
        got = client.get("/api/history/calls/c-read", headers=auth("root", "admin"))
    finally:
        writer.join()
    assert got.status_code == 200 and got.json()["call"]["ended_at"], got.text


def test_erasure_on_request_is_for_admins_and_takes_everything(
    client: TestClient, backend: Backend, tmp_path: Path
) -> None:
    """A caller asks for their data to be deleted: an admin erases one call, or all of a
    customer's; a call still running is kept (its next events would write it again)."""
    admin = auth("root", "admin")
    unended = [e for e in call_events("c-live", customer_id="cust-1") if e["type"] != "call_end"]
    run(seed(backend.url, tmp_path / "spool-live", [unended]))
    one = "/api/history/calls/c-alice2"
    assert client.delete(one).status_code == 401
    assert client.delete(one, headers=SUE).status_code == 403
    assert client.delete(one, headers=ALICE).status_code == 403
    assert client.delete(one, headers=admin).status_code == 204
    assert client.get(one, headers=admin).status_code == 404
    assert client.delete(one, headers=admin).status_code == 404
    live = client.delete("/api/history/calls/c-live", headers=admin)
    assert live.status_code == 409 and "not ended" in live.text

    customer = "/api/customers/cust-1/history"
    assert client.delete(customer, headers=SUE).status_code == 403
    resp = client.delete(customer, headers=admin)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"erased": ["c-alice", "c-bob"], "live": ["c-live"]}
    assert _ids(client.get("/api/history/calls", headers=admin)) == ["c-live"]
    assert client.delete("/api/customers/nobody/history", headers=admin).json() == {
        "erased": [],
        "live": [],
    }
