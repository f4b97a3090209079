"""Is the customer's channel only carrying the agent's voice back (line echo)?

A phone line that leaks the agent's side into the customer's (a hybrid without a working echo
canceller, a speakerphone) makes the customer's channel say what the agent just said, quieter
and a little later. Transcribed as the customer's words it raises the customer's cues: an
outside audit mixed the agent's "how can I help?" into the customer's channel at -30 dB and
Whisper heard the customer say "How can I kill?", a crisis page; at -12 dB the echo also skewed
the caller's voice baseline into false frustration.

Echo is told by two things together: the near channel's loudness follows the far channel's,
frame by frame, at one small delay (the envelopes correlate), and it is quieter than the far
end. A customer talking over the agent (double talk) is as loud or louder and follows their
own words, not the agent's; a customer speaking alone has no far-end speech to follow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from audio.types import Samples

FRAME_S = 0.02
MAX_LAG_S = 0.3
"""The longest echo delay looked for: line and network echo paths are tens of milliseconds."""
MIN_CORRELATION = 0.8
"""How closely the near envelope must follow the far one (Pearson, over the utterance)."""
MIN_QUIETER_DB = 6.0
"""How much quieter than the far end the near speech must be: echo loses energy on its way
back (at least 6 dB even on a poor line); a person is not quieter than what they talk over."""
MIN_FRAMES = 25
"""Half a second of audio at least: a correlation over fewer frames means little."""
_FLOOR_DB = -80.0


@dataclass(frozen=True, slots=True)
class EchoMatch:
    correlation: float
    """Of the near envelope with the far one at `lag_s` (-1..1)."""
    lag_s: float
    quieter_db: float
    """How much quieter the near channel is than the far end over the utterance."""

    @property
    def is_echo(self) -> bool:
        return self.correlation >= MIN_CORRELATION and self.quieter_db >= MIN_QUIETER_DB


def envelope_db(x: Samples, rate: int) -> np.ndarray:
    """Frame energies in dB (20 ms frames), floored so that digital silence is finite."""
    n = int(round(FRAME_S * rate))
    frames = len(x) // n
    if frames == 0:
        return np.zeros(0, dtype=np.float64)
    power = np.mean(np.square(x[: frames * n].astype(np.float64)).reshape(frames, n), axis=1)
    return np.asarray(np.maximum(10.0 * np.log10(power + 1e-12), _FLOOR_DB), dtype=np.float64)


def echo_match(near: Samples, far: Samples, rate: int, *, lead_s: float) -> EchoMatch | None:
    """How much `near` looks like a delayed, quieter copy of `far`.

    `far` starts `lead_s` (0..MAX_LAG_S) before `near`; delays of 0..lead_s are tried over
    the stretch both cover (the far end may not have arrived as far as the near end: the
    parties' audio comes in separately). None when there is too little audio to tell.
    """
    far_env = envelope_db(far, rate)
    lead = int(round(lead_s / FRAME_S))
    near_env = envelope_db(near, rate)[: max(0, len(far_env) - lead)]
    frames = len(near_env)
    if frames < MIN_FRAMES:
        return None
    best: tuple[float, int] | None = None
    for lag in range(lead + 1):  # far frame (lead - lag) lines up with near frame 0
        start = lead - lag
        window = far_env[start : start + frames]
        if np.std(window) < 1e-6 or np.std(near_env) < 1e-6:
            continue
        corr = float(np.corrcoef(near_env, window)[0, 1])
        if best is None or corr > best[0]:
            best = (corr, lag)
    if best is None:
        return None
    corr, lag = best
    window = far_env[lead - lag : lead - lag + frames]
    quieter = _mean_db(window) - _mean_db(near_env)
    return EchoMatch(correlation=corr, lag_s=lag * FRAME_S, quieter_db=quieter)


def _mean_db(env: np.ndarray) -> float:
    """The level of a stretch of frames: the mean of their powers, in dB."""
    return float(10.0 * np.log10(np.mean(np.power(10.0, env / 10.0)) + 1e-12))
