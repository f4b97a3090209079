"""Redact the outcomes stored before the store redacted them.

A call's outcome is text a person types (PUT /api/calls/{id}/outcome); it used to be stored
verbatim, so a card or phone number typed into it was kept, shown to supervisors and quoted
by the next call's repeat-contact cue. The store now redacts it on write
(coach/store/store.py); this pass does the same to the outcomes already there.

Revision ID: 0004_redact_outcomes
Revises: 0003_call_last_activity
Create Date: 2026-12-05 03:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from coach.redaction import redact_text

revision: str = "0004_redact_outcomes"
down_revision: str | Sequence[str] | None = "0003_call_last_activity"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CALLS = sa.table("calls", sa.column("call_id", sa.Text), sa.column("outcome", sa.Text))


def upgrade() -> None:
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(_CALLS.c.call_id, _CALLS.c.outcome).where(_CALLS.c.outcome.is_not(None))
    )
    changed = [
        {"target": call_id, "redacted": redact_text(outcome)}
        for call_id, outcome in rows
        if redact_text(outcome) != outcome
    ]
    if changed:
        conn.execute(
            _CALLS.update()
            .where(_CALLS.c.call_id == sa.bindparam("target"))
            .values(outcome=sa.bindparam("redacted")),
            changed,
        )


def downgrade() -> None:
    pass  # what was redacted stays redacted
