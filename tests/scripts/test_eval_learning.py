"""The simulated reviewer of scripts/eval_learning.py (pure)."""

from __future__ import annotations

from scripts.eval_cues import CallTruth, Label
from scripts.eval_learning import REVIEWER, simulated_reports
from scripts.tune_playbook import EvalCall


def _said(seq: int, speaker: str, text: str, t0: float, t1: float) -> dict[str, object]:
    return {
        "type": "transcript",
        "seq": seq,
        "speaker": speaker,
        "text": text,
        "t_start": t0,
        "t_end": t1,
    }


def test_missed_labels_become_reports_and_false_cues_become_not_helpful() -> None:
    truth = CallTruth(
        "c1",
        60.0,
        (
            Label("c1", 1, "churn_risk", True, 10.0, 16.0),
            Label("c1", 3, "urgency", True, 30.0, 33.0),
            Label("c1", 5, "cost_anxiety", False, 40.0, 43.0),  # optional: nobody reports it
            Label("c1", 6, "dead_air", True, 44.0, 54.0),  # timing: not a wording to learn
        ),
    )
    events = [
        _said(2, "agent", "How can I help?", 8.0, 9.5),
        _said(3, "customer", "the other lot are cheaper", 10.0, 12.0),
        _said(4, "customer", "so we are off", 12.5, 16.0),
        _said(6, "customer", "I need it today", 30.0, 33.0),
        _said(8, "customer", "the bill went up", 40.0, 43.0),
    ]
    found = [
        {
            "type": "cue",
            "seq": 7,
            "cue": "urgency",
            "t_emit": 33.4,
            "evidence": {"text": "I need it today"},
        },
        {
            "type": "cue",
            "seq": 9,
            "cue": "frustration",
            "t_emit": 21.0,
            "evidence": {"text": "fine, thanks"},
        },
    ]
    missed, rated = simulated_reports(
        EvalCall(truth, events), found, ["churn_risk", "urgency", "cost_anxiety", "frustration"]
    )
    assert [(m.cue, m.utterance_seq, m.text, m.user) for m in missed] == [
        ("churn_risk", 3, "the other lot are cheaper", REVIEWER),
        ("churn_risk", 4, "so we are off", REVIEWER),
    ]
    assert [(r.cue, r.text, r.verdicts) for r in rated] == [
        ("frustration", "fine, thanks", {REVIEWER: "not_helpful"})
    ]
