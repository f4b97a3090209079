"""Calls a server restart cut off: their stored events, and a `call_end` for them.

Why: a process that dies mid-call (a crash, a kill, a node lost) never emits the call's
`call_end`, so the stored call would stay "live" in the history for ever and a panel that
reconnects after the restart would find no such call. What the store already holds is the
truth about such a call: its redacted transcript, its cues and escalations. This module turns
that back into the event stream (so a reconnecting panel keeps the call and learns how it
ended) and builds the `call_end` that closes it (reason `interrupted`, duration and emotional
arc from what was stored), which `close_orphans` publishes like any other call_end so the
store, the supervisor walls and every instance see the call end the ordinary way.

Which unended calls are orphans: without Redis one instance owns the store (ARCHITECTURE.md,
Scale-out), so at start-up every unended call it does not run was cut off. With Redis each
instance refreshes an owner key per live call; a call whose key has expired belongs to no
live instance.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Collection
from datetime import datetime, timedelta
from typing import Any

from coach.bus import SUPERVISOR_TOPIC, InProcessBus, call_topic
from coach.events import AI_LABEL, Event, call_end
from coach.logs import call_fields
from coach.signals.state import CustomerStateTracker
from coach.store.records import CallDetail, StoreUnavailable, UtteranceRecord
from coach.store.store import Store

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted"


async def with_stored_start(
    store: Store | None, call_id: str, recent: list[Event]
) -> tuple[list[Event], bool]:
    """A live call's `recent` events (the bus keeps the last COACH_EVENT_REPLAY of them, a few
    minutes of a two-party call with its partials) preceded by the stored ones they no longer
    reach, so `GET /api/calls/{id}` is the call so far, not its last minutes; and whether the
    start is all there (False: it is gone from the bus and the store cannot give it now)."""
    first = min((int(e.get("seq", 1)) for e in recent), default=1)
    if first <= 1:
        return recent, True
    try:
        detail = await store.get_call(call_id) if store is not None else None
    except StoreUnavailable:
        detail = None
    if detail is None:
        return recent, False
    older = [e for e in stored_events(detail) if int(e["seq"]) < first]
    return [*older, *recent], True


def stored_events(detail: CallDetail, *, after_seq: int | None = None) -> list[Event]:
    """The call's stored transcript, cues, escalations and last metrics as events, in `seq`
    order.

    Text is what the store holds (redacted); partials are not stored. Each customer line gets
    back the `state` its live event carried, rebuilt from its stored words' sentiment and
    voice: the state is a pure function of those (coach/signals/state.py), and without it a
    call reopened after it ended showed an empty trend and "no customer speech yet" beside
    minutes of it (found by an outside audit of the panels).
    """
    call_id = detail.call.call_id
    states = _rebuilt_states(detail)
    out: list[Event] = []
    for u in detail.transcript:
        line: Event = {
            "type": "transcript",
            "call_id": call_id,
            "seq": u.seq,
            "t_emit": u.t_emit if u.t_emit is not None else u.t_end,
            "speaker": u.speaker,
            "t_start": u.t_start,
            "t_end": u.t_end,
            "text": u.text,
            "words": u.words,
            "sentiment": u.sentiment,
            "prosody": u.prosody,
        }
        if u.seq in states:
            line["state"] = states[u.seq]
        out.append(line)
    if detail.metrics and detail.metrics_seq is not None:
        # The last talk ratio, overtalk and pace, as the call's last metrics event said them.
        out.append(
            {
                **detail.metrics,
                "type": "metrics",
                "call_id": call_id,
                "seq": detail.metrics_seq,
                "t_emit": stored_duration(detail),
            }
        )
    for c in detail.cues:
        evidence = dict(c.evidence or {})
        ev: Event = {
            "type": "cue",
            "call_id": call_id,
            "seq": c.seq,
            "t_emit": c.t_emit,
            "cue": c.cue,
            "title": c.title,
            "advice": c.advice,
            "why": c.why,
            "priority": c.priority,
            "label": AI_LABEL,
            "evidence": evidence,
        }
        if "t_start" in evidence and "t_end" in evidence:
            ev["t_start"], ev["t_end"] = evidence["t_start"], evidence["t_end"]
        out.append(ev)
    for e in detail.escalations:
        out.append(
            {
                **(e.context or {}),
                "type": "escalation",
                "call_id": call_id,
                "seq": e.seq,
                "t_emit": e.t_emit,
                "reason": e.reason,
                "urgency": e.urgency,
                "summary": e.summary,
                **({"acknowledged_by": e.acknowledged_by} if e.acknowledged_by else {}),
                **(
                    {"acknowledged_at": e.acknowledged_at.isoformat()}
                    if e.acknowledged_by and e.acknowledged_at
                    else {}
                ),
            }
        )
    out.sort(key=lambda ev: int(ev["seq"]))
    if after_seq is not None:
        out = [ev for ev in out if int(ev["seq"]) > after_seq]
    return out


def last_seq(detail: CallDetail) -> int:
    seqs = [u.seq for u in detail.transcript] + [c.seq for c in detail.cues]
    seqs += [e.seq for e in detail.escalations]
    if detail.metrics_seq is not None:
        seqs.append(detail.metrics_seq)  # else the call_end could share its seq, and be dropped
    return max(seqs, default=0)


def stored_duration(detail: CallDetail) -> float:
    """How much of the call was heard, from the last thing stored about it."""
    ends = [u.t_end for u in detail.transcript]
    ends += [c.t_emit for c in detail.cues if c.t_emit is not None]
    ends += [e.t_emit for e in detail.escalations if e.t_emit is not None]
    return max(ends, default=0.0)


def _felt(detail: CallDetail) -> list[UtteranceRecord]:
    """The customer's stored lines that carry a valence, in order."""
    return [
        u
        for u in detail.transcript
        if u.speaker == "customer"
        and isinstance(u.sentiment, dict)
        and isinstance(u.sentiment.get("valence"), int | float)
    ]


