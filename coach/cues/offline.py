"""Re-run the language cue engine over recorded events, without audio or ASR.

A replay's events (`python -m coach replay ... --events X.jsonl`) hold every transcript
with its words, sentiment, prosody and state, and every partial transcript (for early
cues). Feeding them to a fresh CueEngine with a different playbook shows what that playbook would have emitted on the same calls, in
seconds instead of minutes of ASR: this is how `scripts/tune_playbook.py` measures a
proposed threshold change. Timing cues (dead air, overtalk, pace) need the VAD intervals,
which events do not carry, so they are kept as recorded.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from coach.cues.engine import AnalyzeFn, CueEngine, LoadedPlaybook, PlaybookHolder
from coach.events import Event
from models.emotion import RecentScores


async def rescore(
    events: Iterable[dict[str, Any]],
    holder: PlaybookHolder,
    analyze: AnalyzeFn,
    *,
    keep_timing: bool = True,
) -> list[Event]:
    """The cue and escalation events `holder`'s playbook gives on a recorded call."""
    engine = CueEngine(holder=holder, analyze=analyze)
    dynamics = {k for k, v in holder.current.playbook.cues.items() if v.kind == "dynamics"}
    out: list[Event] = []
    for ev in sorted(events, key=lambda e: (float(e.get("t_emit", 0.0)), e.get("seq", 0))):
        kind = ev.get("type")
        if kind == "cue" and ev.get("cue") in dynamics and keep_timing:
            engine.fired_at[ev["cue"]] = float(ev.get("t_emit", 0.0))
            engine.shown.append(ev)
            out.append(ev)
        elif kind in ("transcript", "partial"):
            handle = engine.on_transcript if kind == "transcript" else engine.on_partial
            for found in await handle(ev):
                found["t_emit"] = ev.get("t_emit", found.get("t_end"))
                found["call_id"] = ev.get("call_id")
                out.append(found)
    return out


@dataclass(frozen=True, slots=True)
class FixedPlaybook:
    """A PlaybookHolder that never reloads: one playbook for a whole offline run."""

    current: LoadedPlaybook


class CachedAnalysis:
    """An AnalyzeFn over a loaded EmotionModel, for offline use (no scheduler).

    Each distinct text is scored once: offline runs score the same clauses again for every
    candidate playbook or every variant of a call.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self._scores = RecentScores(model.score, size=None)

    def scores(self, texts: Sequence[str]) -> list[Any]:
        return self._scores(texts)

    async def __call__(self, texts: Sequence[str]) -> list[Any]:
        return self.scores(texts)
