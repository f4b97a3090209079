"""Fused customer state: words and voice weighed by how much each can be trusted.

Text emotion (from the ONNX classifier) says what the customer means; prosody relative to
the caller's own baseline says how they say it. Neither alone is enough: "fine." said in a
flat, slow, quiet voice is resignation, and polite words in a raised, fast, loud voice are
anger held back. Each source gets a weight from its own confidence (text: the classifier's
probability; voice: how much speech the utterance had and whether pitch was found), and the
state carries a smoothed trend so one odd utterance does not swing the panel.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

# What each text class implies about arousal, on the same 0..1 scale as the voice score.
CLASS_AROUSAL = {
    "frustrated": 0.8,
    "anxious": 0.65,
    "confused": 0.5,
    "positive": 0.55,
    "neutral": 0.45,
    "sad": 0.2,
}
VOICE_HIGH = 0.8
VOICE_LOW = 0.2

# One verdict per question, wherever it is shown (an outside audit found the summary, the
# analytics and the wall tile each judging a call their own way, and disagreeing):
# - where the mood is heading now (`direction`): the live panel, the wall tile, the handoff;
# - how the call ended against how it started (`arc_change`): the post-call summary, the
#   analytics and the tile of an ended call.
Direction: TypeAlias = Literal["worsening", "improving", "steady"]
Change: TypeAlias = Literal["better", "worse", "same"]
DIRECTION_RECENT = 2
"""Turns that say where the mood is now, compared with the (up to 3) turns before them."""
DIRECTION_MARGIN = 0.2
"""Valence difference (on -1..1) the recent turns must move by to count as a direction."""
ARC_POINTS = 3
"""Arc points averaged at each end of a call."""
CHANGE_MARGIN = 0.1
"""Valence difference (on -1..1) below which a call counts as unchanged."""


def direction(valences: Sequence[float]) -> Direction:
    """Where the customer's mood is heading: the last two turns against the (up to) three
    before them; on a call's second turn, that turn against the first."""
    if len(valences) < 2:
        return "steady"
    k = min(DIRECTION_RECENT, len(valences) - 1)
    recent = valences[-k:]
    earlier = valences[:-k][-3:]
    now, before = sum(recent) / len(recent), sum(earlier) / len(earlier)
    if now < before - DIRECTION_MARGIN:
        return "worsening"
    if now > before + DIRECTION_MARGIN:
        return "improving"
    return "steady"


