"""Propose (and with --apply, write) per-cue thresholds from agents' feedback and the eval set.

Why: a cue that agents keep marking "not helpful" or dismissing is costing attention; one
that is always "helpful" may be set too strict and miss moments. Feedback alone cannot say
how far to move a threshold, so every candidate threshold is measured on the labeled
evaluation calls (offline: the recorded transcripts are re-scored with the candidate
playbook, no audio or ASR needed, see coach/cues/offline.py), and the proposal reports
the expected precision/recall change.

    python -m scripts.tune_playbook                      # report only
    python -m scripts.tune_playbook --apply              # write thresholds into the playbook
    python -m scripts.tune_playbook --database-url sqlite+aiosqlite:///.coach/coach.db
    python -m scripts.tune_playbook --examples           # examples that fire false cues
    python -m scripts.tune_playbook --missed [--apply]   # reported missed cues as examples
    python -m scripts.tune_playbook --unhelpful [--apply]  # not-helpful cues as near misses

`--examples` credits each playbook example with the hits and false cues its word matches gave
on the evaluation calls and lists those that cost more than they find: how new examples are
curated (BENCHMARKS, "More authors for the playbook").

`--missed` reads the missed-cue reports people filed in post-call review (a customer line that
should have shown a cue, `coach.store.MissedCueRecord`), proposes each reported wording as a
new example of its cue, measures the proposals together on the evaluation calls, and with
`--apply` appends them to the playbook unless micro F1 there falls by more than
`--max-eval-drop`. New positives are screened first: one that makes ordinary talk match its
cue (background, the cue's negatives, evaluation turns not labelled with it) is refused, and
one of a critical cue needs `--min-critical-reporters` (at least 2) reporters and the cue's
`min_words`. `--unhelpful` does the same with the words of cues people rated "not
helpful" (and nobody "helpful"), as near-miss negatives of those cues.

Policy per language cue, over thresholds current +- 0.10 in 0.01 steps:
- at least `--min-ratings` helpful or not-helpful ratings (a dismissal is no verdict: agents
  close a right card once they have acted on it) and a not-helpful share above
  `--max-unhelpful`: take the best-F1 threshold among the higher ones that raise precision;
- as many ratings, a helpful share above 1 - `--max-unhelpful` (mostly helpful), and recall
  below 1.0: the best-F1 threshold among the lower ones that raise recall;
- otherwise (little or evenly split feedback): the best-F1 threshold, only if it beats the
  current F1 by `--min-gain`; ties go to the threshold nearest the current one.
Call outcomes recorded at wrap-up are read and reported beside the proposals, per cue, with
the calls that ended escalated with no warning; they move no threshold (`outcome_lines`).
A critical cue (crisis) is never proposed a threshold that loses recall on the evaluation set.
The tune split is used by default (`--eval-dir .cache/cue_eval/heldout` uses the retired first
held-out split instead); the test split, `heldout2`, is refused: it must stay unseen.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
import yaml

from coach.cli import load_settings
from coach.cues import language
from coach.cues.engine import CueEngine, LoadedPlaybook, matched_example
from coach.cues.matcher import CueIndex, EmbedFn, ExampleSet
from coach.cues.offline import CachedAnalysis, FixedPlaybook, rescore
from coach.cues.playbook import (
    DEFAULT_PLAYBOOK,
    Playbook,
    PlaybookError,
    load_playbook,
    parse_playbook,
)
from coach.settings import Settings
from scripts import eval_cues

REPO = Path(__file__).resolve().parents[1]
DEFAULT_EVAL_DIR = eval_cues.CACHE_DIR / "tune"
TEST_SPLIT = "heldout2"
"""The split the engine is judged on (data/cue_eval/README.md); `tune` and `heldout` may be used."""


@dataclass
class EvalCall:
    truth: eval_cues.CallTruth
    events: list[dict[str, Any]]


def load_eval(eval_dir: Path, mode: str = "fast") -> list[EvalCall]:
    calls = []
    for truth_path in sorted(eval_dir.glob("*.json")):
        ev_path = eval_dir / f"events-{mode}" / f"{truth_path.stem}.jsonl"
        if not ev_path.exists():
            continue
        truth = eval_cues.truth_from_json(json.loads(truth_path.read_text(encoding="utf-8")))
        calls.append(EvalCall(truth, eval_cues.read_events(ev_path)))
    return calls


def with_threshold(playbook: Playbook, cue: str, threshold: float) -> Playbook:
    cues = dict(playbook.cues)
    cues[cue] = cues[cue].model_copy(update={"threshold": round(threshold, 4)})
    return playbook.model_copy(update={"cues": cues})


async def measure(
    calls: Sequence[EvalCall], playbook: Playbook, index: CueIndex, analyze: CachedAnalysis
) -> dict[str, Any]:
    holder = FixedPlaybook(LoadedPlaybook(playbook, index, "candidate"))
    results = []
    for call in calls:
        out = await rescore(call.events, holder, analyze)
        results.append(eval_cues.match_call(call.truth, eval_cues.cue_hits(out)))
    return eval_cues.summarize(results)


@dataclass
class ExampleCredit:
    """What one playbook example fired on the evaluation calls."""

    cue: str
    example: str
    hits: int = 0
    false_cues: int = 0


def credit_examples(
    scored: Iterable[tuple[eval_cues.CallTruth, Sequence[Mapping[str, Any]]]],
) -> list[ExampleCredit]:
    """Per playbook example, the hits and false cues its word matches gave (pure).

    Hits and false cues are as `eval_cues.match_call` counts them; a cue in the window of an
    optional label counts as neither. Worst first: most false cues beyond hits.
    """
    credit: dict[tuple[str, str], ExampleCredit] = {}
    for truth, events in scored:
        result = eval_cues.match_call(truth, eval_cues.cue_hits(events))
        hits = {(h.cue, h.t_emit) for _, h in result.matched}
        false = {(h.cue, h.t_emit) for h in result.false_cues}
        for ev in events:
            if ev.get("type") != "cue":
                continue
            example = matched_example(ev.get("reasons") or [])
            if example is None:
                continue
            key = (str(ev["cue"]), float(ev["t_emit"]))
            entry = credit.setdefault((key[0], example), ExampleCredit(key[0], example))
            entry.hits += key in hits
            entry.false_cues += key in false
    return sorted(credit.values(), key=lambda c: (c.hits - c.false_cues, c.cue, c.example))


def store_url(settings: Settings) -> str:
    """The history store the server with these settings writes: COACH_DATABASE_URL, else
    the SQLite file in COACH_DATA_DIR (env vars, config file and flags, as `coach serve`)."""
    from coach.store.db import resolve_url

    return resolve_url(settings.database_url, settings.data_dir)


def missing_sqlite_file(url: str) -> Path | None:
    """The SQLite file `url` names when there is none: opening it would create an empty store
    and report no feedback, instead of saying the store is elsewhere (pure but for a stat)."""
    parsed = sa.make_url(url)
    if not parsed.get_backend_name().startswith("sqlite") or not parsed.database:
        return None
    path = Path(parsed.database)
    return None if path.exists() else path


class StoreUnreadable(RuntimeError):
    """The history store is there but could not be read (down, wrong URL, not a database):
    unlike no store at all, not a reason to tune as if nobody had rated a cue."""


def _read_store(url: str, what: str, read: Any) -> Any:
    """`await read(store)` on the history store; None (and a line on stderr) if there is
    none, which is normal on a fresh checkout. A missing SQLite file is not created.
    StoreUnreadable if there is one that cannot be read."""
    from coach.store.db import redacted_url
    from coach.store.store import Store

    if (path := missing_sqlite_file(url)) is not None:
        print(
            f"no store found: {path} does not exist, so no {what} were read "
            "(the server's store is set by COACH_DATA_DIR or COACH_DATABASE_URL, "
            "or --data-dir, --database-url, --config here)",
            file=sys.stderr,
        )
        return None

    async def run() -> Any:
        store = Store(url=url)
        try:
            return await read(store)
        finally:
            await store.aclose()

    try:
        return asyncio.run(run())
    except Exception as exc:
        raise StoreUnreadable(
            f"no {what} could be read from the store at {redacted_url(url)} ({exc}); "
            "--no-feedback tunes on the evaluation set alone"
        ) from exc


def coaching_report(url: str, since: datetime | None = None) -> dict[str, Any] | None:
    """The store's coaching analytics (coach/store/analytics.py): ratings and call outcomes
    per cue; with `since`, of calls started then or later (ratings of a cue as it was before
    an edit no longer speak for it). None without a store."""
    from coach.store.analytics import coaching_analytics

    async def read(store: Any) -> dict[str, Any]:
        return await coaching_analytics(store, since=since)

    report: dict[str, Any] | None = _read_store(url, "feedback", read)
    if report is None:
        print("tuning on the evaluation set alone", file=sys.stderr)
    return report


def feedback_from(report: Mapping[str, Any] | None) -> dict[str, dict[str, int]]:
    """{cue: {helpful, not_helpful, dismissed}}."""
    return {
        row["cue"]: {k: int(row.get(k, 0)) for k in ("helpful", "not_helpful", "dismissed")}
        for row in (report or {}).get("cues", [])
    }


def feedback_counts(url: str, since: datetime | None = None) -> dict[str, dict[str, int]]:
    return feedback_from(coaching_report(url, since))


def outcome_lines(report: Mapping[str, Any] | None, cues: Sequence[str]) -> list[str]:
    """What agents recorded at wrap-up, read beside the thresholds.

    Outcomes move no threshold: a call that ended badly says the customer's problem was hard,
    not that a cue shown in it was wrong (the cues that fire most are on the hardest calls),
    and one that ended well does not make a cue right. They say two things a tuner can act
    on: which cues showed in calls that still ended escalated or unresolved (is the advice
    working? reword it), and which calls ended escalated with no warning at all (no
    escalation, no escalation request, frustration or crisis cue): moments the coaching may
    have missed, to review and report as missed cues, which `--missed` then reads."""
    if not report:
        return []
    rows = {r["cue"]: r.get("outcomes") or {} for r in report.get("cues", [])}
    lines = []
    for cue in cues:
        outcomes = rows.get(cue) or {}
        recorded = {k: n for k, n in outcomes.items() if k != "not recorded"}
        if not recorded:
            continue
        calls = sum(recorded.values())
        bad = recorded.get("escalated", 0) + recorded.get("unresolved", 0)
        said = ", ".join(f"{k} {n}" for k, n in sorted(recorded.items(), key=lambda kv: -kv[1]))
        lines.append(
            f"  {cue:20s} {calls} call(s) with an outcome: {said}"
            + (f"  ({bad}/{calls} escalated or unresolved)" if bad else "")
        )
    if lines:
        lines.insert(0, "call outcomes where each cue showed (read only: they move no threshold)")
    unflagged = report.get("escalated_unflagged") or []
    if unflagged:
        shown = ", ".join(unflagged[:10]) + (", ..." if len(unflagged) > 10 else "")
        lines.append(
            f"{len(unflagged)} call(s) ended escalated with no warning shown: {shown}; review "
            "them (supervisor page, Recent calls) and report the missed cue, then --missed"
        )
    return lines


@dataclass(frozen=True, slots=True)
class Proposal:
    cue: str
    current: float
    proposed: float
    before: Mapping[str, Any]
    after: Mapping[str, Any]
    feedback: Mapping[str, int]
    reason: str


def choose(
    cue: str,
    current: float,
    sweep: Mapping[float, Mapping[str, Any]],
    feedback: Mapping[str, int],
    *,
    min_ratings: int,
    max_unhelpful: float,
    min_gain: float,
    critical: bool = False,
) -> Proposal:
    """Pure policy: pick a threshold from the measured sweep and the feedback counts.

    Raising precision only ever raises the threshold, and raising recall only lowers it: a
    lower threshold that happened to measure more precise on the evaluation set made a cue
    agents had called a false alarm fire more (an outside audit). A `critical` cue (crisis)
    is never given a threshold that loses recall on the evaluation set, whatever the ratings
    say: a missed crisis costs more than any false page (CUES.md)."""
    before = sweep[current]
    # A dismissal is no verdict: agents close a right card once they have acted on it (as
    # `--unhelpful` reads them). Counted against the cue, an outside audit's two dismissals
    # alone turned an even split into "raise precision".
    helpful, unhelpful = feedback.get("helpful", 0), feedback.get("not_helpful", 0)
    total = helpful + unhelpful
    mostly_helpful = total >= min_ratings and helpful / total > 1.0 - max_unhelpful
    if critical:
        sweep = {
            t: m for t, m in sweep.items() if (m.get("recall") or 0) >= (before.get("recall") or 0)
        }

    def f1(t: float) -> float:
        return float(sweep[t].get("f1") or 0.0)

    def best(cands: list[float]) -> float:
        return max(cands, key=lambda t: (round(f1(t), 6), -abs(t - current)))

    reason = "evaluation set: best F1"
    pick = current
    if total >= min_ratings and unhelpful / total > max_unhelpful:
        stricter = [
            t
            for t in sweep
            if t > current and (sweep[t].get("precision") or 0) > (before.get("precision") or 0)
        ]
        if stricter:
            pick = best(stricter)
        reason = f"{unhelpful}/{total} rated not helpful: raise precision"
        if not stricter:  # say why nothing changes, or the line reads as a change
            reason += " (no threshold raises it on the evaluation set: reword the examples)"
    elif mostly_helpful and (before.get("recall") or 0) < 1.0:
        looser = [
            t
            for t in sweep
            if t < current and (sweep[t].get("recall") or 0) > (before.get("recall") or 0)
        ]
        if looser:
            pick = best(looser)
        reason = f"{helpful}/{total} rated helpful: raise recall"
        if not looser:
            reason += " (no threshold raises it on the evaluation set)"
    else:
        cand = best(list(sweep))
        if f1(cand) >= f1(current) + min_gain:
            pick = cand
        if total >= min_ratings and not mostly_helpful:  # an even split says neither way
            reason = f"{helpful}/{total} rated helpful, {unhelpful} not: mixed; " + reason
    return Proposal(cue, current, pick, before, sweep[pick], dict(feedback), reason)


def _with_cue(lines: Iterable[str]) -> Iterator[tuple[str, str | None]]:
    """Each line of a playbook file with the cue whose block under `cues:` holds it (None
    outside that section). A comment at the start of a line does not end the section."""
    current: str | None = None
    in_cues = False
    for line in lines:
        if re.match(r"^cues:\s*$", line):
            in_cues, current = True, None
        elif re.match(r"^[^\s#]", line):
            in_cues, current = False, None
        elif in_cues and (m := re.match(r"^  ([a-z][a-z0-9_]*):\s*$", line)):
            current = m.group(1)
        yield line, current


def write_playbook(path: Path, text: str) -> None:
    """Replace the playbook file whole (a new file renamed over it): the server polls it every
    COACH_PLAYBOOK_RELOAD_S, and one poll inside a write in place read a truncated file,
    refused it and logged an error (and set coach_playbook_refused) for a good playbook."""
    target = path.resolve()  # through a symlink: replace the file, keep the link
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        shutil.copymode(target, tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def apply_thresholds(path: Path, changes: Mapping[str, float]) -> str:
    """Rewrite `threshold:` lines inside each changed cue's block, keeping comments and layout."""
    out: list[str] = []
    rewritten: set[str] = set()
    for line, cue in _with_cue(path.read_text(encoding="utf-8").splitlines(keepends=True)):
        t = re.match(r"^(    threshold:\s*)([0-9.]+)(.*)$", line)
        if t and cue is not None and cue in changes:
            line = f"{t.group(1)}{changes[cue]:.2f}{t.group(3)}\n"
            rewritten.add(cue)
        out.append(line)
    if missing := sorted(set(changes) - rewritten):
        # A cue written on one line ({title: ..., threshold: ...}) has no line to rewrite:
        # say so, rather than report thresholds written that were not.
        raise ValueError(
            f"no `threshold:` line of {', '.join(missing)} in {path} to rewrite "
            "(write the cue as a block, one key per line)"
        )
    text = "".join(out)
    parse_playbook(text, source=path)  # never write a playbook the server would refuse
    return text


