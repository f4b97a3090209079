"""Shared fixtures for the store tests: a fresh database per test, and synthetic calls.

Every test that takes `db_url` runs twice: on a SQLite file in its tmp dir, and on a
PostgreSQL database created for that test on 127.0.0.1:5432 (dropped afterwards). The
PostgreSQL case is skipped only when nothing answers on that port; a server that answers but
refuses us is a failure, not a skip. No test here needs an ASR model.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest

from coach.bus import SUPERVISOR_TOPIC, InProcessBus, agent_topic, call_topic
from coach.events import Event
from coach.redaction import redact_event
from coach.store import migrate

T = TypeVar("T")
PG_HOST = os.environ.get("COACH_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("COACH_TEST_PG_PORT", "5432"))
CARD = "4111 1111 1111 1111"
EMAIL = "jane.doe@example.com"
AGENT_ONLY = "AGENTONLYMARKER"


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on a private loop in another thread.

    Sync fixtures and TestClient tests use it, so they never touch pytest-asyncio's loop.
    """
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


# -- PostgreSQL ---------------------------------------------------------------------------


def _pg_port_open() -> bool:
    try:
        with socket.create_connection((PG_HOST, PG_PORT), timeout=1.0):
            return True
    except OSError:
        return False


_admin: tuple[str, str] | None = None


async def _find_admin() -> tuple[str, str]:
    """(user, maintenance database) that may CREATE DATABASE; trust auth as in CI."""
    errors = []
    for user in ("postgres", "root"):
        for db in ("postgres", "test"):
            try:
                conn = await asyncpg.connect(
                    host=PG_HOST, port=PG_PORT, user=user, database=db, timeout=5
                )
            except (OSError, asyncpg.PostgresError) as exc:
                errors.append(f"{user}@{db}: {exc}")
                continue
            await conn.close()
            return user, db
    raise RuntimeError("PostgreSQL answers but refuses every login: " + "; ".join(errors))


def pg_admin() -> tuple[str, str]:
    global _admin
    if _admin is None:
        _admin = run(_find_admin())
    return _admin


async def pg_execute(sql: str, *, database: str | None = None) -> None:
    user, db = pg_admin()
    conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=user, database=database or db)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def pg_url(name: str, *, port: int = PG_PORT) -> str:
    user, _ = pg_admin()
    return f"postgresql+asyncpg://{user}@{PG_HOST}:{port}/{name}"


def require_postgres() -> None:
    if not _pg_port_open():
        msg = f"PostgreSQL not reachable on {PG_HOST}:{PG_PORT}: PostgreSQL cases skipped"
        print(msg)
        pytest.skip(msg)


async def pg_outage(name: str, *, down: bool) -> None:
    """Take one test database away (and back) without touching any other database."""
    if down:
        await pg_execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await pg_execute(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        )
    else:
        await pg_execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


class Backend:
    """One database for one test, and how to take it down and bring it back."""

    def __init__(self, kind: str, url: str, name: str) -> None:
        self.kind = kind
        self.url = url
        self.name = name

    def __repr__(self) -> str:
        return f"Backend({self.kind})"


BACKENDS = ["sqlite", "postgresql"]
_CLEAN = "; ".join(
    f"DELETE FROM {t}"
    for t in ("cue_feedback", "cues", "utterances", "escalations", "summaries", "calls")
)


