"""Semantic matching of utterance clauses to playbook examples (pure numpy over embeddings).

The embeddings come from the same batch as the text emotion (models/emotion.py: MiniLM and
all-mpnet-base-v2 side by side, so a dot product is the mean of their cosines), so matching
costs one matrix product per clause. Every example is embedded once when the
playbook loads (`CueIndex.build`); scoring a clause is then a dot product against each
cue's positives, its near-miss negatives and the shared background of ordinary call talk.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
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
    meaning: Mapping[str, float] | None = None
    """The meaning probe's probability of each language cue (also filled by `prepare`)."""
    left_out: str | None = None
    """The word this reading of a clause leaves out (a second reading: `Misheard`)."""


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
    meaning: float | None = None
    """The meaning probe's probability that the clause means this cue (None: no probe)."""


NONE = ""
"""The probe's class for what is no cue: near misses and ordinary call talk."""


@dataclass(frozen=True, slots=True)
class MeaningProbe:
    """A softmax over the language cues and "no cue", fitted to the playbook's own examples.

    Nearest-example matching asks which one example a clause is most like. The probe is
    fitted to every example at once (each cue's positives against the other cues', their near
    misses and the background of ordinary talk) and so weighs what sets one cue apart from the
    rest. On the development splits' customer turns, with the scripts' words, it ranked the
    labelled cues far better than the nearest example did (BENCHMARKS, "A meaning probe").
    Fitting is deterministic (zero start, fixed steps) and takes a second or two on 2 cores,
    once per playbook version; fits are remembered per process (`fit`).
    """

    classes: tuple[str, ...]
    weights: FloatArray
    """(d, classes) including the scale."""
    bias: FloatArray

    STEPS = 150
    RATE = 6.0
    SCALE = 10.0
    L2 = 1e-3

    def probabilities(self, vector: FloatArray) -> dict[str, float]:
        z = vector @ self.weights + self.bias
        z = np.exp(z - z.max())
        p = z / z.sum()
        return {c: float(p[i]) for i, c in enumerate(self.classes) if c != NONE}

    @classmethod
    def fit(cls, examples: Mapping[str, FloatArray]) -> MeaningProbe:
        """`examples`: each class's vectors (`NONE` for no cue), rows L2-normalised."""
        classes = tuple(sorted(examples))
        key = hashlib.sha256()
        for c in classes:
            key.update(c.encode() + b"\0" + np.ascontiguousarray(examples[c]).tobytes())
        digest = key.hexdigest()
        with _FITS_LOCK:
            if digest in _FITS:
                _FITS.move_to_end(digest)
                return _FITS[digest]
        probe = cls._fit(classes, examples)
        with _FITS_LOCK:
            _FITS[digest] = probe
            while len(_FITS) > 4:
                _FITS.popitem(last=False)
        return probe

    @classmethod
    def _fit(cls, classes: tuple[str, ...], examples: Mapping[str, FloatArray]) -> MeaningProbe:
        x = np.concatenate([examples[c] for c in classes]).astype(np.float32)
        y = np.concatenate([np.full(len(examples[c]), i) for i, c in enumerate(classes)])
        k = len(classes)
        # Balanced: "no cue" has many more examples than any cue, and crisis fewer than most.
        counts = np.bincount(y, minlength=k).astype(np.float32)
        weight = (len(y) / (k * np.maximum(counts, 1)))[y]
        weight /= weight.sum()
        target = np.eye(k, dtype=np.float32)[y]
        w = np.zeros((x.shape[1], k), np.float32)
        b = np.zeros(k, np.float32)
        for _ in range(cls.STEPS):
            z = cls.SCALE * (x @ w) + b
            z -= z.max(axis=1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(axis=1, keepdims=True)
            g = (p - target) * weight[:, None]
            w -= cls.RATE * (cls.SCALE * (x.T @ g) + cls.L2 * w)
            b -= cls.RATE * g.sum(axis=0)
        return cls(classes, (cls.SCALE * w).astype(np.float32), b.astype(np.float32))


_FITS: OrderedDict[str, MeaningProbe] = OrderedDict()
_FITS_LOCK = threading.Lock()


CROWDED_BY_BACKGROUND = 0.8
"""Similarity to a background phrase from which a cue's example is reported as crowded."""


@dataclass(frozen=True, slots=True)
class CueIndex:
    """Embedded examples of every enabled language cue, plus background and agent moves."""

    positives: dict[str, ExampleSet]
    negatives: dict[str, ExampleSet]
    background: ExampleSet
    moves: dict[str, ExampleSet]
    probe: MeaningProbe | None = None

    def crowded_examples(self, near: float = CROWDED_BY_BACKGROUND) -> list[str]:
        """Examples as near a phrase of the shared background as `near`: a line like them is
        ordinary talk to the matcher (it must be nearer the cue than the background), so the
        cue will rarely fire. An operator's new `address_change` cue never fired on "I also
        need to update the building address on my account" for the background's "I want to
        update my address." (an outside audit); the bundled playbook has none above 0.79."""
        if not len(self.background.texts):
            return []
        out = []
        for cue_id, examples in self.positives.items():
            for text, vector in zip(examples.texts, examples.vectors, strict=True):
                sims = self.background.similarities(vector)
                i = int(np.argmax(sims))
                if sims[i] >= near:
                    out.append(
                        f"cue {cue_id}: example {text!r} is as near the background phrase "
                        f"{self.background.texts[i]!r} ({sims[i]:.2f}): lines like it read as "
                        "ordinary talk and will rarely fire; reword one or the other"
                    )
        return out

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
        probe = None
        if any(spec.meaning is not None for spec in playbook.enabled().values()):
            none = np.concatenate([*(n.vectors for n in neg.values()), background.vectors])
            probe = MeaningProbe.fit({**{c: e.vectors for c, e in pos.items()}, NONE: none})
        return cls(pos, neg, background, moves, probe)

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
            meaning=None if self.probe is None else self.probe.probabilities(clause.vector),
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
        meaning = clause.meaning
        if meaning is None and self.probe is not None:
            meaning = self.probe.probabilities(clause.vector)
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
            meaning=None if meaning is None else meaning.get(cue_id),
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