@dataclass(frozen=True, slots=True)
class ExampleProposal:
    """Customer words from real calls proposed as a new example of a cue: a positive (a
    missed-cue report) or a near-miss negative (a cue people rated not helpful)."""

    cue: str
    text: str
    reporters: tuple[str, ...]
    kind: Literal["positives", "negatives"] = "positives"


MIN_EXAMPLE_WORDS = 3
CRITICAL_MIN_REPORTERS = 2
"""Distinct reporters a new positive of a critical cue (crisis) needs before `--apply` writes
it, whatever `--min-reporters` says. A critical cue pages a supervisor, and one reviewer's
report of a line ASR garbled ("Honestly, I'm terrible.") taught crisis to fire on "Honestly,
I'm terrible with computers." while micro F1 on the evaluation set did not move."""


def gone_cues(
    playbook: Playbook,
    feedback: Mapping[str, Mapping[str, int]],
    missed: Iterable[Any],
    rated: Iterable[Any],
) -> list[str]:
    """A line for each cue that has ratings or reports but is no longer in the playbook: they
    are left out, and saying nothing read as "no feedback" (an outside audit)."""
    counts: dict[str, int] = {}
    for cue, verdicts in feedback.items():
        counts[cue] = counts.get(cue, 0) + sum(verdicts.values())
    for r in (*missed, *rated):
        counts[r.cue] = counts.get(r.cue, 0) + 1
    return [
        f"{n} rating(s) or report(s) on cue {cue!r} left out: it is not in the playbook"
        for cue, n in sorted(counts.items())
        if cue not in playbook.cues and n
    ]