def _rebuilt_states(detail: CallDetail) -> dict[int, dict[str, Any]]:
    """The customer's state after each of their stored lines, by the line's `seq`."""
    tracker = CustomerStateTracker()
    states: dict[int, dict[str, Any]] = {}
    for u in sorted(_felt(detail), key=lambda u: u.seq):
        prosody = u.prosody if isinstance(u.prosody, dict) else None
        # A row written by an older version may lack the label; the valence is all it needs.
        sentiment = {"label": "neutral", **(u.sentiment or {})}
        state = tracker.update(
            t_end=u.t_end, duration_s=u.t_end - u.t_start, sentiment=sentiment, prosody=prosody
        )
        states[u.seq] = state.as_dict()
    return states


def end_event(detail: CallDetail, *, after_seq: int | None = None) -> Event:
    """The call_end of a stored call: its own when it ended, else an `interrupted` one."""
    call = detail.call
    seq = max(last_seq(detail), after_seq or 0) + 1
    if call.ended_at is not None:
        summary: dict[str, Any] = dict(detail.summary or {})
        ev: Event = {
            "type": "call_end",
            "duration_s": call.duration_s,
            "reason": call.end_reason or "end",
            "summary": {"arc": summary.pop("arc", []), "cues": summary.pop("cues", {}), **summary},
        }
    else:
        duration = stored_duration(detail)
        arc = [(u.t_end, float((u.sentiment or {})["valence"])) for u in _felt(detail)]
        counts: dict[str, int] = {}
        for c in detail.cues:
            counts[c.cue] = counts.get(c.cue, 0) + 1
        ev = call_end(duration_s=duration, reason=INTERRUPTED, arc=arc, cues=counts)
        # Stored as the call's end time: when it was last heard, not when it was found.
        ev["ended_at"] = (call.started_at + timedelta(seconds=duration)).isoformat()
    ev.update({"call_id": call.call_id, "seq": seq, "t_emit": ev.get("duration_s") or 0.0})
    if call.agent_id:
        ev["agent_id"] = call.agent_id
    return ev