def arc_change(arc: Any) -> Change | None:
    """How a call ended against how it started, from its arc [[t, valence], ...] (the mean of
    up to three points at each end); None when it has fewer than two points."""
    if not isinstance(arc, list | tuple):
        return None
    values = [
        float(p[1])
        for p in arc
        if isinstance(p, list | tuple) and len(p) >= 2 and isinstance(p[1], int | float)
    ]
    if len(values) < 2:
        return None
    k = min(ARC_POINTS, len(values) // 2)
    start, end = sum(values[:k]) / k, sum(values[-k:]) / k
    if end - start > CHANGE_MARGIN:
        return "better"
    if start - end > CHANGE_MARGIN:
        return "worse"
    return "same"


@dataclass(frozen=True, slots=True)
class CustomerState:
    valence: float
    arousal: float
    emotion: str
    confidence: float
    trend_valence: float
    trend_arousal: float
    why: tuple[str, ...]
    direction: Direction = "steady"

    def as_dict(self) -> dict[str, Any]:
        return {
            "valence": round(self.valence, 3),
            "arousal": round(self.arousal, 3),
            "emotion": self.emotion,
            "confidence": round(self.confidence, 3),
            "trend": {
                "valence": round(self.trend_valence, 3),
                "arousal": round(self.trend_arousal, 3),
                "direction": self.direction,
            },
            "why": list(self.why),
        }


def voice_weight(prosody: Mapping[str, Any] | None, duration_s: float) -> float:
    """Trust in the voice score: none without pitch, little for a one-word reply."""
    if not prosody or prosody.get("f0_hz") is None:
        return 0.0
    return min(0.7, 0.25 + 0.15 * max(0.0, duration_s - 0.5))


def fuse(
    *,
    sentiment: Mapping[str, Any] | None,
    prosody: Mapping[str, Any] | None,
    duration_s: float,
) -> tuple[float, float, str, float, list[str]]:
    """One utterance: (valence, arousal, emotion, confidence, why)."""
    label = str(sentiment["label"]) if sentiment else "neutral"
    text_conf = (
        float(sentiment.get("confidence", max(sentiment.get("scores", {0: 0.5}).values())))
        if sentiment
        else 0.0
    )
    valence = float(sentiment["valence"]) if sentiment else 0.0
    voice = float(prosody["arousal"]) if prosody and prosody.get("arousal") is not None else 0.5
    wv = voice_weight(prosody, duration_s)
    wt = max(0.05, text_conf)
    arousal = (wv * voice + wt * CLASS_AROUSAL.get(label, 0.45)) / (wv + wt)
    why = [f"words: {label} ({text_conf:.0%})"] if sentiment else []
    emotion, confidence = label, text_conf
    if (
        wv > 0
        and voice >= VOICE_HIGH
        and label in ("neutral", "positive", "confused")
        and text_conf < 0.8
    ):
        # Flat or polite words in a raised voice: the voice carries the feeling.
        emotion, confidence = "frustrated", wv * voice
        valence = min(valence, -0.2 - 0.4 * (voice - VOICE_HIGH) / (1 - VOICE_HIGH))
        why.append("voice raised relative to this caller's baseline")
    elif wv > 0 and voice <= VOICE_LOW and label in ("neutral", "positive") and text_conf < 0.8:
        emotion, confidence = "sad", wv * (1 - voice)
        valence = min(valence, -0.2)
        why.append("voice low, slow and quiet relative to this caller's baseline")
    for item in (prosody or {}).get("why", []) or []:
        why.append(f"voice: {item}")
    return valence, arousal, emotion, confidence, why


@dataclass
class CustomerStateTracker:
    """Per call: fuses each customer utterance and keeps the smoothed trend and the arc."""

    alpha: float = 0.4
    arc: list[tuple[float, float, float]] = field(default_factory=list)
    _trend_v: float | None = None
    _trend_a: float | None = None

    @property
    def trend(self) -> tuple[float, float] | None:
        """The smoothed (valence, arousal), None before the first utterance."""
        if self._trend_v is None or self._trend_a is None:
            return None
        return self._trend_v, self._trend_a

    def resume(
        self, *, arc: list[tuple[float, float, float]], trend: tuple[float, float] | None
    ) -> None:
        """Continue from the part of the call another instance ran (coach/recap.py): its
        arc comes first, and the trend goes on smoothing from where it was."""
        self.arc[:0] = arc
        if trend is not None and self._trend_v is None:
            self._trend_v, self._trend_a = trend

    def update(
        self,
        *,
        t_end: float,
        duration_s: float,
        sentiment: Mapping[str, Any] | None,
        prosody: Mapping[str, Any] | None,
    ) -> CustomerState:
        valence, arousal, emotion, confidence, why = fuse(
            sentiment=sentiment, prosody=prosody, duration_s=duration_s
        )
        # Weight the trend by confidence so an unsure utterance moves it less.
        a = self.alpha * (0.5 + 0.5 * min(1.0, confidence))
        self._trend_v = valence if self._trend_v is None else (1 - a) * self._trend_v + a * valence
        self._trend_a = arousal if self._trend_a is None else (1 - a) * self._trend_a + a * arousal
        self.arc.append((t_end, valence, arousal))
        return CustomerState(
            valence,
            arousal,
            emotion,
            confidence,
            self._trend_v,
            self._trend_a,
            tuple(why),
            direction([v for _, v, _ in self.arc]),
        )