def propose_examples(
    reports: Iterable[Any], playbook: Playbook, *, min_reporters: int = 1
) -> list[ExampleProposal]:
    """Missed-cue reports (`coach.store.MissedCueRecord`s) as new examples (pure).

    One proposal per cue and text (compared without case, spacing or end punctuation),
    naming everyone who reported it."""
    return _proposals(
        ((r.cue, r.text, {str(r.user): "missed"}) for r in reports),
        playbook,
        kind="positives",
        counts="missed",
        min_reporters=min_reporters,
    )


def propose_near_misses(
    rated: Iterable[Any], playbook: Playbook, *, min_reporters: int = 1
) -> list[ExampleProposal]:
    """Cues rated "not helpful" (`coach.store.RatedCueRecord`s) as near-miss negatives (pure).

    The words a cue answered become a negative example of that cue when at least
    `min_reporters` people rated it not helpful and nobody rated it helpful. "Dismissed" does
    not count: an agent closes a right cue once it has been acted on."""
    return _proposals(
        ((r.cue, r.text, dict(r.verdicts)) for r in rated),
        playbook,
        kind="negatives",
        counts="not_helpful",
        vetoed_by="helpful",
        min_reporters=min_reporters,
    )


def _proposals(
    items: Iterable[tuple[str, str, Mapping[str, str]]],
    playbook: Playbook,
    *,
    kind: Literal["positives", "negatives"],
    counts: str,
    vetoed_by: str | None = None,
    min_reporters: int,
) -> list[ExampleProposal]:
    """(cue, text, {user: verdict}) grouped per cue and text. Left out: cues the playbook
    has not or that answer no words (timing cues), texts too short to mean anything, texts
    already among the cue's examples, and texts anyone gave the `vetoed_by` verdict."""
    grouped: dict[tuple[str, str], tuple[str, set[str]]] = {}
    vetoed: set[tuple[str, str]] = set()
    for cue, raw, verdicts in items:
        spec = playbook.cues.get(cue)
        text = " ".join(str(raw).split())
        if spec is None or spec.kind != "language" or len(text.split()) < MIN_EXAMPLE_WORDS:
            continue
        key = (cue, _norm(text))
        if key[1] in {_norm(t) for t in (*spec.positives, *spec.negatives)}:
            continue
        if vetoed_by is not None and vetoed_by in verdicts.values():
            vetoed.add(key)
        _, users = grouped.setdefault(key, (text, set()))
        users.update(u for u, v in verdicts.items() if v == counts)
    return [
        ExampleProposal(key[0], text, tuple(sorted(users)), kind)
        for key, (text, users) in grouped.items()
        if key not in vetoed and len(users) >= max(1, min_reporters)
    ]


