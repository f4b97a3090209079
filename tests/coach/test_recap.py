"""The recap a call's session state carries for its summaries (coach/recap.py): what another
instance restores reproduces the summaries of the part it did not run, stays small on an
hour-long call, holds no words, and a recap that cannot be read changes nothing."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from coach import recap
from coach.cues.engine import AgentMove, CueEngine
from coach.cues.playbook import load_playbook
from coach.signals.state import CustomerStateTracker

PLAYBOOK = load_playbook()


def engine() -> CueEngine:
    # Only the playbook's cue specs are read when restoring (titles of the restored cues);
    # nothing here analyses text.
    holder = SimpleNamespace(current=SimpleNamespace(playbook=PLAYBOOK))
    return CueEngine(holder=holder, analyze=None)  # type: ignore[arg-type]


def turn(
    tracker: CustomerStateTracker, eng: CueEngine, t: float, valence: float, label: str
) -> None:
    """One customer turn, as the pipeline and the engine record it."""
    state = tracker.update(
        t_end=t,
        duration_s=2.0,
        sentiment={"label": label, "valence": valence, "confidence": 0.9},
        prosody=None,
    )
    eng.states.append(
        {
            "t": t,
            "valence": state.valence,
            "arousal": state.arousal,
            "emotion": state.emotion,
            "text": "my card is 4111 1111 1111 1111",
            "confidence": 0.8,
        }
    )


def cue(eng: CueEngine, name: str, t: float, seq: int, phrase: str) -> None:
    ev = {"type": "cue", "cue": name, "t_end": t, "evidence": {"phrases": [phrase]}}
    eng.shown.append(ev)
    eng.published(ev, seq, redacted_phrases=[phrase.replace("4111", "[CARD]")])


def part_one() -> tuple[CustomerStateTracker, CueEngine]:
    tracker, eng = CustomerStateTracker(), engine()
    turn(tracker, eng, 5.0, -0.2, "neutral")
    turn(tracker, eng, 10.0, -0.9, "frustrated")
    cue(eng, "frustration", 10.0, 7, "waiting for an hour 4111")
    turn(tracker, eng, 15.0, -0.4, "frustrated")
    turn(tracker, eng, 20.0, 0.3, "positive")
    cue(eng, "escalation_request", 20.0, 12, "your manager")
    eng.agent_moves.append(AgentMove("apology", 12.0, "I am sorry, card 4111 1111"))
    eng.escalation.raised.append({"reason": "user_request", "urgency": "medium", "t": 20.0})
    eng.escalation.resume(raised=[], levels={"user_request": 1}, cue_counts={"frustration": 1})
    return tracker, eng


def test_a_restored_recap_gives_the_same_summaries_as_the_part_it_recaps() -> None:
    tracker, eng = part_one()
    saved = recap.build(tracker=tracker, engine=eng)
    tracker2, eng2 = CustomerStateTracker(), engine()
    recap.restore(saved, tracker=tracker2, engine=eng2)

    assert [(t, round(v, 3)) for t, v, _ in tracker2.arc] == [
        (t, round(v, 3)) for t, v, _ in tracker.arc
    ]
    assert tracker2.trend == pytest.approx(tracker.trend, abs=1e-3)
    before, after = eng.call_summary(), eng2.call_summary()
    assert after["cues"] == before["cues"] == {"frustration": 1, "escalation_request": 1}
    assert after["cue_outcomes"] == before["cue_outcomes"]
    assert [o["seq"] for o in after["cue_outcomes"]] == [7, 12]
    assert after["escalations"] == before["escalations"]
    handoff = eng2.handoff()
    assert handoff["cues_shown"] == ["frustration", "escalation_request"]
    # The handoff's text names them by the titles the agent saw.
    assert "Cues shown: Customer is frustrated, " in handoff["text"]
    assert "escalation_request" not in handoff["text"]
    assert handoff["trigger_phrases"] == ["waiting for an hour [CARD]", "your manager"]
    assert handoff["agent_tried"] == ["apology"]  # by name: its words stayed with part one
    assert handoff["state"] == eng.handoff()["state"]
    assert handoff["worst"] == eng.handoff()["worst"]
    assert eng2.escalation.levels == {"user_request": 1}  # not paged again at that urgency
    assert eng2.escalation.cue_counts == {"frustration": 1}


def test_a_second_takeover_keeps_both_earlier_parts() -> None:
    tracker, eng = part_one()
    tracker2, eng2 = CustomerStateTracker(), engine()
    recap.restore(recap.build(tracker=tracker, engine=eng), tracker=tracker2, engine=eng2)
    turn(tracker2, eng2, 40.0, -0.5, "sad")
    cue(eng2, "frustration", 40.0, 30, "again")
    tracker3, eng3 = CustomerStateTracker(), engine()
    recap.restore(recap.build(tracker=tracker2, engine=eng2), tracker=tracker3, engine=eng3)
    assert [t for t, _, _ in tracker3.arc] == [5.0, 10.0, 15.0, 20.0, 40.0]
    summary = eng3.call_summary()
    assert summary["cues"] == {"frustration": 2, "escalation_request": 1}
    assert [o["seq"] for o in summary["cue_outcomes"]] == [7, 12, 30]


def test_the_recap_holds_no_words_but_the_redacted_phrases() -> None:
    tracker, eng = part_one()
    saved = recap.build(tracker=tracker, engine=eng)
    assert "4111" not in saved and "sorry" not in saved and "card is" not in saved
    assert "[CARD]" in saved


def test_an_hour_long_call_keeps_a_small_bounded_recap() -> None:
    tracker, eng = CustomerStateTracker(), engine()
    for i in range(720):  # a customer turn every 5 s for an hour
        t = 5.0 * (i + 1)
        turn(tracker, eng, t, -0.9 if i == 3 else (-1) ** i * 0.3, "frustrated")
        if i % 5 == 0:  # 144 cues, more than are listed one by one
            cue(eng, "frustration", t, 10 * i + 1, f"phrase {i % 12}")
    saved = recap.build(tracker=tracker, engine=eng)
    fields = json.loads(saved)
    assert len(fields["arc"]) == recap.ARC_POINTS
    assert fields["arc"][0] == [5.0, 0.3]  # the call's start
    assert fields["arc"][-1][0] == 3600.0
    assert len(fields["cues"]) == recap.KEPT_CUES
    assert len(saved) < 8_000, len(saved)

    tracker2, eng2 = CustomerStateTracker(), engine()
    recap.restore(saved, tracker=tracker2, engine=eng2)
    summary = eng2.call_summary()
    assert summary["cues"] == {"frustration": 144}  # the cues not listed are still counted
    assert summary["cue_outcomes"][-1] == eng.call_summary()["cue_outcomes"][-1]
    assert eng2.handoff()["worst"] == eng.handoff()["worst"]  # thinned out, yet kept


CORRUPT: list[Any] = [
    "{not json",
    [1, 2],
    {"v": 99, "arc": []},
    {"v": 1, "arc": [[1.0, "sad"]]},
    {"v": 1, "arc": [[1.0, float("nan")]]},
    {"v": 1, "arc": [], "cues": [[1, "frustration"]]},
    {"v": 1, "arc": [], "cues": [["7", "frustration", 3.0]]},
    {"v": 1, "arc": [], "earlier": {"frustration": -2}},
    {"v": 1, "arc": [], "escalations": [["user_request", "urgent", 1.0]]},
    {"v": 1, "arc": [], "levels": {"user_request": True}},
    {"v": 1, "arc": [[1.0, 0.5]], "turns": [[1.0, 0.5, 0.5, None, 0.9]]},
]


@pytest.mark.parametrize("raw", CORRUPT)
def test_a_recap_that_cannot_be_read_changes_nothing(raw: Any) -> None:
    tracker, eng = CustomerStateTracker(), engine()
    with pytest.raises(recap.RecapError):
        recap.restore(raw, tracker=tracker, engine=eng)
    assert tracker.arc == [] and tracker.trend is None
    assert eng.states == [] and eng.shown == [] and eng.agent_moves == []
    assert eng.call_summary() == {"cues": {}, "cue_outcomes": [], "escalations": []}
