"""Redis as an instance's log tells it: an instance that cannot reach Redis says so once,
not once per retry, and says when it connects."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests.coach.test_redis_bus import SHARED_URL, make_bus, needs_redis, prefix, wait_for

__all__ = ["prefix"]  # the Redis key-prefix fixture, cleaned up after each test


async def test_a_wrong_redis_url_is_logged_once_not_per_retry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Found by the audit: an instance started with a wrong Redis URL never logged it
    (`/health/ready` said `redis_degraded`), because the warning only marked an up -> down
    change and the writer starts down."""
    caplog.set_level(logging.INFO, logger="coach.redis_bus")
    bus = make_bus("redis://:hunter2@127.0.0.1:1/0", "coach-test-down:", "C", backoff_cap_s=0.05)
    await bus.start()
    try:
        await wait_for(lambda: bus.degraded and bus._writer_tried)
        await asyncio.sleep(0.5)  # several retries
    finally:
        await bus.stop()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    text = warnings[0].getMessage()
    assert "unreachable" in text and "127.0.0.1:1" in text
    assert "hunter2" not in caplog.text  # the password stays out of the log


@needs_redis
async def test_the_first_connection_is_logged(
    caplog: pytest.LogCaptureFixture, prefix: str
) -> None:
    caplog.set_level(logging.INFO, logger="coach.redis_bus")
    bus = make_bus(SHARED_URL, prefix, "A")
    await bus.start()
    try:
        await wait_for(lambda: not bus.degraded)
    finally:
        await bus.stop()
    assert [r.levelno for r in caplog.records if "redis" in r.getMessage().lower()] == [
        logging.INFO
    ]
    assert "connected to redis://127.0.0.1:6379/0" in caplog.text
