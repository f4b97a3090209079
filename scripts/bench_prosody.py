"""Benchmark audio.prosody: frame-feature speed per core, per-utterance cost, and calibration.

Why: prosody runs on every utterance of both parties of every call, next to ASR on the same
cores, so it has to be a rounding error in the CPU budget (target: at least 200x real time per
core for the f0/energy tracker). The same run re-measures the arousal calibration on espeak-ng
speech so a change of weights or baseline shows up as a number, not a feeling.

What it measures, on one thread (OMP/OpenBLAS/MKL pinned to 1 before numpy is imported):

1. `frame_features` over 60 s of espeak-ng speech (8 kHz mu-law like a phone line, resampled
   to 16 kHz): x real time = audio seconds / wall seconds, best and median of repeats.
2. Per-utterance time of `utterance_prosody` + baseline z-scores + `arousal` + event fields,
   p50/p95 over the rendered utterances (2-4 s each).
3. Arousal of the same voice speaking angry / neutral / dejected lines after four neutral
   lines, and of a speaker who is always loud, line by line.

Run from the repository root:

    .venv/bin/python -m scripts.bench_prosody        # ~10 s; writes bench-out/bench_prosody.json
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audio.prosody import (  # noqa: E402
    SpeakerBaseline,
    UtteranceProsody,
    arousal,
    frame_features,
    prosody_event_fields,
    utterance_prosody,
)
from audio.types import PIPELINE_RATE, Samples  # noqa: E402
from scripts.make_test_calls import CallScript, Turn, render_phone_line  # noqa: E402

Style = tuple[int, int, int]
STYLES: dict[str, Style] = {
    "angry": (220, 80, 200),
    "neutral": (160, 50, 100),
    "dejected": (110, 20, 50),
    "loud": (160, 50, 200),
}
SENTENCES = (
    "I have been waiting on hold for forty minutes today.",
    "Can you tell me why my bill went up again this month?",
    "I already gave you my account number twice.",
    "The technician never showed up on Tuesday morning.",
    "Please just cancel the whole contract right now.",
    "I want to speak with somebody who can fix this.",
    "Nobody called me back like you promised last week.",
    "My internet keeps dropping every single evening.",
    "I do not understand why this keeps happening to me.",
    "Could you check the last three payments on my card?",
)
WARMUP = 4
SCRIPT = CallScript("bench_prosody", (Turn("customer", "unused"),), customer_voice="en-us")


def render(text: str, style: Style, workdir: Path) -> Samples:
    """One line as a phone line delivers it: 8 kHz mu-law round trip, then 16 kHz."""
    speed, pitch, amplitude = style
    turn = Turn("customer", text, speed_wpm=speed, pitch=pitch, amplitude=amplitude)
    return render_phone_line(SCRIPT, turn, workdir, pad_s=0.3, out_rate=PIPELINE_RATE)


def bench_frames(speech: Samples, repeats: int) -> dict[str, float]:
    frame_features(speech)  # warm caches and FFT plans
    times: list[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        frame_features(speech)
        times.append(time.perf_counter() - start)
    audio_s = speech.size / PIPELINE_RATE
    return {
        "audio_s": round(audio_s, 2),
        "repeats": repeats,
        "best_s": round(min(times), 4),
        "median_s": round(statistics.median(times), 4),
        "x_realtime_best": round(audio_s / min(times), 1),
        "x_realtime_median": round(audio_s / statistics.median(times), 1),
    }


def bench_utterances(clips: list[tuple[str, Samples]]) -> dict[str, float]:
    baseline = SpeakerBaseline()
    times_ms: list[float] = []
    for text, clip in clips * 3:
        start = time.perf_counter()
        p = utterance_prosody(clip, word_times=None, word_count=len(text.split()))
        z = baseline.zscores(p)
        score, why = arousal(z)
        prosody_event_fields(p, z, score, why=why)
        baseline.update(p)
        times_ms.append((time.perf_counter() - start) * 1e3)
    lengths = [clip.size / PIPELINE_RATE for _, clip in clips]
    return {
        "utterances": len(times_ms),
        "utterance_s_median": round(statistics.median(lengths), 2),
        "p50_ms": round(float(np.percentile(times_ms, 50)), 3),
        "p95_ms": round(float(np.percentile(times_ms, 95)), 3),
    }


def calibration(workdir: Path) -> dict[str, object]:
    def prosody(text: str, style: str) -> UtteranceProsody:
        clip = render(text, STYLES[style], workdir)
        return utterance_prosody(clip, word_times=None, word_count=len(text.split()))

    neutral = SpeakerBaseline()
    for text in SENTENCES[:WARMUP]:
        neutral.update(prosody(text, "neutral"))
    scored: dict[str, list[float]] = {}
    for style in ("angry", "neutral", "dejected"):
        scored[style] = [
            round(arousal(neutral.zscores(prosody(t, style)))[0], 3) for t in SENTENCES[WARMUP:]
        ]
    loud = SpeakerBaseline()
    loud_scores: list[float] = []
    for text in SENTENCES:
        p = prosody(text, "loud")
        loud_scores.append(round(arousal(loud.zscores(p))[0], 3))
        loud.update(p)
    return {
        "after_neutral_warmup": {
            k: {"mean": round(statistics.mean(v), 3), "min": min(v), "max": max(v), "all": v}
            for k, v in scored.items()
        },
        "always_loud_by_line": loud_scores,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("bench-out/bench_prosody.json"))
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench_prosody_") as tmp:
        workdir = Path(tmp)
        clips = [(t, render(t, STYLES[s], workdir)) for s in STYLES for t in SENTENCES]
        speech = np.concatenate([clip for _, clip in clips])
        target = round(args.seconds * PIPELINE_RATE)
        speech = np.tile(speech, -(-target // speech.size))[:target]
        result = {
            "machine": {
                "python": platform.python_version(),
                "numpy": np.__version__,
                "processor": platform.processor() or platform.machine(),
                "cpu_count": os.cpu_count(),
                "load_avg_1m": round(os.getloadavg()[0], 2),
                "threads": 1,
            },
            "frame_features": bench_frames(speech, args.repeats),
            "per_utterance": bench_utterances(clips),
            "calibration": calibration(workdir),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