@dataclass(frozen=True, slots=True)
class Refusal:
    """A proposal `--apply` will not write, and why (printed, and in `--json`)."""

    proposal: ExampleProposal
    why: str


def screen_positives(
    proposals: Sequence[ExampleProposal],
    playbook: Playbook,
    *,
    min_critical_reporters: int = CRITICAL_MIN_REPORTERS,
) -> tuple[list[ExampleProposal], list[Refusal]]:
    """Split proposals into those that may be measured and written and those refused (pure).

    Only new positives of critical cues are held here; negatives cannot make a cue fire.
    A critical cue's positive needs `min_critical_reporters` distinct reporters, and at least
    the cue's `min_words` words: the engine does not read shorter turns for a cue, and a short
    generic example ("Honestly, I'm terrible.") is near every longer turn that begins the
    same way. Every crisis example in the shipped playbook has that many words."""
    kept: list[ExampleProposal] = []
    refused: list[Refusal] = []
    for p in proposals:
        spec = playbook.cues[p.cue]
        why: list[str] = []
        if p.kind == "positives" and spec.severity == "critical":
            if len(p.reporters) < min_critical_reporters:
                why.append(
                    f"{p.cue} is critical: needs {min_critical_reporters} distinct reporters, "
                    f"has {len(p.reporters)}"
                )
            n_words = len(language.words(p.text))
            if n_words < spec.min_words:
                why.append(
                    f"{n_words} words, fewer than {p.cue}'s min_words ({spec.min_words}): "
                    "too short to mean a critical cue alone"
                )
        if why:
            refused.append(Refusal(p, "; ".join(why)))
        else:
            kept.append(p)
    return kept, refused


