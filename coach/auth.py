"""Credentials: signed, expiring tokens (JWT HS256 via PyJWT) for people, API keys for telephony."""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from typing import Literal, get_args

import jwt

Role = Literal["agent", "supervisor", "admin"]
ROLES: tuple[Role, ...] = get_args(Role)
ISSUER = "voice-coach"
SIGN_IN = "sign-in"
"""The `via` claim of tokens issued by the sign-in form."""


class AuthError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Principal:
    user: str
    role: Role
    team: str | None = None
    """The person's team (from the user directory): a supervisor with a team sees its calls."""
    team_agents: frozenset[str] | None = None
    """Agents of that team, resolved from the directory when the token is checked."""
    signed_in: bool = False
    """The token came from a sign-in (not `coach token`): the user directory must still
    hold this user with this role, or the token is refused."""
    expires_at: float | None = None
    """When the token stops being valid (epoch seconds): a stream opened with it ends then."""

    @property
    def is_supervisor(self) -> bool:
        return self.role in ("supervisor", "admin")

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


DEV_PRINCIPAL = Principal(user="dev", role="admin")


def issue_token(
    *,
    user: str,
    role: Role,
    secret: str,
    ttl_s: int,
    team: str | None = None,
    signed_in: bool = False,
) -> str:
    if role not in ROLES:
        raise AuthError(f"unknown role {role!r}")
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": user,
        "role": role,
        "iat": now,
        "exp": now + ttl_s,
        "iss": ISSUER,
    }
    if team:
        claims["team"] = team
    if signed_in:
        claims["via"] = SIGN_IN
    return jwt.encode(claims, secret, algorithm="HS256")


def verify_token(token: str, *, secret: str) -> Principal:
    try:
        claims = jwt.decode(
            token, secret, algorithms=["HS256"], issuer=ISSUER, options={"require": ["exp", "sub"]}
        )
    except jwt.PyJWTError as exc:
        raise AuthError(f"invalid token: {exc}") from exc
    role = claims.get("role")
    if role not in ROLES:
        raise AuthError("invalid token: bad role")
    team = claims.get("team")
    return Principal(
        user=str(claims["sub"]),
        role=role,
        team=str(team) if team else None,
        signed_in=claims.get("via") == SIGN_IN,
        expires_at=float(claims["exp"]),
    )


def check_api_key(presented: str | None, expected: str | None) -> bool:
    """Constant-time comparison; no key configured means ingest is closed unless auth is off."""
    if not expected or not presented:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())
