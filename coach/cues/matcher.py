"""Semantic matching of utterance clauses to playbook examples (pure numpy over embeddings).

The embeddings come from the same batch as the text emotion (models/emotion.py: MiniLM and
all-mpnet-base-v2 side by side, so a dot product is the mean of their cosines), so matching
costs one matrix product per clause. Every example is embedded once when the
playbook loads (`CueIndex.build`); scoring a clause is then a dot product against each
cue's positives, its near-miss negatives and the shared background of ordinary call talk.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from coach.cues import language
from coach.cues.playbook import CueSpec, Playbook

FloatArray = npt.NDArray[np.float32]
EmbedFn = Callable[[Sequence[str]], FloatArray]
"""Texts -> (n, d) L2-normalised embeddings."""


@dataclass(frozen=True, slots=True)
class ExampleSet:
    texts: tuple[str, ...]
    vectors: FloatArray
    negated: tuple[bool, ...]
    negated_mask: npt.NDArray[np.bool_]
    """`negated` as an array, to penalise every example's similarity at once."""

    @classmethod
    def of(cls, texts: Sequence[str], vectors: FloatArray) -> ExampleSet:
        negated = tuple(language.is_negated(t) for t in texts)
        return cls(tuple(texts), vectors, negated, np.asarray(negated, dtype=bool))

    def best(self, v: FloatArray) -> tuple[int, float]:
        if not self.texts:
            return -1, -1.0
        sims = self.vectors @ v
        i = int(np.argmax(sims))
        return i, float(sims[i])

    def similarities(self, v: FloatArray) -> FloatArray:
        """Similarity of `v` to every example (one matrix-vector product)."""
        return self.vectors @ v


@dataclass(frozen=True, slots=True)
class ClauseSignals:
    """One clause of a customer utterance, with what the models said about it."""

    text: str
    vector: FloatArray
    emotion: Mapping[str, float]
    framing: language.Framing
    sims: Mapping[str, FloatArray] | None = None
    """Per language cue, the similarity of this clause to each of its positive examples, filled
    once per clause by `CueIndex.prepare` so scoring each cue does not redo the products."""
    background: FloatArray | None = None
    """Similarity to each shared background phrase (also filled by `prepare`)."""


