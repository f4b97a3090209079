"""The bus listener that records calls: a bounded buffer, one flushing task, a spool.

The bus calls the writer synchronously on every publish, from inside live calls, so
`__call__` does nothing but filter and append to a deque. One task writes the deque to the
database in batches (every `flush_interval_s`, or sooner once `batch_size` events wait), each
batch in one transaction. When a write fails the buffered events go to the local spool and
the task retries with exponential backoff; spooled events are replayed, in order and before
anything newer, once the database answers. Order holds because the spool only ever holds
events older than everything in the buffer: the buffer is spilled whole, and while the spool
has events the buffer is not written.

Only the redacted per-call topic (`call:{id}`) is recorded: the agent's unredacted topic must
never reach the database. Partial transcripts are not history, and of the periodic metrics
only the last one per call is kept (it is queued just ahead of that call's `call_end`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from itertools import islice

from prometheus_client import Counter

from coach import metrics
from coach.bus import call_topic
from coach.events import Event
from coach.store.records import StoreUnavailable
from coach.store.spool import Spool
from coach.store.store import Store
from coach.store.writes import STORED_TYPES, Received

log = logging.getLogger(__name__)

STORE_EVENTS = Counter(
    "coach_store_events_total",
    "Events recorded by the history store, by what happened to them",
    ["outcome"],  # written, spooled, dropped
)
_MAX_OPEN_CALLS = 10_000  # calls whose last metrics event is held until their call_end


class StoreWriter:
    def __init__(
        self,
        *,
        store: Store,
        spool: Spool,
        batch_size: int = 200,
        flush_interval_s: float = 0.5,
        max_buffer: int = 10_000,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 30.0,
        write_timeout_s: float = 15.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.spool = spool
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._max_buffer = max(max_buffer, batch_size)
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._write_timeout_s = write_timeout_s
        self._clock = clock
        self._buffer: deque[Received] = deque()
        self._last_metrics: OrderedDict[str, Received] = OrderedDict()
        self._spills = 0  # bumps whenever the buffer moves to the spool
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.healthy = True
        self.written = 0
        self.dropped = 0

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    # -- the bus side: synchronous, never waits ------------------------------------------

    def __call__(self, topic: str, event: Event) -> None:
        call_id = event.get("call_id")
        if not isinstance(call_id, str) or topic != call_topic(call_id):
            return  # the unredacted agent topic, the supervisor wall, anything else
        etype = event.get("type")
        if etype not in STORED_TYPES:
            return
        item = Received(event=event, at=self._clock())
        if etype == "metrics":
            self._hold_metrics(call_id, item)
            return
        if etype == "call_end":
            last = self._last_metrics.pop(call_id, None)
            if last is not None:
                self._push(last)
        self._push(item)

    def _hold_metrics(self, call_id: str, item: Received) -> None:
        if self._closed:
            self._to_spool([item])  # nothing will be held for a call_end after shutdown
            return
        self._last_metrics[call_id] = item
        self._last_metrics.move_to_end(call_id)
        if len(self._last_metrics) > _MAX_OPEN_CALLS:
            self._last_metrics.popitem(last=False)  # a call that never ended: its metrics go

    def _push(self, item: Received) -> None:
        if self._closed:
            # After shutdown began nothing flushes the buffer any more: straight to disk.
            self._to_spool([item])
            return
        self._buffer.append(item)
        if len(self._buffer) >= self._max_buffer:
            self._spill()
        if len(self._buffer) >= self._batch_size:
            self._wake.set()

    def _spill(self) -> None:
        """Move the whole buffer to the spool, keeping it strictly older than what follows."""
        if not self._buffer:
            return
        if self._to_spool(list(self._buffer)):
            self._buffer.clear()
            self._spills += 1
        elif len(self._buffer) > self._max_buffer:
            # The disk refuses too: only now is anything lost, the oldest first, and counted.
            while len(self._buffer) > self._max_buffer:
                self._buffer.popleft()
                self.dropped += 1
                STORE_EVENTS.labels(outcome="dropped").inc()
            log.error("store buffer and spool full: %d events dropped so far", self.dropped)

    def _to_spool(self, items: Sequence[Received]) -> bool:
        try:
            self.spool.append(items)
        except OSError:
            log.exception("store spool: cannot append %d events", len(items))
            return False
        STORE_EVENTS.labels(outcome="spooled").inc(len(items))
        return True

    # -- the flushing task ---------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="store-writer")

    async def _run(self) -> None:
        delay = self._retry_initial_s
        while not self._stop.is_set():
            if self.healthy:
                await _wait(self._wake, self._flush_interval_s)
                self._wake.clear()
            else:
                await _wait(self._stop, delay)
            if self._stop.is_set():
                return
            try:
                async with self._lock:
                    await self._drain()
            except Exception as exc:
                self._failed(exc)
                delay = min(delay * 2, self._retry_max_s) if not self.healthy else delay
                self.healthy = False
                continue
            finally:
                metrics.QUEUE_DEPTH.labels(stage="store").set(len(self._buffer))
            if not self.healthy:
                log.warning("store reachable again; spooled events replayed")
            self.healthy, delay = True, self._retry_initial_s

    async def _drain(self) -> None:
        """Write the spool, then the buffer, until both are empty."""
        while True:
            if self.spool.pending:
                items, cursor = self.spool.read(self._batch_size)
                if items:
                    await self._write(items)
                self.spool.commit(cursor)
                continue
            if not self._buffer:
                return
            batch = list(islice(self._buffer, self._batch_size))
            spills = self._spills
            await self._write(batch)
            if spills == self._spills:
                for _ in batch:
                    self._buffer.popleft()
            # else the buffer (this batch included) was spilled meanwhile: the spool's replay
            # rewrites these rows, which the idempotent upserts turn into no-ops.

    async def _write(self, items: Sequence[Received]) -> None:
        try:
            async with asyncio.timeout(self._write_timeout_s):
                await self.store.write_events(items)
        except TimeoutError as exc:
            raise StoreUnavailable(f"write timed out after {self._write_timeout_s} s") from exc
        self.written += len(items)
        STORE_EVENTS.labels(outcome="written").inc(len(items))

    def _failed(self, exc: Exception) -> None:
        if isinstance(exc, StoreUnavailable):
            if self.healthy:
                log.warning("store unreachable, spooling events: %s", exc)
        else:
            log.exception("store write failed, spooling events")
        self._spill()

    async def flush(self) -> None:
        """Write everything received so far; on failure spool it and raise StoreUnavailable."""
        async with self._lock:
            try:
                await self._drain()
            except Exception:
                self._spill()
                raise

    async def aclose(self, *, timeout_s: float = 10.0) -> None:
        """Graceful shutdown: stop the task, write what is left, spool what cannot be written."""
        self._stop.set()
        self._wake.set()
        if self._task is not None:
            done, _ = await asyncio.wait({self._task}, timeout=timeout_s)
            if not done:
                log.warning("store writer did not stop within %.1f s; cancelling", timeout_s)
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        # Calls still open at shutdown: their latest metrics are the last there will be.
        self._buffer.extend(self._last_metrics.values())
        self._last_metrics.clear()
        try:
            async with asyncio.timeout(timeout_s):
                await self.flush()
        except Exception as exc:
            log.warning("store unreachable at shutdown (%s); events spooled for next start", exc)
            self._spill()
        # No await from here on: whatever the bus still delivers goes straight to the spool.
        self._closed = True


async def _wait(event: asyncio.Event, timeout_s: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await event.wait()
