"""Throughput of one shared Whisper model by batch size, on CPU or GPU.

Why: on a GPU the server decodes the utterances of many calls together (`COACH_DEVICE=cuda`,
`COACH_ASR_MAX_BATCH`), so the questions are how many utterance-seconds one model decodes per
second at each batch size, how long a batch makes each utterance wait, and whether batching or
float16 changes the words. This script answers them through the server's own decoder
(`models.asr.WhisperAsr.decode_batch`: the same windows, token budgets, beams, loop fallback and
word alignment), on real utterances: the turns of the rendered cue-evaluation calls, 8 kHz
mu-law telephone audio resampled to 16 kHz by the pipeline's resampler.

It needs only numpy, ctranslate2 and faster-whisper at run time, so it also runs on a GPU host
that has none of the server's web stack:

    .venv/bin/python -m scripts.bench_asr_batch prepare --out clips.npz          # here
    python -m scripts.bench_asr_batch run --clips clips.npz --model base \\
        --device cuda --compute-type float16,int8_float16 --json gpu.json          # GPU host
    .venv/bin/python -m scripts.bench_asr_batch report gpu.json [cpu.json]  # here: WER, calls

Two request kinds, as the server sends them (coach/settings.py defaults): `final` (beam 5,
word timings, 10 s shortest window) and `partial` (greedy, no word timings, 5 s window).
A batch of size B is B clips drawn at random (seeded), as a shared queue would mix calls; the
decoder groups them by encoder window itself. `--workers N` runs N threads, each decoding its
own batches through one model with N CTranslate2 replicas, as the server's ASR workers do.
Figures: batches timed, batch wall time p50/p95, utterances per second, and audio seconds
decoded per wall second; `report` adds the WER and an estimate of calls per model.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from audio.types import PIPELINE_RATE
from models.asr import AsrOptions, AsrRequest, WhisperAsr

KINDS: dict[str, dict[str, Any]] = {
    # Mirrors Settings: asr_beam_size, asr_min_window_s (finals, with word timings) and
    # asr_partial_beam_size, asr_partial_min_window_s (partials). A test keeps them in step.
    "final": {"beam_size": 5, "words": True, "min_window_s": 10.0},
    "partial": {"beam_size": 1, "words": False, "min_window_s": 5.0},
}
PAD_S = (0.2, 0.3)
"""Audio kept before and after a turn, as the endpointer's pre-roll and hangover keep some."""


@dataclass(frozen=True, slots=True)
class Clip:
    audio: np.ndarray[Any, np.dtype[np.float32]]
    text: str
    party: str
    call_id: str

    @property
    def seconds(self) -> float:
        return len(self.audio) / PIPELINE_RATE


def cut_clips(eval_dir: Path, splits: Sequence[str], limit: int) -> list[Clip]:
    """Every turn of the rendered evaluation calls, on its own channel, at 16 kHz."""
    import soundfile as sf

    from audio.resample import resample

    clips: list[Clip] = []
    for split in splits:
        for truth_path in sorted((eval_dir / split).glob("*.json")):
            truth = json.loads(truth_path.read_text())
            audio, rate = sf.read(str(truth_path.with_suffix(".wav")), dtype="float32")
            for turn in truth["turns"]:
                a = max(0, int((turn["t_start"] - PAD_S[0]) * rate))
                b = min(len(audio), int((turn["t_end"] + PAD_S[1]) * rate))
                mono = np.ascontiguousarray(audio[a:b, turn["channel"]])
                clips.append(
                    Clip(
                        resample(mono, rate, PIPELINE_RATE),
                        turn["text"],
                        turn["speaker"],
                        truth["call_id"],
                    )
                )
    # Spread the sample over calls and parties rather than taking the first few calls.
    rng = np.random.default_rng(7)
    order = rng.permutation(len(clips))[:limit]
    return [clips[i] for i in sorted(order)]


def save_clips(clips: Sequence[Clip], path: Path) -> None:
    pcm = np.concatenate([np.clip(c.audio * 32767, -32768, 32767).astype(np.int16) for c in clips])
    lengths = np.array([len(c.audio) for c in clips], dtype=np.int64)
    meta = [{"text": c.text, "party": c.party, "call_id": c.call_id} for c in clips]
    np.savez_compressed(path, pcm=pcm, lengths=lengths, meta=np.array(json.dumps(meta)))


