"""How long the supervisor wall keeps an ended call (coach/api/wall.py)."""

from __future__ import annotations

import time

from coach.api.wall import KEEP_ENDED_S, KEEP_OPEN_ESCALATION_S, WallTracker
from coach.auth import Principal
from coach.events import Event

SUPERVISOR = Principal(user="sue", role="supervisor")


def _call(wall: WallTracker, call_id: str, *, ended_ago_s: float, escalation: str | None) -> None:
    """A call that ended `ended_ago_s` ago, with an escalation `open`, `taken` or none."""
    ended = time.time() - ended_ago_s
    events: list[Event] = [
        {"type": "call_start", "call_id": call_id, "seq": 1, "meta": {"agent_id": "ann"}},
    ]
    if escalation is not None:
        events.append(
            {
                "type": "escalation",
                "call_id": call_id,
                "seq": 2,
                "reason": "crisis_indicators",
                "urgency": "critical",
                "summary": "said they see no way out",
            }
        )
    if escalation == "taken":
        events.append({"type": "escalation_ack", "call_id": call_id, "seq": 2, "by": "sue"})
    for ev in events:
        wall.apply(ev)
    wall.apply({"type": "call_end", "call_id": call_id, "seq": 3}, at=ended)


def test_an_unacknowledged_escalation_keeps_its_ended_call_on_the_wall_for_an_hour() -> None:
    wall = WallTracker()
    half_hour = KEEP_ENDED_S + 20 * 60
    _call(wall, "open-30", ended_ago_s=half_hour, escalation="open")
    _call(wall, "taken-30", ended_ago_s=half_hour, escalation="taken")
    _call(wall, "quiet-30", ended_ago_s=half_hour, escalation=None)
    _call(wall, "quiet-5", ended_ago_s=300, escalation=None)
    _call(wall, "open-61", ended_ago_s=KEEP_OPEN_ESCALATION_S + 60, escalation="open")
    shown = {t["call_id"] for t in wall.snapshot(SUPERVISOR)}
    # A page nobody took stays; an answered one, or none, leaves after the usual ten
    # minutes; and an hour is the most any ended call stays.
    assert shown == {"open-30", "quiet-5"}


def test_acknowledging_lets_the_ended_call_go() -> None:
    wall = WallTracker()
    _call(wall, "c1", ended_ago_s=KEEP_ENDED_S + 60, escalation="open")
    assert [t["call_id"] for t in wall.snapshot(SUPERVISOR)] == ["c1"]
    wall.apply({"type": "escalation_ack", "call_id": "c1", "seq": 2, "by": "sue"})
    assert wall.snapshot(SUPERVISOR) == []


def test_a_tile_keeps_how_its_call_ended_until_the_call_starts_again() -> None:
    """The wall says "cut off" for a call a server stop ended, so it needs the end's reason."""
    wall = WallTracker()
    wall.apply({"type": "call_start", "call_id": "c1", "seq": 1, "meta": {"agent_id": "ann"}})
    assert wall.snapshot(SUPERVISOR)[0]["end_reason"] is None
    wall.apply({"type": "call_end", "call_id": "c1", "seq": 2, "reason": "shutdown"})
    (tile,) = wall.snapshot(SUPERVISOR)
    assert (tile["end_reason"], tile["ended_at"] is not None) == ("shutdown", True)
    # The same id taken up again (a new leg): live, and no longer cut off.
    wall.apply({"type": "call_start", "call_id": "c1", "seq": 3, "meta": {"agent_id": "ann"}})
    (tile,) = wall.snapshot(SUPERVISOR)
    assert (tile["end_reason"], tile["ended_at"]) == (None, None)


def test_a_tile_says_where_the_mood_heads_then_how_the_call_ended() -> None:
    """One verdict per question: live, the engine's direction; ended, the call_end's change
    (made from the arc when an older writer's call_end has none)."""
    wall = WallTracker()
    for call_id in ("new", "old"):
        wall.apply({"type": "call_start", "call_id": call_id, "seq": 1, "meta": {}})
        wall.apply(
            {
                "type": "call_update",
                "call_id": call_id,
                "valence": -0.5,
                "trend_valence": -0.4,
                "trend": "worsening",
            }
        )
    tiles = {t["call_id"]: t for t in wall.snapshot(SUPERVISOR)}
    assert tiles["new"]["trend"] == "worsening" and tiles["new"]["change"] is None
    wall.apply(
        {
            "type": "call_end",
            "call_id": "new",
            "seq": 9,
            "summary": {"arc": [[1, 0.5], [2, -0.5]], "cues": {}, "change": "worse"},
        }
    )
    wall.apply(
        {
            "type": "call_end",
            "call_id": "old",
            "seq": 9,
            "summary": {"arc": [[1, -0.5], [2, 0.5]], "cues": {}},
        }
    )
    tiles = {t["call_id"]: t for t in wall.snapshot(SUPERVISOR)}
    assert tiles["new"]["change"] == "worse" and tiles["old"]["change"] == "better"
    wall.apply({"type": "call_start", "call_id": "old", "seq": 10, "meta": {}})
    assert {t["call_id"]: t for t in wall.snapshot(SUPERVISOR)}["old"]["change"] is None


def test_a_connection_that_failed_before_anything_was_heard_leaves_after_a_minute() -> None:
    """The README audit: bad frames and oversized messages lined the wall with empty
    "Unassigned" tiles for ten minutes. A call that was heard, or raised anything, keeps the
    usual ten; the snapshot tells the pages the same times."""
    wall = WallTracker()
    ended = time.time() - 90
    for call_id, reason, heard in (
        ("failed", "error:bad_frame", False),
        ("failed-but-heard", "error:oversized", True),
        ("hung-up", "hangup", False),
    ):
        wall.apply({"type": "call_start", "call_id": call_id, "seq": 1, "meta": {}})
        if heard:
            wall.apply({"type": "call_update", "call_id": call_id, "valence": -0.2})
        wall.apply({"type": "call_end", "call_id": call_id, "seq": 2, "reason": reason}, at=ended)
    shown = {t["call_id"] for t in wall.snapshot(SUPERVISOR)}
    assert shown == {"failed-but-heard", "hung-up"}
    assert wall.keep() == {"ended_s": 600.0, "open_escalation_s": 3600.0, "failed_s": 60.0}


async def test_an_erased_call_leaves_every_wall_at_once() -> None:
    """An outside audit: an erased call with an open escalation stayed on the walls for the
    hour, quoting the caller in its handoff, and its alert could not be acknowledged."""
    wall = WallTracker()
    sub = wall.subscribe(SUPERVISOR)
    _call(wall, "gone", ended_ago_s=60, escalation="open")
    wall.apply({"type": "call_start", "call_id": "live", "seq": 1, "meta": {"agent_id": "ann"}})
    while not sub.queue.empty():
        sub.queue.get_nowait()
    sub.overflowed = False
    assert wall.forget("gone") is True
    assert [t["call_id"] for t in wall.snapshot(SUPERVISOR)] == ["live"]
    assert sub.overflowed  # the open wall takes a fresh snapshot without it
    assert wall.forget("live") is False  # a live call is never erased
    assert wall.forget("unknown") is False
