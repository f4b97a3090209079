"""Who may sign in: a configuration-driven user directory, scrypt password hashes, login.

The embedded default has no user database: people come from `COACH_USERS` (a JSON list of
`{name, role, team, password_hash}`), plus the documented demo logins while no users are
configured (`COACH_DEMO_USERS`), so `make run` can be tried at once. A login exchanges a name
and password for the same signed token `python -m coach token` prints (coach/auth.py).

The directory is also what gives roles their reach: a supervisor sees the calls of the
agents of their team, so `team_agents` is looked up here whenever a token is checked.

`python -m coach.api.users` prints a password hash for a `COACH_USERS` entry.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import hashlib
import hmac
import itertools
import logging
import secrets
import sys
import threading
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass

from coach.auth import ROLES, Role
from coach.settings import Settings

log = logging.getLogger(__name__)

SCRYPT_N, SCRYPT_R, SCRYPT_P, SCRYPT_LEN = 2**14, 8, 1, 32
MAX_FAILURES = 5
"""Failed logins per name within FAILURE_WINDOW_S before further tries are refused."""
FAILURE_WINDOW_S = 60.0
MAX_TRACKED_NAMES = 10_000
"""Names whose failures are remembered at once (memory bound); see UserDirectory._forget."""

DEMO_PASSWORD = "demo"
# (name, role, team): agents on two teams, one supervisor of team blue, one admin.
DEMO_USERS: tuple[tuple[str, Role, str | None], ...] = (
    ("ann", "agent", "blue"),
    ("cal", "agent", "blue"),
    ("ben", "agent", "green"),
    ("sam", "supervisor", "blue"),
    ("ada", "admin", None),
)


def hash_password(password: str, *, n: int = SCRYPT_N) -> str:
    """`scrypt$N$r$p$salt$hash` (base64): the format `COACH_USERS` entries carry."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P, dklen=SCRYPT_LEN
    )
    return "$".join(("scrypt", str(n), str(SCRYPT_R), str(SCRYPT_P), _b64(salt), _b64(digest)))


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
            maxmem=256 << 20,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: Role
    team: str | None
    password_hash: str


class UserError(ValueError):
    """A `COACH_USERS` entry that cannot be used."""


class LoginRefused(Exception):
    def __init__(self, message: str, *, throttled: bool = False) -> None:
        super().__init__(message)
        self.throttled = throttled


def _cost(encoded: str) -> tuple[int, int, int] | None:
    """The (N, r, p) of a `scrypt$N$r$p$salt$hash`, or None if it has none."""
    parts = encoded.split("$")
    try:
        return (int(parts[1]), int(parts[2]), int(parts[3])) if len(parts) == 6 else None
    except ValueError:
        return None


def _decoy_hash(users: list[User]) -> str:
    """A hash no password matches (random salt and digest), at the cost most users' have.

    An unknown name is checked against it, so a refusal takes as long as a wrong password
    for a real user: with a cheaper decoy (it was N=2^10 against the default 2^14, 6 ms
    against 45 ms) the answer's time told which names exist."""
    costs = Counter(c for u in users if (c := _cost(u.password_hash)) is not None)
    n, r, p = costs.most_common(1)[0][0] if costs else (SCRYPT_N, SCRYPT_R, SCRYPT_P)
    salt, digest = _b64(secrets.token_bytes(16)), _b64(secrets.token_bytes(SCRYPT_LEN))
    return "$".join(("scrypt", str(n), str(r), str(p), salt, digest))


