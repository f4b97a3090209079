"""Call history: redacted transcripts, cues and their feedback, missed-cue reports,
escalations and outcomes.

SQLite in `COACH_DATA_DIR/coach.db` by default, PostgreSQL when `COACH_DATABASE_URL` is set,
with one Alembic history for both. `StoreService` wires it into the application: a bus
listener records every call (spooling to disk while the database is away), `Store` answers
the history API (`coach.store.api.router`) and the repeat-contact lookups.
"""

from __future__ import annotations

from coach.store.db import downgrade, migrate, resolve_url
from coach.store.records import (
    CallDetail,
    CallRecord,
    CueRecord,
    CustomerCall,
    EscalationRecord,
    FeedbackRecord,
    MissedCueRecord,
    NotFound,
    RatedCueRecord,
    Refused,
    StoreUnavailable,
    UtteranceRecord,
)
from coach.store.retention import RetentionTask
from coach.store.service import StoreConfig, StoreService
from coach.store.spool import Spool
from coach.store.store import Store
from coach.store.writer import StoreWriter

__all__ = [
    "CallDetail",
    "CallRecord",
    "CueRecord",
    "CustomerCall",
    "EscalationRecord",
    "FeedbackRecord",
    "MissedCueRecord",
    "NotFound",
    "RatedCueRecord",
    "Refused",
    "RetentionTask",
    "Spool",
    "Store",
    "StoreConfig",
    "StoreService",
    "StoreUnavailable",
    "StoreWriter",
    "UtteranceRecord",
    "downgrade",
    "migrate",
    "resolve_url",
]
