"""Fixed-duration framing: live and replayed audio both move through the pipeline in 20 ms frames."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from audio.types import Samples

FRAME_MS = 20


def samples_per_frame(sample_rate: int, frame_ms: int = FRAME_MS) -> int:
    n = sample_rate * frame_ms
    if n % 1000:
        raise ValueError(f"{frame_ms} ms is not a whole number of samples at {sample_rate} Hz")
    return n // 1000


def frames(samples: Samples, sample_rate: int, frame_ms: int = FRAME_MS) -> Iterator[Samples]:
    """Yield consecutive frames; the last one may be short (never padded: it is real audio)."""
    step = samples_per_frame(sample_rate, frame_ms)
    for start in range(0, len(samples), step):
        yield samples[start : start + step]


class FrameAccumulator:
    """Collects arbitrary-length pushes and releases whole blocks of `block` samples."""

    def __init__(self, *, block: int) -> None:
        self.block = block
        self._pending = np.zeros(0, dtype=np.float32)

    def push(self, samples: Samples) -> list[Samples]:
        buf = np.concatenate([self._pending, np.asarray(samples, dtype=np.float32)])
        whole = len(buf) // self.block * self.block
        self._pending = buf[whole:]
        return [buf[i : i + self.block] for i in range(0, whole, self.block)]

    @property
    def pending(self) -> int:
        return len(self._pending)
