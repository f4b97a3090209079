"""The supervisor wall's picture of every live call, kept current from the event bus.

A wall that connects needs, at once, every live call with its latest state (who, since when,
how the customer feels, the last cue, open escalations), then the changes. Rebuilding that
from per-call event histories on every connect would cost O(calls x events) and miss what
has scrolled out of them, so one `WallTracker` per process listens to the bus (a listener
sees every event, synchronously, never dropped), folds the events that matter into one
small `Tile` per call, and fans the changes out to connected walls through bounded queues.

Sources, so the wall works with or without the cue engine's supervisor events:
- the supervisor topic (`call_start`, `call_end`, `cue`, `escalation`, `call_update`,
  `escalation_ack`);
- the redacted call topics, for `cue` and `escalation` (deduplicated by `seq`) and, for calls
  whose session does not publish `call_update`, one derived from each customer transcript.

With several instances on one Redis, a wall shows every instance's calls: the other instances'
supervisor events arrive through `RedisBus.watch_remote` (`remote`), stamped with when they
were written, so a replay of the stream after a restart dates each tile correctly.

Only `call_start` makes a tile: it carries the meta (agent, team) that decides who may see the
call. An event for a call the wall has not seen start (an acknowledgement sent to an instance
whose wall never saw the call) is not a call of its own (found by an audit: such a tile had
no agent, so every supervisor, of any team, could watch the call).

A long call's `call_start` scrolls out of the trimmed supervisor stream, so an instance started
later would never show it: `seed` draws such a call from the record its instance keeps in Redis
(coach/api/wall_seed.py finds those calls, `unknown` tells it of a remote event for a call
without a tile). Acknowledgements and ends of calls without a tile are remembered a while, as
the record may be read after them.

A call another instance took over after its first one died starts again there with a
`call_start` marked `resumed`. A wall that sees that one but not the call's earlier part (it
scrolled out, or the wall's instance started after it) would draw a tile without the
escalations raised before the takeover, an open critical one included (found by an outside
audit with two real servers). Such a tile is completed from the record too: the record lives
on through the takeover and keeps the first instance's escalations and acknowledgements.

Each wall only receives the calls its principal may see (coach/api/security.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from coach.api.security import may_view_call
from coach.auth import Principal
from coach.bus import SUPERVISOR_TOPIC, call_topic
from coach.events import Event, wall_time
from coach.logs import call_fields
from coach.signals.state import arc_change

log = logging.getLogger(__name__)

KEEP_ENDED_S = 600.0
"""Ended calls stay on the wall (greyed, with their summary link) this long."""
KEEP_FAILED_S = 60.0
"""A connection that failed (ended `error:...`) before anything of the call was heard stays
only this long: an outside audit found bad frames and oversized messages lining the wall
with "Unassigned, no customer speech yet" tiles for ten minutes."""
KEEP_OPEN_ESCALATION_S = 3600.0
"""An ended call with an escalation nobody acknowledged stays this long: a crisis page must be
taken by someone (a welfare call-back, a report), not expire off the wall ten minutes after
the caller hung up."""
MAX_TILES = 5000
WALL_QUEUE = 2000
UNKNOWN_CALLS = 2000
"""Calls without a tile whose acknowledgements and end the wall remembers for `seed`."""
UNKNOWN_EVENTS = 32

_FORWARDED = frozenset(
    {
        "call_start",
        "call_end",
        "cue",
        "escalation",
        "call_update",
        "escalation_ack",
        "agent_assigned",
        "call_contact",
    }
)
_REASSIGNING = frozenset({"call_start", "agent_assigned"})
"""Events that set a call's agent, and with it which walls may see the call."""


