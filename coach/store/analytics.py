"""Coaching analytics over stored calls: which cues earn trust, per cue and per agent.

For calls started in `[since, until)` (optionally only some agents' calls): how often each
cue was shown, how people rated it (helpful / not helpful / dismissed, as rates of the cues
shown, so unrated cues count against a cue's trust; a cue several people rated counts once,
by its latest verdict, so each rate is a fraction in [0, 1]), how often reviewers reported it missing
(`missed_reports`: its recall, as people see it), escalations by reason, and whether the
customer ended the call better than they started (mean valence of the first and last few
points of the stored emotional arc). Per cue, the outcomes agents recorded for the calls it
was shown in (`outcomes`); and the calls an agent marked "escalated" with no escalation and
no escalation cue shown (`escalated_unflagged`: where the coaching may have missed the
moment). Counting is done by the database; only the arcs of the calls in range are read
into Python.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Collection, Iterator
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from coach.events import WRAP_UP_OUTCOMES
from coach.signals.state import arc_change
from coach.store.models import Call, CueFeedback, CueRow, Escalation, MissedCue, Summary
from coach.store.records import VERDICTS, StoreUnavailable
from coach.store.store import Store


@contextlib.contextmanager
def _unavailable() -> Iterator[None]:
    try:
        yield
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc


def _empty_counts() -> dict[str, Any]:
    return {"shown": 0, **dict.fromkeys(VERDICTS, 0), "ratings": 0, "missed_reports": 0}


def _with_rates(counts: dict[str, Any]) -> dict[str, Any]:
    """Each verdict's count as a share of the cues shown. A cue counts once, by its latest
    verdict (`helpful`, `not_helpful`, `dismissed` count cues, not raters), so the shares are
    in [0, 1] and sum to `rated / shown`; `ratings` is how many verdicts people gave."""
    shown = counts["shown"]
    rated = sum(counts[v] for v in VERDICTS)
    out = {**counts, "rated": rated}
    for v in VERDICTS:
        out[f"{v}_rate"] = round(counts[v] / shown, 3) if shown else None
    return out


async def coaching_analytics(
    store: Store,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    agents: Collection[str] | None = None,
) -> dict[str, Any]:
    """Aggregates for the supervisor wall's analytics view (see module docstring)."""
    calls = sa.select(Call.call_id)
    if since is not None:
        calls = calls.where(Call.started_at >= since)
    if until is not None:
        calls = calls.where(Call.started_at < until)
    if agents is not None:
        calls = calls.where(Call.agent_id.in_(list(agents)))
    in_range = calls
    await store.ensure_schema()
    with _unavailable():
        async with store.engine.connect() as conn:
            call_rows = (
                await conn.execute(
                    sa.select(Call.call_id, Call.agent_id, Summary.summary)
                    .select_from(Call)
                    .outerjoin(Summary, Summary.call_id == Call.call_id)
                    .where(Call.call_id.in_(in_range))
                )
            ).all()
            shown = (
                await conn.execute(
                    sa.select(Call.agent_id, CueRow.cue, sa.func.count())
                    .join(Call, Call.call_id == CueRow.call_id)
                    .where(CueRow.call_id.in_(in_range))
                    .group_by(Call.agent_id, CueRow.cue)
                )
            ).all()
            # Each cue's latest verdict: three raters of one cue shown once must not make its
            # not-helpful rate 3.0 (the rates are shares of the cues shown).
            ranked = (
                sa.select(
                    CueFeedback.call_id,
                    CueFeedback.cue,
                    CueFeedback.verdict,
                    sa.func.row_number()
                    .over(
                        partition_by=(CueFeedback.call_id, CueFeedback.cue_seq),
                        order_by=(CueFeedback.at.desc(), CueFeedback.id.desc()),
                    )
                    .label("rank"),
                    sa.func.count()
                    .over(partition_by=(CueFeedback.call_id, CueFeedback.cue_seq))
                    .label("ratings"),
                )
                .where(CueFeedback.call_id.in_(in_range))
                .subquery()
            )
            verdicts = (
                await conn.execute(
                    sa.select(
                        Call.agent_id,
                        ranked.c.cue,
                        ranked.c.verdict,
                        sa.func.count(),
                        sa.func.sum(ranked.c.ratings),
                    )
                    .join(Call, Call.call_id == ranked.c.call_id)
                    .where(ranked.c.rank == 1)
                    .group_by(Call.agent_id, ranked.c.cue, ranked.c.verdict)
                )
            ).all()
            missed = (
                await conn.execute(
                    sa.select(Call.agent_id, MissedCue.cue, sa.func.count())
                    .join(Call, Call.call_id == MissedCue.call_id)
                    .where(MissedCue.call_id.in_(in_range))
                    .group_by(Call.agent_id, MissedCue.cue)
                )
            ).all()
            escalations = (
                await conn.execute(
                    sa.select(Call.agent_id, Escalation.reason, Escalation.urgency, sa.func.count())
                    .join(Call, Call.call_id == Escalation.call_id)
                    .where(Escalation.call_id.in_(in_range))
                    .group_by(Call.agent_id, Escalation.reason, Escalation.urgency)
                )
            ).all()
            cue_outcomes = (
                await conn.execute(
                    sa.select(CueRow.cue, Call.outcome, sa.func.count(sa.distinct(Call.call_id)))
                    .join(Call, Call.call_id == CueRow.call_id)
                    .where(CueRow.call_id.in_(in_range))
                    .group_by(CueRow.cue, Call.outcome)
                )
            ).all()
            alerted = sa.union(
                sa.select(Escalation.call_id),
                sa.select(CueRow.call_id).where(CueRow.cue.in_(ESCALATION_CUES)),
            )
            unflagged = (
                await conn.execute(
                    sa.select(Call.call_id)
                    .where(
                        Call.call_id.in_(in_range),
                        sa.func.lower(sa.func.trim(Call.outcome)) == "escalated",
                    )
                    .where(Call.call_id.not_in(alerted))
                    .order_by(Call.started_at.desc())
                    .limit(UNFLAGGED_LISTED)
                )
            ).all()
    report = _assemble(call_rows, shown, verdicts, missed, escalations, since=since, until=until)
    outcomes: dict[str, dict[str, int]] = defaultdict(dict)
    for cue, raw, n in cue_outcomes:
        key = outcome_key(raw)
        outcomes[cue][key] = outcomes[cue].get(key, 0) + int(n)
    for row in report["cues"]:
        row["outcomes"] = outcomes.get(row["cue"], {})
    report["escalated_unflagged"] = [c for (c,) in unflagged]
    return report


