"""The simulated reviewer and the re-voiced calls of scripts/eval_learning.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.eval_cues import CallTruth, Label
from scripts.eval_learning import REVIEWER, main, revoiced, simulated_reports
from scripts.tune_playbook import TEST_SPLIT, EvalCall


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


CALL = """# call_id: x1
# split: tune
# customer_voice: en-gb+m3
# agent_voice: en-gb+f3
# customer_speed: 160
# agent_speed: 158
# customer_pitch: 40
# agent_pitch: 55
agent: Hello.
customer [speed=215 pitch=78 amp=175] {frustration}: I'm done being patient.
"""


def test_revoiced_changes_the_customers_default_voice_only() -> None:
    text = revoiced(CALL, 0)  # OTHER_VOICES[0] is the call's own voice: the next one
    assert "# customer_voice: en-us+f5" in text
    assert "# customer_pitch: 52" in text and "# customer_speed: 152" in text
    assert "# agent_voice: en-gb+f3" in text and "# agent_pitch: 55" in text
    assert "[speed=215 pitch=78 amp=175]" in text  # the agitated turn keeps its voice
    assert revoiced(CALL.replace("pitch: 40", "pitch: 70"), 1).count("customer_pitch: 58") == 1


def test_the_test_split_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="test split"):
        main(["--write-revoiced", str(tmp_path), "--splits", TEST_SPLIT])
    with pytest.raises(SystemExit, match="test split"):
        main(["--reports-from", "tune", "--measure", TEST_SPLIT])
