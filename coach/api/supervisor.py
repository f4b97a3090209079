"""The supervisor wall's endpoints: `WS /ws/supervisor`, the live list, coaching analytics.

`WS /ws/supervisor` (supervisors and admins): first `{"type": "snapshot", "calls": [...]}`,
every live (and recently ended) call the principal may see with its latest state, from the
WallTracker (coach/api/wall.py); then the changes as they happen: `call_start`, `call_end`,
`cue`, `escalation`, `call_update`, `escalation_ack`. A wall that falls behind gets a fresh
snapshot rather than a gap. Supervisors with a team see their team's calls only.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, WebSocket, WebSocketDisconnect

from coach.api.limits import StreamQuota
from coach.api.security import (
    TOKEN_EXPIRED,
    principal_from,
    require_principal,
    seconds_left,
    stream_subprotocol,
)
from coach.api.streams import Stop, client_watch, next_item, refuse
from coach.api.wall import WallSubscription, WallTracker
from coach.auth import AuthError, Principal
from coach.events import dumps
from coach.ingest import closecodes as cc
from coach.store.analytics import coaching_analytics
from coach.store.api import DateQuery, get_store, refuse_nul
from coach.store.records import StoreUnavailable
from coach.store.store import Store

router = APIRouter(tags=["supervisor"])
CurrentPrincipal = Annotated[Principal, Depends(require_principal)]
CurrentStore = Annotated[Store, Depends(get_store)]


def tracker_of(conn: Request | WebSocket) -> WallTracker:
    tracker: WallTracker = conn.app.state.wall
    return tracker


def _supervisors_only(principal: Principal) -> None:
    if not principal.is_supervisor:
        raise HTTPException(403, "supervisors only")


@router.get("/api/supervisor/calls")
async def wall_calls(request: Request, principal: CurrentPrincipal) -> dict[str, Any]:
    """What a wall shows at connect time: the calls this supervisor may see, latest state."""
    _supervisors_only(principal)
    return {"calls": tracker_of(request).snapshot(principal)}


@router.get("/api/analytics/coaching", dependencies=[Depends(refuse_nul)])
async def analytics(
    principal: CurrentPrincipal,
    store: CurrentStore,
    since: DateQuery = None,
    until: DateQuery = None,
    agent_id: str | None = None,
) -> dict[str, Any]:
    """Per cue and per agent over calls started in [since, until): cues shown, feedback
    rates, escalations by reason, calls ending better or worse than they started."""
    _supervisors_only(principal)
    agents: set[str] | None = None
    if not principal.is_admin and principal.team is not None:
        agents = set(principal.team_agents or ())
    if agent_id is not None:
        if agents is not None and agent_id not in agents:
            raise HTTPException(403, "not an agent of your team")
        agents = {agent_id}
    try:
        return await coaching_analytics(store, since=since, until=until, agents=agents)
    except StoreUnavailable as exc:
        raise HTTPException(503, "call history is temporarily unavailable") from exc


@router.websocket("/ws/supervisor")
async def supervisor_ws(ws: WebSocket) -> None:
    await ws.accept(subprotocol=stream_subprotocol(ws))
    try:
        principal = principal_from(ws, ws.app.state.settings)
    except AuthError as exc:
        await _refuse(ws, "unauthorized", str(exc))
        return
    if not principal.is_supervisor:
        await _refuse(ws, "forbidden", "supervisors only")
        return
    streams: StreamQuota = ws.app.state.coach.streams
    if not streams.take(principal.user):
        await _refuse(ws, "too_many_streams", streams.refusal(principal.user))
        return
    try:
        await _serve_wall(ws, principal)
    finally:
        streams.give_back(principal.user)


async def _serve_wall(ws: WebSocket, principal: Principal) -> None:
    tracker = tracker_of(ws)
    # Subscribing and taking the snapshot in one step (no await between) leaves no gap.
    sub = tracker.subscribe(principal)
    try:
        await _send_snapshot(ws, tracker, principal)
        await _pump(ws, tracker, sub)
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        tracker.unsubscribe(sub)


async def _send_snapshot(ws: WebSocket, tracker: WallTracker, principal: Principal) -> None:
    snapshot = {
        "type": "snapshot",
        "user": principal.user,
        "team": principal.team,
        "calls": tracker.snapshot(principal),
        # How long ended calls stay: the page drops their tiles by the server's rule.
        "keep": tracker.keep(),
    }
    await ws.send_text(dumps(snapshot))


async def _pump(ws: WebSocket, tracker: WallTracker, sub: WallSubscription) -> None:
    async with client_watch(ws) as watcher:
        while True:
            event = await next_item(sub.queue, watcher, seconds_left(sub.principal))
            if event is Stop.EXPIRED:
                # A wall used to stream on for as long as it stayed open.
                await _refuse(ws, "unauthorized", TOKEN_EXPIRED)
                return
            if event is Stop.GONE:
                return
            if sub.overflowed:
                sub.overflowed = False
                while not sub.queue.empty():
                    sub.queue.get_nowait()
                await _send_snapshot(ws, tracker, sub.principal)
                continue
            await ws.send_text(dumps(event))


async def _refuse(ws: WebSocket, reason: str, message: str) -> None:
    await refuse(ws, cc.POLICY_VIOLATION, reason, message)