ESCALATION_CUES = ("escalation_request", "crisis", "frustration")
"""A call whose agent recorded "escalated" had warning enough if one of these showed, or an
escalation was raised; otherwise it is listed in `escalated_unflagged`, for review."""

UNFLAGGED_LISTED = 50


def outcome_key(outcome: str | None) -> str:
    """A stored outcome as analytics count it: a wrap-up choice as it is, whatever its case
    or spaces ("Escalated " typed in the summary's free-text box), free text as "other" (it
    may quote the customer), none as "not recorded"."""
    said = (outcome or "").strip().lower()
    if not said:
        return "not recorded"
    return said if said in WRAP_UP_OUTCOMES else "other"


def _assemble(
    call_rows: Any,
    shown: Any,
    verdicts: Any,
    missed: Any,
    escalations: Any,
    *,
    since: datetime | None,
    until: datetime | None,
) -> dict[str, Any]:
    per_cue: dict[str, dict[str, Any]] = defaultdict(_empty_counts)
    per_agent: dict[str, dict[str, Any]] = defaultdict(
        lambda: {
            **_empty_counts(),
            "calls": 0,
            "escalations": 0,
            "better": 0,
            "worse": 0,
            "same": 0,
        }
    )
    outcome = {"better": 0, "worse": 0, "same": 0, "unknown": 0}
    for _call_id, agent, summary in call_rows:
        change = arc_change((summary or {}).get("arc")) if isinstance(summary, dict) else None
        outcome[change or "unknown"] += 1
        row = per_agent[agent or "(unassigned)"]
        row["calls"] += 1
        if change:
            row[change] += 1
    for agent, cue, n in shown:
        per_cue[cue]["shown"] += int(n)
        per_agent[agent or "(unassigned)"]["shown"] += int(n)
    for agent, cue, verdict, n, ratings in verdicts:
        for row in (per_cue[cue], per_agent[agent or "(unassigned)"]):
            row[verdict] += int(n)
            row["ratings"] += int(ratings or 0)
    for agent, cue, n in missed:
        per_cue[cue]["missed_reports"] += int(n)
        per_agent[agent or "(unassigned)"]["missed_reports"] += int(n)
    by_reason: dict[str, dict[str, int]] = defaultdict(lambda: {"total": 0})
    for agent, reason, urgency, n in escalations:
        by_reason[reason]["total"] += int(n)
        by_reason[reason][urgency] = by_reason[reason].get(urgency, 0) + int(n)
        per_agent[agent or "(unassigned)"]["escalations"] += int(n)
    return {
        "since": since.isoformat() if since else None,
        "until": until.isoformat() if until else None,
        "calls": len(call_rows),
        "outcome": outcome,
        "cues": [
            {"cue": cue, **_with_rates(c)}
            for cue, c in sorted(per_cue.items(), key=lambda kv: -kv[1]["shown"])
        ],
        "agents": [{"agent_id": a, **_with_rates(c)} for a, c in sorted(per_agent.items())],
        "escalations": [
            {"reason": r, **c} for r, c in sorted(by_reason.items(), key=lambda kv: -kv[1]["total"])
        ],
    }