@dataclass(slots=True)
class Tile:
    call_id: str
    meta: dict[str, Any] = field(default_factory=dict)
    source: str = "unknown"
    speakers: tuple[str, ...] = ()
    """The call's channels, as its `call_start` names them."""
    started_at: float = 0.0
    ended_at: float | None = None
    end_reason: str | None = None
    """The call_end's `reason`: a wall says "cut off" for a call a server stop or crash ended
    (`coach.store.recovered.CUT_OFF`), not just "ended"."""
    t: float = 0.0
    valence: float | None = None
    arousal: float | None = None
    emotion: str | None = None
    trend_valence: float | None = None
    trend: str | None = None
    """Where the mood is heading now (`coach.signals.state.direction`)."""
    change: str | None = None
    """How the call ended against how it started (`arc_change`), once it ended."""
    last_cue: dict[str, Any] | None = None
    cues: int = 0
    escalations: dict[int, dict[str, Any]] = field(default_factory=dict)
    contact_lost_at: float | None = None
    """When this instance found the call's own instance gone (killed, or cut off from Redis:
    its liveness key expired), epoch seconds; None while it answers. Such a call is neither
    coached nor heard from until the orphan sweep closes it (`coach.store.recovered`), about
    a minute later: the wall says so meanwhile instead of showing it live (`ContactWatcher`)."""
    engine_updates: bool = False
    """The session publishes its own call_update events: derive none from transcripts."""
    seen: set[int] = field(default_factory=set)

    def to_json(self) -> dict[str, Any]:
        return {
            "call_id": self.call_id,
            "agent_id": self.meta.get("agent_id"),
            "team": self.meta.get("team"),
            "meta": self.meta,
            "source": self.source,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "end_reason": self.end_reason,
            "t": self.t,
            "valence": self.valence,
            "arousal": self.arousal,
            "emotion": self.emotion,
            "trend_valence": self.trend_valence,
            "trend": self.trend,
            "change": self.change,
            "contact_lost_at": self.contact_lost_at,
            "last_cue": self.last_cue,
            "cues": self.cues,
            "escalations": [self.escalations[k] for k in sorted(self.escalations)],
        }


@dataclass(eq=False, slots=True)
class WallSubscription:
    principal: Principal
    queue: asyncio.Queue[Event]
    overflowed: bool = False

    def offer(self, event: Event) -> None:
        if self.queue.full():
            # A wall that stopped reading gets a fresh snapshot instead of a gap.
            self.overflowed = True
            while not self.queue.empty():
                self.queue.get_nowait()
        self.queue.put_nowait(event)

    def resync(self, event: Event) -> None:
        """Send the wall a fresh snapshot instead of this event (the pump takes the snapshot
        when it gets there, so it shows the calls as they are by then, and never the event)."""
        self.overflowed = True
        self.offer(event)


