"""Timing cues: dead air, the agent talking over the customer, the agent speaking too fast,
and a lopsided talk ratio.

They run on every tick of call audio (a few times a second), before any transcript exists,
so dead air is flagged the moment the silence crosses its threshold rather than when the
next utterance is transcribed. Pace needs each utterance's syllable count, so it runs on
agent transcripts instead (`agent_pace`). Intervals are VAD-endpointed (`start`, `end`) in call
seconds; an open utterance is passed with `end = now`. Pure functions plus a tiny amount of
per-call state (which silence or interruption already earned a cue).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from coach.cues.playbook import CueSpec
from coach.signals.dynamics import Interval, clip, merge, total


@dataclass(frozen=True, slots=True)
class Timeline:
    """Both parties' speech so far, at call time `now`."""

    now: float
    customer: Sequence[Interval]
    agent: Sequence[Interval]
    customer_open_since: float | None = None
    agent_open_since: float | None = None


@dataclass(frozen=True, slots=True)
class TimingHit:
    cue: str
    t_start: float
    t_end: float
    why: str
    key: float
    """Identifies the occurrence (silence start, agent turn start) so it fires only once."""


def dead_air(tl: Timeline, *, silence_s: float, min_call_s: float) -> TimingHit | None:
    if tl.customer_open_since is not None or tl.agent_open_since is not None:
        return None
    speech = merge([*tl.customer, *tl.agent])
    if not speech or tl.now < min_call_s:
        return None  # no one has spoken yet: ringing or hold music, not dead air
    last_end = speech[-1][1]
    silence = tl.now - last_end
    if silence < silence_s:
        return None
    return TimingHit(
        "dead_air", last_end, tl.now, f"no one has spoken for {silence:.0f} s", key=last_end
    )


def _speaking_at(intervals: Sequence[Interval], t: float, slack: float) -> bool:
    return any(a - slack <= t <= b + slack for a, b in intervals)


def overtalk(tl: Timeline, *, overlap_s: float, interrupt_window_s: float) -> TimingHit | None:
    """The agent started while the customer was talking and both went on for `overlap_s`."""
    turns = list(tl.agent[-3:])
    if tl.agent_open_since is not None:
        turns.append((tl.agent_open_since, tl.now))
    for a0, a1 in reversed(turns):
        if tl.now - a1 > 1.0:
            continue
        customer = [*tl.customer]
        if tl.customer_open_since is not None:
            customer.append((tl.customer_open_since, tl.now))
        # Started inside a customer utterance, not just after it: an interruption.
        if not any(c0 + interrupt_window_s < a0 < c1 for c0, c1 in customer):
            continue
        both = total(clip(customer, a0, a1))
        if both >= overlap_s:
            return TimingHit(
                "overtalk",
                a0,
                a0 + both,
                f"agent started talking while the customer spoke; {both:.1f} s of overlap",
                key=a0,
            )
    return None


@dataclass(frozen=True, slots=True)
class Spoken:
    """One utterance's pace: syllables estimated from its audio (prosody.speaking_rate)."""

    t_start: float
    t_end: float
    syllables: float
    speech_s: float


def pace(utterances: Sequence[Spoken], t0: float, t1: float) -> tuple[float | None, float]:
    """(syllables per second of speech, seconds of speech) of utterances ending in [t0, t1]."""
    inside = [u for u in utterances if t0 <= u.t_end <= t1]
    speech = sum(u.speech_s for u in inside)
    return (sum(u.syllables for u in inside) / speech if speech > 0 else None), speech


RATED_S = 1.5
"""An utterance this long or longer has a pace of its own; a shorter one ("Okay.", a piece the
VAD cut off) is too short to read alone and only counts toward the stretch around it."""


