"""Tests for models.embeddings.SentenceEmbedder with the packaged int8 MiniLM (no download)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.embeddings import (
    EMBEDDING_DIM,
    EmbedderOptions,
    ModelNotFound,
    SentenceEmbedder,
)

TEXTS = [
    "my internet has been down for three days",
    "hi",
    "i'd like to change the delivery address on my order please, it is going to the old place",
    "can you tell me why my bill went up this month",
    "okay",
    "the technician never showed up and i took the whole day off work for it",
]


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    return SentenceEmbedder(EmbedderOptions(intra_op_threads=1))


def test_shape_dtype_and_unit_norm(embedder: SentenceEmbedder) -> None:
    v = embedder.embed(TEXTS)
    assert v.shape == (len(TEXTS), EMBEDDING_DIM)
    assert v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]).shape == (0, EMBEDDING_DIM)
    assert embedder.providers == ["CPUExecutionProvider"]


def test_paraphrases_are_closer_than_unrelated(embedder: SentenceEmbedder) -> None:
    a, para, other = embedder.embed(
        [
            "i want to cancel my subscription",
            "please end my membership, i don't want it anymore",
            "what time does the pharmacy open on sunday",
        ]
    )
    assert float(a @ para) > float(a @ other) + 0.2
    outage, outage2, refund = embedder.embed(
        [
            "the wifi keeps dropping every evening",
            "my internet connection cuts out at night",
            "when will my refund be processed",
        ]
    )
    assert float(outage @ outage2) > float(outage @ refund) + 0.2


def test_dynamic_padding_matches_unpadded_singles(embedder: SentenceEmbedder) -> None:
    batched = embedder.embed(TEXTS, batch_size=4)  # mixed lengths: padding in every batch
    singles = np.stack([embedder.embed([t])[0] for t in TEXTS])
    np.testing.assert_allclose(batched, singles, atol=1e-5)


def test_batches_are_padded_to_their_own_longest_input(embedder: SentenceEmbedder) -> None:
    batches = embedder.tokenizer.batches(TEXTS, 2)
    widths = [b.input_ids.shape[1] for b in batches]
    assert widths == sorted(widths) and max(widths) < 40  # no fixed 128-token padding
    assert sorted(r for b in batches for r in b.rows) == list(range(len(TEXTS)))
    for b in batches:
        assert b.attention_mask.sum(axis=1).max() == b.input_ids.shape[1]


def test_inputs_over_512_tokens_are_truncated_not_an_error(embedder: SentenceEmbedder) -> None:
    long_text = "the bill is wrong again and nobody fixes it " * 200  # ~2000 tokens
    ids = embedder.tokenizer.encode([long_text])[0]
    assert len(ids) == embedder.options.max_tokens
    v = embedder.embed([long_text, "short one"])
    assert v.shape == (2, EMBEDDING_DIM) and np.isfinite(v).all()


def test_missing_explicit_model_path_raises(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound):
        SentenceEmbedder(EmbedderOptions(model_path=tmp_path / "nope.onnx"))
