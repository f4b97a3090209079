"""Conversation dynamics from the speech intervals of both parties (pure functions).

Talk ratio and overtalk come from VAD-endpointed speech intervals, not from transcripts, so
they are available before ASR finishes and do not depend on ASR accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

Interval = tuple[float, float]


def clip(intervals: Sequence[Interval], t0: float, t1: float) -> list[Interval]:
    out = []
    for a, b in intervals:
        a2, b2 = max(a, t0), min(b, t1)
        if b2 > a2:
            out.append((a2, b2))
    return out


def merge(intervals: Sequence[Interval]) -> list[Interval]:
    out: list[Interval] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def total(intervals: Sequence[Interval]) -> float:
    return sum(b - a for a, b in merge(intervals))


def overlap(x: Sequence[Interval], y: Sequence[Interval]) -> float:
    mx, my = merge(x), merge(y)
    s, i, j = 0.0, 0, 0
    while i < len(mx) and j < len(my):
        a, b = max(mx[i][0], my[j][0]), min(mx[i][1], my[j][1])
        if b > a:
            s += b - a
        if mx[i][1] < my[j][1]:
            i += 1
        else:
            j += 1
    return s


@dataclass(frozen=True, slots=True)
class DynamicsSnapshot:
    talk_ratio: dict[str, float]
    overtalk_s: float
    silence_s: float
    """Current silence: time since anyone last spoke (0 while someone speaks)."""
    agent_wps: float | None


def snapshot(
    *,
    customer: Sequence[Interval],
    agent: Sequence[Interval],
    now_s: float,
    agent_words: Sequence[tuple[float, float]],
    pace_window_s: float = 30.0,
) -> DynamicsSnapshot:
    c, a = total(clip(customer, 0, now_s)), total(clip(agent, 0, now_s))
    talk = c + a
    ratio = (
        {"customer": c / talk, "agent": a / talk} if talk > 0 else {"customer": 0.0, "agent": 0.0}
    )
    both = merge([*clip(customer, 0, now_s), *clip(agent, 0, now_s)])
    last_speech = both[-1][1] if both else 0.0
    silence = max(0.0, now_s - last_speech)
    recent = [w for w in agent_words if w[0] >= now_s - pace_window_s]
    agent_time = total(clip(agent, now_s - pace_window_s, now_s))
    wps = len(recent) / agent_time if recent and agent_time >= 1.0 else None
    return DynamicsSnapshot(ratio, overlap(customer, agent), silence, wps)