def load_clips(path: Path) -> list[Clip]:
    with np.load(path) as z:
        pcm, lengths, meta = z["pcm"], z["lengths"], json.loads(str(z["meta"]))
    ends = np.cumsum(lengths)
    out = []
    for m, end, n in zip(meta, ends, lengths, strict=True):
        audio = (pcm[end - n : end].astype(np.float32) / 32768.0).astype(np.float32)
        out.append(Clip(audio, m["text"], m["party"], m["call_id"]))
    return out


def batch_plan(n_clips: int, batch: int, n_batches: int, seed: int) -> list[list[int]]:
    """Which clips go in each timed batch: random draws, each batch without repeats."""
    rng = np.random.default_rng(seed)
    size = min(batch, n_clips)
    return [
        sorted(rng.choice(n_clips, size=size, replace=False).tolist()) for _ in range(n_batches)
    ]


def percentile(values: Sequence[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values, dtype=np.float64), q)), 4)


@dataclass(frozen=True, slots=True)
class CallLoad:
    """What one call asks of the ASR per second of call time."""

    finals_per_s: float
    """Turns (one final each) per call-second."""
    speaking_s_per_s: float
    """Channel-seconds of speech per call-second (both parties; overlap counts twice)."""


def call_load(eval_dir: Path, splits: Sequence[str]) -> CallLoad | None:
    """The load of the evaluation calls, from their ground truth (None if not rendered)."""
    turns, speech, duration = 0, 0.0, 0.0
    for split in splits:
        for truth_path in sorted((eval_dir / split).glob("*.json")):
            truth = json.loads(truth_path.read_text())
            duration += truth["duration_s"]
            turns += len(truth["turns"])
            speech += sum(t["t_end"] - t["t_start"] for t in truth["turns"])
    if duration <= 0:
        return None
    return CallLoad(turns / duration, speech / duration)


def calls_per_model(
    final_utt_s: float, partial_utt_s: float, load: CallLoad, partial_interval_s: float = 0.5
) -> float:
    """Calls whose every final and every partial (one per `partial_interval_s` of speech,
    COACH_PARTIAL_INTERVAL_S) one model decodes as fast as they come: an estimate from
    decoder throughput, not a load test. Under load the server stretches the partial cadence
    first, so this bounds what is decoded at the full cadence."""
    partials_per_s = load.speaking_s_per_s / partial_interval_s
    return 1.0 / (load.finals_per_s / final_utt_s + partials_per_s / partial_utt_s)


