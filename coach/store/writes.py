"""From bus events to rows: validation, redaction and idempotent batch upserts.

A batch of events becomes at most one statement per table, inside one transaction. Every
insert is `ON CONFLICT` on the row's natural key, `(call_id, seq)` for what happened during
the call, so the same event written twice (a spool replay after a half-finished flush)
leaves one row. A `calls` stub is inserted first for every call in the batch, so a transcript
whose `call_start` was lost (dropped from a full spool, writer attached mid-call) is still
stored rather than failing its foreign key forever.

Events on the call topic are already redacted; redacting again here is defence in depth,
because whatever reaches the database outlives the call.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, bindparam, func
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from coach.events import Event, wall_time
from coach.redaction import redact_text, redact_words
from coach.store.models import Call, CueRow, Escalation, Summary, Utterance, table_of

STORED_TYPES = frozenset(
    {"call_start", "transcript", "cue", "escalation", "metrics", "call_end", "agent_assigned"}
)
_ENVELOPE = frozenset({"type", "call_id", "seq", "t_emit"})
_ESCALATION_FIELDS = _ENVELOPE | {"reason", "urgency", "summary"}
_START_COLUMNS = ("source", "channels", "meta", "agent_id", "customer_id", "started_at")
_END_COLUMNS = ("ended_at", "duration_s", "end_reason")
_END_KEEPS = ("agent_id", "meta")
"""Columns a call_end sets only when it carries them."""


@dataclass(frozen=True, slots=True)
class Received:
    """An event as the writer took it off the bus, with the wall-clock time it arrived.

    Events carry call-audio time only; `at` dates the call (started_at, ended_at), and it
    travels with the event through the spool so a replay writes the original dates.
    """

    event: Event
    at: float

    def to_json(self) -> dict[str, Any]:
        return {"at": self.at, "event": self.event}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Received:
        event, at = data["event"], data["at"]
        if not isinstance(event, dict) or not isinstance(at, int | float):
            raise ValueError("not a spooled event")
        return cls(event=event, at=float(at))


def clean_json(value: Any) -> Any:
    """Redact every string inside a JSON value; drop NULs (PostgreSQL text refuses them)."""
    if isinstance(value, str):
        return redact_text(value.replace("\x00", ""))
    if isinstance(value, list | tuple):
        return [clean_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k).replace("\x00", ""): clean_json(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/Infinity and PostgreSQL rejects them
    return value


_IDENTIFIER_KEY = re.compile(r"(?:^|_)(?:id|sid)$|[a-z](?:Id|Sid)$")
"""Meta keys that name an identifier (`call_sid`, `conversation_id`, `streamSid`): stored
verbatim, or a Twilio CallSid with seven digits in a row would be stored as
"CA74772d66756c6c2d[NUMBER]" and no longer match the telephony's records (found by an audit)."""


def clean_meta(value: Any, key: str = "") -> Any:
    """A call's meta for the store: identifiers verbatim, every other string redacted."""
    if isinstance(value, str):
        text = value.replace("\x00", "")
        return text if _IDENTIFIER_KEY.search(key) else redact_text(text)
    if isinstance(value, list | tuple):
        return [clean_meta(v, key) for v in value]
    if isinstance(value, dict):
        return {str(k).replace("\x00", ""): clean_meta(v, str(k)) for k, v in value.items()}
    return clean_json(value)


def _text(value: Any, default: str = "") -> str:
    return default if value is None else str(value).replace("\x00", "")


def _opt_text(value: Any) -> str | None:
    return None if value is None else _text(value)


def _num(value: Any) -> float | None:
    if value is None:
        return None
    x = float(value)
    return x if math.isfinite(x) else None


_INT32 = 2**31 - 1


def _int(value: Any) -> int:
    """An integer that fits the INTEGER columns of both databases."""
    if isinstance(value, bool) or not isinstance(value, int) or not -_INT32 <= value <= _INT32:
        raise ValueError(f"not a 32-bit integer: {value!r}")
    return value


def _dt(at: float) -> datetime:
    return datetime.fromtimestamp(at, UTC)