class WallTracker:
    def __init__(
        self,
        *,
        keep_ended_s: float = KEEP_ENDED_S,
        keep_open_escalation_s: float = KEEP_OPEN_ESCALATION_S,
        queue: int = WALL_QUEUE,
    ) -> None:
        self.keep_ended_s = keep_ended_s
        self.keep_open_escalation_s = max(keep_open_escalation_s, keep_ended_s)
        self._queue = queue
        self.calls: dict[str, Tile] = {}
        self._subs: set[WallSubscription] = set()
        self._unknown: OrderedDict[str, list[tuple[Event, float]]] = OrderedDict()
        """call_id -> remote `escalation_ack`s and `call_end` of a call without a tile."""
        self.unknown: Callable[[str], None] | None = None
        """Told the id of a call another instance runs that has no tile here (the seeder)."""
        self._partial: set[str] = set()
        """Calls whose tile was drawn from a takeover's `call_start` alone: their earlier
        part (escalations, acknowledgements) is still to be read from the record."""

    # -- input -------------------------------------------------------------------------

    def listener(self, topic: str, event: Event) -> None:
        """Bus listener: every event of every topic passes here, so keep it cheap."""
        if topic == SUPERVISOR_TOPIC:
            self.apply(event)
            return
        call_id = event.get("call_id")
        if not isinstance(call_id, str) or topic != call_topic(call_id):
            return  # the agent's unredacted topic, or anything else
        etype = event.get("type")
        if etype in ("cue", "escalation"):
            self.apply(event)
        elif etype == "transcript" and event.get("speaker") == "customer":
            tile = self.calls.get(call_id)
            state = event.get("state")
            if tile is not None and not tile.engine_updates and isinstance(state, dict):
                self.apply(_derived_update(event, state, tile))

    def remote(self, topic: str, event: Event, written_at: float) -> None:
        """`RedisBus.watch_remote` listener: another instance's supervisor event."""
        if topic != SUPERVISOR_TOPIC:
            return
        call_id, etype = event.get("call_id"), event.get("type")
        if isinstance(call_id, str) and call_id not in self.calls and etype in _FORWARDED:
            if etype in ("escalation_ack", "call_end"):
                self._remember(call_id, event, written_at)
            if etype not in ("call_start", "call_end") and self.unknown is not None:
                self.unknown(call_id)
            if etype == "call_start" and _meta(event).get("resumed"):
                self.apply(event, at=written_at)
                if call_id in self.calls:
                    self._partial.add(call_id)
                    if self.unknown is not None:
                        self.unknown(call_id)
                return
        self.apply(event, at=written_at)

    def _remember(self, call_id: str, event: Event, at: float) -> None:
        kept = self._unknown.setdefault(call_id, [])
        self._unknown.move_to_end(call_id)
        if len(kept) < UNKNOWN_EVENTS:
            kept.append((event, at))
        while len(self._unknown) > UNKNOWN_CALLS:
            self._unknown.popitem(last=False)

    def seed(
        self, call_id: str, events: Sequence[tuple[Event, float]], *, cues: int | None = None
    ) -> bool:
        """Draw a call that another instance runs and whose `call_start` this wall never saw.

        `events`: `(event, when)` from the call's record, its `call_start` first. Nothing is
        drawn without that `call_start` (it names who may see the call), for a call the wall
        already shows, or for one whose end has arrived meanwhile. Walls that may see the call
        get a fresh snapshot (a `call_start` alone would date the tile now). `cues`: how many
        cues the call has had (the record keeps the latest only). True if drawn.

        A tile drawn from a takeover's `call_start` alone (`lacks`) gets the escalations and
        acknowledgements of the record that it lacks; the rest it has newer from the stream.
        """
        if call_id in self._partial and call_id in self.calls:
            return self._complete(self.calls[call_id], events, cues=cues)
        if call_id in self.calls:
            return False
        if any(ev.get("type") == "call_end" for ev, _ in self._unknown.get(call_id, ())):
            return False
        first = events[0][0] if events else {}
        if first.get("type") != "call_start" or first.get("call_id") != call_id:
            log.debug(
                "wall: call %s runs elsewhere but its call_start is gone; not shown",
                call_id,
                extra=call_fields(call_id),
            )
            return False
        tile = self._new_tile(call_id, events[0][1])
        for ev, at in [*events, *self._unknown.pop(call_id, ())]:
            if ev.get("call_id") != call_id or ev.get("type") not in _FORWARDED:
                continue
            seq = ev.get("seq")
            if ev.get("type") in ("cue", "escalation") and isinstance(seq, int):
                if seq in tile.seen:
                    continue
                tile.seen.add(seq)
            _fold(tile, ev, at)
        if cues is not None:
            tile.cues = max(tile.cues, cues)
        for sub in list(self._subs):
            if may_view_call(sub.principal, tile.meta):
                sub.resync(first)
        return True

    def _complete(
        self, tile: Tile, events: Sequence[tuple[Event, float]], *, cues: int | None
    ) -> bool:
        self._partial.discard(tile.call_id)
        if cues is not None:  # the record counts the cues of every part of the call
            tile.cues = max(tile.cues, cues)
        for ev, at in events:
            seq = ev.get("seq")
            if ev.get("call_id") != tile.call_id or not isinstance(seq, int):
                continue
            if ev.get("type") == "escalation" and seq not in tile.seen:
                tile.seen.add(seq)
                _fold(tile, ev, at)
            elif ev.get("type") == "escalation_ack":
                _fold(tile, ev, at)
        for sub in list(self._subs):
            if may_view_call(sub.principal, tile.meta):
                sub.resync({"type": "call_update", "call_id": tile.call_id})
        return True

    def lacks(self, call_id: str) -> bool:
        """The wall has no tile for this call, or only one drawn from a takeover's
        `call_start`: the seeder reads the call's record for it."""
        return call_id not in self.calls or call_id in self._partial

    def apply(self, event: Event, *, at: float | None = None) -> None:
        """Fold one event into its call's tile and pass it on to the walls that may see it.

        `at`: when the event happened (epoch seconds), if not now (a replayed remote event).
        """
        call_id, etype = event.get("call_id"), event.get("type")
        if not isinstance(call_id, str) or etype not in _FORWARDED:
            return
        tile = self.calls.get(call_id)
        saw: set[WallSubscription] | None = None
        if tile is None:
            if etype != "call_start":
                return  # not a call this wall knows: see the module docstring
            self._unknown.pop(call_id, None)  # an earlier call's end must not stop a seed later
            tile = self._new_tile(call_id, at)
        elif etype in _REASSIGNING:
            # Who may see a call turns on its agent (an unassigned call is every supervisor's,
            # coach/api/security.py): note who saw it before an event that may change that.
            saw = {s for s in self._subs if may_view_call(s.principal, tile.meta)}
        seq = event.get("seq")
        if etype in ("cue", "escalation") and isinstance(seq, int):
            if seq in tile.seen:
                return  # the same event from the other topic
            tile.seen.add(seq)
        _fold(tile, event, time.time() if at is None else at)
        for sub in list(self._subs):
            sees = may_view_call(sub.principal, tile.meta)
            if saw is not None and sees != (sub in saw):
                # The call left this wall (given to another team's agent) or joined it: a
                # fresh snapshot drops or adds the whole tile, which one event cannot.
                sub.resync(event)
            elif sees:
                sub.offer(event)

    def forget(self, call_id: str) -> bool:
        """The call was erased from the store: its tile goes from every wall at once, with its
        handoffs and their quotes of the caller (an outside audit found an erased call on the
        walls for the hour an open escalation keeps it, its alert impossible to acknowledge).
        Only an ended call is erased. True if a tile went."""
        self._unknown.pop(call_id, None)
        tile = self.calls.get(call_id)
        if tile is None or tile.ended_at is None:
            return False
        del self.calls[call_id]
        self._partial.discard(call_id)
        for sub in list(self._subs):
            if may_view_call(sub.principal, tile.meta):
                sub.resync({"type": "call_update", "call_id": call_id})
        return True

    def _new_tile(self, call_id: str, at: float | None = None) -> Tile:
        self._purge()
        tile = Tile(call_id=call_id, started_at=time.time() if at is None else at)
        self.calls[call_id] = tile
        return tile

    def _purge(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        for cid in [
            c
            for c, t in self.calls.items()
            if t.ended_at is not None and now - t.ended_at > self._keep(t)
        ]:
            del self.calls[cid]
        while len(self.calls) >= MAX_TILES:
            oldest = min(self.calls.values(), key=lambda t: (t.ended_at is None, t.started_at))
            del self.calls[oldest.call_id]
        self._partial &= self.calls.keys()

    def _keep(self, tile: Tile) -> float:
        """How long after its end a tile stays: longer while an escalation is still open,
        shorter for a connection that failed before anything was heard. The pages apply the
        same rule (`keep` in the snapshot, wall.js)."""
        if any(e.get("acknowledged_by") is None for e in tile.escalations.values()):
            return self.keep_open_escalation_s
        failed = (tile.end_reason or "").startswith("error:")
        if failed and tile.valence is None and tile.cues == 0 and not tile.escalations:
            return min(KEEP_FAILED_S, self.keep_ended_s)
        return self.keep_ended_s

    def keep(self) -> dict[str, float]:
        """The keep times, as the snapshot hands them to the pages."""
        return {
            "ended_s": self.keep_ended_s,
            "open_escalation_s": self.keep_open_escalation_s,
            "failed_s": min(KEEP_FAILED_S, self.keep_ended_s),
        }

    def live_calls(self) -> list[str]:
        """The calls the wall shows as live (not ended)."""
        return [c for c, t in self.calls.items() if t.ended_at is None]

    def mark_contact(self, call_id: str, *, lost: bool) -> bool:
        """Say on the walls that a live call's instance is gone (`lost`), or answers again.
        A local `call_contact` event (never on the bus: each instance judges for itself);
        True when the tile changed."""
        tile = self.calls.get(call_id)
        if tile is None or tile.ended_at is not None or (tile.contact_lost_at is not None) == lost:
            return False
        since = datetime.now(UTC).isoformat() if lost else None
        self.apply({"type": "call_contact", "call_id": call_id, "lost": lost, "since": since})
        return True

    # -- output ------------------------------------------------------------------------

    def has_ended(self, call_id: str) -> bool:
        """The wall saw this call's end (it keeps the tile for `keep_ended_s`)."""
        tile = self.calls.get(call_id)
        return tile is not None and tile.ended_at is not None

    def saw(self, call_id: str, seq: int) -> bool:
        """The wall passed on this call's cue or escalation numbered `seq`."""
        tile = self.calls.get(call_id)
        return tile is not None and seq in tile.seen

    def meta(self, call_id: str) -> dict[str, Any] | None:
        tile = self.calls.get(call_id)
        return tile.meta if tile else None

    def snapshot(self, principal: Principal) -> list[dict[str, Any]]:
        self._purge()
        return [t.to_json() for t in self.calls.values() if may_view_call(principal, t.meta)]

    def subscribe(self, principal: Principal) -> WallSubscription:
        sub = WallSubscription(principal, asyncio.Queue(maxsize=self._queue))
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: WallSubscription) -> None:
        self._subs.discard(sub)


