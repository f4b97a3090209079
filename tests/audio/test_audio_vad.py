"""Tests for audio.vad with the real Silero model shipped inside faster-whisper.

Speech comes from espeak-ng through scripts/make_test_calls.py, whose ground truth gives the
exact sample range of every turn; silence and noise are generated.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from audio import codecs
from audio.endpoint import Endpointer, SpeechEnd
from audio.resample import resample
from audio.types import PIPELINE_RATE
from audio.vad import (
    CONTEXT_SAMPLES,
    WINDOW_S,
    WINDOW_SAMPLES,
    SileroVad,
    VadFrame,
    VadStream,
    default_model_path,
)
from scripts.make_test_calls import CallScript, Turn, render_call

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")

SCRIPT = CallScript(
    "vad_speech",
    (
        Turn("customer", "Hello, I was charged twice for the same order last month."),
        Turn("customer", "Can you help me with that please?", gap_before_s=1.5),
    ),
)


@pytest.fixture(scope="module")
def vad() -> SileroVad:
    return SileroVad()


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Two customer turns at 16 kHz PCM16 with 1 s of silence around them."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("needs espeak-ng")
    wav, truth = render_call(
        SCRIPT,
        tmp_path_factory.mktemp("vad"),
        sample_rate=PIPELINE_RATE,
        encoding="pcm16",
        channels=1,
        mono_party="customer",
        lead_silence_s=1.0,
        tail_silence_s=1.0,
    )
    audio, rate = sf.read(wav, dtype="float32")
    assert rate == PIPELINE_RATE
    return audio, json.loads(Path(truth).read_text())["turns"]


def probs_of(frames: list[VadFrame]) -> np.ndarray:
    return np.array([f.prob for f in frames])


def run_stream(vad: SileroVad, x: np.ndarray, chunk: int | None = None) -> list[VadFrame]:
    stream = VadStream(model=vad)
    if chunk is None:
        return stream.push(x)
    out: list[VadFrame] = []
    for i in range(0, len(x), chunk):
        out.extend(stream.push(x[i : i + chunk]))
    return out


def test_model_ships_with_faster_whisper() -> None:
    assert default_model_path().is_file()
    assert WINDOW_SAMPLES == 512 and CONTEXT_SAMPLES == 64
    assert WINDOW_S == pytest.approx(0.032)


def test_thin_call_on_arrays(vad: SileroVad) -> None:
    h = np.zeros((1, 1, 128), dtype=np.float32)
    c = np.zeros((1, 1, 128), dtype=np.float32)
    windows = np.zeros((3, WINDOW_SAMPLES + CONTEXT_SAMPLES), dtype=np.float32)
    probs, hn, cn = vad.run(windows, h, c)
    assert probs.shape == (3,) and probs.dtype == np.float32
    assert hn.shape == cn.shape == (1, 1, 128)
    assert np.all((probs >= 0) & (probs <= 1))


@pytest.mark.parametrize("level", [0.0, 1e-3, 1e-2])
def test_silence_and_low_noise_give_low_probabilities(vad: SileroVad, level: float) -> None:
    rng = np.random.default_rng(7)
    x = (level * rng.standard_normal(3 * PIPELINE_RATE)).astype(np.float32)
    p = probs_of(run_stream(vad, x))
    assert len(p) == 3 * PIPELINE_RATE // WINDOW_SAMPLES
    assert p.max() < 0.2
    assert p.mean() < 0.05


@needs_espeak
def test_speech_regions_get_high_probabilities(
    vad: SileroVad, speech: tuple[np.ndarray, list[dict[str, Any]]]
) -> None:
    audio, turns = speech
    frames = run_stream(vad, audio)
    p = probs_of(frames)
    starts = np.array([f.t_start_s for f in frames])
    ends = starts + WINDOW_S
    outside = np.ones(len(frames), dtype=bool)
    for turn in turns:
        inside = (starts >= turn["t_start"] + 0.1) & (ends <= turn["t_end"] - 0.1)
        assert inside.sum() > 20
        assert np.median(p[inside]) > 0.8, turn["text"]
        assert (p[inside] > 0.5).mean() > 0.8, turn["text"]
        outside &= ~((ends > turn["t_start"] - 0.3) & (starts < turn["t_end"] + 0.5))
    # Lead-in, the gap between the turns and the tail are silence.
    assert outside.sum() > 30
    assert p[outside].max() < 0.2


@needs_espeak
@pytest.mark.parametrize("chunk", [320, 160, 511, 1037])
def test_chunked_stream_equals_one_push(
    vad: SileroVad, speech: tuple[np.ndarray, list[dict[str, Any]]], chunk: int
) -> None:
    """The LSTM state and the 64-sample context carry across pushes of any size."""
    audio, _ = speech
    whole = run_stream(vad, audio)
    chunked = run_stream(vad, audio, chunk=chunk)
    assert len(chunked) == len(whole) == len(audio) // WINDOW_SAMPLES
    assert [(f.t_start_s, f.t_end_s) for f in chunked] == [(f.t_start_s, f.t_end_s) for f in whole]
    np.testing.assert_allclose(probs_of(chunked), probs_of(whole), atol=1e-5)


@needs_espeak
def test_streams_sharing_one_model_keep_separate_state(
    vad: SileroVad, speech: tuple[np.ndarray, list[dict[str, Any]]]
) -> None:
    audio, _ = speech
    noise = (0.01 * np.random.default_rng(3).standard_normal(len(audio))).astype(np.float32)
    a, b = VadStream(model=vad), VadStream(model=vad)
    got_a: list[VadFrame] = []
    got_b: list[VadFrame] = []
    for i in range(0, len(audio), 320):  # interleave 20 ms frames of two calls
        got_a += a.push(audio[i : i + 320])
        got_b += b.push(noise[i : i + 320])
    np.testing.assert_allclose(probs_of(got_a), probs_of(run_stream(vad, audio)), atol=1e-5)
    np.testing.assert_allclose(probs_of(got_b), probs_of(run_stream(vad, noise)), atol=1e-5)


def test_frame_times_advance_by_32ms_from_t0(vad: SileroVad) -> None:
    stream = VadStream(model=vad, t0_s=12.5)
    assert stream.push(np.zeros(WINDOW_SAMPLES - 1, dtype=np.float32)) == []
    frames = stream.push(np.zeros(1 + 3 * WINDOW_SAMPLES + 100, dtype=np.float32))
    frames += stream.push(np.zeros(WINDOW_SAMPLES - 100, dtype=np.float32))
    assert len(frames) == 5
    for i, f in enumerate(frames):
        assert f.t_start_s == pytest.approx(12.5 + i * 0.032)
        assert f.t_end_s - f.t_start_s == pytest.approx(0.032)
        assert 0.0 <= f.prob <= 1.0
    for prev, nxt in zip(frames, frames[1:], strict=False):
        assert nxt.t_start_s == pytest.approx(prev.t_end_s)


@needs_espeak
def test_telephony_path_then_endpointer_finds_both_turns(
    vad: SileroVad, speech: tuple[np.ndarray, list[dict[str, Any]]]
) -> None:
    """8 kHz mu-law as a phone sends it -> decode -> 16 kHz -> VAD -> endpointer."""
    audio, turns = speech
    phone = codecs.encode("mulaw", resample(audio, PIPELINE_RATE, 8000))
    x = resample(codecs.decode("mulaw", phone), 8000, PIPELINE_RATE)
    ep = Endpointer()
    ends: list[SpeechEnd] = []
    for frame in run_stream(vad, x, chunk=320):
        ends += [
            b
            for b in ep.push(frame.t_start_s, frame.t_end_s, frame.prob)
            if isinstance(b, SpeechEnd)
        ]
    ends += [b for b in ep.flush() if isinstance(b, SpeechEnd)]
    assert [e.reason for e in ends] == ["silence", "silence"]
    for end, turn in zip(ends, turns, strict=True):
        assert end.t_start_s == pytest.approx(turn["t_start"], abs=0.15)
        assert end.t_end_s == pytest.approx(turn["t_end"], abs=0.2)