class UserDirectory:
    def __init__(self, users: list[User]) -> None:
        self._users = {u.name: u for u in users}
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        """Name -> times of its recent failures, the name failed last at the end."""
        self._lock = threading.Lock()  # sign-ins are checked in worker threads
        # Unknown names cost the same scrypt as known ones: timing does not tell which exist.
        self._dummy_hash = _decoy_hash(users)

    @classmethod
    def from_settings(cls, settings: Settings) -> UserDirectory:
        users = [_parse_entry(i, entry) for i, entry in enumerate(settings.users)]
        demo = settings.demo_users if settings.demo_users is not None else not users
        if demo:
            log.warning(
                "demo logins are enabled (password %r); set COACH_USERS and "
                "COACH_DEMO_USERS=false for anything but a trial",
                DEMO_PASSWORD,
            )
            known = {u.name for u in users}
            shared = hash_password(DEMO_PASSWORD, n=2**12)
            users += [
                User(name, role, team, shared)
                for name, role, team in DEMO_USERS
                if name not in known
            ]
        return cls(users)

    def get(self, name: str) -> User | None:
        return self._users.get(name)

    def __len__(self) -> int:
        return len(self._users)

    def team_of(self, name: str) -> str | None:
        user = self._users.get(name)
        return user.team if user else None

    def team_agents(self, team: str) -> frozenset[str]:
        return frozenset(u.name for u in self._users.values() if u.team == team)

    def authenticate(self, name: str, password: str, *, now: float | None = None) -> User:
        """The user, or LoginRefused (wrong name or password, or too many failures)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            recent = self._failures.setdefault(name, deque(maxlen=MAX_FAILURES))
            while recent and now - recent[0] > FAILURE_WINDOW_S:
                recent.popleft()
            if len(recent) >= MAX_FAILURES:
                raise LoginRefused("too many failed sign-ins; wait a minute", throttled=True)
            # Counted as a failure before the password is checked, and taken back if it is
            # right: the check runs in a worker thread for tens of ms, and parallel tries all
            # passed the count above before any of them failed (40 at once got 10 guesses).
            recent.append(now)
            self._failures.move_to_end(name)
            self._forget(now)
        user = self._users.get(name)
        ok = verify_password(password, user.password_hash if user else self._dummy_hash)
        if user is None or not ok:
            raise LoginRefused("wrong name or password")
        with self._lock:
            recent.clear()
        return user

    def _forget(self, now: float) -> None:
        """Keep the failure table bounded without ending a lockout that still runs.

        Names whose last failure has left the window go first (they block nothing). Beyond
        MAX_TRACKED_NAMES, names that are no user's go, oldest first; a user's entry is never
        dropped early. It was: the oldest name went, so 10,000 sign-ins with made-up names
        (25 s against a running server) erased a locked-out user's failures and gave the
        attacker five more guesses, as often as they liked."""
        while self._failures:
            name, recent = next(iter(self._failures.items()))
            if recent and now - recent[-1] <= FAILURE_WINDOW_S:
                break
            del self._failures[name]
        excess = len(self._failures) - MAX_TRACKED_NAMES
        if excess > 0:
            strangers = (n for n in self._failures if n not in self._users)
            for name in list(itertools.islice(strangers, excess)):
                del self._failures[name]


def _parse_entry(index: int, entry: dict[str, str]) -> User:
    name, role = str(entry.get("name") or "").strip(), entry.get("role")
    hashed = str(entry.get("password_hash") or "")
    if not name:
        raise UserError(f"COACH_USERS[{index}]: missing name")
    if role not in ROLES:
        raise UserError(f"COACH_USERS[{index}] ({name}): role must be one of {', '.join(ROLES)}")
    if not hashed.startswith("scrypt$"):
        raise UserError(
            f"COACH_USERS[{index}] ({name}): password_hash must be a scrypt hash "
            "(python -m coach.api.users)"
        )
    team = entry.get("team")
    return User(name=name, role=role, team=str(team) if team else None, password_hash=hashed)


def main(argv: list[str] | None = None) -> int:
    """Print the hash of a password read from the terminal (or stdin), for COACH_USERS."""
    # A parser only so that `--help` answers (it was read as "prompt for a password").
    argparse.ArgumentParser(
        prog="python -m coach.api.users",
        description="Read a password (prompted at a terminal, else one line of stdin) and "
        "print its scrypt hash, the password_hash of a COACH_USERS entry.",
    ).parse_args(argv)
    password = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline()
    password = password.rstrip("\n")
    if not password:
        print("error: empty password", file=sys.stderr)
        return 2
    print(hash_password(password))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
