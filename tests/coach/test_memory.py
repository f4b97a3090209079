"""coach.memory: freed heap memory really goes back to the OS, and the server trims on a timer."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util

import pytest
from prometheus_client import REGISTRY

from coach import memory

pytestmark = pytest.mark.skipif(not memory.trim_supported(), reason="needs glibc malloc_trim")

CHUNK = 4000  # below glibc's mmap threshold: served from the heap, like most call buffers
CHUNKS = 30_000  # ~114 MiB


def _trim_count() -> float:
    return REGISTRY.get_sample_value("coach_memory_trim_seconds_count") or 0.0


def test_trim_returns_freed_heap_pages_to_the_os() -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    chunks = [libc.malloc(CHUNK) for _ in range(CHUNKS)]
    assert all(chunks)
    for p in chunks:
        ctypes.memset(p, 1, CHUNK)  # make the pages resident
    pin = chunks.pop()  # a live chunk above the freed ones: glibc's own top trim cannot help
    for p in chunks:
        libc.free(p)
    count0 = _trim_count()
    try:
        result = memory.trim()
    finally:
        libc.free(pin)
    assert result is not None
    assert result.released
    # Nearly all of the ~114 MiB freed below the pinned chunk goes back.
    assert result.freed_bytes > 80 * 2**20, result
    assert _trim_count() == count0 + 1


def test_rss_is_read_from_proc() -> None:
    rss = memory.rss_bytes()
    assert rss is not None and rss > 10 * 2**20


async def test_trim_periodically_trims_on_its_interval_and_off_at_zero() -> None:
    count0 = _trim_count()
    await asyncio.wait_for(memory.trim_periodically(0), timeout=1)  # returns at once: off
    assert _trim_count() == count0
    task = asyncio.create_task(memory.trim_periodically(0.05))
    await asyncio.sleep(0.4)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _trim_count() >= count0 + 3
