"""The tuning policy (pure) and the playbook rewrite that keeps comments."""

from __future__ import annotations

from pathlib import Path

import pytest

from coach.cues.playbook import DEFAULT_PLAYBOOK, PlaybookError, load_playbook
from scripts.tune_playbook import TEST_SPLIT, apply_thresholds, choose, main

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
