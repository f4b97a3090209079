"""Joining back-to-back audio chunks (what a party worker that fell behind does)."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from coach.messages import AudioChunk, follows, join_chunks


def chunk(t0: float, n: int, rate: int = 8000, speaker: str = "customer") -> AudioChunk:
    pcm = np.arange(n, dtype=np.float32) + t0 * rate
    return AudioChunk("c1", speaker, pcm, rate, t0)  # type: ignore[arg-type]


def test_back_to_back_chunks_follow() -> None:
    a = chunk(0.0, 160)
    assert follows(a, chunk(0.02, 160))
    assert not follows(a, chunk(0.04, 160))  # a 20 ms gap: placed separately, filled with silence
    assert not follows(a, chunk(0.0, 160))  # a resent frame
    assert not follows(a, chunk(0.02, 320, rate=16000))  # another rate
    assert not follows(a, chunk(0.02, 160, speaker="agent"))


@given(st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=30))
def test_joined_chunks_hold_the_same_samples_at_the_first_time(sizes: list[int]) -> None:
    rate = 8000
    audio = np.random.default_rng(len(sizes)).standard_normal(sum(sizes)).astype(np.float32)
    parts, start = [], 0
    for n in sizes:
        parts.append(AudioChunk("c1", "agent", audio[start : start + n], rate, 1.5 + start / rate))
        start += n
    assert all(follows(a, b) for a, b in zip(parts, parts[1:], strict=False))
    joined = join_chunks(parts)
    assert joined.t0 == 1.5 and joined.sample_rate == rate and joined.speaker == "agent"
    assert joined.pcm.dtype == np.float32
    np.testing.assert_array_equal(joined.pcm, audio)
    assert joined.t1 == parts[-1].t1 or abs(joined.t1 - parts[-1].t1) < 1e-9
