"""Evaluate the cue engine on the labeled call set in data/cue_eval, next to a keyword baseline.

Why this exists: cues are only useful when they are rare and right, so the engine is judged on
scripted calls with per-turn labels (see data/cue_eval/README.md) replayed through the real
pipeline (`python -m coach replay`). The `tune` and `heldout` splits are for developing the
engine; `heldout2` is the honest test set and must not be used for tuning (the data card says
why there are two held-out splits).

    python -m scripts.eval_cues render                      # .cache/cue_eval/<split>/*.wav|json
    python -m scripts.eval_cues run --split heldout2 --mode fast --jobs 2 [--json out.json]
    python -m scripts.eval_cues score --split heldout2 --mode fast   # rescore existing events
    python -m scripts.eval_cues score --split tune --transcripts script  # as if ASR were perfect
    python -m scripts.eval_cues score --split dev --rerun     # today's engine, the replay's words

Scoring (pure functions below, unit tested): a labeled turn's trigger interval is
[turn start, turn end], for dead_air [end of the previous speech on either channel, start of
the labeled turn]. A cue event matches a label of the same id when its t_emit lies in
[trigger start, trigger end + 4 s]; each label takes at most one cue. Unmatched cues inside the
window of an optional label of the same id are ignored, every other unmatched cue is a false
positive. The keyword baseline reads the customer's transcripts of the same replay output.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from scripts.make_test_calls import CUE_IDS, SPLITS, load_call_file, render_call

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = REPO / "data" / "cue_eval"
CACHE_DIR = REPO / ".cache" / "cue_eval"
MATCH_TAIL_S = 4.0  # a cue may come this long after its trigger interval ends
# A supervisor alerted this long after the crisis turn can still join during the agent's reply:
# reported beside the 4 s figure, because the agent's own safety protocol (an agent move) can
# raise the alert only once the agent has answered.
ALERT_TAIL_S = 15.0
FAST_AGENT_WPM = 260  # espeak-ng speed of the agent_pace_fast turns in the call files
DEAD_AIR_S = 8.0  # dead_air latency is measured from the moment the silence passes this
BASELINE_COOLDOWN_S = 20.0
SCRIPT_EMIT_DELAY_S = 0.5  # --transcripts script: when each turn's "final" is emitted
# Bump when rendering changes in a way the call files' hash cannot see.
RENDER_VERSION = "1"
LANGUAGE_CUES = CUE_IDS[:9]
TIMING_CUES = ("dead_air", "overtalk", "agent_pace_fast")
Mode = Literal["fast", "realtime"]
Event = Mapping[str, Any]


# --- ground truth -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Label:
    """One cue label of one turn, with the interval in which the engine should fire."""

    call_id: str
    turn: int
    cue: str
    required: bool
    start_s: float
    end_s: float

    @property
    def window_end_s(self) -> float:
        return self.end_s + MATCH_TAIL_S

    @property
    def latency_ref_s(self) -> float:
        """Where latency is counted from: the trigger's end, or 8 s into a silence."""
        return self.start_s + DEAD_AIR_S if self.cue == "dead_air" else self.end_s

    def contains(self, t_s: float) -> bool:
        return self.start_s <= t_s <= self.window_end_s


@dataclass(frozen=True, slots=True)
class CallTruth:
    call_id: str
    duration_s: float
    labels: tuple[Label, ...]
    split: str = ""

    @property
    def calm(self) -> bool:
        """A call with no required label: every cue in it is a false alarm."""
        return not any(lb.required for lb in self.labels)


def truth_from_json(truth: Mapping[str, Any]) -> CallTruth:
    """Labels with trigger intervals from a ground-truth JSON written by render_call."""
    call_id = str(truth["call_id"])
    labels: list[Label] = []
    speech_end = 0.0  # end of the latest speech so far on either channel
    for i, turn in enumerate(truth["turns"]):
        t_start, t_end = float(turn["t_start"]), float(turn["t_end"])
        for cues, required in (
            (turn.get("cues", []), True),
            (turn.get("optional_cues", []), False),
        ):
            for cue in cues:
                start, end = (speech_end, t_start) if cue == "dead_air" else (t_start, t_end)
                labels.append(Label(call_id, i, str(cue), required, start, end))
        speech_end = max(speech_end, t_end)
    split = str(truth.get("meta", {}).get("split", ""))
    return CallTruth(call_id, float(truth["duration_s"]), tuple(labels), split)


# --- matching -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CueHit:
    cue: str
    t_emit: float


@dataclass(slots=True)
class CallResult:
    call_id: str
    calm: bool
    duration_s: float
    matched: list[tuple[Label, CueHit]] = field(default_factory=list)
    missed: list[Label] = field(default_factory=list)
    false_cues: list[CueHit] = field(default_factory=list)
    ignored: list[CueHit] = field(default_factory=list)


def cue_hits(events: Iterable[Event]) -> list[CueHit]:
    return [CueHit(str(ev["cue"]), float(ev["t_emit"])) for ev in events if ev.get("type") == "cue"]


