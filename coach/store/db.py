"""Engines and schema migrations for the store: SQLite by default, PostgreSQL when configured.

The same Alembic history (`migrations/` at the repository root) runs on both databases, at
startup, through Alembic's API on the application's own async engine, so there is no separate
deployment step to forget. On PostgreSQL a transaction-scoped advisory lock serialises
instances that start together, so two replicas never race to create the same table.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

# Any constant works: it only has to be the same in every instance of this application.
_MIGRATION_LOCK_ID = 0x636F616368  # "coach"
SQLITE_BUSY_TIMEOUT_MS = 5000


def migrations_dir() -> Path:
    """`COACH_MIGRATIONS_DIR`, else `migrations/` beside the source tree (a checkout), else
    in the working directory (an installed package, as in the container image)."""
    if explicit := os.environ.get("COACH_MIGRATIONS_DIR"):
        return Path(explicit)
    beside = Path(__file__).resolve().parents[2] / "migrations"
    return beside if beside.is_dir() else Path.cwd() / "migrations"


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite+aiosqlite:///{(data_dir / 'coach.db').resolve()}"


def resolve_url(database_url: str | None, data_dir: Path) -> str:
    """The configured URL, with the sync driver names people type mapped to async ones."""
    if not database_url:
        return sqlite_url(data_dir)
    for plain, async_driver in (
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if database_url.startswith(plain):
            return async_driver + database_url.removeprefix(plain)
    return database_url


def redacted_url(url: str) -> str:
    """The URL as logs may show it: never a password."""
    return sa.make_url(url).render_as_string(hide_password=True)


def create_engine(
    url: str,
    *,
    connect_timeout_s: float = 5.0,
    sqlite_busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS,
) -> AsyncEngine:
    """An async engine that notices a restarted database instead of failing one write on it."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            # A directory that cannot be made shows up later, as an unreachable store.
            with contextlib.suppress(OSError):
                path = Path(parsed.database)
                path.parent.mkdir(parents=True, exist_ok=True)
                # Transcripts and customer ids: readable by the server's user only. SQLite
                # gives its -wal and -shm files the database file's mode.
                path.touch(mode=0o600, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": connect_timeout_s})
        sa.event.listen(
            engine.sync_engine,
            "connect",
            functools.partial(_sqlite_pragmas, sqlite_busy_timeout_ms),
        )
        return engine
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "postgresql":
        connect_args = {"timeout": connect_timeout_s, "command_timeout": 30}
    return create_async_engine(
        url, pool_pre_ping=True, pool_size=5, max_overflow=5, connect_args=connect_args
    )


def _sqlite_pragmas(busy_timeout_ms: int, dbapi_conn: Any, _record: Any) -> None:
    # WAL lets readers (the history API) run while the writer commits; with WAL, NORMAL
    # sync survives a process crash and skips an fsync per commit. Foreign keys are off by
    # default in SQLite and the cascades rely on them.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    cur.close()


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("path_separator", "os")
    # ConfigParser interpolation: a literal % in a password must be doubled.
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


async def migrate(url: str, *, revision: str = "head", engine: AsyncEngine | None = None) -> None:
    """Bring the schema up to `revision` (the latest by default)."""
    await _run(url, engine, lambda cfg: command.upgrade(cfg, revision))


async def downgrade(url: str, *, revision: str = "base", engine: AsyncEngine | None = None) -> None:
    """Undo migrations down to `revision` (`base`: drop every table of the store)."""
    await _run(url, engine, lambda cfg: command.downgrade(cfg, revision))


async def _run(url: str, engine: AsyncEngine | None, action: Callable[[Config], None]) -> None:
    own = engine is None
    eng = engine if engine is not None else create_engine(url)
    cfg = alembic_config(url)
    try:
        async with eng.begin() as conn:
            await conn.run_sync(_locked, cfg, action)
    finally:
        if own:
            await eng.dispose()


def _locked(conn: Connection, cfg: Config, action: Callable[[Config], None]) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_ID})
    # env.py finds this connection and runs inside its transaction instead of opening one.
    cfg.attributes["connection"] = conn
    action(cfg)
