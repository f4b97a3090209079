"""Tests for audio.codecs: PCM16 and G.711 round trips, the ITU tables, deinterleaving."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from audio import codecs
from audio.codecs import CodecError
from audio.types import ENCODINGS, Encoding

GOLDEN = json.loads((Path(__file__).parent / "golden" / "g711_golden.json").read_text())
ALL_BYTES = bytes(range(256))
FULL_SCALE = 32768.0

FAST = settings(max_examples=200, deadline=None)


def unit_floats(min_size: int = 0, max_size: int = 400) -> st.SearchStrategy[Any]:
    """float32 arrays in [-1, 1], including exact edges and subnormal-free small values."""
    return hnp.arrays(
        np.float32,
        st.integers(min_size, max_size),
        elements=st.floats(-1.0, 1.0, width=32, allow_subnormal=False),
    )


# -- an independent reference decoder (ITU-T G.191 / Sun g711.c), for the whole table -------


def ref_ulaw_to_linear(code: int) -> int:
    u = ~code & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return 0x84 - t if u & 0x80 else t - 0x84


def ref_alaw_to_linear(code: int) -> int:
    a = code ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    if seg == 0:
        t += 8
    elif seg == 1:
        t += 0x108
    else:
        t = (t + 0x108) << (seg - 1)
    return t if a & 0x80 else -t


def as_int16(samples: np.ndarray) -> np.ndarray:
    scaled = np.asarray(samples, dtype=np.float64) * FULL_SCALE
    assert np.array_equal(scaled, np.round(scaled)), "G.711 decodes to exact 16-bit values"
    return scaled.astype(np.int64)


# -- golden values ---------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["mulaw", "alaw"])
def test_golden_g711_decode_and_encode_byte_for_byte(encoding: Encoding) -> None:
    entries = GOLDEN[encoding]
    payload = bytes(int(e["byte"], 16) for e in entries)
    linear = [e["linear"] for e in entries]

    decoded = codecs.decode(encoding, payload)
    assert decoded.dtype == np.float32
    assert as_int16(decoded).tolist() == linear

    expected = bytes(int(e.get("encodes_to", e["byte"]), 16) for e in entries)
    encoded = codecs.encode(encoding, np.asarray(linear, dtype=np.float32) / FULL_SCALE)
    assert encoded == expected


def test_golden_pcm16_little_endian() -> None:
    entries = GOLDEN["pcm16"]
    payload = b"".join(bytes.fromhex(e["bytes"]) for e in entries)
    decoded = codecs.decode("pcm16", payload)
    assert decoded.dtype == np.float32
    assert as_int16(decoded).tolist() == [e["linear"] for e in entries]
    assert codecs.encode("pcm16", decoded) == payload


def test_full_g711_tables_match_the_itu_reference_formula() -> None:
    ulaw = as_int16(codecs.decode_mulaw(ALL_BYTES))
    alaw = as_int16(codecs.decode_alaw(ALL_BYTES))
    assert ulaw.tolist() == [ref_ulaw_to_linear(b) for b in ALL_BYTES]
    assert alaw.tolist() == [ref_alaw_to_linear(b) for b in ALL_BYTES]


# -- table structure -------------------------------------------------------------------------


def test_mulaw_table_monotonic_within_sign_halves_and_symmetric() -> None:
    lin = as_int16(codecs.decode_mulaw(ALL_BYTES))
    neg, pos = lin[:0x80], lin[0x80:]
    # 0x00 is the most negative, 0x7F is -0; 0x80 the most positive, 0xFF is +0.
    assert np.all(np.diff(neg) > 0)
    assert np.all(np.diff(pos) < 0)
    assert neg[0] == -32124 and neg[-1] == 0
    assert pos[0] == 32124 and pos[-1] == 0
    for b in ALL_BYTES:
        assert lin[b ^ 0x80] == -lin[b]


def test_alaw_table_monotonic_in_magnitude_code_and_symmetric() -> None:
    lin = as_int16(codecs.decode_alaw(ALL_BYTES))
    # A-law inverts the even bits (XOR 0x55); the sign bit set means positive.
    by_magnitude = sorted(ALL_BYTES, key=lambda b: (b ^ 0x55) & 0x7F)
    positive = [b for b in by_magnitude if (b ^ 0x55) & 0x80]
    negative = [b for b in by_magnitude if not (b ^ 0x55) & 0x80]
    assert np.all(np.diff(lin[positive]) > 0)
    assert np.all(np.diff(lin[negative]) < 0)
    assert lin.min() == -32256 and lin.max() == 32256
    assert 0 not in lin  # A-law has no zero code word
    for b in ALL_BYTES:
        assert lin[b ^ 0x80] == -lin[b]


@pytest.mark.parametrize("encoding", ["mulaw", "alaw"])
def test_g711_encode_of_decode_is_stable(encoding: Encoding) -> None:
    decoded = codecs.decode(encoding, ALL_BYTES)
    again = codecs.encode(encoding, decoded)
    if encoding == "alaw":
        assert again == ALL_BYTES
    else:
        # Only mu-law's negative zero (0x7F) re-encodes to positive zero (0xFF).
        assert again == ALL_BYTES[:0x7F] + b"\xff" + ALL_BYTES[0x80:]
    assert np.array_equal(codecs.decode(encoding, again), decoded)


def test_g711_saturates_beyond_full_scale() -> None:
    x = np.array([1.0, 1.5, 100.0, -1.0, -1.5, -100.0], dtype=np.float32)
    assert (
        as_int16(codecs.decode("mulaw", codecs.encode("mulaw", x))).tolist()
        == [32124] * 3 + [-32124] * 3
    )
    assert (
        as_int16(codecs.decode("alaw", codecs.encode("alaw", x))).tolist()
        == [32256] * 3 + [-32256] * 3
    )


# -- PCM16 -----------------------------------------------------------------------------------


@FAST
@given(unit_floats())
def test_pcm16_float_round_trip_within_one_lsb(x: np.ndarray) -> None:
    payload = codecs.encode("pcm16", x)
    assert len(payload) == 2 * x.size
    y = codecs.decode("pcm16", payload)
    assert y.dtype == np.float32 and y.shape == x.shape
    err = np.abs(y.astype(np.float64) - x)
    assert np.all(err <= 1.0 / FULL_SCALE)
    # Rounded, not truncated: half an LSB except where +1.0 clips to 32767.
    in_range = x < 32767 / FULL_SCALE
    assert np.all(err[in_range] <= 0.5 / FULL_SCALE + 1e-12)


@FAST
@given(st.binary(max_size=600).map(lambda b: b[: len(b) // 2 * 2]))
def test_pcm16_bytes_round_trip_exactly(payload: bytes) -> None:
    samples = codecs.decode("pcm16", payload)
    assert np.all((samples >= -1.0) & (samples < 1.0))
    assert codecs.encode("pcm16", samples) == payload


def test_pcm16_clips_instead_of_wrapping() -> None:
    x = np.array([1.0, 2.0, -1.0, -2.0, 32767 / 32768], dtype=np.float32)
    assert as_int16(codecs.decode("pcm16", codecs.encode("pcm16", x))).tolist() == [
        32767,
        32767,
        -32768,
        -32768,
        32767,
    ]


@pytest.mark.parametrize("n", [1, 3, 321])
def test_decode_rejects_odd_length_pcm16(n: int) -> None:
    with pytest.raises(CodecError, match="odd length"):
        codecs.decode("pcm16", b"\x00" * n)
    assert issubclass(CodecError, ValueError)


def test_unknown_encoding_raises_codec_error() -> None:
    with pytest.raises(CodecError):
        codecs.decode("opus", b"\x00\x00")  # type: ignore[arg-type]
    with pytest.raises(CodecError):
        codecs.encode("opus", np.zeros(2, dtype=np.float32))  # type: ignore[arg-type]


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_empty_payloads(encoding: Encoding) -> None:
    empty = codecs.decode(encoding, b"")
    assert empty.size == 0 and empty.dtype == np.float32
    assert codecs.encode(encoding, np.zeros(0, dtype=np.float32)) == b""


@pytest.mark.parametrize(("encoding", "size"), [("pcm16", 2), ("mulaw", 1), ("alaw", 1)])
def test_bytes_per_sample(encoding: Encoding, size: int) -> None:
    assert codecs.bytes_per_sample(encoding) == size
    assert len(codecs.encode(encoding, np.zeros(7, dtype=np.float32))) == 7 * size


# -- G.711 quantisation error ----------------------------------------------------------------


def mulaw_half_step(v: np.ndarray) -> np.ndarray:
    """Half the mu-law step at 16-bit magnitude v: steps double per segment of v + 132."""
    return (v + 132.0) / 32.0


def alaw_half_step(v: np.ndarray) -> np.ndarray:
    """Half the A-law step: 8 in the two lowest segments, then doubling with the magnitude."""
    return np.maximum(8.0, v / 32.0)


@FAST
@given(unit_floats(min_size=1))
@pytest.mark.parametrize(
    ("encoding", "half_step"), [("mulaw", mulaw_half_step), ("alaw", alaw_half_step)]
)
def test_g711_round_trip_error_bounded_by_half_step(
    encoding: Encoding, half_step: Any, x: np.ndarray
) -> None:
    y = codecs.decode(encoding, codecs.encode(encoding, x))
    assert y.dtype == np.float32 and y.shape == x.shape
    v = np.abs(x.astype(np.float64)) * FULL_SCALE
    err = np.abs(y.astype(np.float64) - x) * FULL_SCALE
    assert np.all(err <= half_step(v) + 1.0)
    # Relative error well under 6% outside the tiny-signal region; signs never flip.
    big = np.abs(x) > 0.01
    assert np.all(err[big] / v[big] < 0.06)
    assert np.all(np.sign(y[big]) == np.sign(x[big]))


@pytest.mark.parametrize("encoding", ["mulaw", "alaw"])
def test_g711_round_trip_dense_sweep(encoding: Encoding) -> None:
    x = np.linspace(-1.0, 1.0, 400_001, dtype=np.float32)
    y = codecs.decode(encoding, codecs.encode(encoding, x))
    big = np.abs(x) > 0.01
    rel = np.abs(y[big] - x[big]) / np.abs(x[big])
    assert rel.max() < (0.045 if encoding == "mulaw" else 0.033)
    # Output is a non-decreasing function of the input (quantiser, no folding).
    assert np.all(np.diff(y) >= 0)


# -- deinterleave ----------------------------------------------------------------------------


@FAST
@given(st.integers(1, 8), st.integers(0, 200), st.data())
def test_deinterleave_then_interleave_is_identity(channels: int, frames: int, data: Any) -> None:
    x = data.draw(hnp.arrays(np.float32, frames * channels, elements=st.floats(-1, 1, width=32)))
    parts = codecs.deinterleave(x, channels)
    assert len(parts) == channels
    for c, part in enumerate(parts):
        assert part.shape == (frames,)
        assert part.flags.c_contiguous
        assert np.array_equal(part, x[c::channels])
    assert np.array_equal(np.stack(parts, axis=1).reshape(-1), x)


@FAST
@given(st.integers(2, 8), st.integers(1, 200))
def test_deinterleave_rejects_ragged_input(channels: int, n: int) -> None:
    if n % channels == 0:
        n += 1
    with pytest.raises(CodecError, match="do not divide"):
        codecs.deinterleave(np.zeros(n, dtype=np.float32), channels)


@pytest.mark.parametrize("channels", [0, -1])
def test_deinterleave_rejects_bad_channel_count(channels: int) -> None:
    with pytest.raises(CodecError, match="channels"):
        codecs.deinterleave(np.zeros(4, dtype=np.float32), channels)


def test_deinterleave_stereo_order() -> None:
    x = np.array([0.1, -0.1, 0.2, -0.2, 0.3, -0.3], dtype=np.float32)
    left, right = codecs.deinterleave(x, 2)
    assert left.tolist() == pytest.approx([0.1, 0.2, 0.3])
    assert right.tolist() == pytest.approx([-0.1, -0.2, -0.3])