def match_call(truth: CallTruth, cues: Sequence[CueHit]) -> CallResult:
    """Match cues to required labels, greedily in time order.

    Each cue, earliest first, takes the still-unmatched required label of its id whose window
    contains it and closes first (that maximises matches for interval windows). Each label is
    matched at most once.
    """
    result = CallResult(truth.call_id, truth.calm, truth.duration_s)
    open_labels = [lb for lb in truth.labels if lb.required]
    optional = [lb for lb in truth.labels if not lb.required]
    for hit in sorted(cues, key=lambda h: (h.t_emit, h.cue)):
        candidates = [lb for lb in open_labels if lb.cue == hit.cue and lb.contains(hit.t_emit)]
        if candidates:
            best = min(candidates, key=lambda lb: (lb.window_end_s, lb.start_s))
            open_labels.remove(best)
            result.matched.append((best, hit))
        elif any(lb.cue == hit.cue and lb.contains(hit.t_emit) for lb in optional):
            result.ignored.append(hit)
        else:
            result.false_cues.append(hit)
    result.missed = open_labels
    return result


# --- summary figures ----------------------------------------------------------------------


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def prf(tp: int, fp: int, fn: int) -> dict[str, Any]:
    """Precision, recall, F1; None where undefined (nothing predicted / nothing labeled)."""
    p, r = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
    return {"tp": tp, "fp": fp, "fn": fn, "precision": p, "recall": r, "f1": f1}


