"""Initial call-history schema: calls, utterances, cues, cue feedback, escalations, summaries.

Revision ID: 0001_initial
Revises:
Create Date: 2025-01-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0001_initial"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the model types: a migration must not change when the models do.
JSON = sa.JSON().with_variant(JSONB(), "postgresql")
TIMESTAMPTZ = sa.DateTime(timezone=True)  # the DDL of coach.store.models.UTCDateTime


def _call_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["call_id"], ["calls.call_id"], name=f"fk_{table}_call_id_calls", ondelete="CASCADE"
    )


def upgrade() -> None:
    op.create_table(
        "calls",
        sa.Column("call_id", sa.Text(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("agent_id", sa.Text(), nullable=True),
        sa.Column("customer_id", sa.Text(), nullable=True),
        sa.Column("channels", JSON, nullable=False),
        sa.Column("meta", JSON, nullable=True),
        sa.Column("started_at", TIMESTAMPTZ, nullable=False),
        sa.Column("ended_at", TIMESTAMPTZ, nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.Column("end_reason", sa.Text(), nullable=True),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.Column("outcome_by", sa.Text(), nullable=True),
        sa.Column("outcome_at", TIMESTAMPTZ, nullable=True),
        sa.PrimaryKeyConstraint("call_id", name="pk_calls"),
    )
    op.create_index("ix_calls_started_at", "calls", ["started_at"])
    op.create_index("ix_calls_agent_id_started_at", "calls", ["agent_id", "started_at"])
    op.create_index("ix_calls_customer_id_started_at", "calls", ["customer_id", "started_at"])

    op.create_table(
        "utterances",
        sa.Column("call_id", sa.Text(), nullable=False),
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("speaker", sa.Text(), nullable=False),
        sa.Column("t_start", sa.Float(), nullable=False),
        sa.Column("t_end", sa.Float(), nullable=False),
        sa.Column("t_emit", sa.Float(), nullable=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("words", JSON, nullable=False),
        sa.Column("sentiment", JSON, nullable=True),
        sa.Column("prosody", JSON, nullable=True),
        _call_fk("utterances"),
        sa.PrimaryKeyConstraint("call_id", "seq", name="pk_utterances"),
    )

    op.create_table(
        "cues",
        sa.Column("call_id", sa.Text(), nullable=False),
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("cue", sa.Text(), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("advice", sa.Text(), nullable=False),
        sa.Column("why", sa.Text(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("evidence", JSON, nullable=True),
        sa.Column("t_emit", sa.Float(), nullable=True),
        _call_fk("cues"),
        sa.PrimaryKeyConstraint("call_id", "seq", name="pk_cues"),
    )
    op.create_index("ix_cues_cue", "cues", ["cue"])

    op.create_table(
        "cue_feedback",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("call_id", sa.Text(), nullable=False),
        sa.Column("cue_seq", sa.Integer(), nullable=False),
        sa.Column("cue", sa.Text(), nullable=False),
        sa.Column("verdict", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("at", TIMESTAMPTZ, nullable=False),
        sa.CheckConstraint(
            "verdict IN ('helpful', 'not_helpful', 'dismissed')", name="ck_cue_feedback_verdict"
        ),
        sa.ForeignKeyConstraint(
            ["call_id", "cue_seq"],
            ["cues.call_id", "cues.seq"],
            name="fk_cue_feedback_call_id_cues",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_cue_feedback"),
        sa.UniqueConstraint(
            "call_id", "cue_seq", "user_id", name="uq_cue_feedback_call_id_cue_seq_user_id"
        ),
    )

    op.create_table(
        "escalations",
        sa.Column("call_id", sa.Text(), nullable=False),
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("urgency", sa.Text(), nullable=False),
        sa.Column("summary", JSON, nullable=True),
        sa.Column("context", JSON, nullable=True),
        sa.Column("t_emit", sa.Float(), nullable=True),
        sa.Column("acknowledged_by", sa.Text(), nullable=True),
        sa.Column("acknowledged_at", TIMESTAMPTZ, nullable=True),
        _call_fk("escalations"),
        sa.PrimaryKeyConstraint("call_id", "seq", name="pk_escalations"),
    )

    op.create_table(
        "summaries",
        sa.Column("call_id", sa.Text(), nullable=False),
        sa.Column("summary", JSON, nullable=True),
        sa.Column("metrics", JSON, nullable=True),
        sa.Column("metrics_seq", sa.Integer(), nullable=True),
        _call_fk("summaries"),
        sa.PrimaryKeyConstraint("call_id", name="pk_summaries"),
    )


def downgrade() -> None:
    op.drop_table("summaries")
    op.drop_table("escalations")
    op.drop_table("cue_feedback")
    op.drop_index("ix_cues_cue", table_name="cues")
    op.drop_table("cues")
    op.drop_table("utterances")
    op.drop_index("ix_calls_customer_id_started_at", table_name="calls")
    op.drop_index("ix_calls_agent_id_started_at", table_name="calls")
    op.drop_index("ix_calls_started_at", table_name="calls")
    op.drop_table("calls")
