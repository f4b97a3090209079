"""Fixtures shared by the store's test modules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from test_store_support import BACKENDS, Backend, backend_for, migrated_pg_database


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    """One migrated PostgreSQL database per test module (only set up when a case needs it)."""
    yield from migrated_pg_database()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Each store test runs on SQLite and on PostgreSQL (`test_store_support.backend_for`)."""
    yield from backend_for(request, tmp_path)
