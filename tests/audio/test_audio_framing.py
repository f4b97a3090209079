"""Tests for audio.framing: frames cover the input exactly, blocks do not depend on push sizes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audio.framing import FRAME_MS, FrameAccumulator, frames, samples_per_frame


@pytest.mark.parametrize(
    ("rate", "frame_ms", "expected"),
    [
        (8000, 20, 160),
        (16000, 20, 320),
        (48000, 20, 960),
        (44100, 20, 882),
        (16000, 32, 512),
        (8000, 10, 80),
    ],
)
def test_samples_per_frame(rate: int, frame_ms: int, expected: int) -> None:
    assert samples_per_frame(rate, frame_ms) == expected


def test_default_frame_is_20ms() -> None:
    assert FRAME_MS == 20
    assert samples_per_frame(16000) == 320


@pytest.mark.parametrize(("rate", "frame_ms"), [(11025, 20), (22050, 10), (44100, 1), (22050, 30)])
def test_samples_per_frame_rejects_fractional_frames(rate: int, frame_ms: int) -> None:
    with pytest.raises(ValueError, match="whole number"):
        samples_per_frame(rate, frame_ms)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 5000), st.sampled_from([8000, 16000, 48000]), st.sampled_from([10, 20, 32]))
def test_frames_cover_input_exactly(n: int, rate: int, frame_ms: int) -> None:
    x = np.arange(n, dtype=np.float32)
    step = samples_per_frame(rate, frame_ms)
    out = list(frames(x, rate, frame_ms))
    assert len(out) == -(-n // step)
    assert all(len(f) == step for f in out[:-1])
    if out:
        assert 1 <= len(out[-1]) <= step  # a short tail is real audio, never padded
        assert np.array_equal(np.concatenate(out), x)


def test_frames_of_empty_input() -> None:
    assert list(frames(np.zeros(0, dtype=np.float32), 16000)) == []


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 700),
    st.lists(st.integers(0, 1500), max_size=25),
    st.data(),
)
def test_accumulator_blocks_do_not_depend_on_push_sizes(
    block: int, sizes: list[int], data: Any
) -> None:
    total = sum(sizes)
    x = np.random.default_rng(total).standard_normal(total).astype(np.float32)

    once = FrameAccumulator(block=block)
    expected = once.push(x)

    acc = FrameAccumulator(block=block)
    got: list[np.ndarray] = []
    pos = 0
    for size in sizes:
        got.extend(acc.push(x[pos : pos + size]))
        pos += size
        assert acc.pending == pos - len(got) * block
        assert 0 <= acc.pending < block
    assert len(got) == len(expected) == total // block
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == np.float32 and len(a) == block
        assert np.array_equal(a, b)
    if got:
        assert np.array_equal(np.concatenate(got), x[: len(got) * block])
    assert acc.pending == once.pending == total % block


def test_accumulator_converts_to_float32() -> None:
    acc = FrameAccumulator(block=4)
    out = acc.push(np.arange(6, dtype=np.float64))  # type: ignore[arg-type]
    assert len(out) == 1 and out[0].dtype == np.float32
    assert out[0].tolist() == [0, 1, 2, 3]
    assert acc.pending == 2
    out = acc.push(np.arange(6, 8, dtype=np.float32))
    assert [b.tolist() for b in out] == [[4, 5, 6, 7]]
    assert acc.pending == 0
