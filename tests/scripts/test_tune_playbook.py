"""The tuning policy (pure), example credit (pure) and the playbook rewrite that keeps comments."""

from __future__ import annotations

from pathlib import Path

import pytest

from coach.cues.engine import matched_example, words_reason
from coach.cues.playbook import DEFAULT_PLAYBOOK, PlaybookError, load_playbook
from scripts.eval_cues import CallTruth, Label
from scripts.tune_playbook import TEST_SPLIT, apply_thresholds, choose, credit_examples, main

SWEEP = {
    0.45: {"precision": 0.50, "recall": 1.00, "f1": 0.67},
    0.50: {"precision": 0.70, "recall": 0.90, "f1": 0.79},
    0.55: {"precision": 0.90, "recall": 0.80, "f1": 0.85},
    0.60: {"precision": 1.00, "recall": 0.50, "f1": 0.67},
}


def test_without_feedback_the_best_f1_wins_if_it_gains_enough() -> None:
    p = choose("x", 0.50, SWEEP, {}, min_ratings=10, max_unhelpful=0.5, min_gain=0.02)
    assert p.proposed == 0.55 and p.after["f1"] == 0.85
    p = choose("x", 0.50, SWEEP, {}, min_ratings=10, max_unhelpful=0.5, min_gain=0.2)
    assert p.proposed == 0.50


def test_mostly_unhelpful_feedback_raises_precision() -> None:
    fb = {"helpful": 2, "not_helpful": 6, "dismissed": 4}
    p = choose("x", 0.45, SWEEP, fb, min_ratings=10, max_unhelpful=0.5, min_gain=0.02)
    assert p.proposed == 0.55 and p.after["precision"] > p.before["precision"]
    assert "not helpful" in p.reason


def test_helpful_feedback_with_misses_raises_recall() -> None:
    fb = {"helpful": 12, "not_helpful": 1, "dismissed": 0}
    p = choose("x", 0.55, SWEEP, fb, min_ratings=10, max_unhelpful=0.5, min_gain=0.02)
    assert p.proposed == 0.50 and p.after["recall"] > p.before["recall"]


def test_too_few_ratings_fall_back_to_the_evaluation_set() -> None:
    fb = {"helpful": 0, "not_helpful": 3, "dismissed": 0}
    p = choose("x", 0.50, SWEEP, fb, min_ratings=10, max_unhelpful=0.5, min_gain=0.02)
    assert p.reason.startswith("evaluation set")


def test_apply_rewrites_only_the_named_cues_and_keeps_comments(tmp_path: Path) -> None:
    path = tmp_path / "playbook.yaml"
    path.write_text(DEFAULT_PLAYBOOK.read_text())
    text = apply_thresholds(path, {"urgency": 0.61, "crisis": 0.40})
    path.write_text(text)
    pb = load_playbook(path)
    before = load_playbook()
    assert pb.cues["urgency"].threshold == pytest.approx(0.61)
    assert pb.cues["crisis"].threshold == pytest.approx(0.40)
    assert pb.cues["frustration"].threshold == before.cues["frustration"].threshold
    assert text.count("\n#") == DEFAULT_PLAYBOOK.read_text().count("\n#")


def test_apply_refuses_to_write_an_invalid_playbook(tmp_path: Path) -> None:
    path = tmp_path / "playbook.yaml"
    path.write_text(DEFAULT_PLAYBOOK.read_text())
    with pytest.raises(PlaybookError):
        apply_thresholds(path, {"urgency": 1.5})


def test_refuses_to_tune_on_the_test_split(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    eval_dir = tmp_path / TEST_SPLIT
    eval_dir.mkdir()
    assert main(["--eval-dir", str(eval_dir), "--no-feedback"]) == 2
    assert "test split" in capsys.readouterr().err


def _cue(cue: str, t: float, *reasons: str) -> dict[str, object]:
    return {"type": "cue", "cue": cue, "t_emit": t, "reasons": list(reasons)}


def test_examples_are_credited_with_the_hits_and_false_cues_they_gave() -> None:
    truth = CallTruth(
        "c1",
        60.0,
        (
            Label("c1", 1, "frustration", True, 10.0, 14.0),
            Label("c1", 3, "urgency", False, 30.0, 33.0),
        ),
    )
    events = [
        {"type": "transcript", "speaker": "customer", "text": "x"},
        _cue("frustration", 14.5, words_reason("this is a joke", "This is ridiculous.", 0.61)),
        # The label is taken: the same cue again in its window is a false cue.
        _cue("frustration", 15.0, words_reason("still a joke", "This is ridiculous.", 0.58)),
        _cue("frustration", 40.0, words_reason("I'm fed up", "I'm so fed up with this.", 0.7)),
        # Optional label: neither hit nor false. Voice trigger: no example to credit.
        _cue("urgency", 31.0, words_reason("need it now", "I need it today.", 0.6)),
        _cue("dejection", 50.0, "voice subdued vs this caller's usual: pitch -2.0 SD"),
    ]
    credits = {
        (c.cue, c.example): (c.hits, c.false_cues) for c in credit_examples([(truth, events)])
    }
    assert credits == {
        ("frustration", "This is ridiculous."): (1, 1),
        ("frustration", "I'm so fed up with this."): (0, 1),
        ("urgency", "I need it today."): (0, 0),
    }
    worst = credit_examples([(truth, events)])[0]
    assert (worst.cue, worst.example) == ("frustration", "I'm so fed up with this.")


def test_matched_example_reads_back_quotes_and_ignores_other_reasons() -> None:
    line = words_reason('he said "no"', 'I said "stop" (twice)', 0.5)
    assert matched_example(["text emotion: sad (80%)", line]) == 'I said "stop" (twice)'
    assert matched_example(['words: "Fine." (sad)', "voice subdued"]) is None