@dataclass(frozen=True, slots=True)
class SemanticMatch:
    cue: str
    score: float
    similarity: float
    negative: float
    rival: float
    """Best similarity of the clause to another cue's positive examples."""
    semantic: float
    """The similarity after the framing penalties, before any boost: what the words alone say.
    It must beat ordinary talk (`negative`); emotion and voice boosts only help the threshold."""
    example: str
    clause: str
    adjustments: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CueIndex:
    """Embedded examples of every enabled language cue, plus background and agent moves."""

    positives: dict[str, ExampleSet]
    negatives: dict[str, ExampleSet]
    background: ExampleSet
    moves: dict[str, ExampleSet]

    @classmethod
    def build(cls, playbook: Playbook, embed: EmbedFn) -> CueIndex:
        # One embedding call for every text in the playbook: hundreds of short phrases batch well.
        groups: list[tuple[str, str, list[str]]] = []
        for cue_id, spec in playbook.enabled().items():
            if spec.kind == "language":
                groups.append(("pos", cue_id, spec.positives))
                groups.append(("neg", cue_id, spec.negatives))
        groups.append(("bg", "", playbook.background))
        for move, texts in playbook.agent_moves.items():
            groups.append(("move", move, texts))
        flat = [t for _, _, texts in groups for t in texts]
        vectors = embed(flat)
        pos: dict[str, ExampleSet] = {}
        neg: dict[str, ExampleSet] = {}
        moves: dict[str, ExampleSet] = {}
        background = ExampleSet.of([], np.zeros((0, vectors.shape[1]), np.float32))
        at = 0
        for kind, key, texts in groups:
            block = ExampleSet.of(texts, vectors[at : at + len(texts)])
            at += len(texts)
            if kind == "pos":
                pos[key] = block
            elif kind == "neg":
                neg[key] = block
            elif kind == "move":
                moves[key] = block
            else:
                background = block
        return cls(pos, neg, background, moves)

    def positive_similarities(self, vector: FloatArray) -> dict[str, FloatArray]:
        """The clause's similarity to every language cue's positives: one product per cue."""
        return {cue_id: ex.similarities(vector) for cue_id, ex in self.positives.items()}

    def prepare(self, clause: ClauseSignals) -> ClauseSignals:
        """The clause with its similarities computed once, for scoring every cue."""
        if clause.sims is not None and clause.background is not None:
            return clause
        return replace(
            clause,
            sims=self.positive_similarities(clause.vector),
            background=self.background.similarities(clause.vector),
        )

    def score(self, cue_id: str, spec: CueSpec, clause: ClauseSignals) -> SemanticMatch:
        """The clause's score for one cue: similarity, framing penalties and signal boosts.

        The example matched is the one with the best similarity after the negation penalty:
        "I'm lost, what is a router login?" is nearer "I don't know what a modem is" in raw
        similarity, but it means what "I'm lost, what does that mean?" means.
        """
        sims = clause.sims
        if sims is None or cue_id not in sims:  # not prepared (or by another playbook's index)
            sims = self.positive_similarities(clause.vector)
        examples = self.positives[cue_id]
        f, pen = clause.framing, spec.framing
        own = sims[cue_id]
        adjusted = own - pen.negated_mismatch_penalty * (examples.negated_mask != f.negated)
        i = int(np.argmax(adjusted))
        sim = float(own[i])
        example = examples.texts[i]
        # Ordinary talk and near misses are compared like for like: "Okay, that's clear" is
        # not what "I'm not clear on it" says, so it is penalised as a positive would be.
        bg_sims = clause.background
        if bg_sims is None:
            bg_sims = self.background.similarities(clause.vector)
        negative = max(
            _best_adjusted(
                self.negatives[cue_id].similarities(clause.vector),
                self.negatives[cue_id].negated_mask,
                f.negated,
                pen.negated_mismatch_penalty,
            ),
            _best_adjusted(
                bg_sims, self.background.negated_mask, f.negated, pen.negated_mismatch_penalty
            ),
        )
        # Rival: the best similarity to another cue's positives.
        rival = max(
            (float(v.max()) for other, v in sims.items() if other != cue_id and v.size),
            default=-1.0,
        )
        score, notes = sim, []
        if f.negated != examples.negated[i] and pen.negated_mismatch_penalty:
            score -= pen.negated_mismatch_penalty
            notes.append("negated" if f.negated else "affirmative vs negated example")
        if f.hypothetical and pen.hypothetical_penalty:
            score -= pen.hypothetical_penalty
            notes.append("hypothetical")
        if f.reported and pen.reported_penalty:
            score -= pen.reported_penalty
            notes.append("about someone else")
        if f.question and pen.question_penalty:
            score -= pen.question_penalty
            notes.append("a question")
        semantic = score
        for label, weight in spec.emotion_boost.items():
            score += weight * float(clause.emotion.get(label, 0.0))
        return SemanticMatch(
            cue=cue_id,
            score=score,
            similarity=sim,
            negative=negative,
            rival=rival,
            semantic=semantic,
            example=example,
            clause=clause.text,
            adjustments=tuple(notes),
        )

    def agent_moves(self, vector: FloatArray, threshold: float) -> list[tuple[str, float]]:
        """Which moves (apology, resolution...) an agent clause makes, best first."""
        found = []
        for move, examples in self.moves.items():
            _, sim = examples.best(vector)
            if sim >= threshold:
                found.append((move, sim))
        return sorted(found, key=lambda m: -m[1])


def _best_adjusted(
    sims: FloatArray, negated: npt.NDArray[np.bool_], clause_negated: bool, penalty: float
) -> float:
    """The best similarity after penalising examples whose negation differs from the clause."""
    if not sims.size:
        return -1.0
    return float((sims - penalty * (negated != clause_negated)).max())