def agent_pace(
    agent: Sequence[Spoken],
    customer: Sequence[Spoken],
    now: float,
    *,
    syllables_per_s: float,
    min_speech_s: float,
    window_s: float,
    vs_customer: float = 0.0,
) -> TimingHit | None:
    """Sustained fast agent speech, and (with `vs_customer`) faster than this caller talks.

    Pace is syllables per second of speech (audio/prosody.py `speaking_rate`), not words:
    ASR drops words exactly when speech is rushed. The customer's own pace over the call is
    the best measure of what they can follow, so a fast-talking caller raises the bar.
    """
    theirs, their_speech = pace(customer, 0.0, now)
    # The bar this caller sets: a fast talker follows faster speech (the `why` names it, so
    # it must be the bar applied, not the playbook's floor).
    bar = syllables_per_s
    if vs_customer and theirs is not None and their_speech >= 3.0:
        bar = max(bar, vs_customer * theirs)
    # The agent's latest stretch of rushed speech: utterances newest first (within
    # `window_s`) until `min_speech_s` of speech, stopping at one spoken at a comfortable pace.
    # A rushed explanation after a calm greeting is measured on its own, neither averaged
    # with the greeting into a pace nobody spoke at nor carried over the bar by it: 6 s of
    # rushing plus a 4 s greeting is not 8 s of rushing.
    recent: list[Spoken] = []
    speech = 0.0
    for u in reversed([u for u in agent if now - window_s <= u.t_end <= now]):
        if u.speech_s >= RATED_S and u.syllables < bar * u.speech_s:
            break  # the agent slowed down: the stretch starts after this utterance
        recent.insert(0, u)
        speech += u.speech_s
        if speech >= min_speech_s:
            break
    if speech < min_speech_s or speech <= 0:
        return None
    rate = sum(u.syllables for u in recent) / speech
    if rate < bar:
        return None
    versus = f", the customer {theirs:.1f}" if theirs is not None else ""
    return TimingHit(
        "agent_pace_fast",
        recent[0].t_start,
        recent[-1].t_end,
        f"agent at {rate:.1f} syllables/s over the last {speech:.0f} s of speech{versus} "
        f"(comfortable: under {bar:.1f})",
        key=recent[0].t_start,
    )


def talk_ratio(
    tl: Timeline, *, agent_share: float, window_s: float, min_speech_s: float
) -> TimingHit | None:
    t0 = tl.now - window_s
    a, c = total(clip(tl.agent, t0, tl.now)), total(clip(tl.customer, t0, tl.now))
    if a + c < min_speech_s or a / (a + c) < agent_share:
        return None
    return TimingHit(
        "talk_ratio",
        max(0.0, t0),
        tl.now,
        f"agent spoke {a / (a + c):.0%} of the last {window_s:.0f} s",
        key=t0,
    )


@dataclass
class TimingCues:
    """Per call: runs each enabled timing detector, once per occurrence."""

    specs: dict[str, CueSpec]
    _fired: dict[str, set[float]] = field(default_factory=dict)

    def check(self, tl: Timeline) -> list[tuple[str, TimingHit]]:
        hits = []
        for cue_id, spec in self.specs.items():
            p = spec.params
            hit: TimingHit | None
            match spec.detector:
                case "dead_air":
                    hit = dead_air(
                        tl, silence_s=p.get("silence_s", 8.0), min_call_s=p.get("min_call_s", 5.0)
                    )
                case "overtalk":
                    hit = overtalk(
                        tl,
                        overlap_s=p.get("overlap_s", 2.0),
                        interrupt_window_s=p.get("interrupt_window_s", 0.3),
                    )
                case "talk_ratio":
                    hit = talk_ratio(
                        tl,
                        agent_share=p.get("agent_share", 0.8),
                        window_s=p.get("window_s", 120.0),
                        min_speech_s=p.get("min_speech_s", 60.0),
                    )
                case _:
                    hit = None
            if hit is None:
                continue
            seen = self._fired.setdefault(cue_id, set())
            if hit.key in seen:
                continue
            seen.add(hit.key)
            hits.append((cue_id, hit))
        return hits