def _percentiles(values: Sequence[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "p50": None, "p95": None}
    arr = np.asarray(values, dtype=np.float64)
    return {
        "n": len(values),
        "p50": round(float(np.percentile(arr, 50)), 3),
        "p95": round(float(np.percentile(arr, 95)), 3),
    }


def summarize(results: Sequence[CallResult]) -> dict[str, Any]:
    """Per-cue and overall P/R/F1, calm-call false cues per 10 minutes, latency percentiles."""
    tp: dict[str, int] = defaultdict(int)
    fp: dict[str, int] = defaultdict(int)
    fn: dict[str, int] = defaultdict(int)
    latency: dict[str, list[float]] = defaultdict(list)
    for res in results:
        for label, hit in res.matched:
            tp[label.cue] += 1
            latency[label.cue].append(hit.t_emit - label.latency_ref_s)
        for label in res.missed:
            fn[label.cue] += 1
        for hit in res.false_cues:
            fp[hit.cue] += 1
    cues = [*CUE_IDS, *sorted(set(fp) - set(CUE_IDS))]
    per_cue = {c: prf(tp[c], fp[c], fn[c]) for c in cues}
    for c in cues:
        per_cue[c]["latency_s"] = _percentiles(latency[c])
    micro = prf(sum(tp.values()), sum(fp.values()), sum(fn.values()))
    f1s = [per_cue[c]["f1"] for c in CUE_IDS if per_cue[c]["f1"] is not None]
    calm = [r for r in results if r.calm]
    calm_minutes = sum(r.duration_s for r in calm) / 60.0
    calm_false = sum(len(r.false_cues) for r in calm)
    return {
        "per_cue": per_cue,
        "micro": micro,
        "macro_f1": sum(f1s) / len(f1s) if f1s else None,
        "calm": {
            "calls": len(calm),
            "minutes": round(calm_minutes, 3),
            "false_cues": calm_false,
            "false_cues_per_10min": _ratio(10.0 * calm_false, calm_minutes),
        },
        "crisis_recall": per_cue["crisis"]["recall"],
        "latency_s": _percentiles([x for v in latency.values() for x in v]),
    }


def escalation_report(truth: CallTruth, events: Iterable[Event]) -> dict[str, Any]:
    """A call's escalations, and whether each required crisis label got a critical one."""
    escalations: list[dict[str, Any]] = [
        {"t_emit": float(ev["t_emit"]), "reason": ev.get("reason"), "urgency": ev.get("urgency")}
        for ev in events
        if ev.get("type") == "escalation"
    ]
    critical = [float(e["t_emit"]) for e in escalations if e["urgency"] == "critical"]
    crisis = [lb for lb in truth.labels if lb.required and lb.cue == "crisis"]
    covered = sum(any(lb.contains(t) for t in critical) for lb in crisis)
    alerted = sum(
        any(lb.start_s <= t <= lb.end_s + ALERT_TAIL_S for t in critical) for lb in crisis
    )
    return {
        "call_id": truth.call_id,
        "calm": truth.calm,
        "escalations": escalations,
        "crisis_labels": len(crisis),
        "crisis_with_critical_escalation": covered,
        "crisis_with_critical_escalation_15s": alerted,
    }


def escalation_summary(reports: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    labels = sum(int(r["crisis_labels"]) for r in reports)
    covered = sum(int(r["crisis_with_critical_escalation"]) for r in reports)
    alerted = sum(int(r.get("crisis_with_critical_escalation_15s", 0)) for r in reports)
    return {
        "crisis_labels": labels,
        "crisis_with_critical_escalation": covered,
        "rate": _ratio(covered, labels),
        "crisis_with_critical_escalation_15s": alerted,
        "rate_15s": _ratio(alerted, labels),
        "escalations": sum(len(r["escalations"]) for r in reports),
        "escalations_in_calm_calls": sum(len(r["escalations"]) for r in reports if r["calm"]),
    }


# --- keyword baseline ---------------------------------------------------------------------

# Written before the call set, as an ordinary keyword spotter would be: prefixes, matched at a
# word start in the lowercased customer transcript.
BASELINE_KEYWORDS: dict[str, tuple[str, ...]] = {
    "frustration": (
        "frustrat",
        "angry",
        "ridiculous",
        "unacceptable",
        "fed up",
        "annoyed",
        "upset",
        "furious",
        "sick of",
        "terrible",
        "worst",
        "absurd",
    ),
    "confusion": (
        "confus",
        "don't understand",
        "do not understand",
        "what do you mean",
        "lost me",
        "doesn't make sense",
        "makes no sense",
        "not sure what",
        "don't get it",
    ),
    "cost_anxiety": (
        "expensive",
        "afford",
        "price",
        "bill",
        "cost",
        "fee",
        "charge",
        "money",
        "budget",
    ),
    "urgency": (
        "urgent",
        "asap",
        "right now",
        "immediately",
        "emergency",
        "as soon as possible",
        "today",
        "hurry",
        "right away",
    ),
    "dejection": (
        "whatever",
        "i guess",
        "give up",
        "doesn't matter",
        "never mind",
        "pointless",
        "hopeless",
        "forget it",
    ),
    "escalation_request": (
        "supervisor",
        "manager",
        "someone else",
        "speak to",
        "talk to someone",
        "escalate",
    ),
    "churn_risk": (
        "cancel",
        "switch",
        "competitor",
        "leave",
        "leaving",
        "close my account",
        "another provider",
        "another company",
    ),
    "repeat_contact": (
        "again",
        "called before",
        "last time",
        "already called",
        "second time",
        "third time",
        "already told",
        "called yesterday",
        "called last week",
    ),
    "crisis": (
        "suicide",
        "kill",
        "hurt",
        "die",
        "dying",
        "end it",
        "emergency",
        "danger",
        "harm",
        "ambulance",
    ),
}
_KEYWORD_RE = {
    cue: re.compile(r"\b(?:" + "|".join(re.escape(k) for k in kws) + ")")
    for cue, kws in BASELINE_KEYWORDS.items()
}
BASELINE_AGENT_WPS = 3.5
BASELINE_OVERTALK_S = 2.0


def _transcripts(events: Iterable[Event]) -> list[Event]:
    return sorted(
        (ev for ev in events if ev.get("type") == "transcript"),
        key=lambda ev: (float(ev["t_start"]), float(ev["t_end"])),
    )


def keyword_baseline(events: Sequence[Event]) -> list[CueHit]:
    """Cues a keyword spotter plus naive transcript timings would raise on the same replay.

    Language cues: a keyword in a customer transcript, at that transcript's t_emit. dead_air:
    a gap >= 8 s between consecutive transcripts of either party, at the later one's t_start.
    overtalk: an agent transcript starting > 2 s before the previous customer transcript ends,
    at the agent's start + 2 s. agent_pace_fast: an agent transcript faster than 3.5 words/s,
    at its t_emit. One cue id at most every 20 s.
    """
    raw: list[CueHit] = []
    transcripts = _transcripts(events)
    speech_end: float | None = None
    last_customer: Event | None = None
    for ev in transcripts:
        t_start, t_end = float(ev["t_start"]), float(ev["t_end"])
        t_emit = float(ev.get("t_emit", t_end))
        text = str(ev.get("text", "")).lower().replace("\u2019", "'")
        if speech_end is not None and t_start - speech_end >= DEAD_AIR_S:
            raw.append(CueHit("dead_air", t_start))
        speech_end = t_end if speech_end is None else max(speech_end, t_end)
        if ev.get("speaker") == "customer":
            last_customer = ev
            raw.extend(CueHit(cue, t_emit) for cue, rx in _KEYWORD_RE.items() if rx.search(text))
            continue
        if ev.get("speaker") != "agent":
            continue
        if (
            last_customer is not None
            and t_start < float(last_customer["t_end"]) - BASELINE_OVERTALK_S
        ):
            raw.append(CueHit("overtalk", t_start + BASELINE_OVERTALK_S))
        words = len(text.split())
        if t_end > t_start and words / (t_end - t_start) > BASELINE_AGENT_WPS:
            raw.append(CueHit("agent_pace_fast", t_emit))
    return apply_cooldown(raw, BASELINE_COOLDOWN_S)


def apply_cooldown(hits: Iterable[CueHit], cooldown_s: float) -> list[CueHit]:
    """Drop a cue that repeats its id within ``cooldown_s`` of the last one kept."""
    last: dict[str, float] = {}
    kept: list[CueHit] = []
    for hit in sorted(hits, key=lambda h: (h.t_emit, h.cue)):
        if hit.cue in last and hit.t_emit - last[hit.cue] < cooldown_s:
            continue
        last[hit.cue] = hit.t_emit
        kept.append(hit)
    return kept


# --- transcript accuracy -----------------------------------------------------------------


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower().replace("\u2019", "'"))


def word_errors(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    """Word-level Levenshtein distance (substitutions + deletions + insertions)."""
    row = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        prev, row[0] = row[0], i
        for j, hyp in enumerate(hypothesis, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ref != hyp))
    return row[-1]


def transcript_errors(truth: Mapping[str, Any], events: Iterable[Event]) -> dict[str, list[int]]:
    """Per party, [word errors, reference words] of the final transcripts against the script.

    Numbers are spelled out in the scripts and written as digits by the ASR, so this
    overstates the error a little; it is there to tell ASR misses from cue-engine misses.
    """
    hyps: dict[str, list[str]] = defaultdict(list)
    for ev in _transcripts(events):
        hyps[str(ev.get("speaker"))] += _words(str(ev.get("text", "")))
    out: dict[str, list[int]] = {}
    for party in ("customer", "agent"):
        ref = [w for t in truth["turns"] if t["speaker"] == party for w in _words(t["text"])]
        out[party] = [word_errors(ref, hyps[party]), len(ref)]
    return out


def turn_wer(truth: Mapping[str, Any], events: Iterable[Event]) -> list[float | None]:
    """Per scripted turn, the word error rate of the transcripts of that party centred in it.

    Shows whether a missed language cue was missed by the ASR (nothing heard) or the engine.
    """
    transcripts = _transcripts(events)
    out: list[float | None] = []
    for turn in truth["turns"]:
        ref = _words(turn["text"])
        hyp = [
            w
            for ev in transcripts
            if ev.get("speaker") == turn["speaker"]
            and turn["t_start"] - 0.3
            <= (float(ev["t_start"]) + float(ev["t_end"])) / 2
            <= turn["t_end"] + 0.3
            for w in _words(str(ev.get("text", "")))
        ]
        out.append(round(word_errors(ref, hyp) / len(ref), 3) if ref else None)
    return out


def stage_lags(events: Iterable[Event]) -> dict[str, list[float]]:
    """Where a cue's latency goes, from a replay's own events (meaningful in --realtime).

    `asr`: each customer final's `t_emit - t_end` (end of speech -> final transcript), also
    split by the turn's length (`asr <3s`, `asr 3-6s`, `asr >=6s`), since a decode grows with
    the turn. `engine`: each customer cue read from a final (not an early one from a
    partial) minus the `t_emit` of that final (the final whose `t_end` its evidence names).
    """
    out: dict[str, list[float]] = {
        "asr": [],
        "asr <3s": [],
        "asr 3-6s": [],
        "asr >=6s": [],
        "engine": [],
    }
    finals: dict[float, float] = {}
    for ev in events:
        if ev.get("type") == "transcript" and ev.get("speaker") == "customer":
            lag = float(ev["t_emit"]) - float(ev["t_end"])
            length = float(ev["t_end"]) - float(ev["t_start"])
            out["asr"].append(lag)
            out["asr <3s" if length < 3 else "asr 3-6s" if length < 6 else "asr >=6s"].append(lag)
            finals[round(float(ev["t_end"]), 3)] = float(ev["t_emit"])
    for ev in events:
        if ev.get("type") != "cue" or ev.get("speaker") != "customer" or ev.get("early"):
            continue
        t_end = (ev.get("evidence") or {}).get("t_end")
        final_emit = finals.get(round(float(t_end), 3)) if t_end is not None else None
        if final_emit is not None:
            out["engine"].append(float(ev["t_emit"]) - final_emit)
    return out


# --- the scripts' own words in place of the ASR's (a diagnostic) --------------------------


def _word_answer(ev: Event) -> bool:
    """A language cue or an escalation: what the engine answered to the words, which a rerun
    finds again (timing cues come from the VAD and are kept as recorded)."""
    kind = ev.get("type")
    return kind == "escalation" or (kind == "cue" and ev.get("cue") not in TIMING_CUES)


def script_transcripts(truth: Mapping[str, Any], events: Iterable[Event]) -> list[dict[str, Any]]:
    """The replay's events with its transcripts replaced by one per scripted turn, in the
    script's own words: what the cue engine would see with a perfect ASR.

    Each turn keeps the voice of the replay: the prosody of the recorded transcript of the same
    party that overlaps the turn most (the voice does not depend on the words). Sentiment and
    state are left out, for `EngineRescorer` to recompute from the script's words. Language
    cues and escalations are dropped, since they answered the ASR's words; the timing cues
    (from the VAD, not the words) and every other event are kept.
    """
    events = list(events)
    recorded = _transcripts(events)
    out: list[dict[str, Any]] = [
        dict(ev) for ev in events if ev.get("type") != "transcript" and not _word_answer(ev)
    ]
    for i, turn in enumerate(truth["turns"]):
        t_start, t_end = float(turn["t_start"]), float(turn["t_end"])
        best: Event | None = None
        best_overlap = 0.0
        for ev in recorded:
            if ev.get("speaker") != turn["speaker"]:
                continue
            overlap = min(t_end, float(ev["t_end"])) - max(t_start, float(ev["t_start"]))
            if overlap > best_overlap:
                best, best_overlap = ev, overlap
        out.append(
            {
                "type": "transcript",
                "call_id": truth["call_id"],
                "speaker": turn["speaker"],
                "text": turn["text"],
                "t_start": t_start,
                "t_end": t_end,
                # As if the final came a typical ASR delay after the end of speech.
                "t_emit": t_end + SCRIPT_EMIT_DELAY_S,
                "utterance_id": f"script-{i}",
                "words": [],
                "prosody": dict(best.get("prosody") or {}) if best is not None else {},
            }
        )
    return sorted(out, key=lambda ev: float(ev.get("t_emit", 0.0)))


class EngineRescorer:
    """Runs the cue engine (offline, coach/cues/offline.py) again over a recorded replay.

    With `words="script"` the transcripts are first replaced by the scripts' own
    (`script_transcripts`); sentiment and the fused customer state of each turn are then
    computed from the script's words as the pipeline would compute them from the ASR's
    (coach/pipeline.py), so only the words differ from the replay. With `words="asr"` the
    replay's own transcripts, sentiment and state are kept and only the cues are found again:
    a change to the engine or the playbook is scored on the same words in seconds, without
    replaying the audio. Either way the recorded language cues and escalations are dropped and
    the timing cues (from the VAD, not the words) are kept as recorded.

    Loads the emotion model and the playbook once.
    """

    def __init__(
        self, playbook_path: Path | None = None, words: Literal["asr", "script"] = "script"
    ) -> None:
        from coach.cues.engine import LoadedPlaybook
        from coach.cues.matcher import CueIndex
        from coach.cues.offline import CachedAnalysis, FixedPlaybook
        from coach.cues.playbook import load_playbook
        from models.emotion import EmotionModel

        model = EmotionModel()
        playbook = load_playbook(playbook_path)
        index = CueIndex.build(playbook, model.embed_examples)
        self.holder = FixedPlaybook(LoadedPlaybook(playbook, index, f"{words}-rescore"))
        self.analyze = CachedAnalysis(model)
        self.words = words

    def __call__(self, truth: Mapping[str, Any], events: Iterable[Event]) -> list[dict[str, Any]]:
        import asyncio

        from coach.cues.offline import rescore

        if self.words == "script":
            rewritten = script_transcripts(truth, events)
            self._recompute_affect(rewritten)
        else:
            rewritten = [dict(ev) for ev in events if not _word_answer(ev)]
        found = asyncio.run(rescore(rewritten, self.holder, self.analyze))
        # rescore returns the recorded timing cues too: keep every other event, add its output.
        return [ev for ev in rewritten if ev.get("type") != "cue"] + found

    def _recompute_affect(self, rewritten: list[dict[str, Any]]) -> None:
        from coach.signals.state import CustomerStateTracker

        tracker = CustomerStateTracker()
        for ev in rewritten:
            if ev.get("type") != "transcript":
                continue
            emotion = self.analyze.scores([ev["text"]])[0]
            ev["sentiment"] = emotion.to_sentiment()
            if ev["speaker"] == "customer":
                ev["state"] = tracker.update(
                    t_end=ev["t_end"],
                    duration_s=ev["t_end"] - ev["t_start"],
                    sentiment={**ev["sentiment"], "confidence": emotion.confidence},
                    prosody=ev["prosody"],
                ).as_dict()


# --- files: render, replay, score ---------------------------------------------------------


def call_files(split: str, data_dir: Path = DATA_DIR) -> list[Path]:
    splits = SPLITS if split == "all" else (split,)
    return [p for s in splits for p in sorted((data_dir / s).glob("*.call"))]


def _ensure_cache_dir(out_root: Path, split: str) -> Path:
    out_dir = out_root / split
    out_dir.mkdir(parents=True, exist_ok=True)
    # The cache must never show up in `git status`, whatever the repository's .gitignore says.
    ignore = out_root / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n", encoding="utf-8")
    return out_dir


def script_hash(path: Path) -> str:
    digest = hashlib.sha256(path.read_bytes())
    digest.update(RENDER_VERSION.encode())
    return digest.hexdigest()[:16]


def render_calls(
    paths: Iterable[Path], out_root: Path = CACHE_DIR, *, force: bool = False
) -> list[Path]:
    """Render each call file to out_root/<split>/<call_id>.wav|json (8 kHz mu-law stereo),
    skipping calls whose ground truth already carries the same script hash."""
    truths: list[Path] = []
    for path in paths:
        script, meta = load_call_file(path)
        call_split = meta.get("split") or path.parent.name
        out_dir = _ensure_cache_dir(out_root, call_split)
        digest = script_hash(path)
        truth_path = out_dir / f"{script.call_id}.json"
        if not force and truth_path.exists() and (out_dir / f"{script.call_id}.wav").exists():
            old = json.loads(truth_path.read_text(encoding="utf-8"))
            if old.get("meta", {}).get("script_sha256") == digest:
                truths.append(truth_path)
                continue
        _, truth_path = render_call(
            script,
            out_dir,
            sample_rate=8000,
            encoding="mulaw",
            channels=2,
            meta={**meta, "split": call_split, "script_sha256": digest, "source": path.name},
        )
        print(f"rendered {truth_path.with_suffix('.wav')}", file=sys.stderr)
        truths.append(truth_path)
    return truths


def check_truth(truth: Mapping[str, Any]) -> list[str]:
    """Problems in a rendered call that the labels' rules forbid (see the data card)."""
    problems: list[str] = []
    turns = truth["turns"]
    call = truth["call_id"]
    calm = not any(t.get("cues") for t in turns)
    if not 30.0 <= float(truth["duration_s"]) <= 70.0:
        problems.append(f"{call}: duration {truth['duration_s']} s outside 30-70 s")
    speech_end = 0.0
    last_required: dict[str, float] = {}
    fast_agent_s = 0.0
    for i, t in enumerate(turns):
        silence = t["t_start"] - speech_end if i else 0.0
        overlap = max(0.0, speech_end - t["t_start"]) if i else 0.0
        cues = t.get("cues", [])
        if calm and (silence > 6.0 or overlap > 0.0):
            problems.append(f"{call} turn {i}: calm call with silence {silence:.1f} s / overlap")
        if "dead_air" in cues and silence <= DEAD_AIR_S + 0.5:
            problems.append(f"{call} turn {i}: dead_air label after only {silence:.1f} s")
        labelled = "dead_air" in cues or "dead_air" in t.get("optional_cues", [])
        if not labelled and silence > 6.0:
            problems.append(f"{call} turn {i}: unlabelled silence of {silence:.1f} s")
        if "overtalk" in cues and (t["speaker"] != "agent" or overlap < 2.5):
            problems.append(f"{call} turn {i}: overtalk label with overlap {overlap:.1f} s")
        fast_before = fast_agent_s
        if t["speaker"] == "agent" and t["speed_wpm"] >= FAST_AGENT_WPM:
            fast_agent_s += t["t_end"] - t["t_start"]
        if "agent_pace_fast" in cues and not fast_before < 10.0 <= fast_agent_s:
            problems.append(f"{call} turn {i}: agent_pace_fast not where 10 s fast speech accrue")
        for cue in cues:
            trigger = speech_end if cue == "dead_air" else t["t_start"]
            if cue in last_required and trigger - last_required[cue] < BASELINE_COOLDOWN_S:
                problems.append(f"{call} turn {i}: required {cue} within 20 s of the last one")
            last_required[cue] = trigger
        speech_end = max(speech_end, t["t_end"])
    if any("agent_pace_fast" in t.get("cues", []) for t in turns) and fast_agent_s < 12.0:
        problems.append(f"{call}: only {fast_agent_s:.1f} s of fast agent speech")
    return problems


def events_dir(split: str, mode: Mode, out_root: Path = CACHE_DIR) -> Path:
    return out_root / split / f"events-{mode}"


def read_events(path: Path) -> list[dict[str, Any]]:
    """The JSONL events; a torn last line (a replay still writing) is left out."""
    events: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events


def replay_env(mode: Mode, jobs: int) -> dict[str, str]:
    """The environment of each replay process. Realtime replays side by side stand for one
    server with that many calls: each gets its share of the cores as ASR workers (unless
    COACH_ASR_WORKERS is set), since each process's scheduler sends a final to the bigger
    final model only when one of its own workers is free, and N processes that each believe
    they own every core would decode N times as many base finals at once as one server."""
    env = dict(os.environ)
    if mode == "realtime" and jobs > 1 and "COACH_ASR_WORKERS" not in env:
        from coach.settings import usable_cpus

        env["COACH_ASR_WORKERS"] = str(max(1, usable_cpus() // jobs))
    return env


def _replay(
    wav: Path, out: Path, mode: Mode, config: Path | None, env: dict[str, str] | None = None
) -> tuple[str, int, float]:
    cmd = [sys.executable, "-m", "coach", "replay", str(wav), "--events", str(out), f"--{mode}"]
    if config is not None:
        cmd += ["--config", str(config)]
    began = time.monotonic()
    with out.with_suffix(".log").open("w", encoding="utf-8") as log:
        proc = subprocess.run(
            cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=False, env=env
        )
    if proc.returncode != 0:
        out.unlink(missing_ok=True)  # a partial event stream would be scored as complete
    return wav.stem, proc.returncode, time.monotonic() - began


def run_replays(
    truth_paths: Sequence[Path], mode: Mode, jobs: int, config: Path | None
) -> list[str]:
    """Replay each rendered call; returns the call ids whose replay failed."""
    failed: list[str] = []
    work = []
    for truth_path in truth_paths:
        out_dir = events_dir(truth_path.parent.name, mode, truth_path.parent.parent)
        out_dir.mkdir(parents=True, exist_ok=True)
        work.append((truth_path.with_suffix(".wav"), out_dir / f"{truth_path.stem}.jsonl"))
    env = replay_env(mode, jobs)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = [pool.submit(_replay, wav, out, mode, config, env) for wav, out in work]
        for fut in futures:
            call_id, rc, wall = fut.result()
            status = "ok" if rc == 0 else f"FAILED rc={rc}"
            print(f"replayed {call_id} in {wall:.1f} s: {status}", file=sys.stderr)
            if rc != 0:
                failed.append(call_id)
    return failed


def score_paths(
    truth_paths: Sequence[Path],
    mode: Mode,
    rewrite: Callable[[Mapping[str, Any], list[dict[str, Any]]], list[dict[str, Any]]]
    | None = None,
) -> dict[str, Any]:
    """Score the engine and the keyword baseline on the existing event files.

    `rewrite` turns a call's recorded events into the events to score (`EngineRescorer`: the
    engine's answer, run again, to the replay's words or to the scripts' own)."""
    engine: list[CallResult] = []
    baseline: list[CallResult] = []
    escalations: list[dict[str, Any]] = []
    missing: list[str] = []
    stale: list[str] = []
    wer: dict[str, list[int]] = {"customer": [0, 0], "agent": [0, 0]}
    turn_wers: list[list[float | None]] = []
    lags: dict[str, list[float]] = defaultdict(list)
    for truth_path in truth_paths:
        truth_json = json.loads(truth_path.read_text(encoding="utf-8"))
        truth = truth_from_json(truth_json)
        ev_path = events_dir(truth_path.parent.name, mode, truth_path.parent.parent)
        ev_path = ev_path / f"{truth_path.stem}.jsonl"
        if not ev_path.exists():
            missing.append(truth.call_id)
            continue
        if ev_path.stat().st_mtime < truth_path.with_suffix(".wav").stat().st_mtime:
            stale.append(truth.call_id)  # replayed from an older rendering of the call
            continue
        events = read_events(ev_path)
        if not any(ev.get("type") == "call_end" for ev in events):
            missing.append(truth.call_id)  # a replay still running, or one that died
            continue
        if rewrite is not None:
            events = rewrite(truth_json, events)
        engine.append(match_call(truth, cue_hits(events)))
        baseline.append(match_call(truth, keyword_baseline(events)))
        turn_wers.append(turn_wer(truth_json, events))
        for stage, values in stage_lags(events).items():
            lags[stage] += values
        escalations.append(escalation_report(truth, events))
        for party, (errors, words) in transcript_errors(truth_json, events).items():
            wer[party][0] += errors
            wer[party][1] += words
    return {
        "mode": mode,
        "calls": len(engine),
        "missing_event_files": missing,
        "stale_event_files": stale,
        "engine": summarize(engine),
        "keyword": summarize(baseline),
        "escalation": escalation_summary(escalations),
        "asr_wer": {party: _ratio(e, n) for party, (e, n) in wer.items()},
        "stage_latency_s": {stage: _percentiles(values) for stage, values in lags.items()},
        "per_call": [
            {
                "call_id": r.call_id,
                "calm": r.calm,
                "escalations": e["escalations"],
                "engine": _call_detail(r, w),
                "keyword": _call_detail(b, w),
            }
            for r, b, e, w in zip(engine, baseline, escalations, turn_wers, strict=True)
        ],
    }


def _call_detail(res: CallResult, turn_wers: Sequence[float | None]) -> dict[str, Any]:
    return {
        "matched": [
            {
                "cue": lb.cue,
                "turn": lb.turn,
                "t_emit": h.t_emit,
                "latency_s": round(h.t_emit - lb.latency_ref_s, 3),
            }
            for lb, h in res.matched
        ],
        "missed": [
            {"cue": lb.cue, "turn": lb.turn, "start_s": lb.start_s, "asr_wer": turn_wers[lb.turn]}
            for lb in res.missed
        ],
        "false": [{"cue": h.cue, "t_emit": h.t_emit} for h in res.false_cues],
        "ignored": [{"cue": h.cue, "t_emit": h.t_emit} for h in res.ignored],
    }


def _fmt(x: float | None, digits: int = 2) -> str:
    return "   -" if x is None else f"{x:.{digits}f}"


def format_report(report: Mapping[str, Any], title: str) -> str:
    eng, kw = report["engine"], report["keyword"]
    lines = [
        f"{title}: {report['calls']} calls, mode {report['mode']}",
        f"{'cue':<19}{'n':>4} | {'engine P':>8} {'R':>5} {'F1':>5} | {'keyword P':>9} {'R':>5}"
        f" {'F1':>5} | {'latency p50':>11} {'p95':>5}",
    ]
    for cue in CUE_IDS:
        e, k = eng["per_cue"][cue], kw["per_cue"][cue]
        lat = e["latency_s"]
        lines.append(
            f"{cue:<19}{e['tp'] + e['fn']:>4} | {_fmt(e['precision']):>8} {_fmt(e['recall']):>5}"
            f" {_fmt(e['f1']):>5} | {_fmt(k['precision']):>9} {_fmt(k['recall']):>5}"
            f" {_fmt(k['f1']):>5} | {_fmt(lat['p50']):>11} {_fmt(lat['p95']):>5}"
        )
    em, km = eng["micro"], kw["micro"]
    lines += [
        f"{'overall (micro)':<19}{em['tp'] + em['fn']:>4} | {_fmt(em['precision']):>8}"
        f" {_fmt(em['recall']):>5} {_fmt(em['f1']):>5} | {_fmt(km['precision']):>9}"
        f" {_fmt(km['recall']):>5} {_fmt(km['f1']):>5} | {_fmt(eng['latency_s']['p50']):>11}"
        f" {_fmt(eng['latency_s']['p95']):>5}",
        f"{'macro F1':<19}{'':>4} | {'':>8} {'':>5} {_fmt(eng['macro_f1']):>5} | {'':>9} {'':>5}"
        f" {_fmt(kw['macro_f1']):>5} |",
        f"false cues per 10 min of calm calls ({eng['calm']['calls']} calls,"
        f" {eng['calm']['minutes']:.1f} min): engine {_fmt(eng['calm']['false_cues_per_10min'])},"
        f" keyword {_fmt(kw['calm']['false_cues_per_10min'])}",
        f"crisis recall: engine {_fmt(eng['crisis_recall'])}, keyword {_fmt(kw['crisis_recall'])};"
        f" crisis labels with a critical escalation: {report['escalation']['crisis_with_critical_escalation']}"
        f"/{report['escalation']['crisis_labels']} (rate {_fmt(report['escalation']['rate'])}),"
        f" within {ALERT_TAIL_S:.0f} s of the turn"
        f" {report['escalation'].get('crisis_with_critical_escalation_15s', 0)}"
        f"/{report['escalation']['crisis_labels']};"
        f" escalations in calm calls: {report['escalation']['escalations_in_calm_calls']}",
    ]
    wer = report["asr_wer"]
    lines.append(
        f"ASR word error rate against the scripts: customer {_fmt(wer['customer'])},"
        f" agent {_fmt(wer['agent'])}"
    )
    if report["mode"] == "realtime" and report.get("stage_latency_s"):
        lines.append(
            "where cue latency goes (p50 / p95 s): "
            + ", ".join(
                f"{stage} {_fmt(v['p50'])} / {_fmt(v['p95'])} (n={v['n']})"
                for stage, v in report["stage_latency_s"].items()
            )
        )
    for call in report["per_call"]:
        if call["escalations"]:
            items = ", ".join(
                f"{e['urgency']} ({e['reason']}) at {e['t_emit']:.1f} s"
                for e in call["escalations"]
            )
            lines.append(f"escalations in {call['call_id']}: {items}")
    for key in ("missing_event_files", "stale_event_files"):
        if report[key]:
            label = key.replace("_", " ").replace("missing", "missing or unfinished")
            lines.append(f"{label} (not scored): {', '.join(report[key])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    render_p = sub.add_parser("render", help="render the call files to WAV + ground truth")
    run_p = sub.add_parser("run", help="render, replay through the pipeline, score")
    score_p = sub.add_parser("score", help="rescore existing event files")
    for p in (render_p, run_p, score_p):
        p.add_argument("--split", choices=(*SPLITS, "all"), default="all")
        p.add_argument("--calls", help="comma-separated call ids (default: all in the split)")
        p.add_argument("--data", type=Path, default=DATA_DIR, help="folder of <split>/*.call")
        p.add_argument("--cache", type=Path, default=CACHE_DIR, help="rendered calls and events")
    render_p.add_argument("--force", action="store_true", help="render even if up to date")
    for p in (run_p, score_p):
        p.add_argument("--mode", choices=("fast", "realtime"), default="fast")
        p.add_argument("--json", type=Path, help="write all figures to this file")
        p.add_argument(
            "--baseline", choices=("keyword",), default="keyword", help="printed side by side"
        )
    run_p.add_argument("--jobs", type=int, help="parallel replays (default 1 realtime, else 2)")
    run_p.add_argument("--config", type=Path, help="passed to `coach replay --config`")
    for p in (run_p, score_p):
        p.add_argument(
            "--transcripts",
            choices=("asr", "script"),
            default="asr",
            help="score the engine on the ASR's words (default) or, as a diagnostic of what"
            " the ASR costs, on the scripts' own words with the replay's voice and timing",
        )
        p.add_argument(
            "--playbook",
            type=Path,
            help="playbook for --transcripts script and --rerun (default: bundled)",
        )
    score_p.add_argument(
        "--rerun",
        action="store_true",
        help="run the engine (and --playbook) again over the recorded transcripts instead of"
        " scoring the cues the replay emitted: an engine or playbook change measured on the"
        " same words in seconds (implied by --transcripts script)",
    )
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv or ["render"])
    command = args.command
    split = args.split
    cache: Path = args.cache

    paths = call_files(split, args.data)
    if args.calls:
        wanted = set(args.calls.split(","))
        paths = [p for p in paths if p.stem in wanted]
        if unknown := wanted - {p.stem for p in paths}:
            parser.error(f"unknown call ids: {', '.join(sorted(unknown))}")
    truth_paths = render_calls(paths, cache, force=getattr(args, "force", False))
    problems = [
        msg for p in truth_paths for msg in check_truth(json.loads(p.read_text(encoding="utf-8")))
    ]
    for msg in problems:
        print(f"warning: {msg}", file=sys.stderr)
    if command == "render":
        print(f"{len(truth_paths)} calls rendered under {cache}")
        return 1 if problems else 0

    failed: list[str] = []
    if command == "run":
        jobs = args.jobs or (1 if args.mode == "realtime" else 2)
        failed = run_replays(truth_paths, args.mode, jobs, args.config)
    rewrite = None
    if args.transcripts == "script":
        rewrite = EngineRescorer(args.playbook, words="script")
    elif getattr(args, "rerun", False):
        rewrite = EngineRescorer(args.playbook, words="asr")
    report = score_paths(truth_paths, args.mode, rewrite)
    report["split"] = split
    report["transcripts"] = args.transcripts
    report["rerun"] = rewrite is not None
    report["failed_replays"] = failed
    title = f"split {split}"
    if args.transcripts == "script":
        title += ", the scripts' words in place of the ASR's"
    elif rewrite is not None:
        title += ", the engine run again over the replay's words"
    print(format_report(report, title))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
