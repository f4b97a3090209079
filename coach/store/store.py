"""The call-history store: batch writes for the writer, reads and edits for the API.

One object per process around one async engine. The schema is migrated lazily on first use
(and at startup), so a database that is down when the server starts delays history, never
live calls. Database failures surface as `StoreUnavailable` (the writer spools, the API
answers 503); constraint or data errors in a batch are retried event by event so one bad
event is skipped and logged instead of blocking every event behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Collection, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    OperationalError,
    SQLAlchemyError,
    StatementError,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from coach.events import URGENCY_RANK
from coach.logs import call_fields
from coach.redaction import redact_text
from coach.signals.state import arc_change
from coach.store.db import create_engine, migrate, redacted_url
from coach.store.models import (
    Call,
    CueFeedback,
    CueRow,
    Escalation,
    MissedCue,
    Summary,
    Utterance,
    table_of,
)
from coach.store.records import (
    VERDICTS,
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
from coach.store.writes import Received, Rows, upsert, write_rows

log = logging.getLogger(__name__)
MAX_PAGE = 500


def is_refusal(exc: BaseException) -> bool:
    """Whether the database refused this data, as opposed to not taking anything right now.

    Only data errors (SQLSTATE class 22) and constraint violations (23), or a driver that
    could not encode a value, count: a lock, a timeout, a restart or anything unknown is
    treated as an outage, whose events are spooled and retried, never dropped.
    """
    if isinstance(exc, IntegrityError | DataError):
        return True
    if isinstance(exc, StatementError) and not isinstance(exc, DBAPIError):
        return isinstance(exc.orig, ValueError | TypeError)  # bind processing, before sending
    if isinstance(exc, DBAPIError) and not isinstance(exc, OperationalError):
        state = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
        if isinstance(state, str) and state[:2] in ("22", "23"):
            return True
        return isinstance(getattr(exc.orig, "__cause__", None), ValueError)
    return False


@contextlib.contextmanager
def _translate() -> Iterator[None]:
    """Database failures as the store's two kinds: Refused (bad data), StoreUnavailable."""
    try:
        yield
    except Exception as exc:
        if is_refusal(exc):
            raise Refused(_first_line(exc)) from exc
        if isinstance(exc, SQLAlchemyError | OSError | TimeoutError):
            raise StoreUnavailable(f"{type(exc).__name__}: {_first_line(exc)}") from exc
        raise


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Store:
    def __init__(
        self, *, url: str, engine: AsyncEngine | None = None, auto_migrate: bool = True
    ) -> None:
        self.url = url
        self.engine = engine if engine is not None else create_engine(url)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._schema_ready = not auto_migrate
        self._schema_lock = asyncio.Lock()
        self.skipped = 0
        """Events that could not be stored at all (malformed, or refused by a constraint)."""

    def __repr__(self) -> str:
        return f"Store({redacted_url(self.url)})"

    async def aclose(self) -> None:
        await self.engine.dispose()

    async def ensure_schema(self) -> None:
        """Run pending migrations once per process (again after a failed attempt)."""
        if self._schema_ready:
            return
        async with self._schema_lock:
            if self._schema_ready:
                return
            with _translate():
                await migrate(self.url, engine=self.engine)
            self._schema_ready = True
            log.info("store ready: %s", redacted_url(self.url))

    async def ping(self) -> bool:
        """Whether the database answers now (for readiness probes)."""
        try:
            async with self._connect() as conn:
                await conn.execute(sa.select(1))
        except Exception as exc:  # a failed migration means "not ready" just as well
            log.debug("store ping failed: %s", exc)
            return False
        return True

    @contextlib.asynccontextmanager
    async def _connect(self, *, begin: bool = False) -> AsyncIterator[AsyncConnection]:
        await self.ensure_schema()
        with _translate():
            async with self.engine.begin() if begin else self.engine.connect() as conn:
                yield conn

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[AsyncSession]:
        """A session in one transaction, committed when the block ends without an error."""
        await self.ensure_schema()
        with _translate():
            async with self._sessions.begin() as session:
                yield session

    # -- writes from the event stream ------------------------------------------------------

    async def write_events(self, items: Sequence[Received]) -> None:
        """Store a batch in one transaction; raise StoreUnavailable if the database is down.

        A batch the database refuses (see `is_refusal`) holds a poison event: it is written
        again event by event and only the events refused on their own are skipped, so one
        bad event never blocks the rest. Anything else raises StoreUnavailable: spool, retry.
        """
        rows, valid = self._rows(items)
        if not valid:
            return
        await self.ensure_schema()
        try:
            await self._write(rows)
        except Refused as exc:
            log.warning("store batch refused (%s); retrying event by event", exc)
            for item in valid:
                try:
                    await self._write(self._rows([item])[0])
                except Refused as one:
                    self._skip(item, one)

    async def _write(self, rows: Rows) -> None:
        async with self._connect(begin=True) as conn:
            await write_rows(conn, rows)

    def _rows(self, items: Sequence[Received]) -> tuple[Rows, list[Received]]:
        rows, valid = Rows(), []
        for item in items:
            try:
                if rows.add(item):
                    valid.append(item)
            except (KeyError, TypeError, ValueError) as exc:
                self._skip(item, exc)
        return rows, valid

    def _skip(self, item: Received, exc: Exception) -> None:
        self.skipped += 1
        ev = item.event
        log.error(
            "store skipped %s seq %s of call %s: %s",
            ev.get("type"),
            ev.get("seq"),
            ev.get("call_id"),
            _first_line(exc),
            extra=call_fields(ev.get("call_id")),
        )

    # -- reads -----------------------------------------------------------------------------

    async def list_calls(
        self,
        *,
        agent_id: str | None = None,
        customer_id: str | Sequence[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        query: str | None = None,
        cue: str | None = None,
        min_urgency: str | None = None,
        team_agents: Collection[str] | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[CallRecord]:
        """Newest first; `query` matches (case-insensitively) any words said in the call,
        `cue` the calls where that cue was shown, `min_urgency` the calls with an escalation
        at that urgency or above ("low" for any escalation).

        `team_agents`: only those agents' calls and the calls no agent was on (what a team's
        supervisor sees, coach/api/security.py), filtered here so that LIMIT and OFFSET count
        only those: a page filtered afterwards comes back short, or empty with more to come.
        """
        stmt = sa.select(Call)
        if agent_id is not None:
            stmt = stmt.where(Call.agent_id == agent_id)
        if team_agents is not None:
            stmt = stmt.where(_of_team(team_agents))
        if customer_id is not None:
            stmt = stmt.where(Call.customer_id.in_(_ids(customer_id)))
        if since is not None:
            stmt = stmt.where(Call.started_at >= since)
        if until is not None:
            stmt = stmt.where(Call.started_at < until)
        if query and query.strip():
            pattern = "%" + _escape_like(query.strip()) + "%"
            said = sa.select(Utterance.call_id).where(Utterance.text.ilike(pattern, escape="\\"))
            stmt = stmt.where(Call.call_id.in_(said))
        if cue is not None:
            stmt = stmt.where(Call.call_id.in_(sa.select(CueRow.call_id).where(CueRow.cue == cue)))
        if min_urgency is not None:
            urgencies = [u for u, rank in URGENCY_RANK.items() if rank >= URGENCY_RANK[min_urgency]]
            escalated = sa.select(Escalation.call_id).where(Escalation.urgency.in_(urgencies))
            stmt = stmt.where(Call.call_id.in_(escalated))
        stmt = stmt.order_by(Call.started_at.desc(), Call.call_id)
        stmt = stmt.limit(max(1, min(limit, MAX_PAGE))).offset(max(0, offset))
        async with self._session() as s:
            return [CallRecord.of(r) for r in await s.scalars(stmt)]

    async def get_call_record(self, call_id: str) -> CallRecord | None:
        async with self._session() as s:
            row = await s.get(Call, call_id)
            return None if row is None else CallRecord.of(row)

    async def unended_calls(
        self, *, started_before: datetime, limit: int = 1000
    ) -> list[CallRecord]:
        """Calls with no end stored that started before `started_before` and whose record
        was not written since (no event of theirs received then), oldest first."""
        stmt = (
            sa.select(Call)
            .where(
                Call.ended_at.is_(None),
                Call.started_at < started_before,
                Call.last_activity.is_(None) | (Call.last_activity < started_before),
            )
            .order_by(Call.started_at, Call.call_id)
            .limit(limit)
        )
        async with self._session() as s:
            return [CallRecord.of(r) for r in await s.scalars(stmt)]

    async def ended_since(
        self,
        *,
        since: datetime,
        reasons: Collection[str],
        open_since: datetime | None = None,
        limit: int = 1000,
    ) -> list[CallRecord]:
        """Calls that ended at or after `since` for one of `reasons`, and (with `open_since`)
        those of any end that ended at or after `open_since` with an escalation nobody has
        acknowledged; oldest end first."""
        wanted = (Call.ended_at >= since) & Call.end_reason.in_(list(reasons))
        if open_since is not None:
            unacknowledged = (
                sa.select(Escalation.call_id)
                .where(Escalation.call_id == Call.call_id, Escalation.acknowledged_by.is_(None))
                .exists()
            )
            wanted = wanted | ((Call.ended_at >= open_since) & unacknowledged)
        stmt = (
            sa.select(Call)
            .where(Call.ended_at.is_not(None), wanted)
            .order_by(Call.ended_at, Call.call_id)
            .limit(limit)
        )
        async with self._session() as s:
            return [CallRecord.of(r) for r in await s.scalars(stmt)]

    async def ended_legs(self, call_id: str) -> set[str]:
        """Which of `call_id` and its later legs (`call_id~2`, `~3`...) are stored as ended."""
        pattern = _escape_like(call_id) + "~%"
        stmt = sa.select(Call.call_id).where(
            sa.or_(Call.call_id == call_id, Call.call_id.like(pattern, escape="\\")),
            Call.ended_at.is_not(None),
        )
        async with self._session() as s:
            ids = set(await s.scalars(stmt))
        return {i for i in ids if i == call_id or _is_leg_of(i, call_id)}

    async def heard_lately(self, call_id: str, *, since: datetime) -> bool:
        """Whether `call_id` is stored unended with something written since `since`: some
        instance is running it now."""
        stmt = sa.select(Call.call_id).where(
            Call.call_id == call_id,
            Call.ended_at.is_(None),
            sa.func.coalesce(Call.last_activity, Call.started_at) >= since,
        )
        async with self._session() as s:
            return (await s.scalar(stmt)) is not None

    async def latest_cue_seq(self, call_id: str, cue: str) -> int | None:
        """The most recent occurrence of cue id `cue` in a call (feedback by cue id)."""
        async with self._session() as s:
            seq = await s.scalar(
                sa.select(sa.func.max(CueRow.seq)).where(
                    CueRow.call_id == call_id, CueRow.cue == cue
                )
            )
            return None if seq is None else int(seq)

    async def get_call(self, call_id: str) -> CallDetail | None:
        async with self._session() as s:
            call = await s.get(Call, call_id)
            if call is None:
                return None
            utts = await s.scalars(
                sa.select(Utterance)
                .where(Utterance.call_id == call_id)
                .order_by(Utterance.t_start, Utterance.seq)
            )
            transcript = [UtteranceRecord.of(u) for u in utts]
            feedback: dict[int, list[FeedbackRecord]] = {}
            for fb in await s.scalars(
                sa.select(CueFeedback)
                .where(CueFeedback.call_id == call_id)
                .order_by(CueFeedback.at, CueFeedback.id)
            ):
                feedback.setdefault(fb.cue_seq, []).append(FeedbackRecord.of(fb))
            cue_rows = await s.scalars(
                sa.select(CueRow).where(CueRow.call_id == call_id).order_by(CueRow.seq)
            )
            cues = [CueRecord.of(c, feedback.get(c.seq, [])) for c in cue_rows]
            esc_rows = await s.scalars(
                sa.select(Escalation).where(Escalation.call_id == call_id).order_by(Escalation.seq)
            )
            escalations = [EscalationRecord.of(e) for e in esc_rows]
            summary = await s.get(Summary, call_id)
            texts = {u.seq: u.text for u in transcript}
            missed = [
                MissedCueRecord.of(m, texts.get(m.utterance_seq, ""))
                for m in await s.scalars(
                    sa.select(MissedCue)
                    .where(MissedCue.call_id == call_id)
                    .order_by(MissedCue.at, MissedCue.id)
                )
            ]
            return CallDetail(
                call=CallRecord.of(call),
                transcript=transcript,
                cues=cues,
                escalations=escalations,
                summary=_with_change(summary.summary if summary else None),
                metrics=summary.metrics if summary else None,
                metrics_seq=summary.metrics_seq if summary else None,
                missed_cues=missed,
            )

    async def customer_history(
        self,
        customer_id: str | Sequence[str],
        *,
        limit: int = 10,
        exclude_call_id: str | None = None,
        team_agents: Collection[str] | None = None,
    ) -> list[CustomerCall]:
        """The customer's most recent calls, newest first, with how each went (`team_agents`
        as in `list_calls`; several ids: a customer's alias and their id as stored before
        aliases, coach/redaction.py `customer_alias`)."""
        stmt = sa.select(Call).where(Call.customer_id.in_(_ids(customer_id)))
        if exclude_call_id is not None:
            stmt = stmt.where(Call.call_id != exclude_call_id)
        if team_agents is not None:
            stmt = stmt.where(_of_team(team_agents))
        stmt = stmt.order_by(Call.started_at.desc()).limit(max(1, min(limit, MAX_PAGE)))
        async with self._session() as s:
            calls = list(await s.scalars(stmt))
            ids = [c.call_id for c in calls]
            cue_counts: dict[str, dict[str, int]] = {}
            for call_id, cue, n in await s.execute(
                sa.select(CueRow.call_id, CueRow.cue, sa.func.count())
                .where(CueRow.call_id.in_(ids))
                .group_by(CueRow.call_id, CueRow.cue)
            ):
                cue_counts.setdefault(call_id, {})[cue] = int(n)
            esc_counts: dict[str, int] = {
                call_id: int(n)
                for call_id, n in await s.execute(
                    sa.select(Escalation.call_id, sa.func.count())
                    .where(Escalation.call_id.in_(ids))
                    .group_by(Escalation.call_id)
                )
            }
        return [
            CustomerCall(
                call_id=c.call_id,
                agent_id=c.agent_id,
                started_at=c.started_at,
                ended_at=c.ended_at,
                duration_s=c.duration_s,
                end_reason=c.end_reason,
                outcome=c.outcome,
                cue_counts=cue_counts.get(c.call_id, {}),
                escalations=esc_counts.get(c.call_id, 0),
            )
            for c in calls
        ]

    # -- edits by people -------------------------------------------------------------------

    async def add_feedback(
        self, *, call_id: str, cue_seq: int, verdict: str, user: str, at: datetime | None = None
    ) -> tuple[FeedbackRecord, bool]:
        """Record (or replace) one person's verdict on one cue; NotFound if there is no cue.

        Returns the verdict as stored and whether this call changed it: the same verdict
        again (a retried or double-clicked POST) changes nothing and keeps its first time.
        The write itself says so (its row count), so two such requests at once count once.
        """
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}")
        when = at or _utcnow()
        feedback = table_of(CueFeedback)
        async with self._session() as s:
            cue = await s.get(CueRow, (call_id, cue_seq))
            if cue is None:
                raise NotFound(f"call {call_id} has no cue {cue_seq}")
            values = {
                "call_id": call_id,
                "cue_seq": cue_seq,
                "cue": cue.cue,
                "verdict": verdict,
                "user_id": user,
                "at": when,
            }
            stmt = upsert(self.engine.dialect.name, feedback).values(values)
            written = await s.execute(
                stmt.on_conflict_do_update(
                    index_elements=["call_id", "cue_seq", "user_id"],
                    set_={"verdict": stmt.excluded.verdict, "at": stmt.excluded.at},
                    where=feedback.c.verdict != stmt.excluded.verdict,
                )
            )
            changed = _rowcount(written) > 0
            row = await s.scalar(
                sa.select(CueFeedback)
                .where(
                    CueFeedback.call_id == call_id,
                    CueFeedback.cue_seq == cue_seq,
                    CueFeedback.user_id == user,
                )
                .execution_options(populate_existing=True)
            )
            assert row is not None
            return FeedbackRecord.of(row), changed

    async def add_missed_cue(
        self, *, call_id: str, utterance_seq: int, cue: str, user: str, at: datetime | None = None
    ) -> tuple[MissedCueRecord, bool]:
        """Record one person's report that a customer utterance should have shown `cue`.

        Returns the report as stored and whether it is new (the same report again is the
        same record, told by the insert's own row count). NotFound if there is no such
        utterance; Refused if it is the agent's: cues read the customer's words."""
        when = at or _utcnow()
        async with self._session() as s:
            utt = await s.get(Utterance, (call_id, utterance_seq))
            if utt is None:
                raise NotFound(f"call {call_id} has no utterance {utterance_seq}")
            if utt.speaker != "customer":
                raise Refused("only the customer's utterances can miss a cue")
            values = {
                "call_id": call_id,
                "utterance_seq": utterance_seq,
                "cue": cue,
                "user_id": user,
                "at": when,
            }
            stmt = upsert(self.engine.dialect.name, table_of(MissedCue)).values(values)
            written = await s.execute(
                stmt.on_conflict_do_nothing(
                    index_elements=["call_id", "utterance_seq", "cue", "user_id"]
                )
            )
            new = _rowcount(written) > 0
            row = await s.scalar(
                sa.select(MissedCue).where(
                    MissedCue.call_id == call_id,
                    MissedCue.utterance_seq == utterance_seq,
                    MissedCue.cue == cue,
                    MissedCue.user_id == user,
                )
            )
            assert row is not None
            return MissedCueRecord.of(row, utt.text), new

    async def withdraw_feedback(self, *, call_id: str, cue_seq: int, user: str) -> None:
        """Take back one person's verdict on one cue; NotFound if they gave none."""
        await self._delete_own(
            sa.delete(CueFeedback).where(
                CueFeedback.call_id == call_id,
                CueFeedback.cue_seq == cue_seq,
                CueFeedback.user_id == user,
            ),
            missing=f"{user} has not rated cue {cue_seq} of call {call_id}",
        )

    async def withdraw_missed_cue(
        self, *, call_id: str, utterance_seq: int, cue: str, user: str
    ) -> None:
        """Take back one person's missed-cue report, so the playbook tuner no longer proposes
        it; NotFound if they made no such report."""
        await self._delete_own(
            sa.delete(MissedCue).where(
                MissedCue.call_id == call_id,
                MissedCue.utterance_seq == utterance_seq,
                MissedCue.cue == cue,
                MissedCue.user_id == user,
            ),
            missing=f"{user} has not reported {cue} as missed on utterance {utterance_seq} "
            f"of call {call_id}",
        )

    async def _delete_own(self, stmt: sa.Delete, *, missing: str) -> None:
        """Run a DELETE of someone's own review entry; NotFound(missing) if it removed nothing."""
        async with self._session() as s:
            gone = await s.execute(stmt)
            if not _deleted(gone):
                raise NotFound(missing)

    async def missed_cues(self, *, since: datetime | None = None) -> list[MissedCueRecord]:
        """Every missed-cue report (since `since`), oldest first, with its utterance's text."""
        stmt = (
            sa.select(MissedCue, Utterance.text)
            .join(
                Utterance,
                sa.and_(
                    Utterance.call_id == MissedCue.call_id,
                    Utterance.seq == MissedCue.utterance_seq,
                ),
            )
            .order_by(MissedCue.at, MissedCue.id)
        )
        if since is not None:
            stmt = stmt.where(MissedCue.at >= since)
        async with self._session() as s:
            return [MissedCueRecord.of(m, text) for m, text in await s.execute(stmt)]

    async def rated_cues(self, *, since: datetime | None = None) -> list[RatedCueRecord]:
        """Every cue someone rated (since `since`), with its evidence text and the verdicts:
        what `scripts/tune_playbook.py --unhelpful` learns near misses from."""
        stmt = (
            sa.select(CueFeedback, CueRow.evidence)
            .join(
                CueRow,
                sa.and_(CueRow.call_id == CueFeedback.call_id, CueRow.seq == CueFeedback.cue_seq),
            )
            .order_by(CueFeedback.call_id, CueFeedback.cue_seq, CueFeedback.id)
        )
        if since is not None:
            stmt = stmt.where(CueFeedback.at >= since)
        rated: dict[tuple[str, int], RatedCueRecord] = {}
        async with self._session() as s:
            for fb, evidence in await s.execute(stmt):
                text = str(evidence.get("text") or "") if isinstance(evidence, dict) else ""
                record = rated.setdefault(
                    (fb.call_id, fb.cue_seq),
                    RatedCueRecord(fb.call_id, fb.cue_seq, fb.cue, text, {}),
                )
                record.verdicts[fb.user_id] = fb.verdict
        return list(rated.values())

    async def acknowledge_escalation(
        self, *, call_id: str, seq: int, user: str, at: datetime | None = None
    ) -> EscalationRecord:
        """The first acknowledgement stands; later ones return it unchanged."""
        esc = table_of(Escalation)
        async with self._session() as s:
            await s.execute(
                sa.update(esc)
                .where(esc.c.call_id == call_id, esc.c.seq == seq, esc.c.acknowledged_by.is_(None))
                .values(acknowledged_by=user, acknowledged_at=at or _utcnow())
            )
            row = await s.get(Escalation, (call_id, seq), populate_existing=True)
            if row is None:
                raise NotFound(f"call {call_id} has no escalation {seq}")
            return EscalationRecord.of(row)

    async def set_outcome(
        self, *, call_id: str, outcome: str | None, user: str, at: datetime | None = None
    ) -> CallRecord:
        async with self._session() as s:
            row = await s.get(Call, call_id)
            if row is None:
                raise NotFound(f"call {call_id} not found")
            # Typed by a person ("callback on 212 555 0147"), shown to supervisors and kept
            # for months: redacted like every other text the store keeps (models.py).
            row.outcome = None if outcome is None else redact_text(outcome.replace("\x00", ""))
            row.outcome_by = user
            row.outcome_at = at or _utcnow()
            await s.flush()
            return CallRecord.of(row)

    async def delete_older_than(self, days: float, *, now: datetime | None = None) -> int:
        """Retention: delete calls that started more than `days` ago, with all their rows."""
        cutoff = (now or _utcnow()) - timedelta(days=days)
        return await self._delete_calls(table_of(Call).c.started_at < cutoff)

    async def erase_calls(
        self, *, call_id: str | None = None, customer_id: str | Sequence[str] | None = None
    ) -> tuple[list[str], list[str]]:
        """Erasure on request (a caller's right to have their data deleted): the ended calls
        with this id or of this customer, with every row of theirs. Returns (erased, live):
        a call not ended yet is left alone, since its next events would write it again."""
        if (call_id is None) == (customer_id is None):
            raise ValueError("erase one call or one customer's calls")
        calls = table_of(Call)
        which = (
            calls.c.customer_id.in_(_ids(customer_id))
            if customer_id is not None
            else calls.c.call_id == call_id
        )
        async with self._connect() as conn:
            found = (
                await conn.execute(sa.select(calls.c.call_id, calls.c.ended_at).where(which))
            ).all()
        erased = sorted(c for c, ended in found if ended is not None)
        live = sorted(c for c, ended in found if ended is None)
        if erased:
            await self._delete_calls(calls.c.call_id.in_(erased) & calls.c.ended_at.is_not(None))
        return erased, live

    async def _delete_calls(self, which: sa.ColumnElement[bool]) -> int:
        """Delete the calls `which` selects, with all their rows, in one transaction."""
        calls = table_of(Call)
        chosen = sa.select(calls.c.call_id).where(which)
        async with self._connect(begin=True) as conn:
            # Children first and explicitly: cascades are not trusted on every SQLite setup.
            for model in (CueFeedback, MissedCue, CueRow, Utterance, Escalation, Summary):
                tbl = table_of(model)
                await conn.execute(sa.delete(tbl).where(tbl.c.call_id.in_(chosen)))
            result = await conn.execute(sa.delete(calls).where(which))
        return int(result.rowcount)


def _deleted(result: sa.Result[Any]) -> bool:
    """Whether a DELETE removed a row."""
    return _rowcount(result) > 0


def _rowcount(result: sa.Result[Any]) -> int:
    """The rows an INSERT, UPDATE or DELETE wrote (a DML statement's result is a
    CursorResult); an upsert that met its conflict and changed nothing wrote none."""
    return int(cast("sa.CursorResult[Any]", result).rowcount)


def _first_line(exc: Exception) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:300]


def _is_leg_of(candidate: str, call_id: str) -> bool:
    """`call_id~n` with n a number (not, say, another telephony id that starts the same)."""
    suffix = candidate.removeprefix(call_id + "~")
    return suffix != candidate and suffix.isdigit()


def _of_team(agents: Collection[str]) -> sa.ColumnElement[bool]:
    """Calls of these agents, or of no agent (None, or the empty string some ingests send)."""
    return sa.or_(Call.agent_id.in_(sorted(agents)), Call.agent_id.is_(None), Call.agent_id == "")


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _with_change(summary: dict[str, Any] | None) -> dict[str, Any] | None:
    """A stored call_end summary with its whole-call verdict: a summary written before the
    call_end carried `change` gets it from its arc, by the same rule."""
    if summary is None or "change" in summary:
        return summary
    return {**summary, "change": arc_change(summary.get("arc"))}


def _ids(customer_id: str | Sequence[str]) -> list[str]:
    return [customer_id] if isinstance(customer_id, str) else list(customer_id)
