"""The earlier part of a call, as its summaries need it after another instance takes it over.

`call_end.summary` (the emotional arc, cue counts and outcomes, escalations) and the
escalation handoff (cues shown, trigger phrases, mood, what the agent tried) are built from
the memory of the instance that runs the call. When that instance is killed and the call
reconnects elsewhere (ARCHITECTURE.md "Scale-out"), the new instance would summarise only
its own part. So the session state it saves on every event carries a recap of what those
summaries need, and the instance that takes the call over restores it first.

The recap is written on every event, so it is small and bounded: the arc thinned to
`ARC_POINTS` (the call's start and its recent turns kept), the full state of the last
`TAIL_TURNS` customer turns only, the latest `KEPT_CUES` cues (the rest counted), and it is
rebuilt only when something in it changed. It goes to Redis, which never holds unredacted
text: it keeps numbers, labels and cue ids, the trigger phrases as the redacted view has
them, and the agent's moves by name without their words.

A recap that cannot be read (another version, a corrupt key) is ignored as a whole: the
call goes on and summarises what this instance hears (`RecapError`, logged by the session).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from coach.cues.engine import KEPT_PHRASES, AgentMove, CueEngine
from coach.cues.playbook import CueSpec
from coach.events import URGENCY_RANK, Event
from coach.signals.state import CustomerStateTracker

VERSION = 1
ARC_POINTS = 120
"""Arc points kept: past this, the older half is thinned (every turn of the recent half,
and the call's first point, are kept)."""
TAIL_TURNS = 8
"""Customer turns kept whole (emotion, arousal, ASR confidence): the handoff's mood reads 6,
the escalation rules 2 to 4."""
KEPT_CUES = 100
"""Cues listed one by one (with their seq and outcome); earlier ones are only counted."""
KEPT_MOVES = 16
"""The agent's latest moves kept (plus the last of every other kind of move)."""

Recap = str
"""The recap as stored in the session state under "recap": its own JSON text, serialised
once when it changes. The state is serialised at every event, and a JSON string costs a
fraction of the floats it holds (measured: 25 us against 480 us for a long call's recap)."""


class RecapError(ValueError):
    """A stored recap that does not have the shape `build` writes."""


def build(*, tracker: CustomerStateTracker, engine: CueEngine | None) -> Recap:
    """The recap of the call so far."""
    return json.dumps(_fields(tracker=tracker, engine=engine), separators=(",", ":"))


def _fields(*, tracker: CustomerStateTracker, engine: CueEngine | None) -> dict[str, Any]:
    arc = [[round(t, 3), round(v, 3)] for t, v, _ in _thin(tracker.arc, ARC_POINTS)]
    trend = tracker.trend
    recap: dict[str, Any] = {
        "v": VERSION,
        "arc": arc,
        "trend": [round(trend[0], 3), round(trend[1], 3)] if trend else None,
    }
    if engine is None:
        return recap
    states = engine.states
    worst = min(states, key=lambda s: float(s["valence"]), default=None)
    cues = []
    for ev in engine.shown[-KEPT_CUES:]:
        entry: list[Any] = [ev.get("seq"), ev["cue"], round(float(ev["t_end"]), 3)]
        before, after, final = engine.cue_outcome(ev)
        if final:  # the turns it was read from may be thinned out of a later restore
            entry += [_r(before), _r(after)]
        cues.append(entry)
    earlier = dict(engine.earlier_counts)
    for ev in engine.shown[:-KEPT_CUES]:
        earlier[ev["cue"]] = earlier.get(ev["cue"], 0) + 1
    recap.update(
        {
            "turns": [
                [
                    round(float(s["t"]), 3),
                    round(float(s["valence"]), 3),
                    round(float(s["arousal"]), 3),
                    str(s["emotion"]),
                    _r(s.get("confidence")),
                ]
                for s in states[-TAIL_TURNS:]
            ],
            "worst": (
                [
                    round(float(worst["t"]), 3),
                    round(float(worst["valence"]), 3),
                    str(worst["emotion"]),
                ]
                if worst is not None
                else None
            ),
            "cues": cues,
            "earlier": earlier,
            "phrases": list(engine.redacted_phrases),
            "moves": [[m.move, round(m.t, 3)] for m in _kept_moves(engine.agent_moves)],
            "escalations": [
                [r["reason"], r["urgency"], _r(r.get("t"))] for r in engine.escalation.raised
            ],
            "levels": engine.escalation.levels,
            "counts": engine.escalation.cue_counts,
        }
    )
    return recap


def restore(raw: object, *, tracker: CustomerStateTracker, engine: CueEngine | None) -> None:
    """Put the earlier part of the call before what this instance has (nothing, at start).

    Raises `RecapError` without changing anything when `raw` is not a recap `build` wrote."""
    r = _parse(raw)
    specs = engine.holder.current.playbook.cues if engine is not None else {}
    arousal = {t: a for t, _, a, _, _ in r.turns}
    tracker.resume(arc=[(t, v, arousal.get(t, 0.5)) for t, v in r.arc], trend=r.trend)
    if engine is None:
        return
    engine.states[:0] = _states(r)
    engine.shown[:0] = [_cue_stub(c, specs.get(c.cue)) for c in r.cues]
    engine.earlier_counts = _add(r.earlier, engine.earlier_counts)
    engine.earlier_phrases = list(r.phrases)
    engine.redacted_phrases[:0] = [p for p in r.phrases if p not in engine.redacted_phrases]
    del engine.redacted_phrases[:-KEPT_PHRASES]
    engine.agent_moves[:0] = [AgentMove(move, t, "") for move, t in r.moves]
    engine.escalation.resume(
        raised=[{"reason": e, "urgency": u, "t": t} for e, u, t in r.escalations],
        levels=r.levels,
        cue_counts=r.counts,
    )


# ------------------------------------------------------------------------------- reading


@dataclass(frozen=True, slots=True)
class _Cue:
    seq: int | None
    cue: str
    t: float
    outcome: tuple[float | None, float | None] | None


@dataclass(frozen=True, slots=True)
class _Parsed:
    arc: list[tuple[float, float]]
    trend: tuple[float, float] | None
    turns: list[tuple[float, float, float, str, float | None]]
    worst: tuple[float, float, str] | None
    cues: list[_Cue]
    earlier: dict[str, int]
    phrases: list[str]
    moves: list[tuple[str, float]]
    escalations: list[tuple[str, str, float | None]]
    levels: dict[str, int]
    counts: dict[str, int]


def _parse(raw: object) -> _Parsed:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise RecapError(f"not JSON ({exc})") from None
    d = _dict(raw)
    if d.get("v") != VERSION:
        raise RecapError(f"recap version {d.get('v')!r}, expected {VERSION}")
    trend = d.get("trend")
    worst = d.get("worst")
    return _Parsed(
        arc=[(_num(p[0]), _num(p[1])) for p in _rows(d.get("arc"), 2)],
        trend=None if trend is None else (_num(_row(trend, 2)[0]), _num(trend[1])),
        turns=[
            (_num(t[0]), _num(t[1]), _num(t[2]), _str(t[3]), _opt_num(t[4]))
            for t in _rows(d.get("turns", []), 5)
        ],
        worst=None if worst is None else (_num(_row(worst, 3)[0]), _num(worst[1]), _str(worst[2])),
        cues=[_parse_cue(c) for c in _list(d.get("cues", []))],
        earlier=_counts(d.get("earlier", {})),
        phrases=[_str(p) for p in _list(d.get("phrases", []))][-KEPT_PHRASES:],
        moves=[(_str(m[0]), _num(m[1])) for m in _rows(d.get("moves", []), 2)],
        escalations=[
            (_str(e[0]), _urgency(e[1]), _opt_num(e[2])) for e in _rows(d.get("escalations", []), 3)
        ],
        levels={k: _rank(v) for k, v in _dict(d.get("levels", {})).items()},
        counts=_counts(d.get("counts", {})),
    )


def _parse_cue(raw: object) -> _Cue:
    row = _list(raw)
    if len(row) not in (3, 5):
        raise RecapError(f"a cue entry of {len(row)} fields")
    seq = row[0]
    if seq is not None and (not isinstance(seq, int) or isinstance(seq, bool) or seq < 0):
        raise RecapError(f"cue seq {seq!r}")
    outcome = (_opt_num(row[3]), _opt_num(row[4])) if len(row) == 5 else None
    return _Cue(seq, _str(row[1]), _num(row[2]), outcome)


def _states(r: _Parsed) -> list[dict[str, Any]]:
    """The cue engine's per-turn states: whole for the tail, valence only before it (the
    older turns count for the trend, the worst moment and the cues' outcomes, which read
    valence); the worst moment keeps its emotion."""
    first_whole = r.turns[0][0] if r.turns else math.inf
    states: list[dict[str, Any]] = [
        {"t": t, "valence": v, "arousal": 0.5, "emotion": "neutral", "text": "", "confidence": None}
        for t, v in r.arc
        if t < first_whole
    ]
    states += [
        {"t": t, "valence": v, "arousal": a, "emotion": e, "text": "", "confidence": c}
        for t, v, a, e, c in r.turns
    ]
    if r.worst is not None:
        t, v, emotion = r.worst
        same = [s for s in states if abs(s["t"] - t) < 1e-6]
        if same:
            same[0].update(valence=v, emotion=emotion)
        else:  # thinned out of the arc
            states.append(
                {
                    "t": t,
                    "valence": v,
                    "arousal": 0.5,
                    "emotion": emotion,
                    "text": "",
                    "confidence": None,
                }
            )
            states.sort(key=lambda s: float(s["t"]))
    return states


def _cue_stub(c: _Cue, spec: CueSpec | None) -> Event:
    """What the summaries (and the wall's last cue) read of a cue shown before the takeover;
    no words: its phrases are in the engine's `earlier_phrases`."""
    ev: Event = {
        "type": "cue",
        "cue": c.cue,
        "seq": c.seq,
        "t_start": c.t,
        "t_end": c.t,
        "t_emit": c.t,
        "evidence": {"phrases": []},
        "restored": True,
    }
    if spec is not None:
        ev.update(title=spec.title, priority=spec.priority, severity=spec.severity)
    if c.outcome is not None:
        ev["outcome"] = c.outcome
    return ev


# ------------------------------------------------------------------------------- helpers


def _thin(
    points: Sequence[tuple[float, float, float]], limit: int
) -> list[tuple[float, float, float]]:
    """At most `limit` points: the recent half as is, the older part evenly thinned with
    its first point (the call's start) kept."""
    if len(points) <= limit:
        return list(points)
    recent = limit // 2
    older, keep = points[:-recent], limit - recent
    step = len(older) / keep
    return [older[int(i * step)] for i in range(keep)] + list(points[-recent:])


def _kept_moves(moves: Sequence[AgentMove]) -> list[AgentMove]:
    """The latest moves, and the last of every kind before them (the handoff names every
    kind of move the agent tried)."""
    last_of_kind = {m.move: i for i, m in enumerate(moves)}
    keep = set(last_of_kind.values()) | set(range(max(0, len(moves) - KEPT_MOVES), len(moves)))
    return [moves[i] for i in sorted(keep)]


def _add(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    out = dict(a)
    for k, n in b.items():
        out[k] = out.get(k, 0) + n
    return out


def _r(x: object) -> float | None:
    return round(float(x), 3) if isinstance(x, int | float) else None


def _num(x: object) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        raise RecapError(f"{x!r} is not a number")
    return float(x)


def _opt_num(x: object) -> float | None:
    return None if x is None else _num(x)


def _str(x: object) -> str:
    if not isinstance(x, str):
        raise RecapError(f"{x!r} is not a string")
    return x


def _list(x: object) -> list[Any]:
    if not isinstance(x, list):
        raise RecapError(f"{type(x).__name__} where a list was expected")
    return x


def _dict(x: object) -> dict[str, Any]:
    if not isinstance(x, dict):
        raise RecapError(f"{type(x).__name__} where an object was expected")
    return x


def _row(x: object, n: int) -> list[Any]:
    row = _list(x)
    if len(row) != n:
        raise RecapError(f"{len(row)} fields where {n} were expected")
    return row


def _rows(x: object, n: int) -> list[list[Any]]:
    return [_row(item, n) for item in _list(x)]


def _counts(x: object) -> dict[str, int]:
    out = {}
    for k, n in _dict(x).items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise RecapError(f"count {n!r} for {k!r}")
        out[k] = n
    return out


def _urgency(x: object) -> str:
    u = _str(x)
    if u not in URGENCY_RANK:
        raise RecapError(f"urgency {u!r}")
    return u


def _rank(x: object) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or x not in URGENCY_RANK.values():
        raise RecapError(f"urgency rank {x!r}")
    return x
