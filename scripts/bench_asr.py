"""Benchmark the streaming ASR path: accuracy, speed, latency and capacity on this machine.

Why: the coaching value of the server depends on transcripts that are right, arrive soon after
the speaker stops, and keep arriving when many calls share one model. This script measures all
three through the real call path (`coach.replay.replay`: ingest framing, resampling, VAD,
endpointing, the shared ASR scheduler) on scripted two-party calls rendered by espeak-ng as
8 kHz mu-law stereo (`scripts/make_test_calls.py`), whose ground-truth turns are exact.

What it measures, in order:

1. Accuracy (`--fast` replay, deterministic): word error rate per call and per speaker, and
   pooled over all calls (errors / reference words), with `jiwer`. Reference and hypothesis go
   through the same normaliser: lower case, no punctuation, apostrophes dropped, digits spelt
   out ("$49" -> "forty nine dollars", "3-5" -> "three to five", "6:00" -> "six") and a few
   spelling variants unified (ok/okay, all right/alright, canceled/cancelled). Transcripts of
   a party are joined in time order and compared with that party's joined turns, so
   segmentation does not count.
2. Real-time factor per channel (`--fast`): processing wall time / (audio seconds x channels).
   Fast mode decodes every partial and final inline, so this is the full per-channel compute.
3. Latency (`--realtime`, one call at a time): for every `transcript` event `t_emit - t_end`
   (call-audio seconds, the contract's definition), and the same measured on the wall clock
   (arrival at a bus subscriber minus the wall time at which `t_end` was fed). The two agree
   while the event loop keeps pace; the wall figure also covers transcripts emitted after the
   last frame (where `t_emit` stops at the call duration) and any lag of the feeder itself.
   Also relative to the ground-truth end of the turn where a transcript ends a turn, the cadence
   of partials within an utterance, and the time from speech start to the first partial.
4. Capacity: K calls (2K channels) replayed concurrently in real time, with staggered starts,
   in one event loop sharing one `CallManager` and one `Runtime` (one model instance), for
   K = 1, 2, 4, ... while 2K <= `--channels-max`. K = 1 reuses the first call of step 3. A load
   "keeps up" when the wall-clock p95 final latency is under 1.0 s and every call's last
   transcript arrived within 2 s of the end of its audio (no backlog). Reported: the largest K
   (all smaller K passing too) with p95 under 0.6 s and under 1.0 s.
5. The machine, model, compute type, commit and settings, so figures can be compared later.

Run from the repository root:

    .venv/bin/python -m scripts.bench_asr                  # full run, about 8 minutes on 2 cores
    .venv/bin/python -m scripts.bench_asr --quick          # one call, K <= 2, under 3 minutes

Settings come from COACH_* environment variables (or `--config FILE`), as for the server.
Real-time figures depend on what else runs on the same cores: check the load before a run
and compare only runs from the same machine in the same conditions.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import logging
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jiwer
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # also runnable as `python scripts/bench_asr.py`
    sys.path.insert(0, str(ROOT))

from coach.bus import InProcessBus, call_topic  # noqa: E402
from coach.calls import CallManager  # noqa: E402
from coach.events import Event  # noqa: E402
from coach.replay import CallAudio, read_call, replay  # noqa: E402
from coach.runtime import Runtime  # noqa: E402
from coach.settings import Settings  # noqa: E402
from models.asr import AsrRequest, AsrResult, WhisperAsr  # noqa: E402
from scripts.bench_asr_batch import cpu_model  # noqa: E402
from scripts.make_test_calls import BUILTIN_CALLS, render_call  # noqa: E402

log = logging.getLogger("bench_asr")

QUICK_CALLS = ["travel_rebooking"]  # the shortest built-in call (57 s), with overtalk
TURN_END_TOLERANCE_S = 0.5  # a transcript "ends a turn" if its t_end is this close to the turn's
KEEP_UP_P95_S = 1.0
TIGHT_P95_S = 0.6
BACKLOG_LIMIT_S = 2.0
STAGGER_S = (1.0, 3.0)
SECRET_SETTINGS = {"auth_secret", "ingest_api_key"}

# --------------------------------------------------------------------------------------------
# Text normalisation for WER


_ONES = (
    *("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"),
    *("eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen"),
    *("eighteen", "nineteen"),
)
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_SCALES = ((1_000_000_000, "billion"), (1_000_000, "million"), (1000, "thousand"), (100, "hundred"))
_ORDINAL_IRREGULAR = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}
_VARIANTS = {"ok": "okay", "all right": "alright", "canceled": "cancelled"}


def int_words(n: int) -> str:
    """Spell out a non-negative integer the way the call scripts do ("forty nine")."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (f" {_ONES[ones]}" if ones else "")
    for value, name in _SCALES:
        if n >= value:
            head, rest = divmod(n, value)
            return f"{int_words(head)} {name}" + (f" {int_words(rest)}" if rest else "")
    raise AssertionError("unreachable")