def fresh_pg_database() -> Iterator[str]:
    """A new, empty PostgreSQL database (name), dropped afterwards."""
    require_postgres()
    name = f"coach_test_{uuid.uuid4().hex[:12]}"
    run(pg_execute(f'CREATE DATABASE "{name}"'))
    # Test data need not survive a crash of the server: skip the fsync on every commit.
    run(pg_execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off'))
    try:
        yield name
    finally:
        run(pg_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def migrated_pg_database() -> Iterator[str]:
    """The body of a module-scoped fixture: one migrated database for a module's tests.

    Creating a database per test costs a second or more on a busy server; tests instead
    share one per module and start from empty tables (`backend_for`).
    """
    for name in fresh_pg_database():
        run(migrate(pg_url(name)))
        yield name


def backend_for(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """The body of each test module's `backend` fixture (parametrized over BACKENDS).

    The module must define a module-scoped `pg_database` fixture (`migrated_pg_database`);
    it is only set up when a PostgreSQL case runs.
    """
    if request.param == "sqlite":
        db = tmp_path / "coach.db"
        yield Backend("sqlite", f"sqlite+aiosqlite:///{db}", str(db))
        return
    require_postgres()
    name = request.getfixturevalue("pg_database")
    run(pg_execute(_CLEAN, database=name))
    yield Backend("postgresql", pg_url(name), name)


# -- synthetic calls ----------------------------------------------------------------------


def words(text: str, t0: float) -> list[dict[str, Any]]:
    return [
        {"w": w, "t0": round(t0 + 0.3 * i, 3), "t1": round(t0 + 0.3 * i + 0.25, 3), "p": 0.9}
        for i, w in enumerate(text.split())
    ]


def call_events(
    call_id: str,
    *,
    agent_id: str = "alice",
    customer_id: str = "cust-1",
    lines: int = 2,
    cue: bool = True,
    escalation: bool = True,
) -> list[Event]:
    """A whole call as a session emits it (unredacted, seq-stamped), CONTRACT field names."""
    evs: list[Event] = [
        {
            "type": "call_start",
            "source": "pcm",
            "channels": ["customer", "agent"],
            "meta": {"agent_id": agent_id, "customer_id": customer_id},
            "t_emit": 0.0,
        },
        {"type": "partial", "speaker": "customer", "t_start": 0.5, "t_end": 1.0, "text": "my"},
    ]
    for i in range(lines):
        t = 1.0 + 4.0 * i
        text = f"my card is {CARD} and mail {EMAIL}" if i == 0 else f"line {i} is about billing"
        evs.append(
            {
                "type": "transcript",
                "speaker": "customer" if i % 2 == 0 else "agent",
                "t_start": t,
                "t_end": t + 3.0,
                "text": text,
                "words": words(text, t),
                "sentiment": {"valence": -0.4, "label": "negative", "scores": {"negative": 0.7}},
                "prosody": {"f0_hz": 180.0, "f0_z": 1.2, "energy_z": 0.5, "rate_wps": 2.5},
                "utterance_id": i + 1,
            }
        )
        evs.append(_metrics(t + 3.0))
    if cue:
        evs.append(
            {
                "type": "cue",
                "cue": "acknowledge_frustration",
                "title": "Acknowledge",
                "advice": "Say you understand.",
                "why": f"customer said {CARD}",
                "priority": 2,
                "evidence": {"text": f"card {CARD}", "t_start": 1.0, "t_end": 4.0},
            }
        )
    if escalation:
        evs.append(
            {
                "type": "escalation",
                "reason": "user_request",
                "urgency": "high",
                "summary": f"asked for a manager, mail {EMAIL}",
                "trend": "worsening",
            }
        )
    evs.append(_metrics(4.0 * lines + 2.0, final=True))
    evs.append(
        {
            "type": "call_end",
            "duration_s": 4.0 * lines + 2.0,
            "reason": "hangup",
            "summary": {"arc": [[1.0, -0.4]], "cues": {"acknowledge_frustration": 1}},
        }
    )
    for seq, ev in enumerate(evs, start=1):
        ev.update({"seq": seq, "call_id": call_id, "t_emit": ev.get("t_emit", float(seq))})
    return evs


def _metrics(t: float, *, final: bool = False) -> Event:
    return {
        "type": "metrics",
        "t_start": 0.0,
        "t_end": t,
        "talk_ratio": {"customer": 0.6, "agent": 0.4},
        "overtalk_s": 0.0,
        "silence_s": 1.0,
        "agent_wps": 2.0,
        "final": final,
    }


def publish(bus: InProcessBus, events: list[Event]) -> None:
    """As CallSession.emit: unredacted to the agent's topic, redacted to the call topic."""
    for ev in events:
        agent_view = dict(ev)
        if ev["type"] == "transcript":
            agent_view["text"] = f"{ev['text']} {AGENT_ONLY}"
        bus.publish(agent_topic(ev["call_id"]), agent_view)
        redacted = redact_event(ev)
        bus.publish(call_topic(ev["call_id"]), redacted)
        if ev["type"] in ("call_start", "call_end"):
            bus.publish(SUPERVISOR_TOPIC, redacted)


async def seed(url: str, spool_dir: Path, calls: Iterable[list[Event]]) -> None:
    """Record whole calls in the store at `url` as a server would: bus, writer, flush."""
    from coach.store import Spool, Store, StoreWriter

    store = Store(url=url)
    writer = StoreWriter(store=store, spool=Spool(directory=spool_dir))
    bus = InProcessBus()
    bus.add_listener(writer)
    for events in calls:
        publish(bus, events)
    await writer.flush()
    await writer.aclose()
    await store.aclose()


async def eventually(
    check: Callable[[], bool | Awaitable[bool]], *, timeout_s: float = 10.0, what: str = ""
) -> None:
    """Wait for a condition driven by a background task (the writer's own timing)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.02)