@dataclass(slots=True)
class Rows:
    """One batch of events as rows per table, deduplicated on each table's key.

    PostgreSQL refuses an `ON CONFLICT DO UPDATE` that touches the same row twice in one
    statement, so each key appears once; for updates the later event wins.
    """

    stubs: dict[str, dict[str, Any]] = field(default_factory=dict)
    starts: dict[str, dict[str, Any]] = field(default_factory=dict)
    ends: dict[str, dict[str, Any]] = field(default_factory=dict)
    utterances: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    cues: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    escalations: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    assignments: dict[str, dict[str, Any]] = field(default_factory=dict)
    """call_id -> the latest `agent_assigned` of the batch (agent_id, seq)."""

    def __bool__(self) -> bool:
        return bool(self.stubs)

    def add(self, item: Received) -> bool:
        """Add one event if it is history (True); raise ValueError/KeyError/TypeError if
        it is malformed. Other types (partials, errors) are left out, so that a whole events
        file can be imported as it is."""
        ev = item.event
        call_id, etype = ev["call_id"], ev["type"]
        if etype not in STORED_TYPES:
            return False
        if not isinstance(call_id, str) or not call_id:
            raise ValueError(f"event without a call_id: {call_id!r}")
        row = self._row_for(call_id, etype, ev, item.at)
        at = _dt(item.at)
        stub = self.stubs.setdefault(call_id, {**_stub(call_id, item.at), "last_activity": at})
        stub["last_activity"] = max(stub["last_activity"], at)
        match etype:
            case "call_start":
                self.starts[call_id] = row
            case "call_end":
                self.ends[call_id] = row
                self.summaries[call_id] = {"call_id": call_id, "summary": row.pop("summary")}
            case "agent_assigned":
                old = self.assignments.get(call_id)
                if old is None or old["seq"] < row["seq"]:
                    self.assignments[call_id] = row
            case "metrics":
                old = self.metrics.get(call_id)
                if old is None or old["metrics_seq"] < row["metrics_seq"]:
                    self.metrics[call_id] = row
            case "transcript":
                self.utterances.setdefault((call_id, row["seq"]), row)
            case "cue":
                self.cues.setdefault((call_id, row["seq"]), row)
            case "escalation":
                self.escalations.setdefault((call_id, row["seq"]), row)
        return True

    @staticmethod
    def _row_for(call_id: str, etype: str, ev: Event, at: float) -> dict[str, Any]:
        if etype == "call_start":
            return _start_row(call_id, ev, at)
        if etype == "call_end":
            return {
                **_stub(call_id, at),
                # A call closed after a restart says when it was last heard (recovered.py).
                "ended_at": _event_time(ev, "ended_at") or _dt(at),
                "duration_s": _num(ev.get("duration_s")),
                "end_reason": _opt_text(ev.get("reason")),
                # Set when the agent was assigned during the call (REST), else kept as is.
                "agent_id": _opt_text(ev.get("agent_id")),
                # The meta as the call ended (counters such as Twilio's marks and DTMF digits
                # grow during the call); a call_end without it keeps the stored one.
                "meta": _meta_column(meta) if isinstance(meta := ev.get("meta"), dict) else None,
                "summary": clean_json(ev.get("summary")),
            }
        seq = _int(ev["seq"])
        if etype == "agent_assigned":
            agent = ev["agent_id"]
            if not isinstance(agent, str) or not agent:
                raise ValueError(f"agent_assigned without an agent_id: {agent!r}")
            return {"call_id": call_id, "agent_id": _text(agent), "seq": seq}
        if etype == "metrics":
            body = {k: v for k, v in ev.items() if k not in _ENVELOPE}
            return {"call_id": call_id, "metrics": clean_json(body), "metrics_seq": seq}
        base = {"call_id": call_id, "seq": seq, "t_emit": _num(ev.get("t_emit"))}
        if etype == "transcript":
            return {**base, **_utterance(ev)}
        if etype == "cue":
            return {**base, **_cue(ev)}
        extra = {k: v for k, v in ev.items() if k not in _ESCALATION_FIELDS}
        return {
            **base,
            "reason": _text(ev["reason"]),
            "urgency": _text(ev["urgency"]),
            "summary": clean_json(ev.get("summary")),
            "context": clean_json(extra) if extra else None,
        }


def _event_time(ev: Event, key: str) -> datetime | None:
    """A date the event carries itself (ISO 8601), which wins over when it was received."""
    return wall_time(ev.get(key))


def _stub(call_id: str, at: float) -> dict[str, Any]:
    return {
        "call_id": call_id,
        "source": "unknown",
        "channels": [],
        "meta": None,
        "agent_id": None,
        "customer_id": None,
        "started_at": _dt(at),
    }


def _start_row(call_id: str, ev: Event, at: float) -> dict[str, Any]:
    meta = ev.get("meta") or {}
    if not isinstance(meta, dict):
        raise TypeError("call_start meta must be an object")
    # Identifiers are kept verbatim (history is looked up by them); the rest is redacted.
    return {
        "call_id": call_id,
        "source": _text(ev.get("source"), "unknown"),
        "channels": [_text(c) for c in ev.get("channels") or []],
        "meta": _meta_column(meta),
        "agent_id": _opt_text(meta.get("agent_id")),
        "customer_id": _opt_text(meta.get("customer_id")),
        # A call another instance took over says when it first started (coach/session.py).
        "started_at": _event_time(ev, "started_at") or _dt(at),
    }


