"""Text emotion of one utterance: six classes plus a valence in [-1, 1], on ONNX Runtime.

Why: the coach reacts to how the customer sounds in words (frustrated, anxious, confused,
resigned), not only to polarity, and the transcript event carries a `sentiment` object
{valence, label, scores} (CONTRACT.md). One ONNX graph does everything after tokenisation:
MiniLM token states -> masked mean pooling -> L2 norm (the sentence embedding, also an
output) -> a linear head -> `probs` (n, 6) and `valence` (n,). The head adds a bag of
WordPiece tokens term to the embedding term, because mean-pooled MiniLM alone blurs short
cue words ("not", "again", "oh great"); see scripts/build_models.py and data/emotion/README.md.

Valence is the probability-weighted mean of fixed per-class valences (`VALENCES`), so it
moves smoothly between classes and stays inside [-1, 1].

The artifact (`models/artifacts/emotion.onnx`, its tokenizer and `emotion.json`) is built
by `scripts/build_models.py` from the packaged MiniLM and `data/emotion/train.tsv`; if it is
missing, `EmotionModel` builds it once (seconds, never a download).

The same pass yields the vector the cue engine matches on. By default a second encoder
(all-mpnet-base-v2, `models.embeddings.MatchEncoder`) runs on the same texts and the two
unit vectors are put side by side (`combine_embeddings`), so a dot product between two such
vectors is the mean of the two models' cosines: mpnet separates a cue's meaning from ordinary
talk better than MiniLM alone, and the average of both beat either one on the development
splits (BENCHMARKS.md). `match_model="none"` keeps MiniLM alone (lighter, less precise).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from models.embeddings import (
    EMBEDDING_DIM,
    MPNET_NAME,
    BatchTokenizer,
    Device,
    FloatArray,
    IntArray,
    MatchEncoder,
    ModelNotFound,
    RememberedVectors,
    combine_embeddings,
    import_builder,
    make_session,
    resolve_match_model,
)

log = logging.getLogger(__name__)

Label = Literal["neutral", "positive", "frustrated", "anxious", "confused", "sad"]
LABELS: tuple[Label, ...] = ("neutral", "positive", "frustrated", "anxious", "confused", "sad")
VALENCES: dict[Label, float] = {
    "positive": 0.8,
    "neutral": 0.0,
    "confused": -0.2,
    "anxious": -0.5,
    "sad": -0.6,
    "frustrated": -0.8,
}
ARTIFACT_DIR = Path(__file__).resolve().parent / "artifacts"
ONNX_NAME = "emotion.onnx"
META_NAME = "emotion.json"
HEAD_NAME = "emotion_head.npz"
TOKENIZER_NAME = "tokenizer.json"
OUTPUTS = ("probs", "valence", "embedding")


@dataclass(frozen=True, slots=True)
class EmotionOptions:
    artifact_dir: Path = ARTIFACT_DIR
    device: Device = "cpu"
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    batch_size: int = 16
    build_if_missing: bool = True
    match_model: str = MPNET_NAME
    """Second encoder for cue matching: all-mpnet-base-v2, a folder, or "none"."""


@dataclass(frozen=True, slots=True)
class EmotionScore:
    label: Label
    confidence: float
    valence: float
    scores: dict[str, float]
    embedding: FloatArray | None = field(default=None, compare=False, repr=False)
    """The utterance's matching vector (L2-normalised; MiniLM's 384 dimensions, followed by
    the match encoder's when there is one): the cue engine matches it against the playbook's
    examples, so a final is embedded once, in the same batch as its emotion."""

    def to_sentiment(self) -> dict[str, Any]:
        """The transcript event's `sentiment` object: {valence, label, scores}."""
        return {
            "valence": round(self.valence, 4),
            "label": self.label,
            "scores": {k: round(v, 4) for k, v in self.scores.items()},
        }


@dataclass(frozen=True, slots=True)
class EmotionBatch:
    """Raw outputs for n texts, in the caller's order."""

    probs: FloatArray  # (n, 6), columns in LABELS order
    valence: FloatArray  # (n,)
    embedding: FloatArray  # (n, d) matching vectors, L2-normalised (see EmotionScore)