def gpu_memory_used_mib() -> int | None:
    """Memory in use on GPU 0 as nvidia-smi reports it (None without nvidia-smi)."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        return int(out.strip().splitlines()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def gpu_name() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        return out.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def requests_for(clips: Sequence[Clip], idx: Sequence[int], kind: str) -> list[AsrRequest]:
    k = KINDS[kind]
    return [
        AsrRequest(
            audio=clips[i].audio,
            words=k["words"],
            beam_size=k["beam_size"],
            min_window_s=k["min_window_s"],
        )
        for i in idx
    ]


def time_batches(
    asr: WhisperAsr,
    clips: Sequence[Clip],
    kind: str,
    batch: int,
    budget_s: float,
    seed: int,
    workers: int = 1,
) -> dict[str, Any]:
    """Decode random batches of `batch` clips until `budget_s` is spent (at least 3 per
    worker). With several workers, each thread decodes its own batches at the same time (as
    the server's ASR workers do) and throughput is over the wall time of them all."""
    plan = batch_plan(len(clips), batch, 1000 * workers, seed)
    walls: list[float] = []
    audio_s = 0.0
    utts = 0
    lock = threading.Lock()

    def worker(own: list[list[int]]) -> None:
        nonlocal audio_s, utts
        spent, done = 0.0, 0
        for idx in own:
            t0 = time.perf_counter()
            asr.decode_batch(requests_for(clips, idx, kind))
            wall = time.perf_counter() - t0
            spent, done = spent + wall, done + 1
            with lock:
                walls.append(wall)
                audio_s += sum(clips[i].seconds for i in idx)
                utts += len(idx)
            if done >= 3 and spent >= budget_s:
                return

    t_start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(plan[w::workers],)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t_start
    return {
        "kind": kind,
        "batch": min(batch, len(clips)),
        "workers": workers,
        "batches": len(walls),
        "batch_p50_s": percentile(walls, 50),
        "batch_p95_s": percentile(walls, 95),
        "utt_per_s": round(utts / elapsed, 2),
        "audio_s_per_s": round(audio_s / elapsed, 1),
    }


def transcribe_all(asr: WhisperAsr, clips: Sequence[Clip], batch: int) -> list[str]:
    """Final-kind transcripts of every clip, decoded `batch` at a time in file order."""
    texts: list[str] = []
    for start in range(0, len(clips), batch):
        idx = list(range(start, min(len(clips), start + batch)))
        texts.extend(r.text for r in asr.decode_batch(requests_for(clips, idx, "final")))
    return texts


def run_config(
    clips: Sequence[Clip], args: argparse.Namespace, compute_type: str
) -> dict[str, Any]:
    t0 = time.perf_counter()
    asr = WhisperAsr(
        AsrOptions(
            model=args.model,
            device=args.device,
            compute_type=compute_type,
            threads=args.threads,
            workers=args.workers,
            cache_dir=Path(args.cache_dir),
        )
    )
    load_s = time.perf_counter() - t0
    asr.decode_batch(requests_for(clips, list(range(min(4, len(clips)))), "final"))  # warm up
    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    for kind in args.kinds.split(","):
        for b in batches:
            row = time_batches(asr, clips, kind, b, args.seconds, seed=b, workers=args.workers)
            rows.append(row)
            print(
                f"  {compute_type:>13} {kind:>7} B={row['batch']:>3} x{args.workers}  "
                f"batch p50 {row['batch_p50_s']:.3f}s p95 {row['batch_p95_s']:.3f}s  "
                f"{row['utt_per_s']:>7.1f} utt/s  {row['audio_s_per_s']:>7.1f} audio-s/s",
                flush=True,
            )
    hyps = {
        "batch_1": transcribe_all(asr, clips, 1),
        f"batch_{max(batches)}": transcribe_all(asr, clips, max(batches)),
    }
    return {
        "compute_type": compute_type,
        "load_s": round(load_s, 2),
        "gpu_memory_used_mib": gpu_memory_used_mib(),
        "rows": rows,
        "hypotheses": hyps,
    }


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def cpu_model() -> str:
    """The processor's model name from /proc/cpuinfo ("unknown" elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def machine() -> dict[str, Any]:
    return {
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "gpu": gpu_name(),
        "python": platform.python_version(),
        "versions": {d: _version(d) for d in ("ctranslate2", "faster-whisper", "numpy")},
    }


def cmd_prepare(args: argparse.Namespace) -> int:
    clips = cut_clips(Path(args.eval_dir), args.splits.split(","), args.limit)
    if not clips:
        print(f"no rendered calls under {args.eval_dir}: run `python -m scripts.eval_cues render`")
        return 2
    save_clips(clips, Path(args.out))
    total = sum(c.seconds for c in clips)
    print(f"{len(clips)} clips, {total:.0f} s of audio -> {args.out}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    clips = load_clips(Path(args.clips))
    print(
        f"{len(clips)} clips ({sum(c.seconds for c in clips):.0f} s); model {args.model} on "
        f"{args.device}",
        flush=True,
    )
    report: dict[str, Any] = {
        "machine": machine(),
        "model": args.model,
        "device": args.device,
        "threads": args.threads,
        "workers": args.workers,
        "clips": {
            "n": len(clips),
            "audio_s": round(sum(c.seconds for c in clips), 1),
            "texts": [c.text for c in clips],
            "parties": [c.party for c in clips],
        },
        "configs": [],
        "errors": [],
    }
    for compute_type in args.compute_type.split(","):
        # One failing compute type (not supported on this device) must not lose the others.
        try:
            report["configs"].append(run_config(clips, args, compute_type))
        except Exception as exc:  # recorded in the report and printed
            print(f"  {compute_type}: {type(exc).__name__}: {exc}", flush=True)
            report["errors"].append({"compute_type": compute_type, "error": repr(exc)})
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1))
    return 0 if report["configs"] else 1


def cmd_report(args: argparse.Namespace) -> int:
    """Word error rates of the saved transcripts (with the ASR benchmark's normaliser)."""
    from scripts.bench_asr import wer_stats

    load = call_load(Path(args.eval_dir), args.splits.split(","))
    if load is not None:
        print(
            f"call load ({args.splits}): {load.finals_per_s:.3f} finals and"
            f" {load.speaking_s_per_s:.2f} s of speech per call-second"
        )
    for path in args.reports:
        rep = json.loads(Path(path).read_text())
        refs = rep["clips"]["texts"]
        gpu = rep["machine"].get("gpu") or rep["machine"]["cpu_model"]
        print(f"\n{path}: {rep['model']} on {rep['device']} ({gpu}), {rep['clips']['n']} clips")
        for cfg in rep["configs"]:
            wers = {k: wer_stats(refs, hyps)["wer"] for k, hyps in cfg["hypotheses"].items()}
            texts = list(cfg["hypotheses"].values())
            same = [a == b for a, b in zip(texts[0], texts[-1], strict=True)]
            print(
                f"  {cfg['compute_type']:>13}: WER "
                + ", ".join(f"{k} {v:.3f}" for k, v in wers.items())
                + f"; identical text batched vs alone: {sum(same)}/{len(same)}"
            )
            speed: dict[tuple[int, int], dict[str, float]] = {}
            for row in cfg["rows"]:
                workers = row.get("workers", 1)
                speed.setdefault((row["batch"], workers), {})[row["kind"]] = row["utt_per_s"]
                print(
                    f"    {row['kind']:>7} B={row['batch']:>3} x{workers}: batch p50"
                    f" {row['batch_p50_s']:.3f} s, p95 {row['batch_p95_s']:.3f} s,"
                    f" {row['utt_per_s']:.1f} utt/s, {row['audio_s_per_s']:.1f} audio-s/s"
                )
            if load is None:
                continue
            for (batch, workers), kinds in speed.items():
                if {"final", "partial"} <= kinds.keys():
                    n = calls_per_model(kinds["final"], kinds["partial"], load)
                    print(
                        f"    B={batch:>3} x{workers}: about {n:.0f} calls decoded as fast as"
                        " they speak (estimate: every final, a partial per 0.5 s of speech)"
                    )
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    prep = sub.add_parser("prepare", help="cut the evaluation calls' turns into a clip file")
    prep.add_argument("--eval-dir", default=".cache/cue_eval")
    prep.add_argument("--splits", default="dev,tune")
    prep.add_argument("--limit", type=int, default=96)
    prep.add_argument("--out", default=".cache/asr_batch_clips.npz")
    run = sub.add_parser(
        "run", help="time batched decoding (needs numpy, ctranslate2, faster-whisper)"
    )
    run.add_argument("--clips", default=".cache/asr_batch_clips.npz")
    run.add_argument("--model", default="base")
    run.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    run.add_argument("--compute-type", default="int8", help="comma-separated")
    run.add_argument("--threads", type=int, default=2)
    run.add_argument(
        "--workers", type=int, default=1, help="parallel decodes sharing the model (ASR workers)"
    )
    run.add_argument("--kinds", default="final,partial")
    run.add_argument("--batches", default="1,2,4,8")
    run.add_argument("--seconds", type=float, default=5.0, help="time budget per batch size")
    run.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "voice-coach"))
    run.add_argument("--json")
    rep = sub.add_parser("report", help="WER and tables of saved run reports")
    rep.add_argument("reports", nargs="+")
    rep.add_argument("--eval-dir", default=".cache/cue_eval", help="for the call estimate")
    rep.add_argument("--splits", default="dev,tune")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    handler = {"prepare": cmd_prepare, "run": cmd_run, "report": cmd_report}[args.cmd]
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
