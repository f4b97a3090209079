"""Tests for audio.prosody: f0/voicing/energy on known signals, utterance summaries, the
per-speaker baseline, and arousal calibrated on espeak-ng speech in three speaking styles.

The emotional speech is the same espeak-ng voice with rate, pitch and amplitude changed the way
angry (fast, high, loud) and dejected (slow, low, quiet) speakers change them, sent through an
8 kHz mu-law round trip like a phone line and resampled to the pipeline's 16 kHz.
"""

from __future__ import annotations

import copy
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audio.prosody import (
    FEATURES,
    FrameFeatures,
    SpeakerBaseline,
    UtteranceProsody,
    arousal,
    frame_features,
    prosody_event_fields,
    speaking_rate,
    summarize,
    utterance_prosody,
)
from audio.types import PIPELINE_RATE
from scripts.make_test_calls import CallScript, Turn, render_phone_line

SR = PIPELINE_RATE
Audio = npt.NDArray[np.float32]
Style = tuple[int, int, int]
Speak = Callable[[str, Style], UtteranceProsody]
PhoneLine = Callable[..., npt.NDArray[np.float32]]
FloatArray = npt.NDArray[np.float32]


def tone(f0_hz: float, *, seconds: float = 1.0, amplitude: float = 0.5, saw: bool = False) -> Audio:
    t: npt.NDArray[np.float64] = np.arange(round(seconds * SR)) / SR
    if not saw:
        return (amplitude * np.sin(2 * np.pi * f0_hz * t)).astype(np.float32)
    # Band-limited sawtooth: every harmonic up to the telephone band edge, amplitude 1/k.
    harmonics = range(1, int(3400 / f0_hz) + 1)
    wave = np.zeros_like(t)
    for k in harmonics:
        wave += np.sin(2 * np.pi * f0_hz * k * t) / k
    peak = float(np.max(np.abs(wave)))
    return (amplitude / peak * wave).astype(np.float32)


# --------------------------------------------------------------------------- frame features


@pytest.mark.parametrize("saw", [False, True], ids=["sine", "sawtooth"])
@pytest.mark.parametrize("f0_hz", [100.0, 150.0, 220.0, 300.0])
def test_f0_of_tones_within_2_percent(f0_hz: float, saw: bool) -> None:
    ff = frame_features(tone(f0_hz, saw=saw))
    assert ff.voiced.mean() > 0.95
    voiced_f0 = ff.f0_hz[ff.voiced]
    assert np.all(np.abs(voiced_f0 / f0_hz - 1.0) < 0.02)


def test_frame_layout() -> None:
    ff = frame_features(tone(150.0, seconds=1.0))
    assert ff.hop_s == pytest.approx(0.010)
    # 25 ms windows every 10 ms that fit in 1 s.
    assert ff.energy_db.size == ff.f0_hz.size == ff.voiced.size == 1 + (SR - 400) // 160
    assert ff.voiced.dtype == np.bool_
    assert ff.f0_hz.dtype == ff.energy_db.dtype == np.float32


def test_silence_and_white_noise_are_unvoiced() -> None:
    silence = np.zeros(SR, dtype=np.float32)
    noise = (0.3 * np.random.default_rng(7).standard_normal(SR)).astype(np.float32)
    for signal in (silence, noise):
        ff = frame_features(signal)
        assert not ff.voiced.any()
        assert np.all(np.isnan(ff.f0_hz))
    assert np.all(frame_features(silence).energy_db == -100.0)


def test_energy_db_of_full_scale_sine_is_minus_3() -> None:
    energy = frame_features(tone(1000.0, amplitude=1.0)).energy_db
    np.testing.assert_allclose(energy, -3.01, atol=0.02)
    half = frame_features(tone(1000.0, amplitude=0.5)).energy_db
    np.testing.assert_allclose(half, -3.01 - 6.02, atol=0.02)


