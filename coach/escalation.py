"""When a call needs someone above the agent: escalation reasons, urgency and the handoff.

Reasons and urgencies are those of ARCHITECTURE.md. Critical: crisis language (the `crisis`
cue) or an intense negative state (arousal > 0.95 and valence < -0.8) sustained over three
customer turns, and also the agent's own safety protocol (an agent move, `safety_move`). A
reason is raised once per call, and again only if its urgency rises, so the supervisor wall
gets one alert per situation, not one per utterance; except that a cue shown again inside its
cooldown because it matches clearly better than the one shown (`refire_above`: crisis) pages
again. A weak false alarm (a car accident, a shut-off notice read as danger) would otherwise
use up the call's one crisis page: the supervisor who dismissed it would never hear of the real
crisis that followed, and the handoff would quote the false alarm (an outside audit). Every escalation carries the handoff
summary (state, trend, trigger phrases, cues shown, what the agent tried) so whoever joins
does not make the customer repeat themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from coach import events
from coach.cues.playbook import CueSpec, Playbook
from coach.events import URGENCY_RANK, Event


@dataclass
class EscalationDetector:
    raised: list[dict[str, Any]] = field(default_factory=list)
    _level: dict[str, int] = field(default_factory=dict)
    _counts: dict[str, int] = field(default_factory=dict)
    _turns: dict[str, set[float]] = field(default_factory=dict)
    """cue -> the customer turns (by start) it was shown on or matched again during its
    cooldown: anger that builds inside frustration's 45 s cooldown showed one card, and
    `repeated_frustration`, which counted cards, could never be raised (an outside
    supervisor audit)."""

    @property
    def levels(self) -> dict[str, int]:
        """The urgency rank each reason was last raised at (a copy)."""
        return dict(self._level)

    @property
    def cue_counts(self) -> dict[str, int]:
        """How often each cue that may escalate was shown (a copy)."""
        return dict(self._counts)

    def resume(
        self,
        *,
        raised: Sequence[dict[str, Any]],
        levels: Mapping[str, int],
        cue_counts: Mapping[str, int],
    ) -> None:
        """Continue from the part of the call another instance ran (coach/recap.py): a
        reason already raised there is not paged again at the same urgency, and repeated
        cues go on counting towards `repeated_frustration` and `complex_inquiry`."""
        self.raised[:0] = [dict(r) for r in raised]
        for reason, rank in levels.items():
            self._level[reason] = max(rank, self._level.get(reason, -1))
        for cue, n in cue_counts.items():
            self._counts[cue] = self._counts.get(cue, 0) + n

    def matched_again(self, cue_id: str, turn: float) -> None:
        """`cue_id` matched the customer turn starting at `turn` again, held back by its
        cooldown: it counts towards a repeated-cue escalation, once per turn."""
        self._turns.setdefault(cue_id, set()).add(turn)

    def turns_matched(self, cue_id: str) -> frozenset[float]:
        """Starts of the customer turns the cue was shown on or matched again on."""
        return frozenset(self._turns.get(cue_id, ()))

    def _repeats(self, cue_id: str) -> int:
        """Turns the cue was shown on or matched again on; at least one card shown."""
        if not self._counts.get(cue_id):
            return 0
        return max(self._counts[cue_id], len(self._turns.get(cue_id, ())))

    def _raise(
        self,
        reason: str,
        urgency: str,
        *,
        cue: str | None,
        detail: str,
        summary: Callable[[], dict[str, Any]],
        state: Mapping[str, Any],
        again: bool = False,
    ) -> Event | None:
        rank = URGENCY_RANK[urgency]
        if self._level.get(reason, -1) >= rank and not again:
            return None
        self._level[reason] = max(rank, self._level.get(reason, -1))
        self.raised.append({"reason": reason, "urgency": urgency, "t": state.get("t")})
        return events.escalation(
            reason=reason,
            urgency=urgency,
            summary=summary(),
            cue=cue,
            detail=detail,
            t_end=state.get("t"),
            # The turn that raised it, start to end (the README's example); its end alone
            # where only that is known.
            t_start=state.get("t_start", state.get("t")),
        )

    def observe_cues(
        self,
        fired: Sequence[tuple[str, CueSpec]],
        *,
        summary: Callable[[], dict[str, Any]],
        state: Mapping[str, Any],
        stronger_again: Collection[str] = (),
    ) -> list[Event]:
        """The escalations the cues just shown call for (a crisis cue: critical, at once).

        Also on its own for the cues fired early, from a partial transcript, before the
        turn's state is known: `state` then holds only the time. `stronger_again`: the cues
        shown again inside their cooldown for a clearly better match, paged again.
        """
        out: list[Event | None] = []
        for cue_id, spec in fired:
            self._counts[cue_id] = self._counts.get(cue_id, 0) + 1
            if isinstance(turn := state.get("t_start"), int | float):
                self._turns.setdefault(cue_id, set()).add(float(turn))
            if spec.escalate is not None:
                again = cue_id in stronger_again
                out.append(
                    self._raise(
                        spec.escalate.reason,
                        spec.escalate.urgency,
                        cue=cue_id,
                        detail=(
                            f"{cue_id} cue again, a clearer match than the one paged"
                            if again
                            else f"{cue_id} cue"
                        ),
                        summary=summary,
                        state=state,
                        again=again,
                    )
                )
        return [ev for ev in out if ev is not None]

    def observe_agent_safety(
        self,
        clause: str,
        *,
        summary: Callable[[], dict[str, Any]],
        state: Mapping[str, Any],
    ) -> list[Event]:
        """The agent started the safety protocol ("Are you safe right now?", "call emergency
        services"): a critical crisis escalation unless one is already raised. The agent
        heard the danger; the caller's transcript may not carry it."""
        ev = self._raise(
            "crisis_indicators",
            "critical",
            cue=None,
            detail=f'the agent started the safety protocol: "{clause}"',
            summary=summary,
            state=state,
        )
        return [ev] if ev is not None else []

    def observe_customer(
        self,
        pb: Playbook,
        *,
        state: Mapping[str, Any],
        states: Sequence[Mapping[str, Any]],
        fired: Sequence[tuple[str, CueSpec]],
        summary: Callable[[], dict[str, Any]],
        intense: str | None,
        stronger_again: Collection[str] = (),
    ) -> list[Event]:
        """After each customer utterance and the cues it fired."""
        e = pb.escalation
        out: list[Event | None] = list(
            self.observe_cues(fired, summary=summary, state=state, stronger_again=stronger_again)
        )
        paged = any(ev["urgency"] == "critical" for ev in out if ev is not None)
        if intense is not None and not paged:  # one critical page per moment
            out.append(
                self._raise(
                    "high_emotional_intensity",
                    "critical",
                    cue="crisis",
                    detail=intense,
                    summary=summary,
                    state=state,
                )
            )
        recent = states[-e.high_turns :]
        if len(recent) == e.high_turns and all(
            s["arousal"] >= e.high_arousal and s["valence"] <= e.high_valence for s in recent
        ):
            out.append(
                self._raise(
                    "high_emotional_intensity",
                    "high",
                    cue=None,
                    detail=f"strongly negative and agitated for {e.high_turns} turns",
                    summary=summary,
                    state=state,
                )
            )
        if (n := self._repeats("frustration")) >= e.repeated_frustration_cues:
            worsening = summary()["trend"] == "worsening"
            out.append(
                self._raise(
                    "repeated_frustration",
                    "high" if worsening else "medium",
                    cue="frustration",
                    detail=f"frustration on {n} turns ({self._counts['frustration']} shown)",
                    summary=summary,
                    state=state,
                )
            )
        # Confusion counts its cards only: counting its matches held back by the cooldown
        # raised complex_inquiry on two development calls with one confused turn each.
        if (n := self._counts.get("confusion", 0)) >= e.complex_inquiry_cues:
            out.append(
                self._raise(
                    "complex_inquiry",
                    "medium",
                    cue="confusion",
                    detail=f"confusion cue {n} times",
                    summary=summary,
                    state=state,
                )
            )
        low = [s.get("confidence") for s in states[-e.low_confidence_turns :]]
        if len(low) == e.low_confidence_turns and all(
            c is not None and c < e.low_confidence_prob for c in low
        ):
            out.append(
                self._raise(
                    "low_confidence",
                    "low",
                    cue=None,
                    detail=f"transcription unsure for {e.low_confidence_turns} turns; listen in",
                    summary=summary,
                    state=state,
                )
            )
        return [ev for ev in out if ev is not None]
