"""Give the memory of ended calls back promptly: collect their cycles, then trim the heap.

Why this exists: the server's RSS grew by 2.5-3.5 MiB per call in soak runs, without end.
Two causes, both found with memray and /proc/PID/smaps (BENCHMARKS.md, "Memory per call and
the soak test"):

1. **Ended calls waited for a full garbage collection.** A call's session, pipelines and
   tasks reference each other, so refcounting cannot free them when the manager forgets the
   call; only the cyclic collector's oldest generation can. CPython runs that one only when
   the objects promoted since the last one exceed a quarter of all long-lived objects, and
   the models, tokenizers and playbook are ~170k of those, so about a dozen ended calls
   (with their 1.6 MB audio rings) piled up between two full collections.
2. **glibc keeps freed chunks resident.** Calls allocate and free buffers of many sizes from
   the event loop and from the model and DSP threads; the free space is fragmented and stays
   in the heaps. One `malloc_trim(0)` after 14 replayed calls gave back 58 MiB, to where RSS
   stood after the first call; it also releases free pages in the middle of a heap, which
   glibc's automatic trim at the top cannot.

So at startup the loaded models' objects are frozen out of the collector (`gc.freeze`: never
scanned again: a full collection took 14 ms instead of 120 ms), and every
`COACH_MEMORY_RELEASE_INTERVAL_S` a worker thread runs a full collection and then
`malloc_trim(0)`. Both pause other threads for a few ms (the collection holds the GIL, the
trim each arena's lock); once a minute that is noise. Without glibc the trim is skipped.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import gc
import logging
import os
import time
from dataclasses import dataclass

from coach import metrics

log = logging.getLogger(__name__)


@functools.cache
def _libc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def trim_supported() -> bool:
    """True where the C library is glibc (it has `malloc_trim`)."""
    return _libc_trim() is not None


def rss_bytes() -> int | None:
    """Resident set size of this process (Linux /proc), None elsewhere."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            resident_pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True, slots=True)
class TrimResult:
    released: bool
    """glibc's answer: some memory was returned to the system."""
    rss_before: int | None
    rss_after: int | None
    seconds: float

    @property
    def freed_bytes(self) -> int:
        if self.rss_before is None or self.rss_after is None:
            return 0
        return max(0, self.rss_before - self.rss_after)


def trim() -> TrimResult | None:
    """Return free heap memory of every arena to the OS; None where unsupported."""
    fn = _libc_trim()
    if fn is None:
        return None
    before = rss_bytes()
    t0 = time.perf_counter()
    released = bool(fn(0))
    seconds = time.perf_counter() - t0
    result = TrimResult(released, before, rss_bytes(), seconds)
    metrics.MEMORY_RELEASE_SECONDS.labels(step="trim").observe(seconds)
    metrics.MEMORY_TRIMMED_BYTES.inc(result.freed_bytes)
    return result


def collect() -> int:
    """A full garbage collection (what ended calls wait for); returns objects collected."""
    t0 = time.perf_counter()
    found = gc.collect()
    metrics.MEMORY_RELEASE_SECONDS.labels(step="gc").observe(time.perf_counter() - t0)
    return found


def release() -> TrimResult | None:
    """Free what ended calls left (their reference cycles), then give the pages back."""
    collect()
    return trim()


def freeze_loaded_objects() -> None:
    """Move everything alive now (models, tokenizers, playbook) out of the collector's view.

    Call once the models are loaded: those objects live as long as the process, and without
    them in the generations a full collection is cheap and runs as often as calls need.
    The price: a frozen object that later becomes part of an unreachable cycle is never
    collected (refcounting still frees everything else), so freeze once, after loading.
    """
    gc.collect()
    gc.freeze()


async def release_periodically(interval_s: float) -> None:
    """`release()` every `interval_s` seconds in a worker thread; 0 turns it off."""
    if interval_s <= 0:
        return
    while True:
        await asyncio.sleep(interval_s)
        result = await asyncio.to_thread(release)
        if result is not None and result.freed_bytes:
            log.debug(
                "released %.1f MiB (malloc_trim %.1f ms)",
                result.freed_bytes / 2**20,
                result.seconds * 1000,
            )