@dataclass(frozen=True, slots=True)
class Probe:
    """Ordinary talk a new positive must not make match: a customer turn to feed the engine,
    and the cues it is ordinary for (a background phrase is ordinary for every cue, a
    near-miss negative for its own cue, an evaluation turn for the cues it is not labelled
    with)."""

    text: str
    source: str
    ordinary_for: frozenset[str]
    event: Mapping[str, Any]


def ordinary_talk(
    playbook: Playbook, calls: Sequence[EvalCall], cues: Iterable[str], analyze: CachedAnalysis
) -> list[Probe]:
    """The probes for `cues`: the playbook's background, each cue's negatives, and the
    evaluation calls' customer turns not labelled with the cue (as recorded, with their
    voice and sentiment)."""
    cues = frozenset(cues)
    texts = [*playbook.background]
    texts += [t for cue in sorted(cues) for t in playbook.cues[cue].negatives]
    sentiments = {t: s.to_sentiment() for t, s in zip(texts, analyze.scores(texts), strict=True)}

    def said(text: str) -> dict[str, Any]:
        return {
            "type": "transcript",
            "speaker": "customer",
            "text": text,
            "t_start": 1.0,
            "t_end": 4.0,
            "words": [],
            "prosody": {},
            "sentiment": sentiments[text],
        }

    probes = [Probe(t, "background", cues, said(t)) for t in playbook.background]
    for cue in sorted(cues):
        negatives = playbook.cues[cue].negatives
        probes += [Probe(t, f"{cue} negative", frozenset({cue}), said(t)) for t in negatives]
    for call in calls:
        for ev in call.events:
            if ev.get("type") != "transcript" or ev.get("speaker") != "customer":
                continue
            t0, t1 = float(ev["t_start"]), float(ev["t_end"])
            labelled = {lb.cue for lb in call.truth.labels if lb.start_s < t1 and t0 < lb.end_s}
            if cues - labelled:
                source = f"evaluation call {call.truth.call_id}"
                probes.append(Probe(str(ev.get("text", "")), source, cues - labelled, ev))
    return probes


def _leave_out(index: CueIndex, text: str) -> CueIndex:
    """`index` without `text` among the background and negatives: a probe taken from those
    lists would otherwise be blocked by itself, when it stands for talk like it that the
    server hears in other words."""

    def without(ex: ExampleSet) -> ExampleSet:
        keep = [i for i, t in enumerate(ex.texts) if t != text]
        if len(keep) == len(ex.texts):
            return ex
        return ExampleSet.of([ex.texts[i] for i in keep], ex.vectors[keep])

    negatives = {cue: without(ex) for cue, ex in index.negatives.items()}
    return dataclasses.replace(index, background=without(index.background), negatives=negatives)


async def ordinary_matches(
    playbook: Playbook,
    proposals: Sequence[ExampleProposal],
    probes: Sequence[Probe],
    embed: EmbedFn,
    analyze: CachedAnalysis,
) -> list[Refusal]:
    """The new positives that make ordinary talk match their cue: each probe is fed alone to
    a cue engine on the playbook with every proposal in, and a cue it shows through one of
    the new examples, on talk that is ordinary for that cue, refuses that example."""
    positives = [p for p in proposals if p.kind == "positives"]
    if not positives:
        return []
    # Read by nearest example alone: the meaning probe is fitted to every phrase, the ordinary
    # talk tested here included (`_leave_out` cannot take a phrase back out of a fit), so it
    # would hide what a new example does to talk it has not seen.
    candidate = without_meaning(with_examples(playbook, positives))
    index = CueIndex.build(candidate, embed)
    new = {(p.cue, p.text): p for p in positives}
    found: dict[tuple[str, str], list[str]] = {}
    for probe in probes:
        loaded = LoadedPlaybook(candidate, _leave_out(index, probe.text), "ordinary talk")
        engine = CueEngine(holder=FixedPlaybook(loaded), analyze=analyze)
        for ev in await engine.on_transcript(probe.event):
            key = (str(ev.get("cue")), matched_example(ev.get("reasons") or []) or "")
            if ev.get("type") == "cue" and key in new and key[0] in probe.ordinary_for:
                found.setdefault(key, []).append(f'{probe.source}: "{probe.text}"')
    return [
        Refusal(new[key], f"makes ordinary talk match {key[0]}: " + "; ".join(where[:3]))
        for key, where in found.items()
    ]


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


def without_meaning(playbook: Playbook) -> Playbook:
    cues = {c: spec.model_copy(update={"meaning": None}) for c, spec in playbook.cues.items()}
    return playbook.model_copy(update={"cues": cues})


def with_examples(playbook: Playbook, proposals: Sequence[ExampleProposal]) -> Playbook:
    cues = dict(playbook.cues)
    for p in proposals:
        spec = cues[p.cue]
        cues[p.cue] = spec.model_copy(update={p.kind: [*getattr(spec, p.kind), p.text]})
    return playbook.model_copy(update={"cues": cues})