def _fold(tile: Tile, event: Event, at: float) -> None:
    etype = event["type"]
    t_emit = event.get("t_emit")
    if isinstance(t_emit, int | float):
        tile.t = max(tile.t, float(t_emit))
    match etype:
        case "call_start":
            tile.meta = dict(_meta(event))
            tile.source = str(event.get("source") or "unknown")
            channels = event.get("channels")
            if isinstance(channels, list):
                tile.speakers = tuple(str(c) for c in channels)
            tile.ended_at, tile.end_reason, tile.change = None, None, None
            tile.contact_lost_at = None  # a takeover: the call runs again
            # A takeover's call_start names when the call began on its first instance.
            started = _epoch(event.get("started_at"))
            if started is not None:
                tile.started_at = started
        case "call_end":
            # A call closed after a restart ends when it was last heard, not when it was
            # found (recovered.end_event): dated so, its tile leaves when the store says it
            # ended ten minutes ago, not ten minutes after a restart hours later.
            ended = _epoch(event.get("ended_at"))
            tile.ended_at = at if ended is None else min(ended, at)
            tile.contact_lost_at = None
            reason = event.get("reason")
            tile.end_reason = reason if isinstance(reason, str) else None
            summary = event.get("summary")
            if isinstance(summary, dict):
                # An older writer's call_end has no verdict: made from its arc, by the same rule.
                change = (
                    summary["change"] if "change" in summary else arc_change(summary.get("arc"))
                )
                tile.change = change if isinstance(change, str) else None
        case "call_update":
            tile.engine_updates = tile.engine_updates or not event.get("derived")
            tile.valence = _num(event.get("valence"))
            tile.arousal = _num(event.get("arousal"))
            tile.emotion = event.get("emotion")
            tile.trend_valence = _num(event.get("trend_valence"))
            trend = event.get("trend")
            tile.trend = trend if isinstance(trend, str) else None
            if event.get("last_cue"):
                tile.last_cue = event["last_cue"]
        case "cue":
            tile.cues += 1
            tile.last_cue = {
                k: event.get(k) for k in ("seq", "cue", "title", "priority", "severity", "t_emit")
            }
        case "escalation":
            seq = int(event.get("seq") or 0)
            tile.escalations[seq] = {
                **{
                    k: event.get(k)
                    for k in ("seq", "reason", "urgency", "cue", "detail", "summary")
                },
                "t_emit": event.get("t_emit"),
                "acknowledged_by": None,
            }
        case "agent_assigned":
            tile.meta["agent_id"] = event.get("agent_id")
        case "escalation_ack":
            esc = tile.escalations.get(int(event.get("seq") or 0))
            if esc is not None:
                esc["acknowledged_by"] = event.get("by")
        case "call_contact":
            tile.contact_lost_at = _epoch(event.get("since")) if event.get("lost") else None


def _derived_update(event: Event, state: dict[str, Any], tile: Tile) -> Event:
    trend = state.get("trend")
    return {
        "type": "call_update",
        "call_id": tile.call_id,
        "t_emit": event.get("t_emit"),
        "valence": state.get("valence"),
        "arousal": state.get("arousal"),
        "emotion": state.get("emotion"),
        "trend_valence": trend.get("valence") if isinstance(trend, dict) else None,
        "trend": trend.get("direction") if isinstance(trend, dict) else None,
        "last_cue": tile.last_cue,
        "derived": True,
    }


def _meta(event: Event) -> dict[str, Any]:
    meta = event.get("meta")
    return meta if isinstance(meta, dict) else {}


def _epoch(value: Any) -> float | None:
    """An event's ISO 8601 time (`wall_time`) as epoch seconds, else None."""
    when = wall_time(value)
    return when.timestamp() if when is not None else None


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None
