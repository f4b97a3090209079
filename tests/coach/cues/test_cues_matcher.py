"""CueIndex scoring: a clause prepared once scores every cue exactly as unprepared, cheaper."""

from __future__ import annotations

import pytest

from coach.cues import language
from coach.cues.library import PlaybookLibrary
from coach.cues.matcher import ClauseSignals, ExampleSet
from models.emotion import EmotionModel

CLAUSES = [
    "They said it would be fixed by Friday and it still isn't.",
    "I can't keep paying this much every month.",
    "Can I talk to someone above you?",
    "Okay, that's the right address.",
    "I don't see the point of any of it anymore.",
]


def _clauses(model: EmotionModel) -> list[ClauseSignals]:
    scores = model.score(CLAUSES)
    out = []
    for text, s in zip(CLAUSES, scores, strict=True):
        assert s.embedding is not None
        out.append(ClauseSignals(text, s.embedding, s.scores, language.framing(text)))
    return out


def test_prepared_clause_scores_every_cue_the_same(
    library: PlaybookLibrary, emotion_model: EmotionModel
) -> None:
    loaded = library.current
    index = loaded.index
    for clause in _clauses(emotion_model):
        prepared = index.prepare(clause)
        assert prepared.sims is not None and prepared.background is not None
        for cue_id in index.positives:
            spec = loaded.playbook.cues[cue_id]
            plain = index.score(cue_id, spec, clause)
            fast = index.score(cue_id, spec, prepared)
            assert fast.example == plain.example
            assert fast.clause == plain.clause
            assert fast.adjustments == plain.adjustments
            for field in ("score", "similarity", "negative", "rival"):
                assert getattr(fast, field) == pytest.approx(getattr(plain, field), abs=1e-6)


def test_rival_similarities_are_computed_once_per_clause(
    library: PlaybookLibrary, emotion_model: EmotionModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = library.current
    index = loaded.index
    positive_sets = {id(ex) for ex in index.positives.values()}
    calls = {"n": 0}
    original_best, original_sims = ExampleSet.best, ExampleSet.similarities

    def counting_best(self: ExampleSet, v):  # type: ignore[no-untyped-def]
        if id(self) in positive_sets:
            calls["n"] += 1
        return original_best(self, v)

    def counting_sims(self: ExampleSet, v):  # type: ignore[no-untyped-def]
        if id(self) in positive_sets:
            calls["n"] += 1
        return original_sims(self, v)

    monkeypatch.setattr(ExampleSet, "best", counting_best)
    monkeypatch.setattr(ExampleSet, "similarities", counting_sims)
    clause = index.prepare(_clauses(emotion_model)[0])
    n_cues = len(index.positives)
    assert calls["n"] == n_cues
    for cue_id in index.positives:
        index.score(cue_id, loaded.playbook.cues[cue_id], clause)
    assert calls["n"] == n_cues  # scoring every cue reuses the prepared products


def test_the_matched_example_is_the_best_after_the_negation_penalty(
    library: PlaybookLibrary, emotion_model: EmotionModel
) -> None:
    """An affirmative clause is matched to an affirmative example when one is nearly as close."""
    loaded = library.current
    index = loaded.index
    text = "Hang on, I'm lost, what is a router login?"
    s = emotion_model.score([text])[0]
    assert s.embedding is not None
    clause = index.prepare(ClauseSignals(text, s.embedding, s.scores, language.framing(text)))
    spec = loaded.playbook.cues["confusion"]
    m = index.score("confusion", spec, clause)
    assert not language.is_negated(m.example)
    assert "affirmative vs negated example" not in m.adjustments
    raw = index.positives["confusion"].similarities(clause.vector)
    assert m.similarity <= float(raw.max())