def apply_examples(path: Path, proposals: Sequence[ExampleProposal]) -> str:
    """Append each proposal to its cue's `positives:` or `negatives:` list, keeping comments
    and layout."""
    adding: dict[tuple[str, str], list[str]] = {}
    for p in proposals:
        adding.setdefault((p.cue, p.kind), []).append(p.text)
    out: list[str] = []
    current: str | None = None
    in_list: str | None = None  # "positives" or "negatives" while inside one
    last_item = -1  # index in `out` of the open list's last item

    def close_list() -> None:
        nonlocal in_list
        key = (current or "", in_list or "")
        if key in adding and last_item >= 0:
            new = [
                "      " + yaml.safe_dump([text], width=10_000, allow_unicode=True)
                for text in adding.pop(key)
            ]
            out[last_item + 1 : last_item + 1] = new
        in_list = None

    for line, cue in _with_cue(path.read_text(encoding="utf-8").splitlines(keepends=True)):
        if in_list and not re.match(r"^      - |^\s*#|^\s*$", line):
            close_list()
        current = cue
        lst = re.match(r"^    (positives|negatives):\s*$", line) if cue else None
        if lst:
            in_list, last_item = lst.group(1), -1
        elif in_list and line.startswith("      - "):
            last_item = len(out)
        out.append(line)
    close_list()
    if adding:
        missing = ", ".join(f"{cue} {kind}" for cue, kind in sorted(adding))
        raise ValueError(f"no list to append to for {missing} in {path} (write one example)")
    text = "".join(out)
    parse_playbook(text, source=path)  # never write a playbook the server would refuse
    return text


def stored_reports(url: str, what: str) -> list[Any]:
    """`missed` (missed-cue reports) or `rated` (rated cues) from the history store; none
    if there is no store yet."""

    async def read(store: Any) -> list[Any]:
        return list(await (store.missed_cues() if what == "missed" else store.rated_cues()))

    return _read_store(url, f"{what} cues", read) or []


def report_proposals(
    calls: Sequence[EvalCall],
    playbook: Playbook,
    index: CueIndex,
    embed: EmbedFn,
    analyze: CachedAnalysis,
    proposals: Sequence[ExampleProposal],
    *,
    apply_to: Path | None,
    max_drop: float,
    json_path: Path | None,
    min_critical_reporters: int = CRITICAL_MIN_REPORTERS,
) -> int:
    """Print the proposed examples with what they do to the evaluation set, and with
    `apply_to` write them unless micro F1 falls by more than `max_drop`.

    Before that, new positives are screened (`screen_positives`) and tried on ordinary talk
    (`ordinary_matches`): F1 over the evaluation set cannot see one false crisis among a few
    hundred turns, or talk the set does not hold. Those refused are listed with the reason
    and are neither measured nor written."""
    if not proposals:
        print("nothing to learn from: no new wording in the reports")
        return 0
    proposals, refused = screen_positives(
        proposals, playbook, min_critical_reporters=min_critical_reporters
    )
    cues = {p.cue for p in proposals if p.kind == "positives"}
    probes = ordinary_talk(playbook, calls, cues, analyze) if cues else []
    refused += asyncio.run(ordinary_matches(playbook, proposals, probes, embed, analyze))
    out = {(r.proposal.cue, r.proposal.text) for r in refused}
    proposals = [p for p in proposals if (p.cue, p.text) not in out]
    if refused:
        print(f"{len(refused)} example(s) refused (never written):")
        for r in refused:
            print(
                f"  {r.proposal.cue:20s} {r.proposal.kind:9s} {r.proposal.text}\n    why: {r.why}"
            )
    if not proposals:
        print("nothing left to measure or write")
        if json_path:
            json_path.write_text(json.dumps({"refused": [_refusal(r) for r in refused]}, indent=2))
        return 0
    candidate = with_examples(playbook, proposals)

    async def both() -> tuple[dict[str, Any], dict[str, Any]]:
        before = await measure(calls, playbook, index, analyze)
        after = await measure(calls, candidate, CueIndex.build(candidate, embed), analyze)
        return before, after

    before, after = asyncio.run(both())
    print(f"{len(proposals)} example(s) proposed from real calls:")
    for p in proposals:
        print(f"  {p.cue:20s} {p.kind:9s} {', '.join(p.reporters):20s} {p.text}")
    print(
        f"on {len(calls)} evaluation calls, with them ({'cue':18s} P     R     F1 -> P     R     F1):"
    )
    for cue in sorted({p.cue for p in proposals}) + ["micro"]:
        b = before["micro"] if cue == "micro" else before["per_cue"].get(cue, {})
        a = after["micro"] if cue == "micro" else after["per_cue"].get(cue, {})
        print(
            f"  {cue:20s} {_fmt(b.get('precision'))} {_fmt(b.get('recall'))} {_fmt(b.get('f1'))}"
            f" -> {_fmt(a.get('precision'))} {_fmt(a.get('recall'))} {_fmt(a.get('f1'))}"
        )
    calm_b = before["calm"]["false_cues_per_10min"]
    calm_a = after["calm"]["false_cues_per_10min"]
    print(f"  false cues per 10 calm minutes: {_fmt(calm_b)} -> {_fmt(calm_a)}")
    drop = float(before["micro"]["f1"] or 0.0) - float(after["micro"]["f1"] or 0.0)
    if json_path:
        json_path.write_text(
            json.dumps(
                {
                    "proposals": [_as_dict(p) for p in proposals],
                    "refused": [_refusal(r) for r in refused],
                    "before": before,
                    "after": after,
                },
                indent=2,
                default=str,
            )
        )
    if apply_to is None:
        print("--apply writes them")
        return 0
    if drop > max_drop:
        print(
            f"not written: micro F1 on the evaluation set would fall by {drop:.3f} "
            f"(more than --max-eval-drop {max_drop:.3f}); reword or drop a report",
            file=sys.stderr,
        )
        return 1
    try:
        text = apply_examples(apply_to, proposals)
    except ValueError as exc:  # no list to append to, or a result the server would refuse
        print(f"error: not written: {exc}", file=sys.stderr)
        return 1
    write_playbook(apply_to, text)
    print(f"wrote {len(proposals)} example(s) to {apply_to} (the server reloads it)")
    return 0


