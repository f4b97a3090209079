"""Sample-rate conversion with soxr (libsoxr's band-limited, anti-aliased resampler).

Telephony arrives at 8 kHz, WebRTC at 48 kHz; the models want 16 kHz. A streaming
resampler per stream keeps filter state across 20 ms frames so frame edges add no clicks.
"""

from __future__ import annotations

import numpy as np
import soxr

from audio.types import Samples


def resample(samples: Samples, in_rate: int, out_rate: int) -> Samples:
    """Resample a whole buffer (tests, replay of files)."""
    if in_rate == out_rate:
        return np.asarray(samples, dtype=np.float32)
    out = soxr.resample(np.asarray(samples, dtype=np.float32), in_rate, out_rate, quality="HQ")
    return np.asarray(out, dtype=np.float32)


class StreamResampler:
    """Resamples a stream chunk by chunk; output concatenates to what `resample` gives."""

    def __init__(self, *, in_rate: int, out_rate: int) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream = (
            None
            if in_rate == out_rate
            else soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="HQ")
        )

    def push(self, samples: Samples, *, last: bool = False) -> Samples:
        if self._stream is None:
            return np.asarray(samples, dtype=np.float32)
        out = self._stream.resample_chunk(np.asarray(samples, dtype=np.float32), last=last)
        return np.asarray(out, dtype=np.float32)

    def flush(self) -> Samples:
        return self.push(np.zeros(0, dtype=np.float32), last=True)
