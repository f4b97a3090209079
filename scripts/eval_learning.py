"""What the playbook learns from reviewers, measured: missed-cue reports and "not helpful"
ratings simulated from labelled calls, then scored on other calls.

`scripts/tune_playbook.py --missed/--unhelpful` turns what people report on real calls into
new examples. Real reports do not exist here, so this script plays the reviewer on recorded
replays of the evaluation set: every required language-cue label the engine missed becomes
a missed-cue report of each customer line (the ASR's words) in its turn, and every false
cue becomes a "not helpful" rating of the words it answered. The proposals are added to the
playbook exactly as `tune_playbook` would add them, and the engine is re-scored offline (no
audio, no ASR) on the splits named by `--measure`, before and after.

    python -m scripts.eval_learning --reports-from tune,heldout --measure dev,tune,heldout
    python -m scripts.eval_learning --reports-from tune --measure tune --measure-cache DIR

`--measure-cache` points at another cache of replays: for instance the same scripts spoken
by other voices, so that the ASR garbles the same wording differently (a caller saying what an
earlier caller said). `--write-revoiced DIR` writes those call files:

    python -m scripts.eval_learning --write-revoiced /tmp/revoiced --splits tune,heldout
    python -m scripts.eval_cues run --split tune --mode fast --jobs 2 \
        --data /tmp/revoiced --cache /tmp/revoiced_cache
    python -m scripts.eval_learning --reports-from tune --measure tune --measure-cache /tmp/revoiced_cache

The test split is refused on both sides: it must stay unseen.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from coach.cues.engine import LoadedPlaybook
from coach.cues.matcher import CueIndex
from coach.cues.offline import CachedAnalysis, FixedPlaybook, rescore
from coach.cues.playbook import DEFAULT_PLAYBOOK, Playbook, parse_playbook
from coach.store.records import MissedCueRecord, RatedCueRecord
from scripts import eval_cues
from scripts.eval_cues import _fmt as fmt
from scripts.tune_playbook import (
    TEST_SPLIT,
    EvalCall,
    ExampleProposal,
    load_eval,
    measure,
    propose_examples,
    propose_near_misses,
    with_examples,
)

REVIEWER = "reviewer"
OTHER_VOICES = (
    "en-gb+m3",
    "en-us+f5",
    "en-029+m2",
    "en-gb-scotland+f2",
    "en-us+m1",
    "en-gb-x-rp+m4",
    "en-us-nyc+f1",
    "en-gb+f4",
)


def revoiced(call_text: str, index: int) -> str:
    """A call file with its customer's default voice replaced (pure): the `index`-th of
    OTHER_VOICES (the next one if that is the call's own), pitch moved 12 towards the middle,
    speed 8 wpm lower. Turn-level overrides (agitated turns) are kept."""
    own = re.search(r"^# customer_voice: (.*)$", call_text, re.M)
    voice = OTHER_VOICES[index % len(OTHER_VOICES)]
    if own is not None and own.group(1).strip() == voice:
        voice = OTHER_VOICES[(index + 1) % len(OTHER_VOICES)]
    text = re.sub(r"^# customer_voice: .*$", f"# customer_voice: {voice}", call_text, flags=re.M)

    def pitch(m: re.Match[str]) -> str:
        p = int(m.group(1))
        return f"# customer_pitch: {p + 12 if p < 60 else p - 12}"

    text = re.sub(r"^# customer_pitch: (\d+)$", pitch, text, flags=re.M)
    return re.sub(
        r"^# customer_speed: (\d+)$",
        lambda m: f"# customer_speed: {int(m.group(1)) - 8}",
        text,
        flags=re.M,
    )


def write_revoiced(out_dir: Path, splits: Sequence[str]) -> None:
    for split in splits:
        _split_dir(out_dir, split)  # refuses the test split
        target = out_dir / split
        target.mkdir(parents=True, exist_ok=True)
        for i, path in enumerate(eval_cues.call_files(split)):
            (target / path.name).write_text(revoiced(path.read_text(encoding="utf-8"), i))
        print(f"wrote {split} call files with other customer voices to {target}")


def simulated_reports(
    call: EvalCall, found: Sequence[dict[str, Any]], customer_cues: Iterable[str]
) -> tuple[list[MissedCueRecord], list[RatedCueRecord]]:
    """What a reviewer with the labels would file on one re-scored call (pure): a missed-cue
    report for each customer line of a missed required label, a "not helpful" rating for
    each false cue."""
    wanted = set(customer_cues)
    result = eval_cues.match_call(call.truth, eval_cues.cue_hits(found))
    now = datetime.now(UTC)
    said = [
        e for e in call.events if e.get("type") == "transcript" and e.get("speaker") == "customer"
    ]
    missed = [
        MissedCueRecord(
            call.truth.call_id, int(e.get("seq", 0)), label.cue, e["text"], REVIEWER, now
        )
        for label in result.missed
        if label.required and label.cue in wanted
        for e in said
        if float(e["t_end"]) > label.start_s and float(e["t_start"]) < label.end_s
    ]
    false = {(h.cue, h.t_emit) for h in result.false_cues}
    rated = [
        RatedCueRecord(
            call.truth.call_id,
            int(ev.get("seq", 0)),
            str(ev["cue"]),
            str((ev.get("evidence") or {}).get("text") or ""),
            {REVIEWER: "not_helpful"},
        )
        for ev in found
        if ev.get("type") == "cue" and (ev["cue"], ev["t_emit"]) in false and ev["cue"] in wanted
    ]
    return missed, rated


def _split_dir(cache: Path, split: str) -> Path:
    if split == TEST_SPLIT:
        raise SystemExit(f"refusing to learn from or measure on the test split ({TEST_SPLIT})")
    return cache / split


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reports-from", default="", help="comma-separated splits")
    ap.add_argument("--measure", default="", help="comma-separated splits")
    ap.add_argument("--write-revoiced", type=Path, default=None, metavar="DIR")
    ap.add_argument("--splits", default="tune,heldout", help="for --write-revoiced")
    ap.add_argument("--cache", type=Path, default=eval_cues.CACHE_DIR)
    ap.add_argument("--measure-cache", type=Path, default=None, help="default: --cache")
    ap.add_argument("--kind", choices=("missed", "unhelpful", "both"), default="both")
    ap.add_argument("--playbook", type=Path, default=DEFAULT_PLAYBOOK)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.write_revoiced is not None:
        write_revoiced(args.write_revoiced, [s for s in args.splits.split(",") if s])
        return 0
    if not args.reports_from or not args.measure:
        ap.error("--reports-from and --measure are required")
    sources = [_split_dir(args.cache, s) for s in args.reports_from.split(",") if s]
    targets = [
        (s, _split_dir(args.measure_cache or args.cache, s)) for s in args.measure.split(",") if s
    ]

    from models.emotion import EmotionModel

    model = EmotionModel()
    playbook = parse_playbook(args.playbook.read_text(encoding="utf-8"), source=args.playbook)
    index = CueIndex.build(playbook, model.embed_examples)
    analyze = CachedAnalysis(model)
    customer_cues = [
        c for c, s in playbook.enabled().items() if s.kind == "language" and s.party == "customer"
    ]

    async def learn() -> list[ExampleProposal]:
        holder = FixedPlaybook(LoadedPlaybook(playbook, index, "reviewed"))
        missed: list[MissedCueRecord] = []
        rated: list[RatedCueRecord] = []
        for d in sources:
            for call in load_eval(d):
                m, r = simulated_reports(
                    call, await rescore(call.events, holder, analyze), customer_cues
                )
                missed += m
                rated += r
        print(
            f"{len(missed)} missed-cue reports and {len(rated)} not-helpful ratings from {args.reports_from}"
        )
        out: list[ExampleProposal] = []
        if args.kind in ("missed", "both"):
            out += propose_examples(missed, playbook)
        if args.kind in ("unhelpful", "both"):
            out += propose_near_misses(rated, playbook)
        return out

    proposals = asyncio.run(learn())
    learned: Playbook = with_examples(playbook, proposals)
    learned_index = CueIndex.build(learned, model.embed_examples)
    print(
        f"{sum(p.kind == 'positives' for p in proposals)} new examples, "
        f"{sum(p.kind == 'negatives' for p in proposals)} new near misses"
    )

    async def score() -> dict[str, Any]:
        report: dict[str, Any] = {}
        for split, d in targets:
            calls = load_eval(d)
            if not calls:
                print(f"no replays in {d}", file=sys.stderr)
                continue
            before = await measure(calls, playbook, index, analyze)
            after = await measure(calls, learned, learned_index, analyze)
            report[split] = {"before": before, "after": after, "calls": len(calls)}
            for name, r in (("before", before), ("after", after)):
                m = r["micro"]
                crisis = r["per_cue"].get("crisis", {}).get("recall")
                print(
                    f"{split:8s} {name:6s} micro P {fmt(m['precision'])} R {fmt(m['recall'])} "
                    f"F1 {fmt(m['f1'], 3)}  calm false cues / 10 min "
                    f"{fmt(r['calm']['false_cues_per_10min'], 1)}  crisis recall {fmt(crisis)}"
                )
        return report

    report = asyncio.run(score())
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
