"""Sign-in: `POST /api/login` trades a name and password for a signed token; `GET /api/me`.

The pages (web/common/auth.js) show a sign-in form whenever they hold no valid token, keep
the token in the browser's storage and send it as `Authorization: Bearer` (`?token=` on
WebSockets, which cannot set headers). Tokens expire after `COACH_TOKEN_TTL_S`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field

from coach.api.security import require_principal
from coach.api.users import FAILURE_WINDOW_S, MAX_FAILURES, LoginRefused, UserDirectory
from coach.auth import Principal, Role, issue_token
from coach.redaction import redact_text
from coach.redis_bus import RedisBus
from coach.settings import Settings

log = logging.getLogger(__name__)
router = APIRouter(tags=["sign-in"])
CurrentPrincipal = Annotated[Principal, Depends(require_principal)]
T = TypeVar("T")

MAX_WAITING_SIGN_INS = 16
"""Password checks queued at once; beyond it a sign-in is refused (429) until one is done."""
SIGN_IN_NICE = 10
"""How much lower than the server's the password-check thread's CPU priority is."""


class SignInBusy(Exception):
    """Too many sign-ins are being checked at once."""


class PasswordChecks:
    """Password checks (scrypt, tens of ms of CPU each) on one thread of low CPU priority,
    with a bounded queue.

    A flood of sign-ins with made-up names used to run up to six scrypt checks at once in
    the default thread pool, about 95% of a 2-core machine, taken from the live calls'
    speech recognition. One thread at a lower priority gets only what the calls leave,
    and a queue past MAX_WAITING_SIGN_INS is refused at once rather than growing."""

    def __init__(self, max_waiting: int = MAX_WAITING_SIGN_INS, nice: int = SIGN_IN_NICE) -> None:
        self.max_waiting = max_waiting
        self._nice = nice
        self._pool: ThreadPoolExecutor | None = None
        self._waiting = 0

    def _lower_priority(self) -> None:
        # Linux gives each thread its own nice value (PRIO_PROCESS with the thread's id).
        try:
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + self._nice)
        except (AttributeError, OSError) as exc:  # not Linux, or not allowed: still one thread
            log.debug("sign-in thread keeps its priority (%r)", exc)

    async def run(self, check: Callable[..., T], *args: object) -> T:
        """`check(*args)` on the sign-in thread, or SignInBusy when the queue is full."""
        if self._waiting >= self.max_waiting:
            raise SignInBusy("too many sign-ins at once; try again in a second")
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="sign-in", initializer=self._lower_priority
            )
        self._waiting += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, check, *args)
        finally:
            self._waiting -= 1

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


PASSWORD_CHECKS = PasswordChecks()


class LoginBody(BaseModel):
    user: str = Field(min_length=1, max_length=100)
    password: str = Field(min_length=1, max_length=1000)


class Me(BaseModel):
    user: str
    role: Role
    team: str | None = None
    team_members: list[str] | None = None
    """A supervisor's team (the directory's people in it), whom they may put on a call."""


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
    name = body.user.strip()
    shared = await _count_everywhere(request, name)
    try:
        # scrypt is deliberately slow: off the event loop, and behind the live calls.
        user = await PASSWORD_CHECKS.run(users.authenticate, name, body.password)
    except SignInBusy as exc:
        log.warning("sign-in refused for %r: %s", redact_text(body.user[:100]), exc)
        raise HTTPException(429, str(exc), headers={"Retry-After": "1"}) from exc
    except LoginRefused as exc:
        log.warning("sign-in refused for %r: %s", redact_text(body.user[:100]), exc)
        headers = {"Retry-After": str(int(FAILURE_WINDOW_S))} if exc.throttled else None
        raise HTTPException(429 if exc.throttled else 401, str(exc), headers=headers) from exc
    if shared is not None:
        await shared.clear_sign_ins(name)
    token = issue_token(
        user=user.name,
        role=user.role,
        secret=settings.signing_secret,
        ttl_s=settings.token_ttl_s,
        team=user.team,
        signed_in=True,
    )
    log.info("%s signed in (%s)", user.name, user.role)
    members = _assignable(users, user.team) if user.team and user.role != "agent" else None
    return LoginAnswer(
        user=user.name,
        role=user.role,
        team=user.team,
        team_members=members,
        token=token,
        expires_at=time.time() + settings.token_ttl_s,
    )


async def _count_everywhere(request: Request, name: str) -> RedisBus | None:
    """With Redis, the failed sign-ins a name may have are counted across every instance, as
    each instance counts its own (`UserDirectory.authenticate`): per instance alone, N
    instances gave an attacker 5 x N guesses a minute (an outside scale-out audit). Counted
    before the check, and cleared by a right password, like the local count. Redis
    unreachable: the local count still holds. Returns the bus that counted."""
    bus = getattr(getattr(request.app.state, "coach", None), "bus", None)
    if not isinstance(bus, RedisBus):
        return None
    try:
        tries = await bus.count_sign_in(name, FAILURE_WINDOW_S)
    except Exception as exc:
        log.warning("sign-in: shared count unavailable (%r); this instance's count holds", exc)
        return None
    if tries > MAX_FAILURES:
        log.warning("sign-in refused for %r: too many failed sign-ins", redact_text(name[:100]))
        raise HTTPException(
            429,
            "too many failed sign-ins; wait a minute",
            headers={"Retry-After": str(int(FAILURE_WINDOW_S))},
        )
    return bus


class AuthInfo(BaseModel):
    required: bool
    """Whether the API asks for a token (false only with COACH_AUTH_DISABLED, development)."""
    sign_in: bool
    """Whether `POST /api/login` can give one (a user directory is configured)."""


@router.get("/api/auth")
async def auth_info(request: Request) -> AuthInfo:
    """How this server signs people in, asked without a token: a page with no stored token
    learns whether to show its sign-in form. It asked `/api/me` instead, and every first load
    printed a 401 in the browser's console (an outside audit)."""
    settings: Settings = request.app.state.settings
    users = getattr(request.app.state, "users", None)
    return AuthInfo(required=not settings.auth_disabled, sign_in=users is not None)


@router.get("/api/me")
async def me(principal: CurrentPrincipal, request: Request) -> Me:
    """Who the token belongs to: the pages check their stored token with this."""
    users: UserDirectory | None = getattr(request.app.state, "users", None)
    members = (
        _assignable(users, principal.team)
        if principal.is_supervisor and principal.team and users is not None
        else None
    )
    return Me(user=principal.user, role=principal.role, team=principal.team, team_members=members)


def _assignable(users: UserDirectory, team: str) -> list[str]:
    """Whom a supervisor may put on a call (the wall's assign form offers them): the agents
    of their team, not its supervisors (an outside audit was offered one, then refused)."""
    names = users.team_agents(team)
    return sorted(n for n in names if (u := users.get(n)) is not None and u.role == "agent")