@dataclass(frozen=True, slots=True)
class EmotionHead:
    """The linear head in numpy, for building and for checking the composed graph."""

    w_emb: npt.NDArray[np.float32]  # (384, 6)
    bias: npt.NDArray[np.float32]  # (6,)
    w_tok: npt.NDArray[np.float32]  # (vocab, 6); special tokens' rows are zero
    valences: npt.NDArray[np.float32]  # (6,)

    def logits(self, emb: FloatArray, input_ids: IntArray, mask: IntArray) -> FloatArray:
        m = mask.astype(np.float32)
        count = np.maximum(m.sum(axis=1, keepdims=True), 1.0)
        tok = (self.w_tok[input_ids] * m[:, :, None]).sum(axis=1) / np.sqrt(count)
        out: FloatArray = (emb @ self.w_emb + self.bias + tok).astype(np.float32)
        return out

    def outputs(
        self, emb: FloatArray, input_ids: IntArray, mask: IntArray
    ) -> tuple[FloatArray, FloatArray]:
        z = self.logits(emb, input_ids, mask)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        probs = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
        return probs, (probs @ self.valences).astype(np.float32)

    def save(self, path: Path) -> None:
        np.savez(path, w_emb=self.w_emb, bias=self.bias, w_tok=self.w_tok, valences=self.valences)

    @classmethod
    def load(cls, path: Path) -> EmotionHead:
        with np.load(path) as z:
            return cls(z["w_emb"], z["bias"], z["w_tok"], z["valences"])


def artifact_paths(artifact_dir: Path) -> dict[str, Path]:
    return {
        "onnx": artifact_dir / ONNX_NAME,
        "meta": artifact_dir / META_NAME,
        "head": artifact_dir / HEAD_NAME,
        "tokenizer": artifact_dir / TOKENIZER_NAME,
    }


def ensure_artifact(artifact_dir: Path, *, build_if_missing: bool = True) -> dict[str, Path]:
    """Paths of a complete artifact; builds it (scripts/build_models.py) if it is missing."""
    paths = artifact_paths(artifact_dir)
    if all(p.is_file() for p in paths.values()):
        return paths
    if not build_if_missing:
        raise ModelNotFound(
            f"no emotion model in {artifact_dir}; run .venv/bin/python -m scripts.build_models"
        )
    builder = import_builder("scripts.build_models", f"no emotion model in {artifact_dir}")
    log.info("emotion model missing in %s: building it", artifact_dir)
    builder.build(out_dir=artifact_dir)
    return paths