def start_event(detail: CallDetail) -> Event:
    """The stored call's `call_start`, as it opened (with its agent now). Its `seq` is 0: the
    live one's is not stored, and a panel resuming after any seq skips it."""
    call = detail.call
    meta = dict(call.meta or {})
    if call.agent_id:
        meta["agent_id"] = call.agent_id  # a supervisor's reassignment updates the column
    return {
        "type": "call_start",
        "call_id": call.call_id,
        "seq": 0,
        "t_emit": 0.0,
        "source": call.source,
        "channels": list(call.channels),
        "meta": meta,
        "started_at": call.started_at.isoformat(),
    }


def wall_events(detail: CallDetail) -> list[tuple[Event, float]]:
    """A stored call as the supervisor wall draws it: `(event, when)`, its `call_start` first,
    then its cues and escalations, the customer's last stored mood, the acknowledgement of
    each acknowledged escalation, and its stored end if it has one (dated when it ended).

    Why: a restarted process has no tile for a call it was running when it stopped, so its
    `interrupted` end would reach no wall, and an escalation nobody had acknowledged (a crisis
    page raised just before a crash) would vanish with the call. Drawn from the store, the
    call stays on the wall as cut off, with its open escalations, for the usual while.
    """
    call = detail.call
    started = call.started_at.timestamp()
    out: list[tuple[Event, float]] = [(start_event(detail), started)]
    for ev in stored_events(detail):
        if ev["type"] in ("cue", "escalation"):
            out.append((ev, started + float(ev.get("t_emit") or 0.0)))
    # How the customer sounded last: without it the tile said "no customer speech yet" of a
    # call with minutes of it (the live tile's mood comes from events the store does not keep).
    felt = _felt(detail)
    if felt:
        last = felt[-1]
        sentiment = last.sentiment or {}
        prosody = last.prosody if isinstance(last.prosody, dict) else {}
        t = last.t_emit if last.t_emit is not None else last.t_end
        mood: Event = {
            "type": "call_update",
            "call_id": call.call_id,
            "t_emit": t,
            "valence": float(sentiment["valence"]),
            "arousal": prosody.get("arousal"),
            "emotion": sentiment.get("label"),
            "derived": True,
        }
        out.append((mood, started + float(t)))
    for e in detail.escalations:
        if e.acknowledged_by:
            at = e.acknowledged_at.timestamp() if e.acknowledged_at else started
            ack: Event = {
                "type": "escalation_ack",
                "call_id": call.call_id,
                "seq": e.seq,
                "by": e.acknowledged_by,
            }
            out.append((ack, at))
    if call.ended_at is not None:
        out.append((end_event(detail), call.ended_at.timestamp()))
    return out


CUT_OFF = (INTERRUPTED, "shutdown")
"""End reasons of calls a server stop cut off: killed (closed at the restart) or stopped."""


async def ended_for_the_wall(
    store: Store, *, since: datetime, open_since: datetime | None = None
) -> list[CallDetail]:
    """What a restarted wall draws from the store, each call as stored: the calls a server
    stop cut off that ended at or after `since`, and (with `open_since`) calls of any end since
    then with an escalation nobody acknowledged.

    Why: a restarted wall draws only the calls it closes itself (`close_orphans`), so a call
    a graceful stop (SIGTERM: a deploy, a rolling restart) ended as `shutdown`, or one a
    restart shortly before had closed, vanished with its open escalations; such a call ended
    minutes ago, and the wall keeps an ended call that long; one with an open escalation it
    keeps longer (coach/api/wall.py `KEEP_OPEN_ESCALATION_S`). Raises StoreUnavailable.
    """
    out: list[CallDetail] = []
    found = await store.ended_since(since=since, reasons=CUT_OFF, open_since=open_since)
    for call in found:
        detail = await store.get_call(call.call_id)
        if detail is not None and detail.call.ended_at is not None:
            out.append(detail)
    return out


IsLive = Callable[[str], Awaitable[bool]]
OnOrphan = Callable[[CallDetail], None]


