"""An index on when calls ended: a restart asks which calls ended in the last hour.

At start-up an instance without Redis draws on its wall the calls a stop cut off or that
ended with an escalation nobody acknowledged (coach/store/recovered.py `ended_for_the_wall`);
without this index that question reads the whole calls table, once per start.

Revision ID: 0005_call_ended_at_index
Revises: 0004_redact_outcomes
Create Date: 2026-12-05 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005_call_ended_at_index"
down_revision: str | Sequence[str] | None = "0004_redact_outcomes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_calls_ended_at", "calls", ["ended_at"])


def downgrade() -> None:
    op.drop_index("ix_calls_ended_at", table_name="calls")
