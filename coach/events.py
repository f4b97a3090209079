"""The event stream of CONTRACT.md: one dict per event, serialised as one JSON line.

Events are built here and nowhere else so that field names stay exactly as the contract
says. The session stamps `call_id`, `seq` and `t_emit` when it publishes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal, TypeAlias

from coach.messages import Speaker
from coach.signals.state import arc_change
from models.asr import Word

Event: TypeAlias = dict[str, Any]


# Every cue says what it is: a suggestion from a model, not an instruction (CUES.md).
AI_LABEL = "AI suggestion"

WRAP_UP_OUTCOMES = frozenset({"resolved", "callback scheduled", "escalated", "unresolved"})
"""The agent panel's wrap-up choices (web/common/callview.js). A repeat-contact hint names
these as they are, and coaching analytics count them; any other outcome is free text: not
copied into the next call, counted as "other"."""


def _r(x: float) -> float:
    return round(float(x), 3)


def call_start(
    *, source: str, channels: Iterable[str], meta: dict[str, Any] | None = None
) -> Event:
    ev: Event = {"type": "call_start", "source": source, "channels": list(channels)}
    if meta:
        ev["meta"] = meta
    return ev


def partial(*, speaker: Speaker, text: str, t_start: float, t_end: float) -> Event:
    return {
        "type": "partial",
        "speaker": speaker,
        "t_start": _r(t_start),
        "t_end": _r(t_end),
        "text": text,
    }


def transcript(
    *,
    speaker: Speaker,
    text: str,
    t_start: float,
    t_end: float,
    words: Iterable[Word],
    sentiment: dict[str, Any] | None = None,
    prosody: dict[str, Any] | None = None,
    utterance_id: int,
) -> Event:
    return {
        "type": "transcript",
        "speaker": speaker,
        "t_start": _r(t_start),
        "t_end": _r(t_end),
        "text": text,
        "words": [{"w": w.w, "t0": _r(w.t0), "t1": _r(w.t1), "p": _r(w.p)} for w in words],
        "sentiment": sentiment,
        "prosody": prosody,
        "utterance_id": utterance_id,
    }


def metrics(
    *,
    talk_ratio: dict[str, float],
    overtalk_s: float,
    silence_s: float,
    agent_wps: float | None,
    t_start: float,
    t_end: float,
) -> Event:
    return {
        "type": "metrics",
        "t_start": _r(t_start),
        "t_end": _r(t_end),
        "talk_ratio": {k: _r(v) for k, v in talk_ratio.items()},
        "overtalk_s": _r(overtalk_s),
        "silence_s": _r(silence_s),
        "agent_wps": None if agent_wps is None else _r(agent_wps),
    }


Urgency = Literal["low", "medium", "high", "critical"]
URGENCY_RANK: dict[str, int] = {"low": 0, "medium": 1, "high": 2, "critical": 3}
"""An escalation's urgencies (ARCHITECTURE.md), lowest first."""

EvidenceSource = Literal["words", "voice", "timing", "history", "trend"]
"""What raised a cue: the customer's words, their voice, conversation timing, the customer's
earlier calls, or a state sustained over several turns. Only words and voice point at words
of the line (`evidence.phrases`)."""


def cue(
    *,
    cue: str,
    title: str,
    advice: str,
    reasons: Iterable[str],
    priority: int,
    severity: str,
    speaker: Speaker | None,
    t_start: float,
    t_end: float,
    evidence_text: str,
    phrases: Iterable[str],
    source: EvidenceSource,
    utterance_id: int | None,
    expires_s: float,
    score: float,
    label: str,
) -> Event:
    """A coaching cue; `why` is the evidence in one line, `reasons` the same as a list."""
    reasons = list(reasons)
    ev: Event = {
        "type": "cue",
        "cue": cue,
        "title": title,
        "advice": advice,
        "why": "; ".join(reasons),
        "reasons": reasons,
        "priority": priority,
        "severity": severity,
        "label": label,
        "t_start": _r(t_start),
        "t_end": _r(t_end),
        "evidence": {
            "text": evidence_text,
            "t_start": _r(t_start),
            "t_end": _r(t_end),
            "utterance_id": utterance_id,
            "phrases": list(phrases),
            "source": source,
        },
        "expires_s": _r(expires_s),
        "score": _r(score),
    }
    if speaker is not None:
        ev["speaker"] = speaker
    return ev


def escalation(
    *,
    reason: str,
    urgency: str,
    summary: dict[str, Any],
    cue: str | None,
    t_start: float | None = None,
    t_end: float | None = None,
    detail: str = "",
) -> Event:
    ev: Event = {
        "type": "escalation",
        "reason": reason,
        "urgency": urgency,
        "cue": cue,
        "detail": detail,
        "summary": summary,
    }
    if t_start is not None and t_end is not None:
        ev["t_start"], ev["t_end"] = _r(t_start), _r(t_end)
    return ev


def call_end(
    *,
    duration_s: float,
    reason: str,
    arc: list[tuple[float, float]],
    cues: dict[str, int],
    extra: dict[str, Any] | None = None,
) -> Event:
    points = [[_r(t), _r(v)] for t, v in arc]
    summary = {"arc": points, "cues": cues, "change": arc_change(points), **(extra or {})}
    return {"type": "call_end", "duration_s": _r(duration_s), "reason": reason, "summary": summary}


def wall_time(value: Any) -> datetime | None:
    """A wall-clock time an event carries (`started_at`, `ended_at`: ISO 8601), else None.

    This server writes them with their zone; one without (an older or foreign writer) is
    taken as UTC, so that the wall and the store read the same instant from it.
    """
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def dumps(event: Event) -> str:
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"))
