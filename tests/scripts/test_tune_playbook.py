"""The tuning policy (pure), example credit (pure), missed-cue reports as examples, and the
playbook rewrites that keep comments."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from coach.cues.engine import matched_example, words_reason
from coach.cues.offline import CachedAnalysis
from coach.cues.playbook import DEFAULT_PLAYBOOK, PlaybookError, load_playbook, parse_playbook
from coach.settings import Settings
from coach.store import MissedCueRecord, RatedCueRecord, Store
from coach.store.writes import Received
from scripts.eval_cues import CallTruth, Label
from scripts.tune_playbook import (
    TEST_SPLIT,
    EvalCall,
    ExampleProposal,
    apply_examples,
    apply_thresholds,
    choose,
    credit_examples,
    feedback_counts,
    main,
    ordinary_matches,
    ordinary_talk,
    propose_examples,
    propose_near_misses,
    screen_positives,
    store_url,
    stored_reports,
    write_playbook,
)

SWEEP = {
    0.45: {"precision": 0.50, "recall": 1.00, "f1": 0.67},
    0.50: {"precision": 0.70, "recall": 0.90, "f1": 0.79},
    0.55: {"precision": 0.90, "recall": 0.80, "f1": 0.85},
    0.60: {"precision": 1.00, "recall": 0.50, "f1": 0.67},
}


def test_without_feedback_the_best_f1_wins_if_it_gains_enough() -> None:
    p = choose("x", 0.50, SWEEP, {}, min_ratings=10, max_unhelpful=0.5, min_gain=0.02)
    assert p.proposed == 0.55 and p.after["f1"] == 0.85
    p = choose("x", 0.50, SWEEP, {}, min_ratings=10, max_unhelpful=0.5, min_gain=0.2)
    assert p.proposed == 0.50


def test_mostly_unhelpful_feedback_raises_precision() -> None:
    fb = {"helpful": 2, "not_helpful": 8, "dismissed": 4}
    p = choose("x", 0.45, SWEEP, fb, min_ratings=10, max_unhelpful=0.5, min_gain=0.02)
    assert p.proposed == 0.55 and p.after["precision"] > p.before["precision"]
    assert "not helpful" in p.reason


def test_feedback_that_no_threshold_can_answer_says_so() -> None:
    """Precision is already as high as the sweep goes: the line said "raise precision"
    beside an unchanged threshold, which reads as a change the tool did not make."""
    fb = {"helpful": 0, "not_helpful": 10, "dismissed": 2}
    p = choose("x", 0.60, SWEEP, fb, min_ratings=10, max_unhelpful=0.5, min_gain=0.02)
    assert p.proposed == 0.60 and "no threshold raises it" in p.reason


def test_helpful_feedback_with_misses_raises_recall() -> None:
    fb = {"helpful": 12, "not_helpful": 1, "dismissed": 0}
    p = choose("x", 0.55, SWEEP, fb, min_ratings=10, max_unhelpful=0.5, min_gain=0.02)
    assert p.proposed == 0.50 and p.after["recall"] > p.before["recall"]


def test_dismissals_are_no_verdict() -> None:
    """An outside audit: two dismissals (agents closing a card they acted on) turned an even
    split of ratings into "raise precision", and --apply raised the threshold."""
    fb = {"helpful": 2, "not_helpful": 2, "dismissed": 2}
    p = choose("x", 0.50, SWEEP, fb, min_ratings=3, max_unhelpful=0.5, min_gain=0.2)
    assert p.proposed == 0.50 and "mixed" in p.reason


def test_an_even_split_moves_neither_way() -> None:
    """The same audit: 3 helpful and 3 not helpful took the "mostly helpful" branch and
    lowered the threshold."""
    fb = {"helpful": 3, "not_helpful": 3, "dismissed": 0}
    p = choose("x", 0.55, SWEEP, fb, min_ratings=3, max_unhelpful=0.5, min_gain=0.02)
    assert p.proposed == 0.55 and "mixed" in p.reason and "raise" not in p.reason
    # Mostly helpful with nothing left to find is not "mixed".
    fb = {"helpful": 12, "not_helpful": 1, "dismissed": 0}
    p = choose("x", 0.45, SWEEP, fb, min_ratings=3, max_unhelpful=0.5, min_gain=0.5)
    assert p.proposed == 0.45 and "mixed" not in p.reason


def test_too_few_ratings_fall_back_to_the_evaluation_set() -> None:
    fb = {"helpful": 0, "not_helpful": 3, "dismissed": 0}
    p = choose("x", 0.50, SWEEP, fb, min_ratings=10, max_unhelpful=0.5, min_gain=0.02)
    assert p.reason.startswith("evaluation set")


def test_apply_rewrites_only_the_named_cues_and_keeps_comments(tmp_path: Path) -> None:
    path = tmp_path / "playbook.yaml"
    path.write_text(DEFAULT_PLAYBOOK.read_text())
    text = apply_thresholds(path, {"urgency": 0.61, "crisis": 0.40})
    path.write_text(text)
    pb = load_playbook(path)
    before = load_playbook()
    assert pb.cues["urgency"].threshold == pytest.approx(0.61)
    assert pb.cues["crisis"].threshold == pytest.approx(0.40)
    assert pb.cues["frustration"].threshold == before.cues["frustration"].threshold
    assert text.count("\n#") == DEFAULT_PLAYBOOK.read_text().count("\n#")


def test_apply_refuses_to_write_an_invalid_playbook(tmp_path: Path) -> None:
    path = tmp_path / "playbook.yaml"
    path.write_text(DEFAULT_PLAYBOOK.read_text())
    with pytest.raises(PlaybookError):
        apply_thresholds(path, {"urgency": 1.5})


FLOW_CUE = (
    "  billing_error: {title: Billing error, advice: Check the last three invoices together.,"
    " priority: 3, cooldown_s: 60, party: customer, kind: language, threshold: 0.5,"
    " positives: [You charged me twice this month., My bill is wrong again.,"
    " That charge is not mine.]}\n"
)


def test_a_cue_with_no_threshold_line_is_not_reported_as_written(tmp_path: Path) -> None:
    """An operator's cue written on one line: its threshold was left as it was while the
    tool printed "wrote 1 thresholds"."""
    path = tmp_path / "playbook.yaml"
    text = DEFAULT_PLAYBOOK.read_text()
    path.write_text(text.replace("\ncues:\n", "\ncues:\n" + FLOW_CUE, 1))
    assert load_playbook(path).cues["billing_error"].threshold == 0.5
    with pytest.raises(ValueError, match="billing_error"):
        apply_thresholds(path, {"billing_error": 0.45, "urgency": 0.61})


def test_the_playbook_is_replaced_whole_never_seen_half_written(tmp_path: Path) -> None:
    """A reader (the server's poll) that opened the file before the write reads the old
    version to its end, and the next open the new one: never a truncated file."""
    path = tmp_path / "playbook.yaml"
    old = DEFAULT_PLAYBOOK.read_text()
    path.write_text(old)
    path.chmod(0o640)
    link = tmp_path / "current.yaml"
    link.symlink_to(path)
    new = apply_thresholds(link, {"urgency": 0.61})
    with path.open(encoding="utf-8") as reading:
        write_playbook(link, new)
        assert reading.read() == old
    assert path.read_text() == new and link.is_symlink()
    assert path.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current.yaml", "playbook.yaml"]


def test_refuses_to_tune_on_the_test_split(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    eval_dir = tmp_path / TEST_SPLIT
    eval_dir.mkdir()
    assert main(["--eval-dir", str(eval_dir), "--no-feedback"]) == 2
    assert "test split" in capsys.readouterr().err


def _cue(cue: str, t: float, *reasons: str) -> dict[str, object]:
    return {"type": "cue", "cue": cue, "t_emit": t, "reasons": list(reasons)}


def test_examples_are_credited_with_the_hits_and_false_cues_they_gave() -> None:
    truth = CallTruth(
        "c1",
        60.0,
        (
            Label("c1", 1, "frustration", True, 10.0, 14.0),
            Label("c1", 3, "urgency", False, 30.0, 33.0),
        ),
    )
    events = [
        {"type": "transcript", "speaker": "customer", "text": "x"},
        _cue("frustration", 14.5, words_reason("this is a joke", "This is ridiculous.", 0.61)),
        # The label is taken: the same cue again in its window is a false cue.
        _cue("frustration", 15.0, words_reason("still a joke", "This is ridiculous.", 0.58)),
        _cue("frustration", 40.0, words_reason("I'm fed up", "I'm so fed up with this.", 0.7)),
        # Optional label: neither hit nor false. Voice trigger: no example to credit.
        _cue("urgency", 31.0, words_reason("need it now", "I need it today.", 0.6)),
        _cue("dejection", 50.0, "voice subdued vs this caller's usual: pitch -2.0 SD"),
    ]
    credits = {
        (c.cue, c.example): (c.hits, c.false_cues) for c in credit_examples([(truth, events)])
    }
    assert credits == {
        ("frustration", "This is ridiculous."): (1, 1),
        ("frustration", "I'm so fed up with this."): (0, 1),
        ("urgency", "I need it today."): (0, 0),
    }
    worst = credit_examples([(truth, events)])[0]
    assert (worst.cue, worst.example) == ("frustration", "I'm so fed up with this.")


def test_matched_example_reads_back_quotes_and_ignores_other_reasons() -> None:
    line = words_reason('he said "no"', 'I said "stop" (twice)', 0.5)
    assert matched_example(["text emotion: sad (80%)", line]) == 'I said "stop" (twice)'
    assert matched_example(['words: "Fine." (sad)', "voice subdued"]) is None


# -- missed-cue reports as new examples ------------------------------------------------------


def _report(cue: str, text: str, user: str) -> MissedCueRecord:
    return MissedCueRecord("c1", 3, cue, text, user, datetime.now(UTC))


def test_reports_become_one_proposal_per_cue_and_text() -> None:
    pb = load_playbook()
    known = pb.cues["frustration"].positives[0]
    proposals = propose_examples(
        [
            _report("churn_risk", "We're off to the other lot when this runs out.", "sue"),
            _report("churn_risk", "we're  off to the other lot when this runs out", "alice"),
            _report("churn_risk", "We're off to the other lot when this runs out.", "sue"),
            _report("cost_anxiety", "We're off to the other lot when this runs out.", "tom"),
            _report("frustration", known.upper(), "sue"),  # already an example
            _report("no_such_cue", "We're off to the other lot when this runs out.", "sue"),
            _report("urgency", "Today, please.", "sue"),  # too short to mean anything
        ],
        pb,
    )
    assert [(p.cue, p.reporters) for p in proposals] == [
        ("churn_risk", ("alice", "sue")),
        ("cost_anxiety", ("tom",)),
    ]
    assert proposals[0].text == "We're off to the other lot when this runs out."
    twice = propose_examples(
        [_report("churn_risk", "We're off to the other lot.", u) for u in ("a", "b")]
        + [_report("urgency", "I need it sorted by tonight.", "a")],
        pb,
        min_reporters=2,
    )
    assert [p.cue for p in twice] == ["churn_risk"]


def _rated(cue: str, text: str, **verdicts: str) -> RatedCueRecord:
    return RatedCueRecord("c1", 7, cue, text, dict(verdicts))


def test_cues_rated_not_helpful_become_near_misses() -> None:
    pb = load_playbook()
    moving = "We're moving flat next month so I need the address changed"
    proposals = propose_near_misses(
        [
            _rated("churn_risk", moving, sue="not_helpful", tom="dismissed"),
            _rated("churn_risk", moving.lower() + ".", ann="not_helpful"),
            # Someone found it helpful: no negative, whatever the others said.
            _rated(
                "urgency", "I need it back by Friday for the trip", sue="not_helpful", ann="helpful"
            ),
            # Dismissed alone is not a verdict on the words.
            _rated("confusion", "Sorry, could you say the number again", tom="dismissed"),
            _rated("dead_air", "", sue="not_helpful"),  # timing cues answer no words
            _rated("frustration", pb.cues["frustration"].negatives[0], sue="not_helpful"),
        ],
        pb,
    )
    assert [(p.cue, p.kind, p.reporters, p.text) for p in proposals] == [
        ("churn_risk", "negatives", ("ann", "sue"), moving)
    ]
    assert (
        propose_near_misses([_rated("churn_risk", moving, sue="not_helpful")], pb, min_reporters=2)
        == []
    )


def test_apply_examples_appends_to_the_right_list_and_keeps_comments(tmp_path: Path) -> None:
    path = tmp_path / "playbook.yaml"
    path.write_text(DEFAULT_PLAYBOOK.read_text())
    quoted = "It's \"cheaper\": the other firm's offer, that's all"
    text = apply_examples(
        path,
        [
            ExampleProposal("churn_risk", quoted, ("sue",)),
            ExampleProposal("crisis", "I just want all of it to stop for good", ("sue",)),
            ExampleProposal("churn_risk", "We're moving flat next month", ("sue",), "negatives"),
        ],
    )
    pb, before = parse_playbook(text), load_playbook()
    assert pb.cues["churn_risk"].positives == [*before.cues["churn_risk"].positives, quoted]
    assert pb.cues["crisis"].positives[-1] == "I just want all of it to stop for good"
    assert pb.cues["churn_risk"].negatives == [
        *before.cues["churn_risk"].negatives,
        "We're moving flat next month",
    ]
    assert text.count("#") == DEFAULT_PLAYBOOK.read_text().count("#")
    with pytest.raises(ValueError, match="dead_air"):
        apply_examples(path, [ExampleProposal("dead_air", "a b c", ("sue",))])


def test_both_rewriters_read_past_a_comment_at_the_start_of_a_line(tmp_path: Path) -> None:
    # Operators comment out or annotate cues at column 0; the `cues:` section goes on.
    path = tmp_path / "playbook.yaml"
    original = DEFAULT_PLAYBOOK.read_text()
    path.write_text(original.replace("\n  crisis:\n", "\n# Safety first.\n  crisis:\n", 1))
    text = apply_thresholds(path, {"crisis": 0.41})
    assert parse_playbook(text).cues["crisis"].threshold == pytest.approx(0.41)
    text = apply_examples(path, [ExampleProposal("crisis", "none of it matters now", ("sue",))])
    assert parse_playbook(text).cues["crisis"].positives[-1] == "none of it matters now"
    assert "# Safety first." in text


def _eval_dir(root: Path, text: str) -> Path:
    """One labelled call whose customer says `text`, as `eval_cues run` leaves it."""
    eval_dir = root / "tune"
    (eval_dir / "events-fast").mkdir(parents=True)
    turns = [
        {"speaker": "agent", "text": "How can I help?", "t_start": 0.5, "t_end": 2.0},
        {"speaker": "customer", "text": text, "t_start": 2.5, "t_end": 6.0, "cues": ["churn_risk"]},
    ]
    truth = {"call_id": "m1", "duration_s": 8.0, "turns": turns, "meta": {"split": "tune"}}
    (eval_dir / "m1.json").write_text(json.dumps(truth))
    events = [{"type": "call_start", "call_id": "m1", "t_emit": 0.0}] + [
        {
            "type": "transcript",
            "call_id": "m1",
            "speaker": t["speaker"],
            "text": t["text"],
            "t_start": t["t_start"],
            "t_end": t["t_end"],
            "t_emit": t["t_end"] + 0.5,
            "utterance_id": i + 1,
            "words": [],
            "prosody": {},
            "sentiment": {"valence": 0.0, "label": "neutral"},
        }
        for i, t in enumerate(turns)
    ]
    (eval_dir / "events-fast" / "m1.jsonl").write_text(
        "".join(json.dumps(e) + "\n" for e in events)
    )
    return eval_dir


NOT_CHURN = "We're moving flat next month so the address needs changing"


async def _stored_report(url: str, text: str, cue: str = "churn_risk") -> None:
    store = Store(url=url)
    try:
        said = {"speaker": "customer", "t_start": 1.0, "t_end": 3.0, "text": text, "seq": 2}
        await store.write_events(
            [
                Received(
                    event={"type": "call_start", "call_id": "c1", "seq": 1, "t_emit": 0.0},
                    at=datetime.now(UTC).timestamp(),
                ),
                Received(
                    event={"type": "transcript", "call_id": "c1", "words": [], **said},
                    at=datetime.now(UTC).timestamp(),
                ),
            ]
        )
        await store.add_missed_cue(call_id="c1", utterance_seq=2, cue=cue, user="sue")
        shown = {
            "type": "cue",
            "call_id": "c1",
            "seq": 3,
            "cue": "churn_risk",
            "title": "Might leave",
            "advice": "Ask what would make them stay.",
            "why": "words",
            "priority": 2,
            "evidence": {"text": NOT_CHURN, "t_start": 1.0, "t_end": 3.0},
            "t_emit": 3.5,
        }
        await store.write_events([Received(event=shown, at=datetime.now(UTC).timestamp())])
        await store.add_feedback(call_id="c1", cue_seq=3, verdict="not_helpful", user="ann")
    finally:
        await store.aclose()


@pytest.mark.slow
def test_missed_reports_are_measured_and_written_to_the_playbook(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """From a report in the store to an example in the playbook: the reported wording then
    finds the same wording on the evaluation call, which it did not before."""
    said = "Brightline sent us a better offer and we've pretty much said yes to them"
    url = f"sqlite+aiosqlite:///{tmp_path / 'coach.db'}"
    asyncio.run(_stored_report(url, said))
    eval_dir = _eval_dir(tmp_path, said)
    playbook = tmp_path / "playbook.yaml"
    playbook.write_text(DEFAULT_PLAYBOOK.read_text())
    args = ["--missed", "--database-url", url, "--eval-dir", str(eval_dir)]
    args += ["--playbook", str(playbook)]

    # It gains on the evaluation set, so even a limit of no loss at all lets it through.
    assert main([*args, "--apply", "--max-eval-drop", "0"]) == 0
    out = capsys.readouterr().out
    assert "churn_risk" in out and said in out
    micro = next(line for line in out.splitlines() if line.strip().startswith("micro"))
    before, after = micro.split("->")
    assert float(before.split()[-1]) == 0.0 and float(after.split()[-1]) == 1.0
    assert load_playbook(playbook).cues["churn_risk"].positives[-1] == said

    # Once it is an example, the same report proposes nothing.
    assert main(args) == 0
    assert "nothing to learn from" in capsys.readouterr().out

    # A cue the agent rated not helpful: its words become a near miss of that cue.
    assert main([*args[1:], "--unhelpful", "--apply"]) == 0
    out = capsys.readouterr().out
    assert "negatives" in out and NOT_CHURN in out
    assert load_playbook(playbook).cues["churn_risk"].negatives[-1] == NOT_CHURN


# -- what a new positive must not do --------------------------------------------------------


def test_a_critical_cue_needs_two_reporters_and_enough_words() -> None:
    """One reviewer's report of a garbled line must not teach crisis new words: crisis pages
    a supervisor. The audited report, "Honestly, I'm terrible.", is also shorter than the
    turns crisis reads at all."""
    pb = load_playbook()
    real = "I just want all of it to stop for good"
    proposals = propose_examples(
        [
            _report("crisis", "Honestly, I'm terrible.", "sue"),
            _report("crisis", real, "sue"),
            _report("churn_risk", "We're off to the other lot when this runs out.", "sue"),
        ],
        pb,
    )
    kept, refused = screen_positives(proposals, pb)
    assert [p.cue for p in kept] == ["churn_risk"]
    why = {r.proposal.text: r.why for r in refused}
    assert "needs 2 distinct reporters, has 1" in why[real]
    assert "min_words" in why["Honestly, I'm terrible."]
    # A second reporter lets the real one through; the short one stays out.
    twice = propose_examples(
        [_report("crisis", t, u) for t in (real, "Honestly, I'm terrible.") for u in ("a", "b")],
        pb,
    )
    kept, refused = screen_positives(twice, pb)
    assert [p.text for p in kept] == [real]
    assert [r.proposal.text for r in refused] == ["Honestly, I'm terrible."]
    # Near-miss negatives cannot make a cue fire: no bar for them.
    negative = ExampleProposal("crisis", "Honestly, I'm terrible.", ("sue",), "negatives")
    assert screen_positives([negative], pb) == ([negative], [])


def test_the_critical_reporter_bar_cannot_be_lowered(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--missed", "--min-critical-reporters", "1"])
    assert exit_.value.code == 2
    assert "must be at least 2" in capsys.readouterr().err


def _customer_turn(text: str, t_start: float) -> dict[str, object]:
    return {
        "type": "transcript",
        "speaker": "customer",
        "text": text,
        "t_start": t_start,
        "t_end": t_start + 3.0,
        "words": [],
        "prosody": {},
        "sentiment": {"valence": 0.0, "label": "neutral"},
    }


@pytest.mark.slow
def test_a_positive_that_makes_ordinary_talk_match_is_refused() -> None:
    """Ordinary talk from the playbook's background, and evaluation turns not labelled with
    the cue, are fed to the engine with the proposals in: a cue they show through a new
    example refuses that example. The real missed wording goes through."""
    from models.emotion import EmotionModel

    model = EmotionModel()
    analyze = CachedAnalysis(model)
    pb = load_playbook()
    thanks = "Okay, thanks so much for your help today."
    real = "Honestly the folks at Brightline offered us a better package, so we're moving"
    said = "Honestly the folks at Brightline offered us a better package so we are moving"
    labelled = Label("e1", 1, "churn_risk", True, 10.0, 13.0)
    call = EvalCall(
        CallTruth("e1", 60.0, (labelled,)),
        [_customer_turn(said, 10.0), _customer_turn("Thanks a lot for all your help.", 30.0)],
    )
    proposals = [
        ExampleProposal("frustration", thanks, ("sue", "tom")),
        ExampleProposal("churn_risk", real, ("sue",)),
    ]
    probes = ordinary_talk(pb, [call], {"frustration", "churn_risk"}, analyze)
    sources = {p.source for p in probes}
    assert {"background", "frustration negative", "evaluation call e1"} <= sources
    # The labelled turn is no ordinary talk for churn_risk: it is what the report is about.
    assert not any(p.text == said and "churn_risk" in p.ordinary_for for p in probes)
    refused = asyncio.run(ordinary_matches(pb, proposals, probes, model.embed_examples, analyze))
    assert [r.proposal.text for r in refused] == [thanks]
    assert "makes ordinary talk match frustration" in refused[0].why
    assert "Thank you so much for your help." in refused[0].why


@pytest.mark.slow
def test_one_report_of_a_garbled_line_does_not_teach_crisis(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The audited case: one reviewer reported "Honestly, I'm terrible." as a missed crisis;
    F1 on the evaluation set did not move, and --apply wrote it. It is refused now, and the
    output says why."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'coach.db'}"
    asyncio.run(_stored_report(url, "Honestly, I'm terrible.", cue="crisis"))
    playbook = tmp_path / "playbook.yaml"
    playbook.write_text(DEFAULT_PLAYBOOK.read_text())
    eval_dir = _eval_dir(tmp_path, "Honestly the folks at Brightline offered us a better package")
    args = ["--missed", "--apply", "--database-url", url, "--eval-dir", str(eval_dir)]
    assert main([*args, "--playbook", str(playbook)]) == 0
    out = capsys.readouterr().out
    assert "refused" in out and "needs 2 distinct reporters, has 1" in out
    assert playbook.read_text() == DEFAULT_PLAYBOOK.read_text()


# -- where the store is, and which cues ------------------------------------------------------


def _one_call_eval_dir(root: Path) -> Path:
    return _eval_dir(root, "Honestly the folks at Brightline offered us a better package")


def test_the_store_is_found_where_the_server_keeps_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """COACH_DATA_DIR says where the server's SQLite store is, from any working directory."""
    data = tmp_path / "data"
    data.mkdir()
    asyncio.run(_stored_report(f"sqlite+aiosqlite:///{data / 'coach.db'}", "x y z w"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("COACH_DATA_DIR", str(data))
    monkeypatch.delenv("COACH_DATABASE_URL", raising=False)
    assert store_url(Settings.load()) == f"sqlite+aiosqlite:///{(data / 'coach.db').resolve()}"
    reports = stored_reports(store_url(Settings.load()), "missed")
    assert [(r.cue, r.text) for r in reports] == [("churn_risk", "x y z w")]
    assert not (elsewhere / ".coach").exists()


def test_no_store_is_said_and_none_is_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("COACH_DATABASE_URL", raising=False)
    monkeypatch.setenv("COACH_DATA_DIR", str(tmp_path / "nowhere"))
    url = store_url(Settings.load())
    assert stored_reports(url, "missed") == []
    err = capsys.readouterr().err
    assert "no store found" in err and str(tmp_path / "nowhere" / "coach.db") in err
    assert "COACH_DATA_DIR" in err
    assert not (tmp_path / "nowhere").exists() and not (tmp_path / ".coach").exists()
    # An explicit SQLite URL to a file that is not there: the same.
    missing = tmp_path / "gone.db"
    assert feedback_counts(f"sqlite:///{missing}") == {}
    assert "no store found" in capsys.readouterr().err and not missing.exists()


@pytest.mark.parametrize("bad", ["frustation", "dead_air", "urgency,nope"])
def test_an_unknown_or_timing_cue_is_a_usage_error(
    bad: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    eval_dir = _one_call_eval_dir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["--eval-dir", str(eval_dir), "--no-feedback", "--cues", bad])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--cues" in err and "frustration" in err and "crisis" in err
    assert "Traceback" not in err


def test_a_bad_config_or_playbook_is_one_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An operator's mistake in what the tool reads is named (file, cue, field), exit 2."""
    eval_dir = _one_call_eval_dir(tmp_path)
    base = ["--eval-dir", str(eval_dir), "--no-feedback"]
    assert main([*base, "--config", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: config file") and "nope.yaml" in err
    assert "Traceback" not in err

    bad = tmp_path / "playbook.yaml"
    text = DEFAULT_PLAYBOOK.read_text(encoding="utf-8")
    bad.write_text(text.replace("    cooldown_s: 60\n", "    cooldown_s: -5\n", 1))
    assert main([*base, "--playbook", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: invalid playbook {bad}") and "cooldown_s (line" in err
    assert "Traceback" not in err

    assert main([*base, "--playbook", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert "missing.yaml" in err and "cannot read" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "flag",
    [
        ["--min-ratings", "0"],  # divided the unhelpful share by no ratings
        ["--max-unhelpful", "1.5"],
        ["--span", "-0.1"],
        ["--min-gain", "nan"],
        ["--max-eval-drop", "x"],
        ["--min-reporters", "0"],
    ],
)
def test_a_flag_out_of_range_is_a_usage_error(
    flag: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--eval-dir", str(_one_call_eval_dir(tmp_path)), "--no-feedback", *flag])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert flag[0] in err and "Traceback" not in err


@pytest.mark.parametrize("mode", [[], ["--missed"], ["--unhelpful"]])
def test_a_store_that_cannot_be_read_stops_the_tuning(
    mode: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A store that is there but unreadable (down, not a database) is not "nobody rated
    anything": it said so on stderr, then tuned on the evaluation set alone, and with
    --apply wrote thresholds that the agents' ratings might have turned down."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "coach.db").write_text("not a database")
    playbook = tmp_path / "playbook.yaml"
    playbook.write_text(DEFAULT_PLAYBOOK.read_text())
    args = ["--eval-dir", str(_one_call_eval_dir(tmp_path)), "--data-dir", str(data)]
    assert main([*args, "--playbook", str(playbook), "--apply", *mode]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no ") and "coach.db" in err and "--no-feedback" in err
    assert playbook.read_text() == DEFAULT_PLAYBOOK.read_text()


def test_raising_precision_never_lowers_the_threshold() -> None:
    """An outside audit: a cue rated a false alarm 3 times of 3 was given a lower threshold
    (it measured more precise there on the evaluation set), so it fired more."""
    sweep = {
        0.47: {"precision": 0.80, "recall": 0.67, "f1": 0.73},
        0.48: {"precision": 0.75, "recall": 0.50, "f1": 0.60},
        0.49: {"precision": 0.70, "recall": 0.50, "f1": 0.58},
    }
    fb = {"helpful": 0, "not_helpful": 3, "dismissed": 1}
    p = choose("x", 0.48, sweep, fb, min_ratings=3, max_unhelpful=0.5, min_gain=0.02)
    assert p.proposed == 0.48 and "no threshold raises it" in p.reason
    # ...and raising recall never raises it.
    sweep[0.49] = {"precision": 0.70, "recall": 0.90, "f1": 0.79}
    fb = {"helpful": 9, "not_helpful": 0, "dismissed": 0}
    p = choose("x", 0.48, sweep, fb, min_ratings=3, max_unhelpful=0.5, min_gain=0.02)
    assert p.proposed == 0.47


def test_a_critical_cue_never_loses_recall() -> None:
    """Two ratings of a false crisis page as not helpful proposed crisis 0.46 -> 0.59, recall
    1.00 -> 0.67 on the evaluation set (an outside audit): a missed crisis costs more."""
    sweep = {
        0.46: {"precision": 0.86, "recall": 1.00, "f1": 0.92},
        0.59: {"precision": 1.00, "recall": 0.67, "f1": 0.80},
        0.62: {"precision": 1.00, "recall": 0.33, "f1": 0.50},
    }
    fb = {"helpful": 0, "not_helpful": 2, "dismissed": 0}
    kw: dict[str, Any] = {"min_ratings": 2, "max_unhelpful": 0.5, "min_gain": 0.02}
    assert choose("crisis", 0.46, sweep, fb, **kw).proposed == 0.59
    p = choose("crisis", 0.46, sweep, fb, critical=True, **kw)
    assert p.proposed == 0.46 and "no threshold raises it" in p.reason


def test_threshold_proposals_are_written_as_json(tmp_path: Path) -> None:
    """`--json` with threshold tuning crashed (the proposals have slots, no __dict__), and
    `--apply --json` then wrote neither (an outside audit)."""
    out = tmp_path / "proposals.json"
    args = ["--eval-dir", str(_one_call_eval_dir(tmp_path)), "--no-feedback"]
    assert main([*args, "--cues", "frustration", "--span", "0.02", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["cue"] == "frustration" and {"current", "proposed", "before", "after"} <= row.keys()


def test_feedback_on_a_cue_no_longer_in_the_playbook_is_named() -> None:
    """An outside audit removed a cue with ratings and a missed-cue report: `--missed` said
    "no new wording in the reports", as if there were none."""
    from types import SimpleNamespace

    from scripts.tune_playbook import gone_cues

    pb = load_playbook()
    missed = [SimpleNamespace(cue="patience_ok", text="I can wait, no rush at all.")]
    feedback = {"patience_ok": {"helpful": 2, "not_helpful": 0, "dismissed": 0}}
    feedback["frustration"] = {"helpful": 1, "not_helpful": 0, "dismissed": 0}
    lines = gone_cues(pb, feedback, missed, [])
    assert len(lines) == 1 and "3 rating(s) or report(s) on cue 'patience_ok'" in lines[0]
    assert gone_cues(pb, {"frustration": feedback["frustration"]}, [], []) == []


def test_since_reads_only_ratings_on_later_calls(tmp_path: Path) -> None:
    """An outside audit: after --apply every rerun still cited the same old ratings, given to
    a cue before its edit. `--since` leaves out calls that started before a date."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'coach.db'}"
    asyncio.run(_stored_report(url, NOT_CHURN))  # a call of today, rated not helpful
    assert feedback_counts(url)["churn_risk"]["not_helpful"] == 1
    yesterday = datetime.now(UTC) - timedelta(days=1)
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    assert feedback_counts(url, yesterday)["churn_risk"]["not_helpful"] == 1
    assert feedback_counts(url, tomorrow).get("churn_risk", {}).get("not_helpful", 0) == 0
    with pytest.raises(SystemExit):
        main(["--since", "last tuesday", "--database-url", url])


def test_call_outcomes_are_read_and_reported_beside_the_thresholds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 5 asks the tuner to read feedback and call outcomes; it read only ratings. Now
    the outcomes of the calls each cue showed in are reported, with the calls that ended
    escalated with no warning. They move no threshold (a bad end says the call was hard)."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'coach.db'}"
    asyncio.run(_stored_report(url, NOT_CHURN))  # c1 showed churn_risk

    async def wrap_up() -> None:
        store = Store(url=url)
        try:
            start = {"type": "call_start", "call_id": "c2", "seq": 1, "t_emit": 0.0}
            await store.write_events([Received(event=start, at=datetime.now(UTC).timestamp())])
            await store.set_outcome(call_id="c1", outcome="unresolved", user="ann")
            await store.set_outcome(call_id="c2", outcome="escalated", user="ann")
        finally:
            await store.aclose()

    asyncio.run(wrap_up())
    eval_dir = _one_call_eval_dir(tmp_path)
    args = ["--eval-dir", str(eval_dir), "--database-url", url, "--span", "0.01"]
    out = tmp_path / "p.json"
    assert main([*args, "--cues", "churn_risk", "--json", str(out)]) == 0
    said = capsys.readouterr().out
    assert "churn_risk           1 call(s) with an outcome: unresolved 1" in said, said
    assert "1 call(s) ended escalated with no warning shown: c2" in said
    (row,) = json.loads(out.read_text())
    assert row["proposed"] == row["current"]  # an outcome moves nothing by itself
    assert main([*args, "--cues", "churn_risk", "--no-feedback"]) == 0
    assert "with an outcome" not in capsys.readouterr().out
