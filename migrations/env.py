"""Alembic environment for the call-history store, on SQLite and PostgreSQL alike.

Two ways in. The server (`coach.store.db.migrate`) hands over a live connection in
`config.attributes["connection"]`, already inside a transaction on its own event loop, and
this module runs the migrations on it. From the command line (`alembic upgrade head`) it
builds an async engine from `-x url=...`, `COACH_DATABASE_URL` or the default SQLite file.
`render_as_batch` lets later migrations alter columns on SQLite, which cannot ALTER in place.
"""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig
from pathlib import Path

from alembic import context
from sqlalchemy.engine import Connection

from coach.store.db import create_engine, resolve_url
from coach.store.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url")
    url = url or config.get_main_option("sqlalchemy.url") or os.environ.get("COACH_DATABASE_URL")
    return resolve_url(url, Path(os.environ.get("COACH_DATA_DIR", ".coach")))


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )


def run_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_on(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


async def _run_standalone() -> None:
    engine = create_engine(_url())  # the server's engine: creates the SQLite directory
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_run_on)
    finally:
        await engine.dispose()


def run_online() -> None:
    given = config.attributes.get("connection")
    if given is not None:
        _run_on(given)
        return
    if config.config_file_name is not None:
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    asyncio.run(_run_standalone())


if context.is_offline_mode():
    run_offline()
else:
    run_online()