def ordinal_words(n: int) -> str:
    words = int_words(n).split()
    last = words[-1]
    if last in _ORDINAL_IRREGULAR:
        words[-1] = _ORDINAL_IRREGULAR[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


def _money(m: re.Match[str]) -> str:
    dollars, cents = int(m.group(1)), m.group(2)
    out = f" {int_words(dollars)} dollar{'' if dollars == 1 else 's'}"
    if cents and int(cents):
        out += f" {int_words(int(cents))} cent{'' if int(cents) == 1 else 's'}"
    return out + " "


def _clock(m: re.Match[str]) -> str:
    hour, minute = int(m.group(1)), int(m.group(2))
    if minute == 0:
        return f" {int_words(hour)} "
    if minute < 10:
        return f" {int_words(hour)} oh {int_words(minute)} "
    return f" {int_words(hour)} {int_words(minute)} "


def _decimal(m: re.Match[str]) -> str:
    digits = " ".join(_ONES[int(d)] for d in m.group(2))
    return f" {int_words(int(m.group(1)))} point {digits} "


def normalize_text(text: str) -> str:
    """Lower case, no punctuation, numbers as words; applied to reference and hypothesis."""
    s = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    s = re.sub(r"(?<=\d),(?=\d{3}\b)", "", s)  # 1,000 -> 1000
    s = re.sub(r"\$\s?(\d+)(?:\.(\d\d))?", _money, s)
    s = re.sub(r"(\d+(?:\.\d+)?)\s*%", r"\1 percent", s)
    s = re.sub(r"\b(\d{1,2}):(\d\d)\b", _clock, s)
    s = re.sub(r"\b(\d+)\s*[-\u2013]\s*(\d+)\b", r"\1 to \2", s)
    s = re.sub(r"\b(\d+)(?:st|nd|rd|th)\b", lambda m: f" {ordinal_words(int(m.group(1)))} ", s)
    s = re.sub(r"\b(\d+)\.(\d+)\b", _decimal, s)
    s = re.sub(r"\d+", lambda m: f" {int_words(int(m.group()))} ", s)
    s = s.replace("'", "")
    s = " ".join(re.sub(r"[^a-z]+", " ", s).split())
    for variant, canonical in _VARIANTS.items():
        s = re.sub(rf"(?<!\S){variant}(?!\S)", canonical, s)
    return s


def wer_stats(refs: Sequence[str], hyps: Sequence[str]) -> dict[str, Any]:
    """Pooled WER over pairs (sum of errors / sum of reference words); empty refs skipped."""
    pairs = [(normalize_text(r), normalize_text(h)) for r, h in zip(refs, hyps, strict=True)]
    pairs = [(r, h) for r, h in pairs if r]
    if not pairs:
        return {"wer": None, "ref_words": 0}
    out = jiwer.process_words([r for r, _ in pairs], [h for _, h in pairs])
    ref_words = int(out.hits + out.substitutions + out.deletions)
    return {
        "wer": round(float(out.wer), 4),
        "ref_words": ref_words,
        "substitutions": int(out.substitutions),
        "deletions": int(out.deletions),
        "insertions": int(out.insertions),
    }


def accuracy(transcripts: Sequence[Event], truth: dict[str, Any]) -> dict[str, Any]:
    """Per-speaker and whole-call WER of one call's transcripts against its ground truth."""
    refs: dict[str, str] = {}
    hyps: dict[str, str] = {}
    for speaker in ("customer", "agent"):
        turns = sorted(
            (t for t in truth["turns"] if t["speaker"] == speaker), key=lambda t: t["t_start"]
        )
        evs = sorted(
            (e for e in transcripts if e.get("speaker") == speaker), key=lambda e: e["t_start"]
        )
        refs[speaker] = " ".join(str(t["text"]) for t in turns)
        hyps[speaker] = " ".join(str(e["text"]) for e in evs)
    per = {s: wer_stats([refs[s]], [hyps[s]]) for s in refs}
    return {
        "speakers": per,
        "all": wer_stats(list(refs.values()), list(hyps.values())),
        "ref": refs,
        "hyp": hyps,
    }


# --------------------------------------------------------------------------------------------
# Instrumentation


class DecodeMeter:
    """Counts ASR batches, requests and decode seconds by wrapping the shared model's method.

    The scheduler looks `decode_batch` up on every call, so an instance attribute is enough;
    nothing in the project is modified.
    """

    def __init__(self, asr: WhisperAsr) -> None:
        self._orig = asr.decode_batch
        self._lock = threading.Lock()
        self.reset()
        setattr(asr, "decode_batch", self._decode)  # noqa: B010 - shadow the bound method

    def reset(self) -> None:
        with self._lock:
            self.batches = 0
            self.finals = 0
            self.partials = 0
            self.seconds = 0.0
            self.audio_s = 0.0
            self.max_batch = 0

    def _decode(self, requests: Sequence[AsrRequest]) -> list[AsrResult]:
        t0 = time.perf_counter()
        try:
            return self._orig(requests)
        finally:
            dt = time.perf_counter() - t0
            with self._lock:
                self.batches += 1
                self.finals += sum(1 for r in requests if r.words)
                self.partials += sum(1 for r in requests if not r.words)
                self.seconds += dt
                self.audio_s += sum(len(r.audio) for r in requests) / 16000
                self.max_batch = max(self.max_batch, len(requests))

    def snapshot(self, wall_s: float) -> dict[str, Any]:
        with self._lock:
            return {
                "batches": self.batches,
                "final_requests": self.finals,  # word-timed decodes, speculative ones too
                "partial_requests": self.partials,
                "mean_batch": round((self.finals + self.partials) / max(1, self.batches), 2),
                "max_batch": self.max_batch,
                "decode_s": round(self.seconds, 2),
                "decoded_audio_s": round(self.audio_s, 1),
                "busy_fraction": round(self.seconds / wall_s, 3) if wall_s > 0 else None,
            }


def _server_latency_metric() -> tuple[float, float]:
    """Sum and count of the server's own coach_asr_latency_seconds histogram (cross-check)."""
    from prometheus_client import REGISTRY

    total = REGISTRY.get_sample_value("coach_asr_latency_seconds_sum") or 0.0
    count = REGISTRY.get_sample_value("coach_asr_latency_seconds_count") or 0.0
    return float(total), float(count)


# --------------------------------------------------------------------------------------------
# Runs


@dataclass
class Call:
    name: str
    audio: CallAudio
    truth: dict[str, Any]

    @property
    def duration_s(self) -> float:
        return max(len(x) for x in self.audio.channels.values()) / self.audio.sample_rate

    @property
    def n_channels(self) -> int:
        return len(self.audio.channels)


@dataclass
class RealtimeRun:
    call: Call
    call_id: str
    start_offset_s: float
    t0_wall: float
    wall_s: float
    events: list[tuple[float, Event]]
    """(monotonic arrival time at our bus subscriber, event)."""
    dropped_frames: int
    error: str | None


async def run_fast(manager: CallManager, call: Call) -> tuple[list[Event], float, float]:
    """Returns events, wall seconds and process CPU seconds of one `--fast` replay."""
    c0, t0 = time.process_time(), time.perf_counter()
    events = await replay(call.audio, manager=manager, call_id=f"fast-{call.name}", realtime=False)
    return events, time.perf_counter() - t0, time.process_time() - c0


async def run_realtime(
    manager: CallManager, call: Call, call_id: str, start_offset_s: float = 0.0
) -> RealtimeRun:
    """One `--realtime` replay, timestamping every event as a panel subscriber would see it."""
    await asyncio.sleep(start_offset_s)
    topic = call_topic(call_id)
    sub = manager.bus.subscribe(topic, replay=False)
    got: list[tuple[float, Event]] = []

    async def collect() -> None:
        async for ev in sub:
            got.append((time.monotonic(), ev))

    collector = asyncio.create_task(collect())
    error: str | None = None
    t0 = time.monotonic()
    try:
        await asyncio.wait_for(
            replay(call.audio, manager=manager, call_id=call_id, realtime=True),
            timeout=call.duration_s * 3 + 60,
        )
    except Exception as exc:  # recorded in the report; the other runs go on
        error = f"{type(exc).__name__}: {exc}"
        log.error("realtime replay %s failed: %s", call_id, error)
    wall = time.monotonic() - t0
    if not manager.bus.is_closed(topic):
        manager.bus.unsubscribe(sub)
        sub.queue.put_nowait(None)
    await collector
    session = manager.get(call_id)
    dropped = session.dropped_frames if session is not None else 0
    return RealtimeRun(call, call_id, start_offset_s, t0, wall, got, dropped, error)


# --------------------------------------------------------------------------------------------
# Statistics


def dist(values: Sequence[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "max": None, "mean": None}
    a = np.asarray(values, dtype=np.float64)
    return {
        "n": len(values),
        "p50": round(float(np.percentile(a, 50)), 3),
        "p95": round(float(np.percentile(a, 95)), 3),
        "max": round(float(a.max()), 3),
        "mean": round(float(a.mean()), 3),
    }


def _turn_end_matches(
    transcripts: Sequence[tuple[float, Event]], truth: dict[str, Any]
) -> list[tuple[dict[str, Any], float, Event]]:
    """For each ground-truth turn, the transcript whose t_end is nearest its end (if close)."""
    out = []
    for turn in truth["turns"]:
        best: tuple[float, float, Event] | None = None
        for arrival, ev in transcripts:
            if ev["speaker"] != turn["speaker"]:
                continue
            gap = abs(float(ev["t_end"]) - float(turn["t_end"]))
            if gap <= TURN_END_TOLERANCE_S and (best is None or gap < best[0]):
                best = (gap, arrival, ev)
        if best is not None:
            out.append((turn, best[1], best[2]))
    return out


def realtime_metrics(runs: Sequence[RealtimeRun]) -> dict[str, Any]:
    """Final latency, turn-end latency, partial cadence and backlog pooled over `runs`."""
    lat_emit: list[float] = []
    lat_wall: list[float] = []
    gt_emit: list[float] = []
    gt_wall: list[float] = []
    cadence_audio: list[float] = []
    cadence_wall: list[float] = []
    first_audio: list[float] = []
    first_wall: list[float] = []
    records: list[dict[str, Any]] = []
    backlog: list[float] = []
    feeder_lag: list[float] = []
    turns_total = turns_matched = n_partials = utts_with_partials = 0
    slopes: list[float] = []
    for run in runs:
        t0 = run.t0_wall
        transcripts = [(a, e) for a, e in run.events if e["type"] == "transcript"]
        partials = [(a, e) for a, e in run.events if e["type"] == "partial"]
        n_partials += len(partials)
        feeder_lag.extend((a - t0) - float(e["t_emit"]) for a, e in run.events)
        run_wall: list[tuple[float, float]] = []
        for arrival, ev in transcripts:
            le = float(ev["t_emit"]) - float(ev["t_end"])
            lw = arrival - (t0 + float(ev["t_end"]))
            lat_emit.append(le)
            lat_wall.append(lw)
            run_wall.append((float(ev["t_end"]), lw))
            records.append(
                {
                    "call_id": run.call_id,
                    "speaker": ev["speaker"],
                    "t_start": ev["t_start"],
                    "t_end": ev["t_end"],
                    "t_emit": ev["t_emit"],
                    "latency_emit_s": round(le, 3),
                    "latency_wall_s": round(lw, 3),
                    "text": ev["text"],
                }
            )
        if len(run_wall) >= 3:
            x, y = np.asarray(run_wall).T
            slopes.append(float(np.polyfit(x, y, 1)[0]) * 60)
        turns_total += len(run.call.truth["turns"])
        for turn, arrival, ev in _turn_end_matches(transcripts, run.call.truth):
            turns_matched += 1
            gt_emit.append(float(ev["t_emit"]) - float(turn["t_end"]))
            gt_wall.append(arrival - (t0 + float(turn["t_end"])))
        by_utt: dict[tuple[str, int], list[tuple[float, Event]]] = {}
        for arrival, ev in partials:
            by_utt.setdefault((ev["speaker"], int(ev.get("utterance_id", -1))), []).append(
                (arrival, ev)
            )
        for seq in by_utt.values():
            utts_with_partials += 1
            seq.sort(key=lambda p: p[0])
            first_arrival, first = seq[0]
            first_audio.append(float(first["t_emit"]) - float(first["t_start"]))
            first_wall.append(first_arrival - (t0 + float(first["t_start"])))
            for (a0, e0), (a1, e1) in zip(seq, seq[1:], strict=False):
                cadence_audio.append(float(e1["t_emit"]) - float(e0["t_emit"]))
                cadence_wall.append(a1 - a0)
        call_end_wall = t0 + run.call.duration_s
        last = max((a for a, _ in transcripts), default=call_end_wall)
        backlog.append(last - call_end_wall)
    worst_backlog = max(backlog) if backlog else None
    p95_wall = dist(lat_wall)["p95"]
    errors = [r.error for r in runs if r.error]
    kept_up = (
        not errors
        and p95_wall is not None
        and p95_wall < KEEP_UP_P95_S
        and worst_backlog is not None
        and worst_backlog <= BACKLOG_LIMIT_S
    )
    return {
        "final_latency_emit_s": dist(lat_emit),
        "final_latency_wall_s": dist(lat_wall),
        "turn_end_latency_emit_s": dist(gt_emit),
        "turn_end_latency_wall_s": dist(gt_wall),
        "turns_matched": f"{turns_matched}/{turns_total}",
        "partials": n_partials,
        "utterances_with_partials": utts_with_partials,
        "partial_cadence_audio_s": dist(cadence_audio),
        "partial_cadence_wall_s": dist(cadence_wall),
        "speech_start_to_first_partial_audio_s": dist(first_audio),
        "speech_start_to_first_partial_wall_s": dist(first_wall),
        "last_transcript_after_call_end_s": (
            round(worst_backlog, 3) if worst_backlog is not None else None
        ),
        "latency_trend_s_per_min": round(float(np.mean(slopes)), 3) if slopes else None,
        "feeder_lag_max_s": round(max(feeder_lag), 3) if feeder_lag else None,
        "dropped_frames": sum(r.dropped_frames for r in runs),
        "errors": errors,
        "kept_up": bool(kept_up),
        "transcripts": records,
    }


# --------------------------------------------------------------------------------------------
# Environment


def machine_info() -> dict[str, Any]:
    cpu = cpu_model()
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    versions: dict[str, str] = {}
    for dist_name in ("ctranslate2", "faster-whisper", "onnxruntime", "numpy", "jiwer"):
        try:
            versions[dist_name] = importlib.metadata.version(dist_name)
        except importlib.metadata.PackageNotFoundError:
            versions[dist_name] = "?"
    return {
        "cpu_model": cpu,
        "cpu_cores": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": mem_gib,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def settings_report(settings: Settings) -> dict[str, Any]:
    data = settings.model_dump(mode="json")
    for key in SECRET_SETTINGS:
        if data.get(key) is not None:
            data[key] = "***"
    return data


# --------------------------------------------------------------------------------------------
# Report


def _f(x: Any, fmt: str = "{:.3f}") -> str:
    return "-" if x is None else fmt.format(x)


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def print_report(report: dict[str, Any]) -> None:
    m, a = report["machine"], report["asr"]
    print()
    print(f"machine: {m['cpu_model']}, {m['cpu_cores']} cores; commit {report['commit']}")
    final = a.get("final_model", a["model"])
    print(
        f"model: {a['model']}{'' if final == a['model'] else f', finals: {final}'} "
        f"({a['compute_type']}, {a['device']}, threads={a['threads']}, "
        f"workers={a['workers']}, max_batch={a['max_batch']}, beam={a['beam_size']})"
    )

    print("\n== Accuracy (--fast, WER after normalisation) ==")
    print(f"{'call':<18}{'customer':>10}{'agent':>10}{'all':>10}{'ref words':>11}")
    rows = [(c["name"], c["accuracy"]) for c in report["fast"]["calls"]]
    rows.append(("OVERALL", report["fast"]["overall_accuracy"]))
    for name, acc in rows:
        sp = acc["speakers"]
        print(
            f"{name:<18}{_pct(sp['customer']['wer']):>10}{_pct(sp['agent']['wer']):>10}"
            f"{_pct(acc['all']['wer']):>10}{acc['all']['ref_words']:>11}"
        )

    print("\n== Real-time factor per channel (--fast) ==")
    print(f"{'call':<18}{'audio s':>9}{'chans':>6}{'wall s':>8}{'RTF/ch':>8}{'CPU s/aud s':>13}")
    for c in report["fast"]["calls"]:
        print(
            f"{c['name']:<18}{c['duration_s']:>9.1f}{c['channels']:>6}{c['wall_s']:>8.1f}"
            f"{c['rtf_per_channel']:>8.3f}{c['cpu_per_channel_audio_s']:>13.3f}"
        )
    o = report["fast"]["overall"]
    print(
        f"{'OVERALL':<18}{o['audio_s']:>9.1f}{'':>6}{o['wall_s']:>8.1f}"
        f"{o['rtf_per_channel']:>8.3f}{o['cpu_per_channel_audio_s']:>13.3f}"
    )

    print("\n== Latency (--realtime, one call at a time; seconds) ==")
    hdr = f"{'call':<18}{'n':>4}{'p50':>8}{'p95':>8}{'max':>8}{'wall p95':>10}"
    print(hdr + f"{'turn p50':>10}{'turn p95':>10}{'cadence':>9}{'1st part':>10}")
    rt_rows = [(c["name"], c["metrics"]) for c in report["realtime"]["calls"]]
    rt_rows.append(("OVERALL", report["realtime"]["overall"]))
    for name, r in rt_rows:
        le, lw = r["final_latency_emit_s"], r["final_latency_wall_s"]
        ge, cad = r["turn_end_latency_emit_s"], r["partial_cadence_audio_s"]
        fp = r["speech_start_to_first_partial_audio_s"]
        print(
            f"{name:<18}{le['n']:>4}{_f(le['p50']):>8}{_f(le['p95']):>8}{_f(le['max']):>8}"
            f"{_f(lw['p95']):>10}{_f(ge['p50']):>10}{_f(ge['p95']):>10}{_f(cad['mean']):>9}"
            f"{_f(fp['mean']):>10}"
        )
    print("  n, p50/p95/max: t_emit - t_end of every transcript; wall p95: the same on the wall")
    print("  clock; turn: t_emit - ground-truth turn end; cadence: mean gap between partials of")
    print("  one utterance; 1st part: mean time from speech start to the first partial.")

    print("\n== Capacity (K concurrent calls = 2K channels, one model instance) ==")
    print(
        f"{'K':>3}{'chans':>6}{'p50':>8}{'p95':>8}{'wall p50':>10}{'wall p95':>10}{'max':>8}"
        f"{'partials':>10}{'backlog':>9}{'ASR busy':>10}{'kept up':>9}"
    )
    for row in report["capacity"]["runs"]:
        r = row["metrics"]
        le, lw = r["final_latency_emit_s"], r["final_latency_wall_s"]
        busy = row["asr"]["busy_fraction"]
        print(
            f"{row['k']:>3}{row['channels']:>6}{_f(le['p50']):>8}{_f(le['p95']):>8}"
            f"{_f(lw['p50']):>10}{_f(lw['p95']):>10}{_f(lw['max']):>8}{r['partials']:>10}"
            f"{_f(r['last_transcript_after_call_end_s'], '{:.2f}'):>9}{_pct(busy):>10}"
            f"{'yes' if r['kept_up'] else 'NO':>9}"
        )
    cap = report["capacity"]
    print(
        f"largest K with wall p95 < {TIGHT_P95_S} s: {cap['max_k_p95_under_0_6s']}; "
        f"< {KEEP_UP_P95_S} s and no backlog: {cap['max_k_p95_under_1_0s']} "
        f"(tested K = {', '.join(str(r['k']) for r in cap['runs'])})"
    )
    print(f"\ntotal {report['elapsed_s']:.0f} s; JSON: {report['out']}")


# --------------------------------------------------------------------------------------------
# Main


def capacity_ks(channels_max: int, explicit: str | None) -> list[int]:
    if explicit:
        return sorted({int(k) for k in explicit.split(",") if k.strip()})
    ks, k = [], 1
    while 2 * k <= channels_max:
        ks.append(k)
        k *= 2
    return ks or [1]


def largest_passing(rows: Sequence[dict[str, Any]], limit_s: float) -> int | None:
    """Largest tested K such that it and every smaller tested K pass `limit_s` with no backlog."""
    best = None
    for row in sorted(rows, key=lambda r: r["k"]):
        r = row["metrics"]
        p95 = r["final_latency_wall_s"]["p95"]
        backlog = r["last_transcript_after_call_end_s"]
        ok = (
            not r["errors"]
            and p95 is not None
            and p95 < limit_s
            and backlog is not None
            and backlog <= BACKLOG_LIMIT_S
        )
        if not ok:
            break
        best = row["k"]
    return best


async def bench(args: argparse.Namespace, settings: Settings, calls: list[Call]) -> dict[str, Any]:
    runtime = Runtime.load(settings)
    meter = DecodeMeter(runtime.asr)
    try:
        # Warm-up: first decodes allocate; keep them out of the measurements.
        noise = (np.random.default_rng(0).standard_normal(32000) * 0.01).astype(np.float32)
        await asyncio.to_thread(runtime.asr.transcribe, noise)
        meter.reset()
        bus = InProcessBus(history=settings.event_replay)
        manager = CallManager(runtime=runtime, settings=settings, bus=bus)

        # 1 + 2: accuracy and RTF from --fast
        fast_rows: list[dict[str, Any]] = []
        all_refs: dict[str, list[str]] = {"customer": [], "agent": []}
        all_hyps: dict[str, list[str]] = {"customer": [], "agent": []}
        t_phase = time.perf_counter()
        for call in calls:
            print(
                f"[fast] {call.name} ({call.duration_s:.1f} s x {call.n_channels} ch)", flush=True
            )
            events, wall, cpu = await run_fast(manager, call)
            transcripts = [e for e in events if e["type"] == "transcript"]
            acc = accuracy(transcripts, call.truth)
            for s in all_refs:
                all_refs[s].append(acc["ref"][s])
                all_hyps[s].append(acc["hyp"][s])
            chan_s = call.duration_s * call.n_channels
            fast_rows.append(
                {
                    "name": call.name,
                    "duration_s": round(call.duration_s, 2),
                    "channels": call.n_channels,
                    "wall_s": round(wall, 2),
                    "cpu_s": round(cpu, 2),
                    "rtf_per_channel": round(wall / chan_s, 4),
                    "cpu_per_channel_audio_s": round(cpu / chan_s, 4),
                    "transcripts": len(transcripts),
                    "partials": sum(1 for e in events if e["type"] == "partial"),
                    "accuracy": acc,
                }
            )
        fast_wall = time.perf_counter() - t_phase
        overall_acc = {
            "speakers": {s: wer_stats(all_refs[s], all_hyps[s]) for s in all_refs},
            "all": wer_stats(
                [*all_refs["customer"], *all_refs["agent"]],
                [*all_hyps["customer"], *all_hyps["agent"]],
            ),
        }
        audio_s = sum(r["duration_s"] for r in fast_rows)
        chan_s = sum(r["duration_s"] * r["channels"] for r in fast_rows)
        fast = {
            "calls": fast_rows,
            "overall_accuracy": overall_acc,
            "overall": {
                "audio_s": round(audio_s, 2),
                "channel_audio_s": round(chan_s, 2),
                "wall_s": round(sum(r["wall_s"] for r in fast_rows), 2),
                "rtf_per_channel": round(sum(r["wall_s"] for r in fast_rows) / chan_s, 4),
                "cpu_per_channel_audio_s": round(sum(r["cpu_s"] for r in fast_rows) / chan_s, 4),
            },
            "asr": meter.snapshot(fast_wall),
        }
        meter.reset()

        # 3: latency, one call at a time in real time
        rt_rows: list[dict[str, Any]] = []
        rt_runs: list[RealtimeRun] = []
        t_phase = time.perf_counter()
        m_sum0, m_cnt0 = _server_latency_metric()
        for call in calls:
            print(f"[realtime] {call.name} ({call.duration_s:.1f} s)", flush=True)
            meter.reset()
            run = await run_realtime(manager, call, f"rt-{call.name}")
            rt_runs.append(run)
            rt_metrics = realtime_metrics([run])
            rt_metrics["wer"] = accuracy(
                [e for _, e in run.events if e["type"] == "transcript"], call.truth
            )["all"]
            rt_rows.append(
                {
                    "name": call.name,
                    "call_id": run.call_id,
                    "asr": meter.snapshot(run.wall_s),
                    "metrics": rt_metrics,
                }
            )
        rt_wall = time.perf_counter() - t_phase
        m_sum1, m_cnt1 = _server_latency_metric()
        realtime: dict[str, Any] = {
            "calls": rt_rows,
            "overall": realtime_metrics(rt_runs),
            "wall_s": round(rt_wall, 1),
            "server_metric_asr_latency_mean_s": (
                round((m_sum1 - m_sum0) / (m_cnt1 - m_cnt0), 3) if m_cnt1 > m_cnt0 else None
            ),
        }
        realtime["overall"].pop("transcripts")  # already listed per call
        meter.reset()

        # 4: capacity
        rng = random.Random(0)
        cap_rows: list[dict[str, Any]] = []
        for k in capacity_ks(args.channels_max, args.ks):
            picked = [calls[i % len(calls)] for i in range(k)]
            offsets = [0.0]
            for _ in range(k - 1):
                offsets.append(offsets[-1] + rng.uniform(*STAGGER_S))
            if k == 1 and rt_runs and rt_runs[0].call is picked[0]:
                runs, wall, asr_stats = [rt_runs[0]], rt_runs[0].wall_s, None
                print("[capacity] K=1: reusing the first realtime run", flush=True)
            else:
                print(f"[capacity] K={k} ({2 * k} channels)", flush=True)
                meter.reset()
                t_phase = time.perf_counter()
                runs = list(
                    await asyncio.gather(
                        *(
                            run_realtime(manager, c, f"cap{k}-{i}-{c.name}", off)
                            for i, (c, off) in enumerate(zip(picked, offsets, strict=True))
                        )
                    )
                )
                wall = time.perf_counter() - t_phase
                asr_stats = meter.snapshot(wall)
            metrics_k = realtime_metrics(runs)
            metrics_k.pop("transcripts")
            cap_rows.append(
                {
                    "k": k,
                    "channels": sum(r.call.n_channels for r in runs),
                    "calls": [
                        {"call_id": r.call_id, "start_offset_s": round(r.start_offset_s, 2)}
                        for r in runs
                    ],
                    "wall_s": round(wall, 1),
                    "asr": asr_stats if asr_stats is not None else rt_rows[0]["asr"],
                    "metrics": metrics_k,
                }
            )
        capacity = {
            "criteria": {
                "kept_up": f"wall p95 < {KEEP_UP_P95_S} s and last transcript <= "
                f"{BACKLOG_LIMIT_S} s after the call's audio ends",
                "stagger_s": list(STAGGER_S),
            },
            "runs": cap_rows,
            "max_k_p95_under_0_6s": largest_passing(cap_rows, TIGHT_P95_S),
            "max_k_p95_under_1_0s": largest_passing(cap_rows, KEEP_UP_P95_S),
            "shed_partials_total": runtime.asr_scheduler.shed_count,
        }
        asr_info = {
            "model": settings.asr_model,
            "final_model": settings.asr_final_model or settings.asr_model,
            "model_path": str(runtime.asr.model_path),
            "compute_type": settings.asr_compute_type,
            "device": settings.device,
            "threads": settings.asr_threads,
            "workers": settings.asr_worker_count(),
            "max_batch": settings.asr_max_batch,
            "beam_size": settings.asr_beam_size,
            "min_window_s": settings.asr_min_window_s,
            "load_s": round(runtime.load_s, 2),
        }
        return {"fast": fast, "realtime": realtime, "capacity": capacity, "asr": asr_info}
    finally:
        runtime.close()


def load_calls(names: Sequence[str], rate: int, workdir: Path) -> list[Call]:
    calls = []
    for name in names:
        wav, truth_path = render_call(
            BUILTIN_CALLS[name], workdir, sample_rate=rate, encoding="mulaw"
        )
        truth = json.loads(truth_path.read_text(encoding="utf-8"))
        calls.append(Call(name, read_call(wav), truth))
    return calls


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="ASR benchmark: WER, RTF, end-of-speech latency and channel capacity.",
    )
    p.add_argument("--calls", default=None, help="comma-separated built-in calls, or 'all'")
    p.add_argument("--out", type=Path, default=Path("bench-out/bench_asr.json"))
    p.add_argument("--rate", type=int, default=8000, help="sample rate of the rendered calls")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_CALLS[0]} only, K <= 2")
    p.add_argument(
        "--channels-max",
        type=int,
        default=None,
        help="capacity: K = 1, 2, 4, ... calls while 2K <= this (default 8; --quick 4)",
    )
    p.add_argument("--ks", default=None, help="capacity: explicit comma-separated K values")
    p.add_argument("--config", type=Path, default=None, help="settings file, as for the server")
    p.add_argument("-v", "--verbose", action="store_true", help="show the server's INFO logs")
    args = p.parse_args(argv)
    if args.calls is None:
        args.calls = ",".join(QUICK_CALLS) if args.quick else "all"
    if args.channels_max is None:
        args.channels_max = 4 if args.quick else 8
    names = list(BUILTIN_CALLS) if args.calls == "all" else [n for n in args.calls.split(",") if n]
    unknown = [n for n in names if n not in BUILTIN_CALLS]
    if unknown or not names:
        p.error(f"unknown calls {unknown}; choose from {', '.join(BUILTIN_CALLS)} or all")
    args.call_names = names
    return args


def main(argv: Sequence[str] | None = None) -> int:
    commit = git_commit()  # now, not at the end: the tree may change while this runs
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    t_start = time.perf_counter()
    settings = Settings.load(args.config)
    with tempfile.TemporaryDirectory(prefix="bench_asr_") as tmp:
        print(f"rendering {', '.join(args.call_names)} at {args.rate} Hz mu-law", flush=True)
        calls = load_calls(args.call_names, args.rate, Path(tmp))
        results = asyncio.run(bench(args, settings, calls))
    report: dict[str, Any] = {
        "argv": sys.argv,
        "quick": args.quick,
        "calls": args.call_names,
        "rate": args.rate,
        "encoding": "mulaw",
        "machine": machine_info(),
        "commit": commit,
        "settings": settings_report(settings),
        **results,
        "elapsed_s": round(time.perf_counter() - t_start, 1),
        "out": str(args.out),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print_report(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
