"""Who is calling: tokens for people (header, WebSocket subprotocol or ?token=), API keys for
telephony ingest.

Roles (README, Sign-in and roles): an agent sees the calls assigned to them (`agent_id` in
the call's meta), a supervisor the calls of their team's agents and those no agent is on yet
(every call when they have no team), an admin everything. Teams come from the user directory
(coach/api/users.py), looked up when the token is checked, so moving an agent to another
team takes effect at once.
"""

from __future__ import annotations

import time
from dataclasses import replace

from fastapi import HTTPException, Request, WebSocket

from coach.auth import DEV_PRINCIPAL, AuthError, Principal, check_api_key, verify_token
from coach.settings import Settings

WS_POLICY_VIOLATION = 1008
TOKEN_EXPIRED = "token expired: sign in again"
STREAM_PROTOCOL = "coach.v1"
"""The WebSocket subprotocol the pages offer, with their token as a second one,
`bearer.<token>`: a browser cannot set a header on a WebSocket, and a token in the address
(`?token=`, still taken from other clients) is printed in the browser's console when the socket
fails and written to proxies' access logs (found by an outside audit of the pages). The
server answers with this one, as a browser requires when it offered any."""
BEARER_PROTOCOL = "bearer."


def _offered_protocols(ws: WebSocket) -> list[str]:
    offered = ws.headers.get("sec-websocket-protocol", "")
    return [p.strip() for p in offered.split(",") if p.strip()]


def stream_subprotocol(ws: WebSocket) -> str | None:
    """The subprotocol to accept the socket with (`ws.accept(subprotocol=...)`)."""
    return STREAM_PROTOCOL if STREAM_PROTOCOL in _offered_protocols(ws) else None


def _bearer(headers: dict[str, str] | object, query_token: str | None) -> str | None:
    auth = getattr(headers, "get", lambda _k, _d=None: None)("authorization", None)
    if isinstance(auth, str) and auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return query_token


def principal_from(conn: Request | WebSocket, settings: Settings) -> Principal:
    """Raise AuthError unless the connection carries a valid token."""
    if settings.auth_disabled:
        return DEV_PRINCIPAL
    # On a WebSocket, where a browser cannot set a header: the token as a subprotocol, or
    # `?token=`; never in an HTTP query, where it would end up in proxies' logs, browser
    # history and Referer headers.
    query = None
    if isinstance(conn, WebSocket):
        offered = [p for p in _offered_protocols(conn) if p.startswith(BEARER_PROTOCOL)]
        query = offered[0][len(BEARER_PROTOCOL) :] if offered else conn.query_params.get("token")
    token = _bearer(conn.headers, query)
    if not token:
        raise AuthError("missing credentials")
    principal = verify_token(token, secret=settings.signing_secret)
    return with_team(principal, getattr(conn.app.state, "users", None))


def with_team(principal: Principal, users: object | None) -> Principal:
    """Attach the team and its agents from the directory (authoritative over the token).

    A signed-in user's token lasts hours: if the directory no longer holds them with that
    role (removed, or demoted from supervisor to agent), it is refused at once. Tokens from
    `coach token` are the operator's own and are not checked against the directory."""
    lookup = getattr(users, "get", None)
    if principal.signed_in and lookup is not None:
        known = lookup(principal.user)
        if known is None:
            raise AuthError(f"{principal.user} is no longer a user here: sign in again")
        if getattr(known, "role", None) != principal.role:
            raise AuthError(f"{principal.user}'s role changed: sign in again")
    team_of = getattr(users, "team_of", None)
    agents_of = getattr(users, "team_agents", None)
    if team_of is None or agents_of is None:
        return principal
    team = team_of(principal.user) or principal.team
    agents = agents_of(team) if team else None
    return replace(principal, team=team, team_agents=agents)


def require_principal(request: Request) -> Principal:
    settings: Settings = request.app.state.settings
    try:
        return principal_from(request, settings)
    except AuthError as exc:
        # RFC 6750: a 401 names the scheme it wants.
        raise HTTPException(
            status_code=401, detail=str(exc), headers={"WWW-Authenticate": "Bearer"}
        ) from exc


def seconds_left(principal: Principal, *, now: float | None = None) -> float | None:
    """How long a stream opened with this principal's token may still run (None: no end).

    A token is checked when a WebSocket opens; a wall or panel then streams for hours, so
    the stream itself must end when the token does (close 1008 `unauthorized`: the pages
    show the sign-in form, then resume), or an expired token would keep it going for ever."""
    if principal.expires_at is None:
        return None
    return max(0.0, principal.expires_at - (time.time() if now is None else now))


def ingest_authorized(conn: Request | WebSocket, settings: Settings) -> bool:
    """Telephony presents the ingest API key; an admin token is accepted too (tools, demos)."""
    if settings.auth_disabled:
        return True
    key = conn.headers.get("x-api-key") or conn.query_params.get("api_key")
    if check_api_key(key, settings.ingest_api_key):
        return True
    try:
        return principal_from(conn, settings).role == "admin"
    except AuthError:
        return False


def may_view_call(principal: Principal, call_meta: dict[str, object] | None) -> bool:
    """Admins see every call, supervisors their team's, agents only those assigned to them.

    A call no agent is on yet (and no team named in its meta) is every supervisor's: one of
    them has to put an agent on it (`PUT /api/calls/{id}/agent`), and until then it is no
    team's. `call_meta` None is a call not known at all, which stays hidden from teams.
    """
    if principal.is_admin:
        return True
    agent = call_meta.get("agent_id") if call_meta else None
    if principal.role == "supervisor":
        if principal.team is None:
            return True  # a supervisor without a team (e.g. `coach token`) oversees everyone
        if call_meta is None:
            return False
        if call_meta.get("team") == principal.team:
            return True
        if not agent:
            return not call_meta.get("team")
        return agent in (principal.team_agents or ())
    return agent is not None and agent == principal.user
