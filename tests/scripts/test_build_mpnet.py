"""Tests for scripts/build_mpnet.py: the hand-written MPNet graph against the original model.

The golden file holds sentence vectors computed by the original PyTorch implementation
(transformers' MPNetModel, mean pooling, L2 norm) from the same packaged weights, one text
per forward pass. The float graph built here must reproduce them; the int8 artifact the
server uses must stay close.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.embeddings import MPNET_NAME, MatchEncoder, ModelNotFound, resolve_match_model
from scripts import build_mpnet

GOLDEN = Path(__file__).resolve().parents[1] / "models" / "golden" / "mpnet_reference.json"


@pytest.fixture(scope="module")
def reference() -> tuple[list[str], np.ndarray]:
    data = json.loads(GOLDEN.read_text())
    texts = [s["text"] for s in data["sentences"]]
    return texts, np.asarray([s["embedding"] for s in data["sentences"]], dtype=np.float32)


@pytest.fixture(scope="module")
def float_encoder(tmp_path_factory: pytest.TempPathFactory) -> MatchEncoder:
    out = tmp_path_factory.mktemp("mpnet-float")
    build_mpnet.build(out, quantized=False)
    return MatchEncoder(out)


def test_float_graph_reproduces_the_original_model(
    float_encoder: MatchEncoder, reference: tuple[list[str], np.ndarray]
) -> None:
    texts, ref = reference
    one_by_one = np.stack([float_encoder.embed([t])[0] for t in texts])
    np.testing.assert_allclose(one_by_one, ref, atol=2e-5)
    # The last text is 200 tokens: relative distances past 128 share the last bucket.
    assert json.loads(GOLDEN.read_text())["sentences"][-1]["tokens"] > 128


def test_padding_does_not_change_a_vector(
    float_encoder: MatchEncoder, reference: tuple[list[str], np.ndarray]
) -> None:
    texts, ref = reference
    # A float graph batches (short texts padded next to 200 tokens in one batch); it has no
    # per-tensor activation scale, so batch mates must not change a vector.
    assert not float_encoder.quantized and float_encoder.batch_size > len(texts)
    batched = float_encoder.embed(texts)
    np.testing.assert_allclose(batched, ref, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)


def test_int8_artifact_stays_close(reference: tuple[list[str], np.ndarray]) -> None:
    folder = resolve_match_model(MPNET_NAME)
    assert folder is not None
    texts, ref = reference
    encoder = MatchEncoder(folder)
    assert encoder.quantized and encoder.batch_size == 1
    got = encoder.embed(texts)
    cosines = (got * ref).sum(axis=1)
    assert cosines.min() >= 0.96, cosines  # measured 0.977-0.988 on the short ones
    # What matching relies on: the order of similarities between sentences is kept.
    assert np.argsort(got[0] @ got[:4].T).tolist() == np.argsort(ref[0] @ ref[:4].T).tolist()


def test_buckets_match_mpnet_rules() -> None:
    b = build_mpnet.relative_position_buckets(300)
    # Query i, key j: keys before the query use 0-15, keys after use 16-31.
    assert b[10, 10] == 0
    assert b[10, 3] == 7 and b[3, 10] == 16 + 7  # exact below 8 apart
    assert b[0, 8] == 16 + 8 and b[8, 0] == 8  # first log-spaced bucket
    assert b[200, 0] == 15 and b[0, 200] == 31  # clamped past max_distance
    assert b[150, 0] == b[299, 0] == 15
    row = b[299, :300][::-1]  # distance 0..299 before the query: never decreasing
    assert (np.diff(row) >= 0).all()
    assert b.min() >= 0 and b.max() <= 31


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(min_size=0, max_size=300),
    cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=5),
    reads=st.lists(st.tuples(st.integers(0, 320), st.integers(0, 64)), max_size=8),
)
def test_joined_files_read_like_one_file(
    tmp_path_factory: pytest.TempPathFactory,
    data: bytes,
    cuts: list[int],
    reads: list[tuple[int, int]],
) -> None:
    folder = tmp_path_factory.mktemp("parts")
    bounds = sorted({0, len(data), *(min(c, len(data)) for c in cuts)})
    paths = []
    for i, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False)):
        path = folder / f"part{i}"
        path.write_bytes(data[a:b])
        paths.append(path)
    if not paths:
        (folder / "empty").write_bytes(b"")
        paths = [folder / "empty"]
    with build_mpnet.JoinedFiles(paths) as joined:
        assert joined.readall() == data
        for offset, size in reads:
            joined.seek(offset)
            assert joined.read(size) == data[offset : offset + size]
        assert joined.seek(0, io.SEEK_END) == len(data)


def test_match_model_names_and_errors(tmp_path: Path) -> None:
    assert resolve_match_model("none") is None
    assert resolve_match_model("") is None
    with pytest.raises(ModelNotFound, match="neither"):
        resolve_match_model(str(tmp_path / "nowhere"))
    with pytest.raises(ModelNotFound, match=r"model\.onnx"):
        MatchEncoder(tmp_path)  # a folder without the graph


def test_remembered_vectors_survive_a_restart(tmp_path: Path) -> None:
    folder = resolve_match_model(MPNET_NAME)
    assert folder is not None
    texts = ["My bill doubled.", "Thanks, bye.", "My bill doubled."]  # one text per run: exact
    first = MatchEncoder(folder, cache_dir=tmp_path)
    fresh = first.embed(texts)
    alone = np.stack([first.embed([t])[0] for t in texts])
    np.testing.assert_allclose(fresh, alone, atol=1e-6)  # batch mates change nothing
    np.testing.assert_allclose(first.embed_remembered(texts), fresh, atol=1e-6)
    (cache,) = tmp_path.glob("match-*.npz")
    with np.load(cache) as z:
        assert sorted(z["texts"].tolist()) == ["My bill doubled.", "Thanks, bye."]
    second = MatchEncoder(folder, cache_dir=tmp_path)
    second.embed = None  # type: ignore[assignment,method-assign]  # must not be needed now
    np.testing.assert_allclose(second.embed_remembered(texts), fresh, atol=1e-5)
    cache.write_bytes(b"not a zip")  # a damaged cache is rebuilt, never an error
    third = MatchEncoder(folder, cache_dir=tmp_path)
    np.testing.assert_allclose(third.embed_remembered(texts[:1]), fresh[:1], atol=1e-5)


def test_bulk_embedding_over_threads_gives_each_text_its_own_vector() -> None:
    """A first start embeds a whole playbook over several threads; every vector must be what
    the text gets alone (one text per run), in the right row."""
    folder = resolve_match_model(MPNET_NAME)
    assert folder is not None
    encoder = MatchEncoder(folder, cache_dir=None)
    texts = [f"Call {i}: my bill went up by {i} dollars this month." for i in range(130)]
    np.testing.assert_allclose(encoder.embed_many(texts), encoder.embed(texts), atol=1e-6)
