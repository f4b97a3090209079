"""What the store hands out: plain frozen dataclasses, detached from any database session.

Readers (the history API, the repeat-contact cue) get values, never ORM objects, so nothing
lazy-loads after its session closed and callers cannot write back by accident.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeAlias, get_args

from coach.store.models import Call, CueFeedback, CueRow, Escalation, MissedCue, Utterance

Verdict: TypeAlias = Literal["helpful", "not_helpful", "dismissed"]
VERDICTS: tuple[Verdict, ...] = get_args(Verdict)


class StoreUnavailable(Exception):
    """The database did not answer (down, refusing connections, timed out)."""


class NotFound(LookupError):
    """No such call, cue or escalation."""


class Refused(ValueError):
    """The database answered and refused the data (a constraint, a value out of range):
    retrying the same data can never succeed, unlike after StoreUnavailable."""


@dataclass(frozen=True, slots=True)
class CallRecord:
    call_id: str
    source: str
    agent_id: str | None
    customer_id: str | None
    channels: list[str]
    meta: dict[str, Any] | None
    started_at: datetime
    ended_at: datetime | None
    duration_s: float | None
    end_reason: str | None
    outcome: str | None
    outcome_by: str | None
    outcome_at: datetime | None
    last_activity: datetime | None = None
    """When the store last received an event of this call (None: not since migration 0003)."""

    @classmethod
    def of(cls, row: Call) -> CallRecord:
        return cls(
            call_id=row.call_id,
            source=row.source,
            agent_id=row.agent_id,
            customer_id=row.customer_id,
            channels=list(row.channels or []),
            meta=row.meta,
            started_at=row.started_at,
            ended_at=row.ended_at,
            duration_s=row.duration_s,
            end_reason=row.end_reason,
            outcome=row.outcome,
            outcome_by=row.outcome_by,
            outcome_at=row.outcome_at,
            last_activity=row.last_activity,
        )

    @property
    def access_meta(self) -> dict[str, object]:
        """What `may_view_call` looks at, in the shape live sessions use."""
        return {"agent_id": self.agent_id, "customer_id": self.customer_id}


@dataclass(frozen=True, slots=True)
class UtteranceRecord:
    seq: int
    speaker: str
    t_start: float
    t_end: float
    t_emit: float | None
    text: str
    words: list[dict[str, Any]]
    sentiment: dict[str, Any] | None
    prosody: dict[str, Any] | None

    @classmethod
    def of(cls, row: Utterance) -> UtteranceRecord:
        return cls(
            seq=row.seq,
            speaker=row.speaker,
            t_start=row.t_start,
            t_end=row.t_end,
            t_emit=row.t_emit,
            text=row.text,
            words=list(row.words or []),
            sentiment=row.sentiment,
            prosody=row.prosody,
        )


@dataclass(frozen=True, slots=True)
class FeedbackRecord:
    call_id: str
    cue_seq: int
    cue: str
    verdict: str
    user: str
    at: datetime

    @classmethod
    def of(cls, row: CueFeedback) -> FeedbackRecord:
        return cls(
            call_id=row.call_id,
            cue_seq=row.cue_seq,
            cue=row.cue,
            verdict=row.verdict,
            user=row.user_id,
            at=row.at,
        )


@dataclass(frozen=True, slots=True)
class MissedCueRecord:
    """A report that a customer utterance should have shown `cue` (see models.MissedCue)."""

    call_id: str
    utterance_seq: int
    cue: str
    text: str
    """The utterance's stored, redacted text."""
    user: str
    at: datetime

    @classmethod
    def of(cls, row: MissedCue, text: str) -> MissedCueRecord:
        return cls(
            call_id=row.call_id,
            utterance_seq=row.utterance_seq,
            cue=row.cue,
            text=text,
            user=row.user_id,
            at=row.at,
        )


@dataclass(frozen=True, slots=True)
class RatedCueRecord:
    """A shown cue with the words it answered and who rated it which way."""

    call_id: str
    cue_seq: int
    cue: str
    text: str
    """The cue's evidence text (redacted): the customer's words it matched."""
    verdicts: dict[str, str]
    """user -> verdict"""


@dataclass(frozen=True, slots=True)
class CueRecord:
    seq: int
    cue: str
    title: str
    advice: str
    why: str
    priority: int
    evidence: dict[str, Any] | None
    t_emit: float | None
    feedback: list[FeedbackRecord] = field(default_factory=list)

    @classmethod
    def of(cls, row: CueRow, feedback: list[FeedbackRecord]) -> CueRecord:
        return cls(
            seq=row.seq,
            cue=row.cue,
            title=row.title,
            advice=row.advice,
            why=row.why,
            priority=row.priority,
            evidence=row.evidence,
            t_emit=row.t_emit,
            feedback=feedback,
        )


@dataclass(frozen=True, slots=True)
class EscalationRecord:
    call_id: str
    seq: int
    reason: str
    urgency: str
    summary: Any
    context: dict[str, Any] | None
    t_emit: float | None
    acknowledged_by: str | None
    acknowledged_at: datetime | None

    @classmethod
    def of(cls, row: Escalation) -> EscalationRecord:
        return cls(
            call_id=row.call_id,
            seq=row.seq,
            reason=row.reason,
            urgency=row.urgency,
            summary=row.summary,
            context=row.context,
            t_emit=row.t_emit,
            acknowledged_by=row.acknowledged_by,
            acknowledged_at=row.acknowledged_at,
        )


@dataclass(frozen=True, slots=True)
class CallDetail:
    """One stored call: who, when, how it ended, and everything said and suggested in it."""

    call: CallRecord
    transcript: list[UtteranceRecord]
    cues: list[CueRecord]
    escalations: list[EscalationRecord]
    summary: dict[str, Any] | None
    metrics: dict[str, Any] | None
    missed_cues: list[MissedCueRecord] = field(default_factory=list)
    """Cues people said this call should have shown, oldest first."""
    metrics_seq: int | None = None
    """The `seq` of the metrics event `metrics` was (the call's last one)."""


@dataclass(frozen=True, slots=True)
class CustomerCall:
    """A previous call of a customer, as a repeat-contact cue or a supervisor needs it."""

    call_id: str
    agent_id: str | None
    started_at: datetime
    ended_at: datetime | None
    duration_s: float | None
    end_reason: str | None
    outcome: str | None
    cue_counts: dict[str, int]
    escalations: int
