"""Tests for audio.resample: tones keep frequency and level, aliases are removed, streaming
in 20 ms chunks gives the same samples as resampling the whole buffer."""

from __future__ import annotations

import numpy as np
import pytest

from audio.resample import StreamResampler, resample


def tone(freq_hz: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def steady(x: np.ndarray, rate: int) -> np.ndarray:
    """Drop 100 ms at each end, where the filter is still settling."""
    edge = rate // 10
    return x[edge:-edge]


def peak_frequency(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spectrum)])


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def stream_in_chunks(
    x: np.ndarray, in_rate: int, out_rate: int, chunk_ms: int = 20
) -> list[np.ndarray]:
    rs = StreamResampler(in_rate=in_rate, out_rate=out_rate)
    step = in_rate * chunk_ms // 1000
    parts = [rs.push(x[i : i + step]) for i in range(0, len(x), step)]
    parts.append(rs.flush())
    return parts


@pytest.mark.parametrize(("in_rate", "out_rate"), [(8000, 16000), (48000, 16000), (16000, 8000)])
def test_1khz_tone_keeps_frequency_and_amplitude(in_rate: int, out_rate: int) -> None:
    x = tone(1000, in_rate, 1.0, amplitude=0.5)
    y = resample(x, in_rate, out_rate)
    assert y.dtype == np.float32
    assert len(y) == pytest.approx(len(x) * out_rate / in_rate, abs=1)
    mid = steady(y, out_rate)
    assert peak_frequency(mid, out_rate) == pytest.approx(1000, abs=2)
    assert rms(mid) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)
    assert np.max(np.abs(mid)) == pytest.approx(0.5, rel=0.01)
    # Compare with the ideal tone sample by sample: no phase shift, no distortion.
    ideal = steady(tone(1000, out_rate, len(y) / out_rate, amplitude=0.5), out_rate)
    assert np.max(np.abs(mid - ideal[: len(mid)])) < 5e-3


def test_upsampling_adds_no_image_above_the_old_nyquist() -> None:
    y = steady(resample(tone(1000, 8000, 1.0), 8000, 16000), 16000)
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    freqs = np.fft.rfftfreq(len(y), 1 / 16000)
    image = spectrum[(freqs > 4100)].max()  # the 7 kHz mirror of 1 kHz would land here
    assert 20 * np.log10(image / spectrum.max()) < -60


@pytest.mark.parametrize("freq_hz", [5000, 6000, 7500])
def test_downsampling_suppresses_tones_above_the_new_nyquist(freq_hz: int) -> None:
    x = tone(freq_hz, 16000, 1.0, amplitude=0.5)
    y = steady(resample(x, 16000, 8000), 8000)
    attenuation_db = 20 * np.log10(rms(y) / rms(steady(x, 16000)))
    assert attenuation_db < -40


def test_downsampling_keeps_in_band_speech_frequencies() -> None:
    x = tone(3000, 16000, 1.0, amplitude=0.5)
    y = steady(resample(x, 16000, 8000), 8000)
    assert rms(y) == pytest.approx(rms(steady(x, 16000)), rel=0.02)


def test_same_rate_is_a_float32_pass_through() -> None:
    x = np.linspace(-1, 1, 999)
    y = resample(x, 16000, 16000)  # type: ignore[arg-type]
    assert y.dtype == np.float32 and np.array_equal(y, x.astype(np.float32))
    rs = StreamResampler(in_rate=16000, out_rate=16000)
    assert np.array_equal(rs.push(x[:320]), x[:320].astype(np.float32))  # type: ignore[arg-type]
    assert rs.flush().size == 0


@pytest.mark.parametrize(
    ("in_rate", "out_rate"), [(8000, 16000), (48000, 16000), (44100, 16000), (16000, 8000)]
)
def test_stream_in_20ms_chunks_equals_whole_buffer(in_rate: int, out_rate: int) -> None:
    rng = np.random.default_rng(in_rate + out_rate)
    x = np.concatenate(
        [tone(440, in_rate, 0.7), (0.1 * rng.standard_normal(in_rate)).astype(np.float32)]
    )
    whole = resample(x, in_rate, out_rate)
    parts = stream_in_chunks(x, in_rate, out_rate)
    streamed = np.concatenate(parts)
    assert all(p.dtype == np.float32 for p in parts)
    # Total length within 1 ms of the exact ratio, and equal to the whole-buffer result.
    expected = len(x) * out_rate / in_rate
    assert abs(len(streamed) - expected) <= out_rate / 1000
    assert len(streamed) == len(whole)
    assert np.max(np.abs(streamed - whole)) < 1e-5


def test_stream_keeps_filter_state_across_chunks() -> None:
    """A fresh resampler per chunk would click at every 20 ms edge; one stream must not."""
    x = tone(1000, 8000, 1.0)
    streamed = np.concatenate(stream_in_chunks(x, 8000, 16000))
    ideal = tone(1000, 16000, len(streamed) / 16000)
    mid = slice(1600, len(streamed) - 1600)
    assert np.max(np.abs(streamed[mid] - ideal[mid])) < 5e-3