def _as_dict(p: ExampleProposal) -> dict[str, Any]:
    return {"cue": p.cue, "kind": p.kind, "text": p.text, "reporters": list(p.reporters)}


def _refusal(r: Refusal) -> dict[str, Any]:
    return {**_as_dict(r.proposal), "why": r.why}


def report_examples(
    calls: Sequence[EvalCall],
    playbook: Playbook,
    index: CueIndex,
    analyze: CachedAnalysis,
    json_path: Path | None,
) -> int:
    """Print the examples whose word matches gave more false cues than hits on `calls`."""
    holder = FixedPlaybook(LoadedPlaybook(playbook, index, "examples"))

    async def rescored() -> list[tuple[eval_cues.CallTruth, list[Any]]]:
        return [(c.truth, await rescore(c.events, holder, analyze)) for c in calls]

    credits = credit_examples(asyncio.run(rescored()))
    costly = [c for c in credits if c.false_cues > c.hits]
    print(f"{len(calls)} evaluation calls; {len(credits)} examples fired a cue")
    print(f"{len(costly)} gave more false cues than hits (candidates to remove or reword):")
    for c in costly:
        print(f"  {c.cue:20s} hits {c.hits}  false {c.false_cues}  {c.example}")
    if json_path:
        json_path.write_text(json.dumps([dataclasses.asdict(c) for c in credits], indent=2))
    return 0


def _fmt(x: Any) -> str:
    return "  -  " if x is None else f"{float(x):.2f}"


def threshold_cues(playbook: Playbook, raw: str) -> list[str]:
    """The cues named in `--cues` (comma-separated), or every enabled language cue; a
    ValueError naming the valid ids for any that has no threshold to tune (pure)."""
    tunable = [k for k, v in playbook.enabled().items() if v.kind == "language"]
    named = [c.strip() for c in raw.split(",") if c.strip()]
    bad = [c for c in named if c not in tunable]
    if bad:
        timing = [c for c in bad if c in playbook.cues and playbook.cues[c].kind != "language"]
        note = f" ({', '.join(timing)}: timing cues have no threshold)" if timing else ""
        raise ValueError(
            f"not a language cue of the playbook: {', '.join(bad)}{note}; "
            f"choose from {', '.join(tunable)}"
        )
    return named or tunable


def _date(raw: str) -> datetime:
    try:
        return datetime.fromisoformat(raw).replace(tzinfo=UTC)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {raw!r}") from exc


def _at_least(floor: int) -> Any:
    """An argparse type: an integer no lower than `floor`."""

    def parse(raw: str) -> int:
        value = int(raw)
        if value < floor:
            raise argparse.ArgumentTypeError(f"must be at least {floor}, got {value}")
        return value

    return parse


