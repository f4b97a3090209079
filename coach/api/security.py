"""Who is calling: tokens for people (header or ?token=), API keys for telephony ingest."""

from __future__ import annotations

from fastapi import HTTPException, Request, WebSocket

from coach.auth import DEV_PRINCIPAL, AuthError, Principal, check_api_key, verify_token
from coach.settings import Settings

WS_POLICY_VIOLATION = 1008


def _bearer(headers: dict[str, str] | object, query_token: str | None) -> str | None:
    auth = getattr(headers, "get", lambda _k, _d=None: None)("authorization", None)
    if isinstance(auth, str) and auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return query_token


def principal_from(conn: Request | WebSocket, settings: Settings) -> Principal:
    """Raise AuthError unless the connection carries a valid token."""
    if settings.auth_disabled:
        return DEV_PRINCIPAL
    token = _bearer(conn.headers, conn.query_params.get("token"))
    if not token:
        raise AuthError("missing credentials")
    return verify_token(token, secret=settings.signing_secret)


def require_principal(request: Request) -> Principal:
    settings: Settings = request.app.state.settings
    try:
        return principal_from(request, settings)
    except AuthError as exc:
        raise HTTPException(status_code=401, detail=str(exc)) from exc


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
    """Supervisors and admins see every call; an agent only calls assigned to them."""
    if principal.is_supervisor:
        return True
    return call_meta is not None and call_meta.get("agent_id") == principal.user