class EmotionModel:
    """Load once; `score(texts)` -> one EmotionScore per text (batched, length-bucketed)."""

    def __init__(self, options: EmotionOptions | None = None) -> None:
        self.options = opts = options or EmotionOptions()
        paths = ensure_artifact(opts.artifact_dir, build_if_missing=opts.build_if_missing)
        self.meta: dict[str, Any] = json.loads(paths["meta"].read_text())
        if tuple(self.meta["labels"]) != LABELS:
            raise ModelNotFound(f"{paths['meta']} has labels {self.meta['labels']}, want {LABELS}")
        _warn_if_stale(self.meta, paths["meta"])
        self.tokenizer = BatchTokenizer(paths["tokenizer"], max_tokens=int(self.meta["max_tokens"]))
        self._session = make_session(
            paths["onnx"],
            device=opts.device,
            intra_op=opts.intra_op_threads,
            inter_op=opts.inter_op_threads,
        )
        self.providers: list[str] = list(self._session.get_providers())
        stat = paths["onnx"].stat()
        self._fingerprint = hashlib.sha256(
            f"{stat.st_size}:{stat.st_mtime_ns}:{self.meta['max_tokens']}".encode()
        ).hexdigest()[:16]
        self._minilm_remembered: RememberedVectors | None = None
        folder = resolve_match_model(opts.match_model, build_if_missing=opts.build_if_missing)
        self.match: MatchEncoder | None = None
        if folder is not None:
            self.match = MatchEncoder(
                folder,
                device=opts.device,
                intra_op_threads=opts.intra_op_threads,
                max_tokens=int(self.meta["max_tokens"]),
            )

    @property
    def embedding_dim(self) -> int:
        return EMBEDDING_DIM + (self.match.dim if self.match is not None else 0)

    def run(self, texts: Sequence[str], *, batch_size: int | None = None) -> EmotionBatch:
        batch = self._run_emotion(texts, batch_size=batch_size)
        if self.match is None:
            return batch
        emb = combine_embeddings(batch.embedding, self.match.embed(texts))
        return EmotionBatch(batch.probs, batch.valence, emb)

    def run_minilm(self, texts: Sequence[str]) -> FloatArray:
        """MiniLM's sentence vectors alone (the emotion graph's `embedding` output)."""
        return self._run_emotion(texts).embedding

    def _run_emotion(self, texts: Sequence[str], *, batch_size: int | None = None) -> EmotionBatch:
        n = len(texts)
        probs = np.zeros((n, len(LABELS)), dtype=np.float32)
        valence = np.zeros(n, dtype=np.float32)
        emb = np.zeros((n, EMBEDDING_DIM), dtype=np.float32)
        for batch in self.tokenizer.batches(texts, batch_size or self.options.batch_size):
            p, v, e = self._session.run(list(OUTPUTS), batch.feeds())
            rows = list(batch.rows)
            probs[rows], valence[rows], emb[rows] = p, v, e
        return EmotionBatch(probs, valence, emb)

    def embed_examples(self, texts: Sequence[str]) -> FloatArray:
        """Matching vectors of playbook phrases: as `run(texts).embedding`, with both
        encoders' shares remembered on disk (the same phrases return at every start, every
        reload and every replay; 2,444 of them cost MiniLM about 5 s even when mpnet's are
        cached)."""
        if self.match is None:
            return self.run(texts).embedding
        if self._minilm_remembered is None:
            folder = self.match.cache_dir
            self._minilm_remembered = RememberedVectors(
                None if folder is None else folder / f"minilm-{self._fingerprint}.npz",
                EMBEDDING_DIM,
            )
        mini = self._minilm_remembered.get(texts, self.run_minilm)
        return combine_embeddings(mini, self.match.embed_remembered(texts))

    def score(self, texts: Sequence[str]) -> list[EmotionScore]:
        out = self.run(texts)
        return [
            _to_score(p, float(v), e)
            for p, v, e in zip(out.probs, out.valence, out.embedding, strict=True)
        ]


class RecentScores:
    """`score` with a memory of the last `size` texts it scored.

    The pipeline scores each final's whole text for its sentiment, and the cue engine then
    scores its clauses (`coach.cues.language.pieces`), the first of which is the whole text
    when the turn is one sentence: remembering it saves one model pass between such a final
    and its cues. Scores are a pure function of the text, so a remembered one is the one a
    new pass would give.
    """

    def __init__(
        self, score: Callable[[Sequence[str]], list[EmotionScore]], size: int | None = 512
    ) -> None:
        """`size=None` never forgets (offline runs, which score a fixed set of texts)."""
        self._score = score
        self._size = size
        self._recent: OrderedDict[str, EmotionScore] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __call__(self, texts: Sequence[str]) -> list[EmotionScore]:
        missing = [t for t in dict.fromkeys(texts) if t not in self._recent]
        if missing:
            for text, score in zip(missing, self._score(missing), strict=True):
                self._recent[text] = score
        self.misses += len(missing)
        self.hits += len(texts) - len(missing)
        out = []
        for text in texts:
            self._recent.move_to_end(text)
            out.append(self._recent[text])
        while self._size is not None and len(self._recent) > self._size:
            self._recent.popitem(last=False)
        return out


def _warn_if_stale(meta: dict[str, Any], meta_path: Path) -> None:
    """A cheap check: the training data in the checkout differs from what was trained on."""
    train = Path(__file__).resolve().parents[1] / "data" / "emotion" / "train.tsv"
    if train.is_file():
        digest = hashlib.sha256(train.read_bytes()).hexdigest()
        if digest != meta.get("hashes", {}).get("train_tsv"):
            log.warning(
                "%s was built from other training data; rebuild it with "
                "python -m scripts.build_models",
                meta_path,
            )


def _to_score(
    probs: FloatArray, valence: float, embedding: FloatArray | None = None
) -> EmotionScore:
    best = int(np.argmax(probs))
    return EmotionScore(
        label=LABELS[best],
        confidence=float(probs[best]),
        valence=float(np.clip(valence, -1.0, 1.0)),
        scores={lab: float(p) for lab, p in zip(LABELS, probs, strict=True)},
        embedding=embedding,
    )
