"""Fusion of text emotion and voice arousal into the customer state."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coach.signals.state import CustomerStateTracker, arc_change, direction, fuse


def sent(label: str, conf: float, valence: float) -> dict[str, Any]:
    return {"label": label, "confidence": conf, "valence": valence, "scores": {label: conf}}


def voice(arousal: float, why: list[str] | None = None) -> dict[str, Any]:
    return {"f0_hz": 140.0, "arousal": arousal, "why": why or []}


def test_flat_words_in_a_raised_voice_read_as_frustration() -> None:
    v, a, emotion, conf, why = fuse(
        sentiment=sent("neutral", 0.6, 0.0), prosody=voice(0.97, ["pitch +2.3 SD"]), duration_s=3.0
    )
    assert emotion == "frustrated" and v < -0.3 and a > 0.7 and conf > 0.5
    assert any("raised" in w for w in why) and "voice: pitch +2.3 SD" in why


def test_resigned_reply_in_a_low_voice_reads_as_sad() -> None:
    v, a, emotion, _, _ = fuse(
        sentiment=sent("neutral", 0.55, 0.05), prosody=voice(0.05), duration_s=2.0
    )
    assert emotion == "sad" and v <= -0.2 and a < 0.35


def test_confident_words_win_over_a_calm_voice() -> None:
    v, _, emotion, conf, _ = fuse(
        sentiment=sent("frustrated", 0.95, -0.8), prosody=voice(0.5), duration_s=3.0
    )
    assert emotion == "frustrated" and v == pytest.approx(-0.8) and conf == pytest.approx(0.95)


def test_without_pitch_the_voice_has_no_say() -> None:
    v, a, emotion, _, _ = fuse(
        sentiment=sent("positive", 0.9, 0.8),
        prosody={"f0_hz": None, "arousal": 0.99},
        duration_s=3.0,
    )
    assert emotion == "positive" and v == pytest.approx(0.8) and a == pytest.approx(0.55)


def test_trend_smooths_a_single_outlier() -> None:
    tracker = CustomerStateTracker()
    for t in range(5):
        calm = tracker.update(
            t_end=t, duration_s=2.0, sentiment=sent("positive", 0.9, 0.7), prosody=voice(0.5)
        )
    spike = tracker.update(
        t_end=6, duration_s=2.0, sentiment=sent("frustrated", 0.9, -0.8), prosody=voice(0.9)
    )
    assert spike.valence == pytest.approx(-0.8)
    assert calm.trend_valence > spike.trend_valence > -0.2
    assert [p[0] for p in tracker.arc] == [0, 1, 2, 3, 4, 6]


@given(
    st.sampled_from(["neutral", "positive", "frustrated", "anxious", "confused", "sad"]),
    st.floats(0, 1),
    st.floats(-1, 1),
    st.floats(0, 1),
    st.floats(0, 30),
)
def test_outputs_stay_in_range(label: str, conf: float, val: float, ar: float, dur: float) -> None:
    v, a, emotion, c, _ = fuse(sentiment=sent(label, conf, val), prosody=voice(ar), duration_s=dur)
    assert -1 <= v <= 1 and 0 <= a <= 1 and 0 <= c <= 1
    assert emotion in ("neutral", "positive", "frustrated", "anxious", "confused", "sad")


def test_direction_is_where_the_mood_is_heading_not_how_low_it_is() -> None:
    # A customer who has been unhappy all along, and still is, is not "getting worse".
    assert direction([-0.6, -0.6, -0.6, -0.6]) == "steady"
    assert direction([0.2, 0.1, 0.3, -0.3, -0.4]) == "worsening"
    assert direction([-0.6, -0.5, -0.7, -0.1, 0.1]) == "improving"
    assert direction([-0.6, 0.5]) == "improving"  # the second turn against the first
    assert direction([0.0, 0.1]) == "steady" and direction([-0.5]) == "steady"
    assert direction([]) == "steady"


def test_the_tracker_states_carry_the_direction() -> None:
    tracker = CustomerStateTracker()
    states = [
        tracker.update(t_end=float(i), duration_s=2.0, sentiment=sent(label, 0.9, v), prosody=None)
        for i, (label, v) in enumerate([("neutral", 0.1), ("neutral", 0.0), ("frustrated", -0.6)])
    ]
    assert [s.direction for s in states] == ["steady", "steady", "worsening"]
    assert states[-1].as_dict()["trend"]["direction"] == "worsening"


def test_arc_change_is_the_whole_call() -> None:
    assert arc_change([[0, -0.5], [1, -0.4], [2, 0.3], [3, 0.5]]) == "better"
    assert arc_change([[0, 0.5], [1, -0.5]]) == "worse"
    assert arc_change([[0, 0.1], [1, 0.12]]) == "same"
    assert arc_change([(0.0, 0.4), (1.0, 0.4), (2.0, -0.2)]) == "worse"  # tuples as built live
    assert arc_change([[0, 0.1]]) is None and arc_change(None) is None
    assert arc_change([[0, None], [1, "x"]]) is None
