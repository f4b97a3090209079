"""The store as the application runs it: configuration, startup and graceful shutdown.

`StoreService.start()` migrates the schema, attaches the writer to the bus and starts the
retention task; `aclose()` undoes that in the order that loses nothing. Startup never fails
because the database is down: live calls matter more than history, so the writer spools
until the database answers and the history API says 503 meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coach.bus import InProcessBus, call_topic, is_call_topic
from coach.events import Event
from coach.settings import Settings
from coach.store.db import redacted_url, resolve_url
from coach.store.retention import RetentionTask
from coach.store.spool import Spool
from coach.store.store import Store
from coach.store.writer import StoreWriter

log = logging.getLogger(__name__)


BATCH_SIZE = 200
FLUSH_INTERVAL_S = 0.5
BUFFER_EVENTS = 10_000
SPOOL_MAX_MB = 256
RETENTION_DAYS = 90.0


@dataclass(frozen=True, slots=True)
class StoreConfig:
    url: str
    spool_dir: Path
    batch_size: int = BATCH_SIZE
    flush_interval_s: float = FLUSH_INTERVAL_S
    max_buffer: int = BUFFER_EVENTS
    spool_max_bytes: int = SPOOL_MAX_MB << 20
    retention_days: float = RETENTION_DAYS
    """Delete calls older than this; 0 keeps them forever."""
    retention_interval_s: float = 3600.0

    @classmethod
    def from_settings(cls, settings: Settings) -> StoreConfig:
        """Read the `store_*` settings, with defaults where Settings does not define them.

        `getattr` keeps this working whichever store settings `Settings` declares; the
        environment variable is read directly only when Settings has no `database_url`.
        """

        def opt(name: str, default: Any) -> Any:
            value = getattr(settings, name, None)
            return default if value is None else value

        url = opt("database_url", None) or os.environ.get("COACH_DATABASE_URL") or None
        return cls(
            url=resolve_url(url, settings.data_dir),
            spool_dir=settings.data_dir / "spool",
            batch_size=int(opt("store_batch_size", BATCH_SIZE)),
            flush_interval_s=float(opt("store_flush_interval_s", FLUSH_INTERVAL_S)),
            max_buffer=int(opt("store_buffer_events", BUFFER_EVENTS)),
            spool_max_bytes=int(opt("store_spool_max_mb", SPOOL_MAX_MB)) << 20,
            retention_days=float(opt("retention_days", RETENTION_DAYS)),
        )


BACKFILLED = frozenset({"transcript", "cue", "escalation"})
"""What a taken-over call's earlier part may lack in the store: one row per event, so sending
one again is harmless (a `call_start`, an assignment or metrics would overwrite newer ones)."""


class StoreService:
    def __init__(
        self,
        *,
        store: Store,
        writer: StoreWriter,
        bus: InProcessBus,
        retention: RetentionTask | None,
    ) -> None:
        self.store = store
        self.writer = writer
        self.retention = retention
        self._bus = bus
        self._backfills: set[asyncio.Task[None]] = set()

    @classmethod
    async def start(cls, config: StoreConfig | Settings, *, bus: InProcessBus) -> StoreService:
        cfg = config if isinstance(config, StoreConfig) else StoreConfig.from_settings(config)
        store = Store(url=cfg.url)
        try:
            await store.ensure_schema()
        except Exception as exc:  # keep serving live calls; the writer retries and spools
            log.warning(
                "store %s not ready at startup (%s); events are spooled until it is",
                redacted_url(cfg.url),
                exc,
            )
        writer = StoreWriter(
            store=store,
            spool=Spool(directory=cfg.spool_dir, max_bytes=cfg.spool_max_bytes),
            batch_size=cfg.batch_size,
            flush_interval_s=cfg.flush_interval_s,
            max_buffer=cfg.max_buffer,
        )
        writer.start()
        bus.add_listener(writer)
        retention = None
        if cfg.retention_days > 0:
            retention = RetentionTask(
                store=store, days=cfg.retention_days, interval_s=cfg.retention_interval_s
            )
            retention.start()
        service = cls(store=store, writer=writer, bus=bus, retention=retention)
        bus.add_listener(service.backfill_takeover)
        return service

    def backfill_takeover(self, topic: str, event: Event) -> None:
        """Bus listener: a call this instance took over after its first instance died.

        That instance's writer sent its events in batches every `flush_interval_s`, so a
        `kill -9` lost the last ones it had not written yet (found by an outside audit: a
        customer line shown half a second before the kill was never stored). They are in
        the call's Redis stream, redacted: sent to the store again, which keeps one row per
        event (`seq`), so what it has already is not doubled."""
        if event.get("type") != "call_start" or not is_call_topic(topic):
            return
        meta, seq = event.get("meta"), event.get("seq")
        if not (isinstance(meta, dict) and meta.get("resumed")) or not isinstance(seq, int):
            return
        if seq > 1:
            task = asyncio.create_task(self._backfill(topic, seq), name=f"backfill-{topic}")
            self._backfills.add(task)
            task.add_done_callback(self._backfills.discard)

    async def _backfill(self, topic: str, before_seq: int) -> None:
        resent = await self._resend_earlier(topic, before_seq, what="the taken-over call's")
        if resent:
            log.info(
                "%s: %d earlier event(s) of a taken-over call sent to the store", topic, resent
            )

    async def backfill_call(self, call_id: str) -> None:
        """Before an orphan is closed: what its dead instance published and had not written
        (still in the call's Redis stream) is written now, as a takeover does, so that the
        call's end and record count it (an outside scaling audit: a line panels showed 60 ms
        before a kill -9 was lost to the store, and the duration stopped short of it)."""
        if await self._resend_earlier(call_topic(call_id), 2**62, what="the orphan's"):
            await self.writer.flush()

    async def _resend_earlier(self, topic: str, before_seq: int, *, what: str) -> int:
        """Hand the stored kinds of `topic`'s stream events before `before_seq` to the writer
        again; the store keeps one row per `seq`, so rows it has are not doubled. Returns how
        many were handed over (0 when Redis cannot be read: what the store has is kept)."""
        try:
            earlier = await self._bus.earlier_events(topic, before_seq=before_seq)
        except Exception as exc:  # Redis down or slow
            log.warning("%s: %s earlier events not re-read (%r)", topic, what, exc)
            return 0
        resent = [e for e in earlier if e.get("type") in BACKFILLED]
        for event in resent:
            self.writer(topic, event)
        return len(resent)

    async def ready(self) -> bool:
        """For /health/ready: the database answers (events are spooled, not lost, if not)."""
        return await self.store.ping()

    async def aclose(self) -> None:
        """Call after the live calls have ended, so their last events are written too."""
        for task in list(self._backfills):
            task.cancel()
        self._bus.remove_listener(self.backfill_takeover)
        if self.retention is not None:
            await self.retention.aclose()
        # The listener stays attached while closing: late events go to the spool, not lost.
        await self.writer.aclose()
        self._bus.remove_listener(self.writer)
        await self.store.aclose()
