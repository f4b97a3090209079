"""Tests for audio.ring.AudioRing: bounded memory, absolute-time slicing after wrap, clipping."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audio.ring import AudioRing

RATE = 1000  # 1 sample per ms keeps the arithmetic readable


def ramp(start: int, n: int) -> np.ndarray:
    """Samples whose value is their absolute index, so a slice says where it came from."""
    return np.arange(start, start + n, dtype=np.float32)


def test_empty_ring() -> None:
    ring = AudioRing(sample_rate=RATE, capacity_s=1.0)
    assert ring.end == 0 and ring.end_s == 0.0
    audio, t0 = ring.slice_s(0.0, 1.0)
    assert audio.size == 0 and audio.dtype == np.float32 and t0 == 0.0


def test_capacity_bound_and_end_tracking() -> None:
    ring = AudioRing(sample_rate=RATE, capacity_s=2.0)
    pos = 0
    for n in [300, 700, 1500, 20, 4000, 1]:
        ring.append(ramp(pos, n))
        pos += n
        assert ring.end == pos
        assert ring.end_s == pytest.approx(pos / RATE)
        audio, t0 = ring.slice_s(0.0, pos / RATE)
        assert len(audio) == min(pos, 2000)
        assert np.array_equal(audio, ramp(pos - len(audio), len(audio)))
        assert t0 == pytest.approx((pos - len(audio)) / RATE)


def test_slice_by_absolute_time_after_wrap() -> None:
    ring = AudioRing(sample_rate=RATE, capacity_s=1.0)
    for start in range(0, 5000, 160):
        ring.append(ramp(start, 160))
    assert ring.end == 5120
    audio, t0 = ring.slice_s(4.5, 4.75)
    assert t0 == pytest.approx(4.5)
    assert np.array_equal(audio, ramp(4500, 250))


def test_slice_clips_to_what_is_kept() -> None:
    ring = AudioRing(sample_rate=RATE, capacity_s=1.0)
    ring.append(ramp(0, 3000))  # keeps [2000, 3000)
    audio, t0 = ring.slice_s(1.0, 2.5)  # starts before the oldest kept sample
    assert t0 == pytest.approx(2.0)
    assert np.array_equal(audio, ramp(2000, 500))
    audio, t0 = ring.slice_s(2.9, 10.0)  # ends after the newest
    assert t0 == pytest.approx(2.9)
    assert np.array_equal(audio, ramp(2900, 100))
    audio, _ = ring.slice_s(-5.0, 99.0)
    assert np.array_equal(audio, ramp(2000, 1000))


@pytest.mark.parametrize(("a", "b"), [(0.5, 1.5), (3.0, 4.0), (2.5, 2.5), (2.7, 2.6)])
def test_slice_outside_or_empty_range_is_empty(a: float, b: float) -> None:
    ring = AudioRing(sample_rate=RATE, capacity_s=1.0)
    ring.append(ramp(0, 3000))
    audio, _ = ring.slice_s(a, b)
    assert audio.size == 0 and audio.dtype == np.float32


def test_slice_is_a_copy() -> None:
    ring = AudioRing(sample_rate=RATE, capacity_s=1.0)
    ring.append(ramp(0, 100))
    audio, _ = ring.slice_s(0.0, 0.05)
    audio[:] = -1
    again, _ = ring.slice_s(0.0, 0.05)
    assert np.array_equal(again, ramp(0, 50))


def test_append_larger_than_capacity_keeps_newest() -> None:
    ring = AudioRing(sample_rate=16000, capacity_s=0.5)
    ring.append(ramp(0, 20000))
    assert ring.end == 20000
    audio, t0 = ring.slice_s(0.0, 2.0)
    assert len(audio) == 8000 and t0 == pytest.approx(12000 / 16000)
    assert np.array_equal(audio, ramp(12000, 8000))


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.integers(0, 900), min_size=1, max_size=30),
    st.integers(1, 1500),
    st.integers(0, 6000),
    st.integers(0, 2000),
)
def test_slice_always_returns_the_addressed_samples(
    sizes: list[int], capacity: int, start: int, length: int
) -> None:
    ring = AudioRing(sample_rate=RATE, capacity_s=capacity / RATE)
    pos = 0
    for n in sizes:
        ring.append(ramp(pos, n))
        pos += n
    audio, t0 = ring.slice_s(start / RATE, (start + length) / RATE)
    oldest = max(0, pos - capacity)
    a, b = max(start, oldest), min(start + length, pos)
    assert len(audio) == max(0, b - a)
    if b > a:
        assert t0 == pytest.approx(a / RATE)
        assert np.array_equal(audio, ramp(a, b - a))


@pytest.mark.parametrize(
    ("rate", "capacity_s"),
    [(44100, 0.7), (48000, 2.3), (44100, 10.2), (1000, 1.001), (16000, 25.0)],
)
def test_capacity_is_rounded_not_truncated(rate: int, capacity_s: float) -> None:
    """0.7 s at 44.1 kHz is 30870 samples, though 0.7 * 44100 is 30869.999... in floats."""
    ring = AudioRing(sample_rate=rate, capacity_s=capacity_s)
    n = round(capacity_s * rate)
    ring.append(np.ones(n + 100, dtype=np.float32))
    audio, t0 = ring.slice_s(0.0, ring.end_s)
    assert len(audio) == n
    assert t0 == pytest.approx(100 / rate)