def test_input_shorter_than_a_window_gives_no_frames() -> None:
    ff = frame_features(np.zeros(100, dtype=np.float32))
    assert ff.f0_hz.size == 0
    p = summarize(ff)
    assert p.f0_mean_hz is None and p.rate_wps is None and p.pause_ratio == 0.0


def test_faster_than_real_time() -> None:
    # A loose guard against accidental per-frame Python loops; scripts/bench_prosody.py
    # measures the real figure (hundreds of times real time per core).
    audio = np.tile(tone(140.0, saw=True), 10)
    frame_features(audio)
    start = time.perf_counter()
    frame_features(audio)
    assert 10.0 / (time.perf_counter() - start) > 25.0


# --------------------------------------------------------------------------- utterance level


def test_utterance_prosody_of_a_tone() -> None:
    audio = np.concatenate([tone(200.0), np.zeros(SR // 2, np.float32), tone(200.0)])
    p = utterance_prosody(audio, word_times=None)
    assert p.f0_mean_hz == pytest.approx(200.0, rel=0.01)
    assert p.f0_range_st is not None and p.f0_range_st < 0.2
    assert p.energy_mean_db == pytest.approx(-9.03, abs=0.1)
    # 0.5 s of silence inside a 2.5 s speech span.
    assert p.pause_ratio == pytest.approx(0.2, abs=0.02)
    assert p.voiced_ratio == pytest.approx(0.8, abs=0.02)
    assert p.rate_wps is None


def test_rate_from_word_times() -> None:
    audio = tone(150.0, seconds=2.0)
    words = [(0.25, 0.5), (0.6, 0.9), (1.0, 1.4), (1.5, 2.25)]
    p = utterance_prosody(audio, word_times=words)
    assert p.rate_wps == pytest.approx(4 / 2.0)
    assert p.n_words == 4
    # Without times, a word count over the speech span (all 2 s of the tone here).
    p = utterance_prosody(audio, word_times=None, word_count=5)
    assert p.rate_wps == pytest.approx(5 / 2.0, rel=0.02)
    assert utterance_prosody(audio, word_times=[(1.0, 1.0)]).rate_wps is None


def test_short_stop_gaps_are_not_pauses() -> None:
    gap = np.zeros(round(0.08 * SR), np.float32)
    audio = np.concatenate([tone(150.0, seconds=0.5), gap, tone(150.0, seconds=0.5)])
    assert utterance_prosody(audio, word_times=None).pause_ratio == 0.0


def test_no_voiced_frames_gives_no_f0() -> None:
    noise = (0.1 * np.random.default_rng(3).standard_normal(SR)).astype(np.float32)
    p = utterance_prosody(noise, word_times=None)
    assert p.f0_mean_hz is None and p.f0_range_st is None
    assert p.voiced_ratio == 0.0
    z = SpeakerBaseline().zscores(p)
    assert set(z) == {"energy"}
    fields = prosody_event_fields(p, z, arousal(z)[0])
    assert fields["f0_hz"] is None and fields["f0_z"] is None


# --------------------------------------------------------------------------- baseline


def prosody(
    *, f0: float = 120.0, energy: float = -20.0, rate: float = 3.0, f0_range: float = 4.0
) -> UtteranceProsody:
    return UtteranceProsody(
        duration_s=2.0,
        f0_mean_hz=f0,
        f0_range_st=f0_range,
        energy_mean_db=energy,
        rate_wps=rate,
        n_words=6,
        pause_ratio=0.1,
        voiced_ratio=0.6,
    )


def test_first_utterance_is_its_own_reference() -> None:
    z = SpeakerBaseline().zscores(prosody(f0=250.0, energy=-5.0, rate=3.0, f0_range=9.0))
    assert set(z) == set(FEATURES)
    assert z["f0_mean"] == z["energy"] == z["f0_range"] == 0.0
    # Pace has an absolute meaning, so it starts from a population prior (~3 words/s).
    assert abs(z["rate"]) < 0.1


def test_zscores_are_computed_before_update() -> None:
    baseline = SpeakerBaseline()
    for energy in (-20.0, -21.0, -19.0, -20.0):
        baseline.update(prosody(energy=energy))
    loud = prosody(energy=-12.0)
    before = copy.deepcopy(baseline)
    z = baseline.zscores(loud)
    assert baseline == before  # scoring does not learn
    assert z["energy"] > 2.0
    baseline.update(loud)
    assert baseline.zscores(loud)["energy"] < z["energy"]


def test_one_outburst_moves_the_baseline_only_a_little() -> None:
    baseline = SpeakerBaseline()
    for _ in range(6):
        baseline.update(prosody(energy=-20.0))
    baseline.update(prosody(energy=+10.0))  # a 30 dB spike (a bump on the microphone)
    assert baseline.zscores(prosody(energy=-20.0))["energy"] > -1.5


def test_baseline_spread_never_collapses() -> None:
    baseline = SpeakerBaseline()
    for _ in range(50):
        baseline.update(prosody())
    # Identical lines shrink the SD only to its floor: a 1 dB change is not an alarm.
    assert abs(baseline.zscores(prosody(energy=-19.0))["energy"]) <= 1.0


def test_a_dejected_stretch_does_not_drag_the_baseline_down() -> None:
    """An outside author's caller spoke quietly and low through several dejected turns; the
    baseline followed him down, and his ordinary voice afterwards read as raised (a false
    frustration cue). Once settled, a line far from the usual teaches the baseline less."""

    def after_a_dejected_stretch(robust_sd: float) -> dict[str, float]:
        baseline = SpeakerBaseline(robust_sd=robust_sd)
        for _ in range(5):
            baseline.update(prosody())
        for _ in range(6):
            baseline.update(prosody(f0=100.0, energy=-29.0, rate=2.0))
        return baseline.zscores(prosody())

    robust = after_a_dejected_stretch(1.0)
    followed = after_a_dejected_stretch(0.0)  # 0: every line weighs the same (as before)
    assert arousal(followed)[0] > 0.75  # the ordinary voice read as raised
    assert arousal(robust)[0] < 0.65
    assert robust["energy"] < 1.0 and robust["f0_mean"] < 1.0


def test_a_speaker_who_settles_louder_is_followed_within_a_few_lines() -> None:
    """The first lines still set the baseline at full weight: a caller who turns the
    volume up after the greeting is not scored as shouting for the rest of the call."""
    baseline = SpeakerBaseline()
    baseline.update(prosody(energy=-30.0))
    for _ in range(3):
        baseline.update(prosody(energy=-20.0))
    assert abs(baseline.zscores(prosody(energy=-20.0))["energy"]) < 1.0


# --------------------------------------------------------------------------- arousal


def test_arousal_neutral_and_explanations() -> None:
    score, why = arousal(dict.fromkeys(FEATURES, 0.0))
    assert score == 0.5 and why == []
    score, why = arousal({"f0_mean": 2.14, "energy": 1.6, "rate": 1.2, "f0_range": 0.4})
    assert score > 0.9
    assert why == ["pitch +2.1 SD", "loudness +1.6 SD", "pace +1.2 SD"]
    score, why = arousal({"f0_mean": -1.5, "energy": float("nan")})
    assert score < 0.5 and why == ["pitch -1.5 SD"]


z_values = st.floats(allow_nan=True, allow_infinity=True)
z_dicts = st.dictionaries(st.sampled_from(FEATURES), z_values)


@given(z_dicts)
def test_arousal_is_within_0_1(z: dict[str, float]) -> None:
    score, _ = arousal(z)
    assert 0.0 <= score <= 1.0


@settings(max_examples=200)
@given(
    z_dicts,
    st.sampled_from(FEATURES),
    st.floats(-50, 50, allow_nan=False),
    st.floats(-50, 50, allow_nan=False),
)
def test_arousal_is_monotonic_in_each_feature(
    z: dict[str, float], key: str, a: float, b: float
) -> None:
    low, high = sorted((a, b))
    assert arousal({**z, key: low})[0] <= arousal({**z, key: high})[0]


def test_event_fields_match_the_contract() -> None:
    p = prosody(f0=123.45678, rate=3.14159)
    z = {"f0_mean": 1.23456, "energy": -0.98765, "rate": 0.5, "f0_range": 0.1}
    score, why = arousal(z)
    fields = prosody_event_fields(p, z, score, why=why)
    assert {"f0_hz", "f0_z", "energy_z", "rate_wps", "arousal"} <= set(fields)
    assert fields["f0_hz"] == 123.457 and fields["f0_z"] == 1.235
    assert fields["energy_z"] == -0.988 and fields["rate_wps"] == 3.142
    assert fields["arousal"] == round(score, 3)
    assert fields["why"] == why


# --------------------------------------------------------------------------- espeak-ng speech

STYLES: dict[str, Style] = {
    "angry": (220, 80, 200),
    "neutral": (160, 50, 100),
    "dejected": (110, 20, 50),
}
LOUD = (160, 50, 200)
WARMUP = (
    "I have been waiting on hold for forty minutes today.",
    "Can you tell me why my bill went up again this month?",
    "I already gave you my account number twice.",
    "The technician never showed up on Tuesday morning.",
)
SCORED = (
    "Please just cancel the whole contract right now.",
    "I want to speak with somebody who can fix this.",
    "Nobody called me back like you promised last week.",
)
SCRIPT = CallScript("prosody", (Turn("customer", "unused"),), customer_voice="en-us")


@pytest.fixture(scope="module")
def phone_line(tmp_path_factory: pytest.TempPathFactory) -> PhoneLine:
    """Render one sentence in a style, as a phone line delivers it (8 kHz mu-law -> 16 kHz)."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("needs espeak-ng")
    workdir: Path = tmp_path_factory.mktemp("prosody")

    def render(text: str, style: Style, voice: str = "en-us") -> npt.NDArray[np.float32]:
        speed, pitch, amplitude = style
        turn = Turn(
            "customer", text, speed_wpm=speed, pitch=pitch, amplitude=amplitude, voice=voice
        )
        return render_phone_line(SCRIPT, turn, workdir, pad_s=0.3, out_rate=SR)

    return render


@pytest.fixture(scope="module")
def speak(phone_line: PhoneLine) -> Speak:
    def render(text: str, style: Style) -> UtteranceProsody:
        audio = phone_line(text, style)
        return utterance_prosody(audio, word_times=None, word_count=len(text.split()))

    return render


def warmed_up(speak: Speak, style: Style) -> SpeakerBaseline:
    baseline = SpeakerBaseline()
    for text in WARMUP:
        baseline.update(speak(text, style))
    return baseline


def test_espeak_f0_tracks_the_pitch_setting(speak: Speak) -> None:
    f0 = {name: speak(WARMUP[0], style).f0_mean_hz or 0.0 for name, style in STYLES.items()}
    assert 70.0 < f0["dejected"] < f0["neutral"] < f0["angry"] < 200.0


def test_espeak_arousal_is_ordered(speak: Speak) -> None:
    baseline = warmed_up(speak, STYLES["neutral"])
    scores: dict[str, list[float]] = {name: [] for name in STYLES}
    for name, style in STYLES.items():
        for text in SCORED:
            scores[name].append(arousal(baseline.zscores(speak(text, style)))[0])
    angry, neutral, dejected = (np.array(scores[n]) for n in ("angry", "neutral", "dejected"))
    assert angry.min() > 0.7
    assert dejected.max() < 0.35
    assert 0.35 < neutral.mean() < 0.65
    assert angry.min() - neutral.max() > 0.15
    assert neutral.min() - dejected.max() > 0.15


def test_espeak_angry_line_explains_itself(speak: Speak) -> None:
    baseline = warmed_up(speak, STYLES["neutral"])
    p = speak(SCORED[0], STYLES["angry"])
    z = baseline.zscores(p)
    score, why = arousal(z)
    labels = [w.split(" +")[0] for w in why]
    assert {"pitch", "loudness"} <= set(labels)
    fields = prosody_event_fields(p, z, score, why=why)
    assert fields["f0_z"] is not None and fields["f0_z"] > 1.0
    assert fields["energy_z"] is not None and fields["energy_z"] > 1.0


def test_espeak_always_loud_speaker_is_not_always_aroused(speak: Speak) -> None:
    baseline = SpeakerBaseline()
    scores: list[float] = []
    for text in WARMUP + SCORED:
        p = speak(text, LOUD)
        scores.append(arousal(baseline.zscores(p))[0])
        baseline.update(p)
    assert all(s < 0.65 for s in scores[2:]), scores
    # The same lines against a normal-level baseline do read as louder.
    normal = warmed_up(speak, STYLES["neutral"])
    assert normal.zscores(speak(SCORED[0], LOUD))["energy"] > 1.5


def test_frame_features_type() -> None:
    ff = frame_features(tone(150.0))
    assert isinstance(ff, FrameFeatures)
    with pytest.raises(AttributeError):
        ff.hop_s = 0.02  # type: ignore[misc]
    assert math.isclose(ff.hop_s, 0.01)


def test_observe_scores_then_learns() -> None:
    a, b = SpeakerBaseline(), SpeakerBaseline()
    for energy in (-20.0, -22.0, -12.0):
        p = prosody(energy=energy)
        z = b.zscores(p)
        b.update(p)
        assert a.observe(p) == z
    assert a == b


# --------------------------------------------------------------------------- speaking rate


def syllable_train(rate: float, seconds: float = 4.0, gain: float = 0.3) -> FloatArray:
    """A 150 Hz voice whose loudness rises and falls `rate` times per second."""
    t = np.arange(int(seconds * SR)) / SR
    envelope = np.abs(np.sin(np.pi * rate * t)) ** 2
    return (gain * np.sin(2 * np.pi * 150.0 * t) * envelope).astype(np.float32)


@pytest.mark.parametrize("rate", [3.0, 4.5, 6.0, 7.5, 9.0])
def test_speaking_rate_reads_a_syllable_train(rate: float) -> None:
    r = speaking_rate(frame_features(syllable_train(rate)))
    assert r.per_s is not None and abs(r.per_s - rate) < 0.2
    assert 3.5 < r.speech_s <= 4.0


def test_speaking_rate_ignores_level_and_too_little_speech() -> None:
    loud = speaking_rate(frame_features(syllable_train(5.0, gain=0.5))).per_s
    quiet = speaking_rate(frame_features(syllable_train(5.0, gain=0.02))).per_s
    assert loud is not None and quiet is not None and abs(loud - quiet) < 0.05
    assert speaking_rate(frame_features(syllable_train(5.0, seconds=0.3))).speech_s == 0.0
    assert speaking_rate(frame_features(tone(150.0))).syllables == 0.0  # steady: no syllables


AGENT_LINES = (
    "So the plan includes unlimited calls and texts and fifteen gigabytes of data, "
    "after which speeds are reduced until the next billing date.",
    "I can move the appointment to Thursday at ten, and the confirmation will come by "
    "text message with the address of the clinic.",
)


@pytest.mark.parametrize("voice", ["en-us", "en-gb-x-rp", "en-us+f3"])
def test_espeak_rushed_speech_reads_faster_than_any_normal_line(
    phone_line: PhoneLine, voice: str
) -> None:
    """Rushed (285 wpm) against normal (155 wpm) speech over a phone line: the old peak
    counter read both under 5.5 syllables/s; the playbook's agent_pace_fast bar is 5.7."""
    for text in AGENT_LINES:
        normal = speaking_rate(frame_features(phone_line(text, (155, 50, 100), voice))).per_s
        rushed = speaking_rate(frame_features(phone_line(text, (285, 50, 100), voice))).per_s
        assert normal is not None and rushed is not None
        assert normal < 5.4 < 5.9 < rushed, (voice, normal, rushed)
