"""tests/support.py's watchdog: a TestClient shutdown that hangs says where it waits."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI

from tests.support import PYTEST_CAPTURE, client_with_watchdog


def test_a_slow_shutdown_prints_the_awaits_it_waits_on(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(PYTEST_CAPTURE, "capman", None)  # into capsys, not past it

    async def stuck_here() -> None:
        await asyncio.sleep(0.6)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await asyncio.create_task(stuck_here(), name="stuck-task")

    with client_with_watchdog(FastAPI(lifespan=lifespan), teardown_s=0.2):
        pass
    err = capsys.readouterr().err
    assert "TestClient shutdown > 0.2 s; pending tasks:" in err
    assert "stuck-task (" in err and "stuck_here" in err


def test_a_quick_shutdown_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with client_with_watchdog(FastAPI(), teardown_s=5):
        pass
    assert "pending tasks" not in capsys.readouterr().err
