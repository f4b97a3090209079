"""coach.memory: ended calls' cycles are collected, freed heap pages go back to the OS, on a timer."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import weakref
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

from coach import memory

needs_glibc = pytest.mark.skipif(not memory.trim_supported(), reason="needs glibc malloc_trim")

CHUNK = 4000  # below glibc's mmap threshold: served from the heap, like most call buffers
CHUNKS = 30_000  # ~114 MiB


def _count(step: str) -> float:
    return REGISTRY.get_sample_value("coach_memory_release_seconds_count", {"step": step}) or 0.0


@needs_glibc
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
    count0 = _count("trim")
    try:
        result = memory.trim()
    finally:
        libc.free(pin)
    assert result is not None
    assert result.released
    # Nearly all of the ~114 MiB freed below the pinned chunk goes back.
    assert result.freed_bytes > 80 * 2**20, result
    assert _count("trim") == count0 + 1


class _CallLike:
    """Holds a big buffer and is part of a reference cycle, as a call session is."""

    def __init__(self) -> None:
        self.ring = np.zeros(2_000_000, np.float32)
        self.me = self


def test_release_frees_a_call_left_in_a_reference_cycle() -> None:
    gc.disable()  # no automatic collection may run in between
    try:
        call: Any = _CallLike()
        ref = weakref.ref(call)
        del call
        assert ref() is not None  # refcounting alone cannot free a cycle
        memory.release()
        assert ref() is None
    finally:
        gc.enable()


def test_rss_is_read_from_proc() -> None:
    rss = memory.rss_bytes()
    assert rss is not None and rss > 10 * 2**20


def test_freezing_keeps_loaded_objects_out_of_later_collections() -> None:
    before = gc.get_freeze_count()
    try:
        memory.freeze_loaded_objects()
        assert gc.get_freeze_count() > before
    finally:
        gc.unfreeze()


async def test_release_runs_on_its_interval_and_not_at_zero() -> None:
    count0 = _count("gc")
    await asyncio.wait_for(memory.release_periodically(0), timeout=1)  # returns at once: off
    assert _count("gc") == count0
    task = asyncio.create_task(memory.release_periodically(0.05))
    # A full collection of the test process can take a while on a busy machine: wait for two.
    for _ in range(400):
        if _count("gc") >= count0 + 2:
            break
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _count("gc") >= count0 + 2
