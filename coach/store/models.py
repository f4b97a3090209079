"""Tables of the call-history store, shared by SQLite and PostgreSQL.

Every row written from the event stream is keyed by `(call_id, seq)`, the per-call sequence
number the session stamps on each event, so replaying events after a partial failure (the
spool) rewrites nothing twice. Only portable column types are used so that one Alembic
history serves both databases; JSON becomes JSONB on PostgreSQL. Text columns hold redacted
text only: the writer redacts again before anything reaches these tables.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# none_as_null: a missing value is SQL NULL, not the JSON literal `null`.
JSONType = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both databases.

    PostgreSQL keeps `timestamptz`; SQLite has no time zones, so values are stored as naive
    UTC and made aware again when read, so comparisons and API output agree across backends.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = sa.MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


def _call_fk() -> sa.ForeignKey:
    return sa.ForeignKey("calls.call_id", ondelete="CASCADE")


class Call(Base):
    __tablename__ = "calls"
    __table_args__ = (
        sa.Index(None, "agent_id", "started_at"),
        sa.Index(None, "customer_id", "started_at"),
    )

    call_id: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    source: Mapped[str] = mapped_column(sa.Text, default="unknown")
    agent_id: Mapped[str | None] = mapped_column(sa.Text)
    customer_id: Mapped[str | None] = mapped_column(sa.Text)
    channels: Mapped[list[str]] = mapped_column(JSONType, default=list)
    meta: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    duration_s: Mapped[float | None] = mapped_column(sa.Float)
    end_reason: Mapped[str | None] = mapped_column(sa.Text)
    outcome: Mapped[str | None] = mapped_column(sa.Text)
    outcome_by: Mapped[str | None] = mapped_column(sa.Text)
    outcome_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_activity: Mapped[datetime | None] = mapped_column(UTCDateTime)
    """When the store last received one of the call's events (the latest of a batch): the
    orphan sweep never takes a call whose record is still being written for cut off."""


class Utterance(Base):
    __tablename__ = "utterances"

    call_id: Mapped[str] = mapped_column(sa.Text, _call_fk(), primary_key=True)
    seq: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    speaker: Mapped[str] = mapped_column(sa.Text)
    t_start: Mapped[float] = mapped_column(sa.Float)
    t_end: Mapped[float] = mapped_column(sa.Float)
    t_emit: Mapped[float | None] = mapped_column(sa.Float)
    text: Mapped[str] = mapped_column(sa.Text)
    words: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    sentiment: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    prosody: Mapped[dict[str, Any] | None] = mapped_column(JSONType)


class CueRow(Base):
    __tablename__ = "cues"

    call_id: Mapped[str] = mapped_column(sa.Text, _call_fk(), primary_key=True)
    seq: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    cue: Mapped[str] = mapped_column(sa.Text, index=True)
    title: Mapped[str] = mapped_column(sa.Text, default="")
    advice: Mapped[str] = mapped_column(sa.Text, default="")
    why: Mapped[str] = mapped_column(sa.Text, default="")
    priority: Mapped[int] = mapped_column(sa.Integer, default=3)
    evidence: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    t_emit: Mapped[float | None] = mapped_column(sa.Float)


class CueFeedback(Base):
    """One verdict per person per cue: posting again replaces the earlier verdict."""

    __tablename__ = "cue_feedback"
    __table_args__ = (
        sa.ForeignKeyConstraint(
            ["call_id", "cue_seq"], ["cues.call_id", "cues.seq"], ondelete="CASCADE"
        ),
        sa.UniqueConstraint("call_id", "cue_seq", "user_id"),
        sa.CheckConstraint("verdict IN ('helpful', 'not_helpful', 'dismissed')", name="verdict"),
    )

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    call_id: Mapped[str] = mapped_column(sa.Text)
    cue_seq: Mapped[int] = mapped_column(sa.Integer)
    cue: Mapped[str] = mapped_column(sa.Text)
    verdict: Mapped[str] = mapped_column(sa.Text)
    user_id: Mapped[str] = mapped_column(sa.Text)
    at: Mapped[datetime] = mapped_column(UTCDateTime)


class MissedCue(Base):
    """A person's report that a customer utterance should have shown a cue and did not.

    One report per person, utterance and cue. The utterance's stored (redacted) text is what
    `scripts/tune_playbook.py --missed` proposes as a new example of the cue."""

    __tablename__ = "missed_cues"
    __table_args__ = (
        sa.ForeignKeyConstraint(
            ["call_id", "utterance_seq"],
            ["utterances.call_id", "utterances.seq"],
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("call_id", "utterance_seq", "cue", "user_id"),
    )

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    call_id: Mapped[str] = mapped_column(sa.Text)
    utterance_seq: Mapped[int] = mapped_column(sa.Integer)
    cue: Mapped[str] = mapped_column(sa.Text, index=True)
    user_id: Mapped[str] = mapped_column(sa.Text)
    at: Mapped[datetime] = mapped_column(UTCDateTime)


class Escalation(Base):
    __tablename__ = "escalations"

    call_id: Mapped[str] = mapped_column(sa.Text, _call_fk(), primary_key=True)
    seq: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    reason: Mapped[str] = mapped_column(sa.Text)
    urgency: Mapped[str] = mapped_column(sa.Text)
    summary: Mapped[Any] = mapped_column(JSONType, nullable=True)
    context: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    t_emit: Mapped[float | None] = mapped_column(sa.Float)
    acknowledged_by: Mapped[str | None] = mapped_column(sa.Text)
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Summary(Base):
    """The call_end summary and the call's last metrics event (`metrics_seq` orders them)."""

    __tablename__ = "summaries"

    call_id: Mapped[str] = mapped_column(sa.Text, _call_fk(), primary_key=True)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    metrics_seq: Mapped[int | None] = mapped_column(sa.Integer)


def table_of(model: type[Base]) -> sa.Table:
    """The Core table behind a model (typed as a Table, which the ORM's stubs do not promise)."""
    tbl = model.__table__
    if not isinstance(tbl, sa.Table):
        raise TypeError(f"{model.__name__} is not mapped to a table")
    return tbl
