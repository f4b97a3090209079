"""When a call's record was last written: the orphan sweep spares calls still being written.

An instance that cannot reach Redis keeps no owner key for its calls, so another instance's
sweep cannot tell its live calls from cut-off ones by Redis alone; the time the store last
received one of a call's events tells it (coach/store/recovered.py).

Revision ID: 0003_call_last_activity
Revises: 0002_missed_cues
Create Date: 2026-12-05 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_call_last_activity"
down_revision: str | Sequence[str] | None = "0002_missed_cues"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMPTZ = sa.DateTime(timezone=True)  # the DDL of coach.store.models.UTCDateTime


def upgrade() -> None:
    # NULL for calls stored before: the sweep then goes by their start alone, as before.
    with op.batch_alter_table("calls") as batch:
        batch.add_column(sa.Column("last_activity", TIMESTAMPTZ, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("calls") as batch:
        batch.drop_column("last_activity")
