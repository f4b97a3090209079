"""A bounded buffer of recent samples addressed by absolute sample index.

The pipeline needs the audio of an utterance after the endpointer has closed it; this keeps
the last few seconds per stream without growing with the call length.
"""

from __future__ import annotations

import numpy as np

from audio.types import Samples


class AudioRing:
    def __init__(self, *, sample_rate: int, capacity_s: float) -> None:
        self.sample_rate = sample_rate
        self._cap = int(round(capacity_s * sample_rate))  # round: 0.7 * 44100 is 30869.999...
        self._buf = np.zeros(0, dtype=np.float32)
        self._start = 0  # absolute index of self._buf[0]

    @property
    def end(self) -> int:
        """Absolute index one past the newest sample."""
        return self._start + len(self._buf)

    @property
    def end_s(self) -> float:
        return self.end / self.sample_rate

    def append(self, samples: Samples) -> None:
        buf = np.concatenate([self._buf, np.asarray(samples, dtype=np.float32)])
        drop = max(0, len(buf) - self._cap)
        self._buf = buf[drop:]
        self._start += drop

    def slice_s(self, t_start_s: float, t_end_s: float) -> tuple[Samples, float]:
        """Samples between two times (clipped to what is kept) and the time of the first one."""
        a = max(self._start, int(round(t_start_s * self.sample_rate)))
        b = min(self.end, int(round(t_end_s * self.sample_rate)))
        if b <= a:
            return np.zeros(0, dtype=np.float32), a / self.sample_rate
        return self._buf[a - self._start : b - self._start].copy(), a / self.sample_rate
