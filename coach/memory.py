"""Give the memory that calls freed back to the operating system (glibc `malloc_trim`).

Why this exists: glibc keeps the chunks a process frees inside its heaps, resident, for
reuse. Calls allocate and free many buffers of many sizes (audio rings, encoder features,
JSON frames, ONNX and CTranslate2 temporaries) from the event loop and from the model and DSP
threads, so the freed space is fragmented and the server's RSS grew by 2-4 MiB per call with
no end in sight, although the live memory was flat: over a run of replayed calls memray found
no live growth, the growth was in glibc's main heap and thread arenas, and one
`malloc_trim(0)` after 14 calls gave back 58 MiB, to where RSS stood after the first call.
`malloc_trim` also releases free pages in the middle of a heap (`madvise`), which the
automatic trim at the top of the heap cannot. So the server trims every
`COACH_MALLOC_TRIM_INTERVAL_S` (BENCHMARKS.md, "Memory per call and the soak test").

A trim walks each arena under its lock, so threads that allocate meanwhile wait a few ms;
once a minute that is noise. On a C library without `malloc_trim` (musl, macOS) this does
nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
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
    metrics.MEMORY_TRIM_SECONDS.observe(seconds)
    metrics.MEMORY_TRIMMED_BYTES.inc(result.freed_bytes)
    return result


async def trim_periodically(interval_s: float) -> None:
    """Trim every `interval_s` seconds (in a worker thread: the loop keeps serving calls)."""
    if interval_s <= 0 or not trim_supported():
        return
    while True:
        await asyncio.sleep(interval_s)
        result = await asyncio.to_thread(trim)
        if result is not None and result.freed_bytes:
            log.debug(
                "malloc_trim returned %.1f MiB in %.1f ms",
                result.freed_bytes / 2**20,
                result.seconds * 1000,
            )