def _meta_column(meta: dict[str, Any]) -> dict[str, Any] | None:
    # agent_id and customer_id have columns of their own.
    rest = {k: v for k, v in meta.items() if k not in ("agent_id", "customer_id")}
    return clean_meta(rest) if rest else None


def _utterance(ev: Event) -> dict[str, Any]:
    words = ev.get("words") or []
    tagged = redact_words([_text(w["w"]) for w in words])
    return {
        "speaker": _text(ev["speaker"]),
        "t_start": float(ev["t_start"]),
        "t_end": float(ev["t_end"]),
        "text": redact_text(_text(ev.get("text"))),
        "words": clean_json([{**w, "w": t} for w, t in zip(words, tagged, strict=True)]),
        "sentiment": clean_json(ev.get("sentiment")),
        "prosody": clean_json(ev.get("prosody")),
    }


def _cue(ev: Event) -> dict[str, Any]:
    # Title and advice are playbook text; `why` and the evidence quote the caller.
    return {
        "cue": _text(ev["cue"]),
        "title": _text(ev.get("title")),
        "advice": _text(ev.get("advice")),
        "why": redact_text(_text(ev.get("why"))),
        "priority": _int(int(ev.get("priority") or 3)),
        "evidence": clean_json(ev.get("evidence")),
    }


def upsert(dialect: str, table: Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT that supports ON CONFLICT, in the dialect at hand (both spell it alike)."""
    if dialect == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


async def write_rows(conn: AsyncConnection, rows: Rows) -> None:
    """Upsert one batch; the caller owns the transaction."""
    calls = table_of(Call)
    stubs = upsert(conn.dialect.name, calls)
    # Every batch dates its calls' latest event: the orphan sweep spares a call still being
    # written (by an instance it cannot see in Redis). Never moved back by a spool replay.
    await conn.execute(
        stubs.on_conflict_do_update(
            index_elements=["call_id"],
            set_={"last_activity": stubs.excluded.last_activity},
            where=calls.c.last_activity.is_(None)
            | (calls.c.last_activity < stubs.excluded.last_activity),
        ),
        list(rows.stubs.values()),
    )
    for by_call, columns in ((rows.starts, _START_COLUMNS), (rows.ends, _END_COLUMNS)):
        if by_call:
            stmt = upsert(conn.dialect.name, calls)
            set_: dict[str, Any] = {c: stmt.excluded[c] for c in columns}
            if by_call is rows.ends:
                for c in _END_KEEPS:
                    set_[c] = func.coalesce(stmt.excluded[c], calls.c[c])
            await conn.execute(
                stmt.on_conflict_do_update(index_elements=["call_id"], set_=set_),
                list(by_call.values()),
            )
    if rows.assignments:
        # A supervisor put an agent on the live call (PUT /api/calls/{id}/agent): the store
        # says so at once, not only at call_end, so that agent may rate the call's cues and
        # set its outcome while it runs, and a call cut off before its end (an instance
        # died) stays theirs instead of every team's "no agent yet" call.
        await conn.execute(
            calls.update()
            .where(calls.c.call_id == bindparam("target"))
            .values(agent_id=bindparam("assigned")),
            [{"target": c, "assigned": r["agent_id"]} for c, r in rows.assignments.items()],
        )
    for model, keyed in (
        (Utterance, rows.utterances),
        (CueRow, rows.cues),
        (Escalation, rows.escalations),
    ):
        if keyed:
            stmt = upsert(conn.dialect.name, table_of(model)).on_conflict_do_nothing(
                index_elements=["call_id", "seq"]
            )
            await conn.execute(stmt, list(keyed.values()))
    await _write_summaries(conn, rows)


async def _write_summaries(conn: AsyncConnection, rows: Rows) -> None:
    table = table_of(Summary)
    if rows.summaries:
        stmt = upsert(conn.dialect.name, table)
        await conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["call_id"], set_={"summary": stmt.excluded.summary}
            ),
            list(rows.summaries.values()),
        )
    if rows.metrics:
        stmt = upsert(conn.dialect.name, table)
        newer = (table.c.metrics_seq.is_(None)) | (table.c.metrics_seq < stmt.excluded.metrics_seq)
        await conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["call_id"],
                set_={"metrics": stmt.excluded.metrics, "metrics_seq": stmt.excluded.metrics_seq},
                where=newer,
            ),
            list(rows.metrics.values()),
        )
