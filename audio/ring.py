"""A bounded buffer of recent samples addressed by absolute sample index.

The pipeline needs the audio of an utterance after the endpointer has closed it; this keeps
the last few seconds per stream without growing with the call length. It is a circular
buffer allocated once: appending a 20 ms frame copies 20 ms, not the whole history.
"""

from __future__ import annotations

import numpy as np

from audio.types import Samples


class AudioRing:
    def __init__(self, *, sample_rate: int, capacity_s: float) -> None:
        self.sample_rate = sample_rate
        self._cap = max(1, int(round(capacity_s * sample_rate)))  # 0.7 * 44100 is 30869.999...
        self._buf = np.zeros(self._cap, dtype=np.float32)
        self._end = 0  # absolute index one past the newest sample

    @property
    def end(self) -> int:
        """Absolute index one past the newest sample."""
        return self._end

    @property
    def start(self) -> int:
        """Absolute index of the oldest sample still kept."""
        return max(0, self._end - self._cap)

    @property
    def end_s(self) -> float:
        return self._end / self.sample_rate

    def append(self, samples: Samples) -> None:
        data = np.asarray(samples, dtype=np.float32)
        if len(data) >= self._cap:  # only the newest `cap` samples can be kept
            self._end += len(data) - self._cap
            data = data[-self._cap :]
        pos = self._end % self._cap
        first = min(len(data), self._cap - pos)
        self._buf[pos : pos + first] = data[:first]
        self._buf[: len(data) - first] = data[first:]
        self._end += len(data)

    def slice_s(self, t_start_s: float, t_end_s: float) -> tuple[Samples, float]:
        """Samples between two times (clipped to what is kept) and the time of the first one."""
        a = max(self.start, int(round(t_start_s * self.sample_rate)))
        b = min(self._end, int(round(t_end_s * self.sample_rate)))
        if b <= a:
            return np.zeros(0, dtype=np.float32), a / self.sample_rate
        pa, n = a % self._cap, b - a
        if pa + n <= self._cap:
            return self._buf[pa : pa + n].copy(), a / self.sample_rate
        return np.concatenate(
            [self._buf[pa:], self._buf[: pa + n - self._cap]]
        ), a / self.sample_rate