class OwnerlessTwice:
    """`is_live` that takes a call for an orphan only when it was found without an owner
    twice, `confirm_s` or more apart.

    An owner key can vanish while its instance runs the call: Redis restarted without
    persistence or flushed. The instance writes it again at its next refresh (every third
    of the key's lifetime), but a sweep in between took a silent call (on hold, say) for an
    orphan: an outside audit saw live calls closed as `interrupted` on every wall 1-6 s
    after a FLUSHDB while their instance went on coaching them. A call that is really cut
    off is found ownerless at every look, so it is closed one look later at most (the sweep
    looks earlier to make up for it).
    """

    def __init__(
        self, is_live: IsLive, *, confirm_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._is_live = is_live
        self.confirm_s = confirm_s
        self._clock = clock
        self._since: dict[str, float] = {}
        """call id -> when it was first found without an owner (and since at every look)."""

    async def __call__(self, call_id: str) -> bool:
        if await self._is_live(call_id):
            self._since.pop(call_id, None)
            return True
        now = self._clock()
        first = self._since.setdefault(call_id, now)
        return now - first < self.confirm_s

    def keep_only(self, call_ids: Collection[str]) -> None:
        """Forget the calls no longer looked at (ended, or written to again)."""
        self._since = {c: t for c, t in self._since.items() if c in call_ids}


END_SEQ_MARGIN = 1000
"""Seqs a killed instance may have sent after the last session state it saved (the flush that
carries both may be cut short by the kill): the `call_end` of its orphan comes after them."""


async def _last_seq_sent(bus: InProcessBus, call_id: str) -> int | None:
    """The seq past everything the call's instance may have sent, from its saved session
    state; None when there is none (no Redis, or it expired).

    Why: partials and metrics are not stored, so the last stored seq is below what the panels
    saw; a `call_end` at that seq + 1 was a replay to them. Found by an outside audit with two
    servers: the orphan's end came as seq 51 after partials 51 and 52, the bus of the other
    instance dropped it as already seen, and the agent's feed there stayed live for good."""
    try:
        state = await bus.load_session_state(call_id)
    except Exception:  # best effort: the stored seqs still order it for a reconnecting panel
        return None
    seq = state.get("seq") if isinstance(state, dict) else None
    return seq + END_SEQ_MARGIN if isinstance(seq, int) and seq >= 0 else None


async def close_orphans(
    store: Store,
    bus: InProcessBus,
    *,
    is_live: IsLive,
    started_before: datetime,
    on_orphan: OnOrphan | None = None,
    backfill: Callable[[str], Awaitable[None]] | None = None,
) -> list[str]:
    """End every stored call that never ended and that no instance runs any more.

    Each gets an `interrupted` call_end on its bus topic, which the store writer persists
    (ended_at, duration, end reason, summary) and the supervisor walls see. Only calls that
    started before `started_before` are looked at, so a call still being set up is never
    taken for an orphan. `on_orphan` sees each orphan's stored call before its end is
    published (the wall draws it: `wall_events`). `backfill` first writes what the shared
    bus still holds of the call and the store does not (`StoreService.backfill_call`).
    Returns the call ids closed; raises StoreUnavailable.
    """
    closed: list[str] = []
    candidates = await store.unended_calls(started_before=started_before)
    if isinstance(is_live, OwnerlessTwice):
        is_live.keep_only({c.call_id for c in candidates})
    for call in candidates:
        if await is_live(call.call_id):
            continue
        if backfill is not None:
            await backfill(call.call_id)
        detail = await store.get_call(call.call_id)
        if detail is None or detail.call.ended_at is not None:
            continue
        ev = end_event(detail, after_seq=await _last_seq_sent(bus, call.call_id))
        if on_orphan is not None:
            on_orphan(detail)
        bus.publish(call_topic(call.call_id), ev)  # the store writes it, panels end
        bus.publish(SUPERVISOR_TOPIC, ev)  # every wall drops the call's tile
        bus.close_topic(call_topic(call.call_id))
        closed.append(call.call_id)
        log.warning(
            "call %s was cut off (no instance runs it): closed as interrupted after %.1f s",
            call.call_id,
            ev["duration_s"],
            extra=call_fields(call.call_id),
        )
    return closed
