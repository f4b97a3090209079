"""Retention: a periodic task that deletes stored calls older than the configured age.

Transcripts are personal data even when redacted, so history is not kept forever by default.
The task runs once at startup and then every `interval_s`; a database outage only delays it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from coach.store.records import StoreUnavailable
from coach.store.store import Store

log = logging.getLogger(__name__)


class RetentionTask:
    def __init__(self, *, store: Store, days: float, interval_s: float = 3600.0) -> None:
        if days <= 0:
            raise ValueError("retention days must be positive (leave the task out to keep all)")
        self._store = store
        self._days = days
        self._interval_s = interval_s
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.deleted = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="store-retention")

    async def run_once(self) -> int:
        n = await self._store.delete_older_than(self._days)
        self.deleted += n
        if n:
            log.info("retention: deleted %d calls older than %g days", n, self._days)
        return n

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                await self.run_once()
            except StoreUnavailable as exc:
                log.warning("retention skipped, store unreachable: %s", exc)
            except Exception:
                log.exception("retention failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval_s):
                    await self._stop.wait()

    async def aclose(self, *, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._task is None:
            return
        done, _ = await asyncio.wait({self._task}, timeout=timeout_s)
        if not done:
            log.warning("retention task did not stop within %.1f s; cancelling", timeout_s)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
