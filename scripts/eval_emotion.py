"""Evaluate the emotion model on the held-out split against two baselines, and time it.

Why: the model only earns its place in the pipeline if it beats what is free: VADER (a
lexicon, polarity only) and nearest-centroid on the same MiniLM embeddings with two seed
phrases per class (what a cue author gets without training data).

Methods, all on `data/emotion/test.tsv` (and `fresh.tsv`, a second set written after all
tuning and evaluated as is; see data/emotion/README.md):
  model           the composed ONNX graph (`models.emotion.EmotionModel`)
  embedding-only  ablation: the same trainer without the token-bag term (head on embeddings)
  vader           vaderSentiment compound score mapped to classes: >= 0.05 positive,
                  <= -0.05 frustrated (the commonest negative class), else neutral. VADER only
                  knows polarity, so anxious, confused and sad are never predicted by it.
  centroid        cosine to the mean embedding of 2 seed phrases per class (`SEEDS`)
Metrics: accuracy and macro-F1 over the six classes, and the same collapsed to 3-way
polarity (positive / neutral / negative = frustrated, anxious, confused, sad), which is the
only comparison that is fair to VADER.

Latency (composed graph, tokenisation included, 2 and 1 intra-op threads): per-utterance
p50/p90/min over the test lines scored one at a time, and batch-of-16 p50 and throughput.
Figures depend on the machine's load, which is printed with them.

    .venv/bin/python -m scripts.eval_emotion [--no-ablation] [--out bench-out/eval_emotion.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models.embeddings import EmbedderOptions, SentenceEmbedder  # noqa: E402
from models.emotion import LABELS, EmotionModel, EmotionOptions  # noqa: E402
from scripts.build_models import (  # noqa: E402
    DATA_DIR,
    HYPER,
    TEST_TSV,
    TRAIN_TSV,
    build,
    metrics,
    read_tsv,
    train_head,
    two_step,
)

FRESH_TSV = DATA_DIR / "fresh.tsv"
SEEDS: dict[str, tuple[str, str]] = {
    "neutral": ("i have a question about my account", "can you check the status of my order"),
    "positive": ("thank you so much, that's great", "i'm really happy with the service"),
    "frustrated": (
        "this is ridiculous, i'm so annoyed",
        "i've called five times and nobody fixed it",
    ),
    "anxious": ("i'm worried i can't pay this in time", "i need this fixed urgently, i'm scared"),
    "confused": ("i don't understand what this charge means", "i'm confused, which one do i pick"),
    "sad": ("i guess it doesn't matter anymore", "i'm so sad, i just give up"),
}
POLARITY = {"positive": "positive", "neutral": "neutral"}  # everything else: negative


def polarity(labels: Sequence[str]) -> list[str]:
    return [POLARITY.get(lab, "negative") for lab in labels]


def vader_predict(texts: Sequence[str]) -> list[str]:
    from vaderSentiment.vaderSentiment import (  # type: ignore[import-untyped]
        SentimentIntensityAnalyzer,
    )

    sia = SentimentIntensityAnalyzer()
    out = []
    for t in texts:
        c = sia.polarity_scores(t)["compound"]
        out.append("positive" if c >= 0.05 else "frustrated" if c <= -0.05 else "neutral")
    return out


def centroid_predict(emb: SentenceEmbedder, texts: Sequence[str]) -> list[str]:
    cents = np.stack([emb.embed(list(SEEDS[lab])).mean(axis=0) for lab in LABELS])
    cents /= np.linalg.norm(cents, axis=1, keepdims=True)
    return [LABELS[i] for i in (emb.embed(texts) @ cents.T).argmax(axis=1)]


def ablation_predict(emb: SentenceEmbedder, texts: Sequence[str]) -> list[str]:
    tr_texts, tr_labels = read_tsv(TRAIN_TSV)
    head = train_head(
        emb.embed(tr_texts),
        emb.tokenizer.encode(tr_texts),
        tr_labels,
        vocab_size=emb.tokenizer.vocab_size,
        c=HYPER["l2_C"],
        token_weight=0.0,
    )
    return [LABELS[i] for i in two_step(emb, head, texts).argmax(axis=1)]


def score_all(gold: Sequence[str], preds: dict[str, list[str]]) -> dict[str, Any]:
    pol = ["positive", "neutral", "negative"]
    return {
        name: {
            "six_class": metrics(gold, p, LABELS),
            "polarity": metrics(polarity(gold), polarity(p), pol),
        }
        for name, p in preds.items()
    }


def latency(threads: int, texts: Sequence[str]) -> dict[str, float]:
    """Single-utterance and batch-of-16 timings of the composed graph, tokenising included."""
    model = EmotionModel(EmotionOptions(intra_op_threads=threads))
    load_before = os.getloadavg()[0]
    for t in texts[:10]:
        model.score([t])  # warm-up
    singles = []
    for t in texts:
        t0 = time.perf_counter()
        model.score([t])
        singles.append(time.perf_counter() - t0)
    batches = [list(texts[i : i + 16]) for i in range(0, len(texts) - 15, 16)]
    per_batch = []
    for b in batches:
        t0 = time.perf_counter()
        model.score(b)
        per_batch.append(time.perf_counter() - t0)
    return {
        "threads": threads,
        "single_p50_ms": round(1000 * float(np.percentile(singles, 50)), 2),
        "single_p90_ms": round(1000 * float(np.percentile(singles, 90)), 2),
        "single_min_ms": round(1000 * min(singles), 2),
        "batch16_p50_ms": round(1000 * float(np.percentile(per_batch, 50)), 2),
        "batch16_utterances_per_s": round(16 * len(batches) / sum(per_batch), 1),
        "load_avg_1m_before": round(load_before, 2),
    }


def print_table(title: str, results: dict[str, Any]) -> None:
    print(f"\n{title}")
    print(f"{'method':<16}{'acc':>7}{'macro-F1':>10}{'pol acc':>9}{'pol F1':>8}")
    for name, r in results.items():
        s, p = r["six_class"], r["polarity"]
        print(
            f"{name:<16}{s['accuracy']:>7.3f}{s['macro_f1']:>10.3f}"
            f"{p['accuracy']:>9.3f}{p['macro_f1']:>8.3f}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out" / "eval_emotion.json")
    ap.add_argument("--no-ablation", action="store_true", help="skip the embedding-only head")
    args = ap.parse_args(argv)

    build()  # no-op when the artifact is up to date
    model = EmotionModel(EmotionOptions(intra_op_threads=2))
    emb = SentenceEmbedder(EmbedderOptions(intra_op_threads=2))
    report: dict[str, Any] = {
        "machine": platform.node(),
        "cpus": os.cpu_count(),
        "model_meta_inputs": model.meta["hashes"]["inputs"],
        "sets": {},
    }
    for name, path in (("test", TEST_TSV), ("fresh", FRESH_TSV)):
        if not path.is_file():
            continue
        texts, gold = read_tsv(path)
        preds: dict[str, list[str]] = {"model": [s.label for s in model.score(texts)]}
        if not args.no_ablation:
            preds["embedding-only"] = ablation_predict(emb, texts)
        preds["vader"] = vader_predict(texts)
        preds["centroid"] = centroid_predict(emb, texts)
        report["sets"][name] = score_all(gold, preds)
        print_table(f"{name}: {path.relative_to(ROOT)} ({len(texts)} lines)", report["sets"][name])
    texts, _ = read_tsv(TEST_TSV)
    report["latency"] = [latency(n, texts) for n in (2, 1)]
    print(f"\nlatency of the composed graph on {len(texts)} test lines (tokenising included):")
    for lat in report["latency"]:
        print(
            f"  {lat['threads']} thread(s): single p50 {lat['single_p50_ms']} ms "
            f"(p90 {lat['single_p90_ms']}, min {lat['single_min_ms']}); batch of 16 p50 "
            f"{lat['batch16_p50_ms']} ms = {lat['batch16_utterances_per_s']} utterances/s "
            f"(1-min load average {lat['load_avg_1m_before']} on {os.cpu_count()} CPUs)"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
