"""Telling the agent's voice coming back on the customer's line from the customer speaking."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from audio.echo import FRAME_S, MAX_LAG_S, MIN_FRAMES, echo_match

RATE = 16_000


def speech_like(seconds: float, seed: int) -> np.ndarray:
    """Noise with a syllable-rate loudness envelope (8 steps a second), as speech has."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    steps = np.abs(rng.standard_normal(int(seconds * 8) + 1)) + 0.05
    envelope = np.repeat(steps, RATE // 8)[:n]
    return (rng.standard_normal(n) * envelope * 0.2).astype(np.float32)


def hiss(n: int, seed: int = 9) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * 1e-4).astype(np.float32)


FAR = speech_like(3.0 + MAX_LAG_S, seed=2)
LEAD = int(MAX_LAG_S * RATE)
N = 3 * RATE


def echo_of_far(delay_s: float, quieter_db: float) -> np.ndarray:
    start = LEAD - int(round(delay_s * RATE))
    return FAR[start : start + N] * np.float32(10 ** (-quieter_db / 20)) + hiss(N)


@settings(max_examples=40, deadline=None)
@given(
    st.floats(min_value=0.0, max_value=MAX_LAG_S),
    st.floats(min_value=8.0, max_value=45.0),
)
def test_a_delayed_quieter_copy_of_the_far_end_is_echo(delay_s: float, quieter_db: float) -> None:
    match = echo_match(echo_of_far(delay_s, quieter_db), FAR, RATE, lead_s=MAX_LAG_S)
    assert match is not None and match.is_echo
    assert abs(match.lag_s - delay_s) <= FRAME_S
    assert abs(match.quieter_db - quieter_db) < 1.0


def test_the_customer_speaking_is_not_echo() -> None:
    own = speech_like(3.0, seed=5)
    alone = echo_match(own + hiss(N), hiss(len(FAR), seed=3), RATE, lead_s=MAX_LAG_S)
    over = echo_match(own + echo_of_far(0.06, 30), FAR, RATE, lead_s=MAX_LAG_S)  # double talk
    quiet = echo_match(own * 0.2, FAR, RATE, lead_s=MAX_LAG_S)  # softly, under a loud agent
    for match in (alone, over, quiet):
        assert match is not None and not match.is_echo
    assert quiet is not None and quiet.quieter_db > 6  # quieter, yet following its own words


def test_as_loud_as_the_far_end_is_not_echo() -> None:
    """A copy at the far end's level is a person repeating, or a bridged line: not dropped."""
    match = echo_match(echo_of_far(0.05, 0.0), FAR, RATE, lead_s=MAX_LAG_S)
    assert match is not None and match.correlation > 0.9 and not match.is_echo


def test_too_little_audio_or_far_end_tells_nothing() -> None:
    short = int((MIN_FRAMES - 1) * FRAME_S * RATE)
    assert echo_match(echo_of_far(0.05, 20)[:short], FAR, RATE, lead_s=MAX_LAG_S) is None
    # The far end has not arrived as far as the near end: compared over what both cover.
    partly = echo_match(echo_of_far(0.05, 20), FAR[: LEAD + RATE], RATE, lead_s=MAX_LAG_S)
    assert partly is not None and partly.is_echo
    assert echo_match(echo_of_far(0.05, 20), FAR[: LEAD + 100], RATE, lead_s=MAX_LAG_S) is None
