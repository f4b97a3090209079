"""Missed-cue reports: a person says a customer utterance should have shown a cue.

Revision ID: 0002_missed_cues
Revises: 0001_initial
Create Date: 2026-12-04 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_missed_cues"
down_revision: str | Sequence[str] | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMPTZ = sa.DateTime(timezone=True)  # the DDL of coach.store.models.UTCDateTime


def upgrade() -> None:
    op.create_table(
        "missed_cues",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("call_id", sa.Text(), nullable=False),
        sa.Column("utterance_seq", sa.Integer(), nullable=False),
        sa.Column("cue", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("at", TIMESTAMPTZ, nullable=False),
        sa.ForeignKeyConstraint(
            ["call_id", "utterance_seq"],
            ["utterances.call_id", "utterances.seq"],
            name="fk_missed_cues_call_id_utterances",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_missed_cues"),
        sa.UniqueConstraint(
            "call_id",
            "utterance_seq",
            "cue",
            "user_id",
            name="uq_missed_cues_call_id_utterance_seq_cue_user_id",
        ),
    )
    op.create_index("ix_missed_cues_cue", "missed_cues", ["cue"])


def downgrade() -> None:
    op.drop_index("ix_missed_cues_cue", table_name="missed_cues")
    op.drop_table("missed_cues")
