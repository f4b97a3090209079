"""Sign-in: `POST /api/login` trades a name and password for a signed token; `GET /api/me`.

The pages (web/common/auth.js) show a sign-in form whenever they hold no valid token, keep
the token in the browser's storage and send it as `Authorization: Bearer` (`?token=` on
WebSockets, which cannot set headers). Tokens expire after `COACH_TOKEN_TTL_S`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field

from coach.api.security import require_principal
from coach.api.users import LoginRefused, UserDirectory
from coach.auth import Principal, Role, issue_token
from coach.settings import Settings

log = logging.getLogger(__name__)
router = APIRouter(tags=["sign-in"])
CurrentPrincipal = Annotated[Principal, Depends(require_principal)]


class LoginBody(BaseModel):
    user: str = Field(min_length=1, max_length=100)
    password: str = Field(min_length=1, max_length=1000)


class Me(BaseModel):
    user: str
    role: Role
    team: str | None = None


class LoginAnswer(Me):
    token: str
    expires_at: float


def _directory(request: Request) -> UserDirectory:
    users: UserDirectory | None = getattr(request.app.state, "users", None)
    if users is None:
        raise HTTPException(503, "sign-in is not configured")
    return users


@router.post("/api/login")
async def login(body: LoginBody, request: Request) -> LoginAnswer:
    """Check a name and password from the user directory; answer a signed token."""
    settings: Settings = request.app.state.settings
    users = _directory(request)
    try:
        # scrypt is deliberately slow: keep it off the event loop.
        user = await asyncio.to_thread(users.authenticate, body.user.strip(), body.password)
    except LoginRefused as exc:
        log.warning("sign-in refused for %r: %s", body.user[:100], exc)
        raise HTTPException(429 if exc.throttled else 401, str(exc)) from exc
    token = issue_token(
        user=user.name,
        role=user.role,
        secret=settings.signing_secret,
        ttl_s=settings.token_ttl_s,
        team=user.team,
        signed_in=True,
    )
    log.info("%s signed in (%s)", user.name, user.role)
    return LoginAnswer(
        user=user.name,
        role=user.role,
        team=user.team,
        token=token,
        expires_at=time.time() + settings.token_ttl_s,
    )


@router.get("/api/me")
async def me(principal: CurrentPrincipal) -> Me:
    """Who the token belongs to: the pages check their stored token with this."""
    return Me(user=principal.user, role=principal.role, team=principal.team)