def _between(low: float, high: float) -> Any:
    """An argparse type: a number in [low, high] (a negative span or a ratio past 1 would
    quietly tune nothing, or everything)."""

    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {raw!r}") from None
        if not low <= value <= high:  # NaN fails too
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {raw}")
        return value

    return parse


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--playbook",
        type=Path,
        default=None,
        help="default: the server's (COACH_PLAYBOOK_FILE), else the shipped playbook",
    )
    ap.add_argument(
        "--eval-dir",
        type=Path,
        default=DEFAULT_EVAL_DIR,
        help="rendered calls with events-fast/ (scripts/eval_cues.py run)",
    )
    ap.add_argument(
        "--config", type=Path, default=None, help="the server's config file (as coach serve)"
    )
    ap.add_argument(
        "--database-url", default=None, help="the store to read (default: COACH_DATABASE_URL)"
    )
    ap.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where the SQLite store is when no URL is set (default: COACH_DATA_DIR, .coach)",
    )
    ap.add_argument("--no-feedback", action="store_true")
    ap.add_argument(
        "--since",
        type=_date,
        default=None,
        help="only ratings on calls from this date (YYYY-MM-DD, UTC): after an edit or --apply",
    )
    ap.add_argument("--cues", default="", help="comma-separated cue ids (default: all language)")
    ap.add_argument("--min-ratings", type=_at_least(1), default=10)
    ap.add_argument("--max-unhelpful", type=_between(0.0, 1.0), default=0.5)
    ap.add_argument("--min-gain", type=_between(0.0, 1.0), default=0.02)
    ap.add_argument("--span", type=_between(0.01, 1.0), default=0.10)
    ap.add_argument("--apply", action="store_true", help="write the proposed thresholds")
    ap.add_argument(
        "--examples",
        action="store_true",
        help="instead of thresholds: which examples fired false cues (candidates to remove)",
    )
    ap.add_argument(
        "--missed",
        action="store_true",
        help="instead of thresholds: the utterances people reported as missed cues, as new "
        "examples of those cues (with --apply, written unless the evaluation set loses F1)",
    )
    ap.add_argument(
        "--unhelpful",
        action="store_true",
        help="instead of thresholds: the words of cues people rated not helpful, as near-miss "
        "negatives of those cues (with --apply, written unless the evaluation set loses F1)",
    )
    ap.add_argument("--min-reporters", type=_at_least(1), default=1)
    ap.add_argument(
        "--min-critical-reporters",
        type=_at_least(CRITICAL_MIN_REPORTERS),
        default=CRITICAL_MIN_REPORTERS,
        help="distinct reporters a new positive of a critical cue (crisis) needs "
        f"(at least {CRITICAL_MIN_REPORTERS}: it pages a supervisor)",
    )
    ap.add_argument("--max-eval-drop", type=_between(0.0, 1.0), default=0.01)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    # The same settings as the server (env vars, config file), so that run from any
    # directory the tool reads the store and playbook the server uses.
    settings = load_settings(args.config, database_url=args.database_url, data_dir=args.data_dir)
    if settings is None:  # said on stderr, one line per problem
        return 2
    url = store_url(settings)
    args.playbook = args.playbook or settings.playbook_file or DEFAULT_PLAYBOOK
    try:  # the server would refuse it too: name the file, the cue and the field, no traceback
        playbook = load_playbook(args.playbook)
    except PlaybookError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        wanted = threshold_cues(playbook, args.cues)
    except ValueError as exc:
        ap.error(f"--cues: {exc}")

    if TEST_SPLIT in args.eval_dir.resolve().parts:
        print(f"refusing to tune on the test split ({TEST_SPLIT})", file=sys.stderr)
        return 2
    calls = load_eval(args.eval_dir)
    if not calls:
        print(
            f"no evaluation events in {args.eval_dir}; run: python -m scripts.eval_cues run "
            "--split tune --mode fast",
            file=sys.stderr,
        )
        return 2
    thresholds = not (args.examples or args.missed or args.unhelpful)
    try:  # before any model loads; and an --apply must not write what the ratings would undo
        coaching = coaching_report(url, args.since) if thresholds and not args.no_feedback else None
        feedback = feedback_from(coaching)
        missed = stored_reports(url, "missed") if args.missed and not args.examples else []
        rated = stored_reports(url, "rated") if args.unhelpful and not args.examples else []
    except StoreUnreadable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for line in gone_cues(playbook, feedback, missed, rated):
        print(line, file=sys.stderr)
    from models.emotion import EmotionModel

    model = EmotionModel()
    embed: EmbedFn = model.embed_examples
    index = CueIndex.build(playbook, embed)
    analyze = CachedAnalysis(model)

    if args.examples:
        return report_examples(calls, playbook, index, analyze, args.json)
    if args.missed or args.unhelpful:
        examples: list[ExampleProposal] = []
        if args.missed:
            examples += propose_examples(missed, playbook, min_reporters=args.min_reporters)
        if args.unhelpful:
            examples += propose_near_misses(rated, playbook, min_reporters=args.min_reporters)
        return report_proposals(
            calls,
            playbook,
            index,
            embed,
            analyze,
            examples,
            apply_to=args.playbook if args.apply else None,
            max_drop=args.max_eval_drop,
            json_path=args.json,
            min_critical_reporters=args.min_critical_reporters,
        )

    async def run() -> list[Proposal]:
        proposals = []
        for cue in wanted:
            spec = playbook.cues[cue]
            assert spec.threshold is not None
            current = round(spec.threshold, 2)
            steps = round(args.span / 0.01)
            grid = sorted({round(current + k * 0.01, 2) for k in range(-steps, steps + 1)})
            sweep: dict[float, Mapping[str, Any]] = {}
            for t in grid:
                if not 0 < t <= 1:
                    continue
                report = await measure(calls, with_threshold(playbook, cue, t), index, analyze)
                sweep[t] = report["per_cue"].get(
                    cue, {"precision": None, "recall": None, "f1": None}
                )
            proposals.append(
                choose(
                    cue,
                    current,
                    sweep,
                    feedback.get(cue, {}),
                    min_ratings=args.min_ratings,
                    max_unhelpful=args.max_unhelpful,
                    min_gain=args.min_gain,
                    critical=spec.severity == "critical",
                )
            )
        return proposals

    proposals = asyncio.run(run())
    print(f"{len(calls)} evaluation calls from {args.eval_dir}")
    print(
        f"{'cue':20s} {'now':>5s} {'new':>5s}   P      R      F1   ->  P      R      F1    "
        "feedback (helpful/not/dismissed)  why"
    )
    for p in proposals:
        b, a = p.before, p.after
        fb = "/".join(str(p.feedback.get(k, 0)) for k in ("helpful", "not_helpful", "dismissed"))
        print(
            f"{p.cue:20s} {p.current:5.2f} {p.proposed:5.2f}  {_fmt(b.get('precision'))}  "
            f"{_fmt(b.get('recall'))}  {_fmt(b.get('f1'))} -> {_fmt(a.get('precision'))}  "
            f"{_fmt(a.get('recall'))}  {_fmt(a.get('f1'))}   {fb:>9s}  {p.reason}"
        )
    for line in outcome_lines(coaching, [p.cue for p in proposals]):
        print(line)
    changes = {p.cue: p.proposed for p in proposals if p.proposed != p.current}
    if args.json:
        # Written before anything is applied, so it must not fail (Proposal has slots, no
        # __dict__: `--apply --json` crashed and wrote neither, found by an outside audit).
        args.json.write_text(
            json.dumps([dataclasses.asdict(p) for p in proposals], indent=2, default=str)
        )
    if args.apply and changes:
        try:
            text = apply_thresholds(args.playbook, changes)
        except ValueError as exc:  # a cue with no line to rewrite, or a refused result
            print(f"error: not written: {exc}", file=sys.stderr)
            return 1
        write_playbook(args.playbook, text)
        print(f"wrote {len(changes)} thresholds to {args.playbook} (the server reloads it)")
    elif changes:
        print(f"{len(changes)} changes proposed; --apply writes them")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
