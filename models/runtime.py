"""One scheduler per model: a priority queue in front of a few worker threads.

Why not `run_in_executor` per request: with many calls the model would see requests in
arrival order, a partial hypothesis could delay a final one, and nothing could be dropped.
Here finals overtake partials (lower priority number first), a newer partial for the same
stream replaces a queued older one (coalescing), stale partials are shed, and a worker takes
up to `max_batch` requests of the same priority or batch group at once so the model can batch
them (never a final with partials: a batch's results arrive together, so the final would wait).

The scheduler also reports how loaded it is (`load()`: queue depth and how long requests
have recently waited), so callers can spend less on optional work (partial hypotheses, see
`backoff_interval`) before the work that matters (finals) starts to queue.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Res = TypeVar("Res")


class Shed(Exception):
    """The request was dropped (replaced by a newer one, stale, or shed under load)."""


@dataclass(order=True)
class _Item(Generic[Req, Res]):
    priority: int
    seq: int
    request: Req = field(compare=False)
    future: Future[Res] = field(compare=False)
    coalesce_key: str | None = field(compare=False, default=None)
    expires_at: float | None = field(compare=False, default=None)
    dead: bool = field(compare=False, default=False)
    queued_at: float = field(compare=False, default=0.0)
    batch_group: str | None = field(compare=False, default=None)


@dataclass(frozen=True, slots=True)
class BatchStats:
    size: int
    seconds: float
    queue_depth: int
    wait_s: float = 0.0
    """The longest time a request of this batch waited in the queue."""


@dataclass(frozen=True, slots=True)
class SchedulerLoad:
    """How loaded a scheduler is right now."""

    depth: int
    """Requests waiting (not running)."""
    wait_s: float
    """Recent queueing delay: a decaying average of waits, or the oldest waiting request's
    age if that is larger (a stuck queue shows at once, before anything is taken)."""
    busy: int = 0
    """Workers running a batch."""
    workers: int = 1
    """Workers in all."""


IDLE = SchedulerLoad(depth=0, wait_s=0.0)
WAIT_EWMA_ALPHA = 0.3
WAIT_DECAY_S = 2.0
"""With nothing taken for a while, the remembered wait fades with this time constant."""
WAIT_PER_STEP_S = 0.1
"""In `backoff_interval`, each 100 ms of queueing delay counts as one more waiting request."""


def backoff_interval(base_s: float, cap_s: float, load: SchedulerLoad) -> float:
    """Interval between optional requests (partials) under `load`: `base_s` when idle,
    growing with the queue depth and the recent wait, never above `cap_s`.

    base * (1 + depth + wait / 100 ms), clamped to [base, cap]: one waiting request doubles
    the interval, and so does 100 ms of queueing. A cap at or below the base fixes the cadence.
    """
    steps = max(0, load.depth) + max(0.0, load.wait_s) / WAIT_PER_STEP_S
    return max(base_s, min(cap_s, base_s * (1.0 + steps)))


def has_spare_worker(load: SchedulerLoad) -> bool:
    """A worker is idle, nothing waits and nothing has waited more than 100 ms lately: only
    then does a final get the bigger, slower final model (`coach.pipeline`). Any looser rule
    (one request waiting was allowed at first) let base decodes queue behind each other at
    12 calls on 2 cores (BENCHMARKS, "A bigger model for finals")."""
    return load.depth == 0 and load.busy < load.workers and load.wait_s <= WAIT_PER_STEP_S


def adaptive_beam(base: int, floor: int, load: SchedulerLoad) -> int:
    """Beam size for a final transcript under `load`: `base` while the model keeps up,
    narrower as requests back up, never below `floor`.

    A request in progress plus one waiting, or up to 100 ms of queueing, is normal traffic
    and keeps the full beam; beyond that each further waiting request and each further
    100 ms of delay counts as one step, and the beam is base / (1 + steps), rounded, clamped
    to [floor, base]. A beam costs less than the encoder pass (beam 5 adds ~15 % to a
    tiny.en decode here), so this is the second lever after partials, not the first.
    """
    steps = max(0, load.depth - 1) + max(0.0, load.wait_s - WAIT_PER_STEP_S) / WAIT_PER_STEP_S
    return max(min(floor, base), min(base, round(base / (1.0 + steps))))


class InferenceScheduler(Generic[Req, Res]):
    def __init__(
        self,
        *,
        name: str,
        run_batch: Callable[[Sequence[Req]], Sequence[Res]],
        workers: int = 1,
        max_batch: int = 1,
        max_queue: int = 256,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        self.name = name
        self._run_batch = run_batch
        self._max_batch = max(1, max_batch)
        self._max_queue = max_queue
        self._on_batch = on_batch
        self._heap: list[_Item[Req, Res]] = []
        self._by_key: dict[str, _Item[Req, Res]] = {}
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._closed = False
        self._busy = 0
        self.shed_count = 0
        self._wait_ewma = 0.0
        self._wait_at = time.monotonic()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-worker-{i}", daemon=True)
            for i in range(max(1, workers))
        ]
        for t in self._threads:
            t.start()

    @property
    def depth(self) -> int:
        with self._cond:
            return sum(1 for it in self._heap if not it.dead)

    @property
    def busy(self) -> int:
        return self._busy

    def load(self, now: float | None = None) -> SchedulerLoad:
        """Queue depth and recent queueing delay (see SchedulerLoad)."""
        now = time.monotonic() if now is None else now
        with self._cond:
            live = [it for it in self._heap if not it.dead]
            oldest = max((now - it.queued_at for it in live), default=0.0)
            idle_s = max(0.0, now - self._wait_at)
            remembered = self._wait_ewma * math.exp(-idle_s / WAIT_DECAY_S)
            return SchedulerLoad(
                depth=len(live),
                wait_s=max(remembered, oldest),
                busy=self._busy,
                workers=len(self._threads),
            )

    def submit(
        self,
        request: Req,
        *,
        priority: int = 0,
        coalesce_key: str | None = None,
        max_wait_s: float | None = None,
        batch_group: str | None = None,
    ) -> Future[Res]:
        """Queue a request; the future fails with `Shed` if it is dropped.

        Requests share a batch when they have the same priority, or the same `batch_group`
        (e.g. the finals of both parties, at two priorities, may run together).
        """
        fut: Future[Res] = Future()
        expires = time.monotonic() + max_wait_s if max_wait_s is not None else None
        item = _Item(priority, next(self._seq), request, fut, coalesce_key, expires)
        item.batch_group = batch_group
        item.queued_at = time.monotonic()
        with self._cond:
            if self._closed:
                raise RuntimeError(f"scheduler {self.name} is closed")
            if coalesce_key is not None:
                old = self._by_key.pop(coalesce_key, None)
                if old is not None and not old.dead:
                    self._kill(old)
                self._by_key[coalesce_key] = item
            heapq.heappush(self._heap, item)
            self._shed_overflow()
            self._cond.notify()
        return fut

    async def run(
        self,
        request: Req,
        *,
        priority: int = 0,
        coalesce_key: str | None = None,
        max_wait_s: float | None = None,
        batch_group: str | None = None,
    ) -> Res:
        fut = self.submit(
            request,
            priority=priority,
            coalesce_key=coalesce_key,
            max_wait_s=max_wait_s,
            batch_group=batch_group,
        )
        return await asyncio.wrap_future(fut)

    def close(self, timeout_s: float = 5.0) -> None:
        with self._cond:
            self._closed = True
            for it in self._heap:
                if not it.dead:  # coalesced/overflowed items were already shed and counted
                    self._kill(it)
            self._heap.clear()
            self._by_key.clear()
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout_s)
            if t.is_alive():
                log.warning(
                    "scheduler %s worker %s did not stop in %.1fs", self.name, t.name, timeout_s
                )

    def _kill(self, item: _Item[Req, Res]) -> None:
        item.dead = True
        self.shed_count += 1
        if not item.future.done():
            item.future.set_exception(Shed(self.name))

    def _shed_overflow(self) -> None:
        live = [it for it in self._heap if not it.dead]
        if len(live) <= self._max_queue:
            return
        # Drop the least important (highest priority number, newest) first.
        for it in sorted(live, key=lambda i: (-i.priority, -i.seq))[: len(live) - self._max_queue]:
            self._kill(it)

    def _take(self) -> list[_Item[Req, Res]]:
        now = time.monotonic()
        batch: list[_Item[Req, Res]] = []
        while self._heap and len(batch) < self._max_batch:
            head = self._heap[0]
            if batch and not head.dead and not _batchable(batch[0], head):
                # Results come back when the whole batch is done, so a final batched with
                # partials would wait for their decodes too.
                break
            it = heapq.heappop(self._heap)
            if it.coalesce_key is not None and self._by_key.get(it.coalesce_key) is it:
                del self._by_key[it.coalesce_key]
            if it.dead:
                continue
            if it.expires_at is not None and now > it.expires_at:
                self._kill(it)
                continue
            if not it.future.set_running_or_notify_cancel():
                continue  # the caller cancelled: don't spend the model on it
            batch.append(it)
        if batch:
            wait = max(now - it.queued_at for it in batch)
            decayed = self._wait_ewma * math.exp(-max(0.0, now - self._wait_at) / WAIT_DECAY_S)
            self._wait_ewma = decayed + WAIT_EWMA_ALPHA * (wait - decayed)
            self._wait_at = now
        return batch

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not any(not it.dead for it in self._heap):
                    # Only dead items are left, and every _by_key entry points into the heap:
                    # drop both, or shed requests (audio) stay referenced by their keys.
                    self._heap.clear()
                    self._by_key.clear()
                    self._cond.wait()
                if self._closed:
                    return
                batch = self._take()
                taken_at = time.monotonic()
                self._busy += 1
            if batch:
                self._execute(batch, now=taken_at)
            with self._cond:
                self._busy -= 1

    def _execute(self, batch: list[_Item[Req, Res]], *, now: float) -> None:
        wait = max(now - it.queued_at for it in batch)
        t0 = time.perf_counter()
        try:
            results = self._run_batch([it.request for it in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"{len(results)} results for a batch of {len(batch)}")
        except Exception as exc:
            log.exception("model %s failed on a batch of %d", self.name, len(batch))
            for it in batch:
                if not it.future.done():
                    it.future.set_exception(exc)
            return
        elapsed = time.perf_counter() - t0
        for it, res in zip(batch, results, strict=True):
            if not it.future.done():
                it.future.set_result(res)
        if self._on_batch is not None:
            try:
                self._on_batch(BatchStats(len(batch), elapsed, self.depth, wait))
            except Exception:  # a metrics hook must never take a model worker down
                log.exception("on_batch callback of %s failed", self.name)


def _batchable(first: _Item[Any, Any], other: _Item[Any, Any]) -> bool:
    """May `other` join a batch that starts with `first`? Same priority, or same group."""
    if first.batch_group is not None and other.batch_group == first.batch_group:
        return True
    return other.priority == first.priority


# -- device selection --------------------------------------------------------------------------


class DeviceUnavailable(RuntimeError):
    """The configured inference device cannot be used on this machine."""


@dataclass(frozen=True, slots=True)
class DevicePlan:
    """Where each model runs: CTranslate2 device and compute type, ONNX Runtime providers."""

    device: Literal["cpu", "cuda"]
    asr_compute_type: str
    onnx_providers: tuple[str, ...]


GPU_COMPUTE_TYPE = "float16"


def cuda_device_count() -> int:
    """CUDA devices CTranslate2 can use (0 for a CPU-only build or no driver)."""
    try:
        import ctranslate2

        return int(ctranslate2.get_cuda_device_count())
    except Exception:  # an import or driver error means: no usable GPU
        log.debug("ctranslate2 cannot query CUDA devices", exc_info=True)
        return 0


def onnx_available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def plan_device(device: str, *, compute_type: str, compute_type_explicit: bool) -> DevicePlan:
    """Check that `device` is usable and say how each model runs on it.

    `cpu`: CTranslate2 on CPU with `compute_type`, ONNX Runtime's CPU provider.
    `cuda`: CTranslate2 on CUDA (float16 unless a compute type was set explicitly) and the
    CUDA execution provider for the ONNX models (VAD, emotion, embeddings), CPU as fallback
    for operators CUDA lacks. Raises DeviceUnavailable, saying what is missing, instead of
    quietly running on the CPU: a GPU deployment sized for hundreds of calls must not come
    up on 2 cores.
    """
    if device == "cpu":
        return DevicePlan("cpu", compute_type, ("CPUExecutionProvider",))
    if device != "cuda":
        raise DeviceUnavailable(f"COACH_DEVICE={device!r}: use cpu or cuda")
    problems = []
    if cuda_device_count() < 1:
        problems.append(
            "CTranslate2 sees no CUDA device (ctranslate2.get_cuda_device_count() == 0: "
            "no NVIDIA driver/GPU, or a CPU-only build)"
        )
    if "CUDAExecutionProvider" not in onnx_available_providers():
        problems.append(
            "ONNX Runtime has no CUDAExecutionProvider (install onnxruntime-gpu instead of "
            "onnxruntime, with matching CUDA and cuDNN libraries)"
        )
    if problems:
        raise DeviceUnavailable(
            "COACH_DEVICE=cuda but CUDA is not usable here: "
            + "; ".join(problems)
            + ". Set COACH_DEVICE=cpu to run on the CPU."
        )
    return DevicePlan(
        "cuda",
        compute_type if compute_type_explicit else GPU_COMPUTE_TYPE,
        ("CUDAExecutionProvider", "CPUExecutionProvider"),
    )
