"""Tests for the cue evaluation: the scorer on hand-made events, the keyword baseline, and the
labeled call set in data/cue_eval (parses, label rules, counts per split)."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import soundfile as sf

from scripts.eval_cues import (
    DATA_DIR,
    LANGUAGE_CUES,
    CallTruth,
    CueHit,
    EngineRescorer,
    Label,
    apply_cooldown,
    check_truth,
    cue_hits,
    escalation_report,
    keyword_baseline,
    main,
    match_call,
    script_transcripts,
    stage_lags,
    summarize,
    transcript_errors,
    truth_from_json,
    turn_wer,
    word_errors,
)
from scripts.make_test_calls import CUE_IDS, SPLITS, CallScript, load_call_file


def _turn(
    speaker: str, t0: float, t1: float, cues: tuple[str, ...] = (), opt: tuple[str, ...] = ()
) -> dict[str, Any]:
    return {
        "speaker": speaker,
        "text": "x",
        "t_start": t0,
        "t_end": t1,
        "cues": list(cues),
        "optional_cues": list(opt),
        "speed_wpm": 150,
    }


def _truth(turns: list[dict[str, Any]], duration: float = 60.0) -> dict[str, Any]:
    return {"call_id": "c", "duration_s": duration, "turns": turns}


# A customer turn labelled frustration at [10, 14], a later optional repeat at [20, 23],
# and an agent turn after a silence (dead_air) that started when the agent stopped at 30.
TRUTH = _truth(
    [
        _turn("customer", 10.0, 14.0, ("frustration",)),
        _turn("customer", 20.0, 23.0, (), ("frustration",)),
        _turn("agent", 24.0, 30.0),
        _turn("agent", 40.0, 44.0, ("dead_air",)),
    ]
)


def test_truth_intervals_and_dead_air() -> None:
    truth = truth_from_json(TRUTH)
    assert not truth.calm
    frus, opt, dead = truth.labels
    assert (frus.cue, frus.required, frus.start_s, frus.end_s) == ("frustration", True, 10.0, 14.0)
    assert frus.window_end_s == 18.0 and frus.latency_ref_s == 14.0
    assert (opt.required, opt.start_s) == (False, 20.0)
    # dead_air: from the end of the previous speech to the start of the labelled turn.
    assert (dead.start_s, dead.end_s, dead.latency_ref_s) == (30.0, 40.0, 38.0)


def test_dead_air_interval_uses_latest_speech_on_either_channel() -> None:
    # A long customer turn overlapped by a short agent turn: the silence starts at 20.
    truth = truth_from_json(
        _truth(
            [
                _turn("customer", 5.0, 20.0),
                _turn("agent", 15.0, 17.0),
                _turn("customer", 30.0, 32.0, ("dead_air",)),
            ]
        )
    )
    assert truth.labels[0].start_s == 20.0


@pytest.mark.parametrize(
    ("t_emit", "hit"),
    [(9.99, False), (10.0, True), (14.0, True), (18.0, True), (18.01, False)],
)
def test_window_edges(t_emit: float, hit: bool) -> None:
    res = match_call(truth_from_json(TRUTH), [CueHit("frustration", t_emit)])
    assert len(res.matched) == int(hit)
    # Outside the window the cue is a false positive, except where an optional label covers it.
    assert len(res.false_cues) == int(not hit)


def test_each_label_matches_once_and_earliest() -> None:
    cues = [CueHit("frustration", 12.0), CueHit("frustration", 11.0)]
    res = match_call(truth_from_json(TRUTH), cues)
    assert [h.t_emit for _, h in res.matched] == [11.0]
    assert [h.t_emit for h in res.false_cues] == [12.0]
    assert res.missed == [lb for lb in truth_from_json(TRUTH).labels if lb.cue == "dead_air"]


def test_wrong_cue_id_never_matches() -> None:
    res = match_call(truth_from_json(TRUTH), [CueHit("confusion", 12.0)])
    assert not res.matched and [h.cue for h in res.false_cues] == ["confusion"]


def test_optional_label_absorbs_only_its_own_cue() -> None:
    cues = [CueHit("frustration", 21.0), CueHit("frustration", 26.5), CueHit("urgency", 21.0)]
    res = match_call(truth_from_json(TRUTH), cues)
    assert [h.t_emit for h in res.ignored] == [21.0, 26.5]  # optional window is [20, 27]
    assert [h.cue for h in res.false_cues] == ["urgency"]
    assert [lb.cue for lb in res.missed] == ["frustration", "dead_air"]


def test_greedy_matching_prefers_the_label_that_closes_first() -> None:
    labels = (
        Label("c", 0, "urgency", True, 10.0, 30.0),  # window to 34
        Label("c", 1, "urgency", True, 12.0, 13.0),  # window to 17
    )
    res = match_call(
        CallTruth("c", 60.0, labels), [CueHit("urgency", 14.0), CueHit("urgency", 25.0)]
    )
    assert len(res.matched) == 2 and not res.false_cues


def test_dead_air_cue_during_the_silence_matches_with_latency_from_8_s() -> None:
    res = match_call(truth_from_json(TRUTH), [CueHit("dead_air", 38.5)])
    assert len(res.matched) == 1
    summary = summarize([res])
    assert summary["per_cue"]["dead_air"]["latency_s"]["p50"] == pytest.approx(0.5)


def test_summary_figures() -> None:
    calm = truth_from_json({**_truth([_turn("agent", 1.0, 5.0)], duration=120.0), "call_id": "k"})
    assert calm.calm
    results = [
        match_call(
            truth_from_json(TRUTH),
            [CueHit("frustration", 15.0), CueHit("dead_air", 39.0), CueHit("crisis", 50.0)],
        ),
        match_call(calm, [CueHit("confusion", 3.0), CueHit("urgency", 60.0)]),
    ]
    s = summarize(results)
    assert s["micro"] == {
        "tp": 2,
        "fp": 3,
        "fn": 0,
        "precision": pytest.approx(0.4),
        "recall": 1.0,
        "f1": pytest.approx(4 / 7),
    }
    assert s["per_cue"]["frustration"]["f1"] == 1.0
    assert s["per_cue"]["crisis"]["precision"] == 0.0 and s["per_cue"]["crisis"]["recall"] is None
    assert s["per_cue"]["overtalk"]["f1"] is None  # nothing labelled, nothing emitted
    # Macro F1 over cues with a defined F1: frustration 1, dead_air 1, crisis/confusion/urgency 0.
    assert s["macro_f1"] == pytest.approx(2 / 5)
    assert s["calm"] == {
        "calls": 1,
        "minutes": 2.0,
        "false_cues": 2,
        "false_cues_per_10min": pytest.approx(10.0),
    }
    assert s["latency_s"]["n"] == 2 and s["latency_s"]["p50"] == pytest.approx(1.0)
    assert s["crisis_recall"] is None


def test_escalation_report_checks_critical_in_crisis_window() -> None:
    truth = truth_from_json(_truth([_turn("customer", 10.0, 14.0, ("crisis",))]))
    events = [
        {"type": "escalation", "t_emit": 13.0, "reason": "crisis", "urgency": "high"},
        {"type": "escalation", "t_emit": 17.5, "reason": "crisis", "urgency": "critical"},
    ]
    report = escalation_report(truth, events)
    assert report["crisis_labels"] == 1 and report["crisis_with_critical_escalation"] == 1
    assert len(report["escalations"]) == 2
    late = escalation_report(truth, [{**events[1], "t_emit": 18.5}])
    assert late["crisis_with_critical_escalation"] == 0
    # ...but a supervisor alerted during the agent's reply is counted apart (within 15 s).
    assert late["crisis_with_critical_escalation_15s"] == 1
    too_late = escalation_report(truth, [{**events[1], "t_emit": 29.5}])
    assert too_late["crisis_with_critical_escalation_15s"] == 0


def _tr(
    speaker: str, t0: float, t1: float, text: str, t_emit: float | None = None
) -> dict[str, Any]:
    return {
        "type": "transcript",
        "speaker": speaker,
        "t_start": t0,
        "t_end": t1,
        "t_emit": t1 + 0.5 if t_emit is None else t_emit,
        "text": text,
    }


def test_keyword_baseline_language_cues() -> None:
    events = [
        _tr("agent", 0.0, 3.0, "I understand how frustrating this is."),  # agent: ignored
        _tr("customer", 4.0, 6.0, "This is ridiculous, I want your SUPERVISOR."),
        _tr("customer", 7.0, 9.0, "Honestly it's unacceptable."),  # within 20 s: cooled down
        _tr("customer", 30.0, 32.0, "I'm so frustrated."),
        _tr("customer", 33.0, 34.0, "Let me think about the bill."),
        _tr("customer", 50.0, 51.0, "My old phone died, and I'm on a diet."),  # "die" only
    ]
    hits = [h for h in keyword_baseline(events) if h.cue in LANGUAGE_CUES]
    assert [(h.cue, h.t_emit) for h in hits] == [
        ("escalation_request", 6.5),
        ("frustration", 6.5),
        ("frustration", 32.5),
        ("cost_anxiety", 34.5),
        ("crisis", 51.5),
    ]


def test_keyword_baseline_timing_cues() -> None:
    events = [
        _tr("customer", 1.0, 9.0, "one two three"),
        _tr("agent", 6.5, 8.0, "sorry to cut in"),  # 2.5 s before the customer ends
        _tr("agent", 20.0, 22.0, "thanks for waiting"),  # 11 s silence after 9.0
        _tr("agent", 23.0, 25.0, "one two three four five six seven eight"),  # 4 words/s
        _tr("customer", 26.0, 28.0, "ok"),
        _tr("agent", 27.5, 29.0, "fine"),  # only 0.5 s early: no overtalk
    ]
    hits = keyword_baseline(events)
    assert ("overtalk", 8.5) in [(h.cue, h.t_emit) for h in hits]
    assert ("dead_air", 20.0) in [(h.cue, h.t_emit) for h in hits]
    assert ("agent_pace_fast", 25.5) in [(h.cue, h.t_emit) for h in hits]
    assert Counter(h.cue for h in hits) == {"overtalk": 1, "dead_air": 1, "agent_pace_fast": 1}


def test_baseline_scored_with_the_same_scorer() -> None:
    truth = truth_from_json(
        _truth([_turn("customer", 4.0, 6.0, ("frustration",)), _turn("agent", 7.0, 9.0)])
    )
    res = match_call(truth, keyword_baseline([_tr("customer", 4.0, 6.0, "I'm fed up")]))
    assert len(res.matched) == 1 and not res.false_cues


def test_apply_cooldown_is_per_cue() -> None:
    hits = [CueHit("a", 0.0), CueHit("b", 1.0), CueHit("a", 19.9), CueHit("a", 20.0)]
    assert apply_cooldown(hits, 20.0) == [CueHit("a", 0.0), CueHit("b", 1.0), CueHit("a", 20.0)]


def test_check_truth_flags_broken_labels() -> None:
    good = _truth([_turn("customer", 0.5, 5.0), _turn("agent", 5.6, 40.0)], duration=41.0)
    assert check_truth(good) == []
    bad = _truth(
        [
            _turn("customer", 0.5, 5.0, ("urgency",)),
            _turn("agent", 4.0, 6.0, ("overtalk",)),  # only 1 s overlap
            _turn("customer", 10.0, 12.0, ("urgency",)),  # repeat within 20 s
            _turn("agent", 19.0, 25.0, ("dead_air",)),  # 7 s is not dead air
            _turn("customer", 32.0, 40.0),  # 7 s unlabelled silence
        ],
        duration=41.0,
    )
    problems = "\n".join(check_truth(bad))
    for needle in ("overtalk label", "within 20 s", "dead_air label after", "unlabelled silence"):
        assert needle in problems
    calm = _truth([_turn("customer", 0.5, 5.0), _turn("agent", 12.0, 40.0)], duration=41.0)
    assert any("calm call" in p for p in check_truth(calm))


# --- the labeled call set ---------------------------------------------------------------

CALLS: dict[str, list[tuple[Path, CallScript, dict[str, str]]]] = {
    split: [(p, *load_call_file(p)) for p in sorted((DATA_DIR / split).glob("*.call"))]
    for split in SPLITS
}


def _estimated_timeline(script: CallScript) -> list[tuple[float, float]]:
    """Rough turn times: espeak-ng speaks about 1.2 x its nominal words per minute."""
    times: list[tuple[float, float]] = []
    end = 0.5
    for turn in script.turns:
        speed = script.espeak_params(turn)[1]
        dur = len(turn.text.split()) * 50.0 / speed
        if turn.overlap_s:
            start = max(times[-1][0], times[-1][1] - turn.overlap_s)
        else:
            start = end + turn.gap_before_s
        times.append((start, start + dur))
        end = max(end, start + dur)
    return times


def test_call_files_parse_with_consistent_ids_and_splits() -> None:
    ids = [s.call_id for calls in CALLS.values() for _, s, _ in calls]
    assert len(ids) == len(set(ids)) >= 48
    for split, calls in CALLS.items():
        for path, script, meta in calls:
            assert script.call_id == path.stem and meta["split"] == split
            assert meta.get("domain") and meta.get("notes")
            assert {t.speaker for t in script.turns} == {"customer", "agent"}
            for turn in script.turns:
                assert set(turn.labels) | set(turn.optional_labels) <= set(CUE_IDS)


@pytest.mark.parametrize("split", SPLITS)
def test_split_counts(split: str) -> None:
    calls = CALLS[split]
    required = Counter(c for _, s, _ in calls for t in s.turns for c in t.labels)
    # `dev` was written for the language cues: two calls of each timing cue are enough there.
    timing_minimum = 2 if split == "dev" else 4
    for cue in CUE_IDS:
        assert required[cue] >= (6 if cue in LANGUAGE_CUES else timing_minimum), cue
    calm = [s for _, s, _ in calls if not any(t.labels for t in s.turns)]
    assert len(calm) >= 6
    assert len({m["domain"] for _, _, m in calls}) >= 8
    assert len({m.get("customer_voice") for _, _, m in calls}) >= 10


@pytest.mark.parametrize("split", SPLITS)
def test_label_rules(split: str) -> None:
    for _, script, _ in CALLS[split]:
        calm = not any(t.labels for t in script.turns)
        times = _estimated_timeline(script)
        assert 25.0 <= times[-1][1] + 1.0 <= 80.0, script.call_id
        last: dict[str, float] = {}
        for turn, (start, _) in zip(script.turns, times, strict=True):
            speed = script.espeak_params(turn)[1]
            if calm:
                assert turn.gap_before_s <= 6.0 and turn.overlap_s == 0.0, script.call_id
                assert turn.speaker == "customer" or speed <= 170, script.call_id
            if "dead_air" in turn.labels:
                assert 9.5 <= turn.gap_before_s <= 12.0, script.call_id
            elif "dead_air" not in turn.optional_labels:
                assert turn.gap_before_s <= 6.0, script.call_id
            if "overtalk" in turn.labels:
                assert turn.speaker == "agent" and turn.overlap_s >= 2.5, script.call_id
            if {"agent_pace_fast"} & {*turn.labels, *turn.optional_labels}:
                assert turn.speaker == "agent" and speed >= 260, script.call_id
            elif turn.speaker == "agent" and speed >= 260:
                # Every rushed turn is labelled, required or optional: a cue there is right.
                raise AssertionError(f"{script.call_id}: fast agent turn without a label")
            language = [c for c in turn.labels if c in LANGUAGE_CUES]
            if language:
                assert turn.speaker == "customer", script.call_id
            for cue in turn.labels:
                # A required repeat of a cue must not fall inside the engine's cooldown.
                assert start - last.get(cue, -99.0) >= 15.0, (script.call_id, cue)
                last[cue] = start


def test_render_one_call_and_score_it_through_the_cli(tmp_path: Path) -> None:
    if shutil.which("espeak-ng") is None:
        pytest.skip("needs espeak-ng")
    src = DATA_DIR / "heldout" / "h12_internet_engineer_threat.call"
    data = tmp_path / "data"
    (data / "heldout").mkdir(parents=True)
    shutil.copy(src, data / "heldout" / src.name)
    cache = tmp_path / "cache"
    args = ["--split", "heldout", "--data", str(data), "--cache", str(cache)]
    assert main(["render", *args]) == 0  # check_truth found nothing wrong
    wav = cache / "heldout" / f"{src.stem}.wav"
    info = sf.info(wav)
    assert (info.samplerate, info.channels, info.subtype) == (8000, 2, "ULAW")
    truth_json = json.loads(wav.with_suffix(".json").read_text())
    assert truth_json["meta"]["split"] == "heldout" and truth_json["meta"]["script_sha256"]
    assert (cache / ".gitignore").read_text() == "*\n"
    stamp = wav.stat().st_mtime_ns
    assert main(["render", *args]) == 0 and wav.stat().st_mtime_ns == stamp  # up to date

    truth = truth_from_json(truth_json)
    required = [lb for lb in truth.labels if lb.required]
    events = [{"type": "call_start", "t_emit": 0.0}]
    events += [{"type": "cue", "cue": lb.cue, "t_emit": lb.end_s + 1.0} for lb in required]
    events += [{"type": "cue", "cue": "confusion", "t_emit": 1.0}]
    crisis = next(lb for lb in required if lb.cue == "crisis")
    events += [{"type": "escalation", "t_emit": crisis.end_s, "reason": "r", "urgency": "critical"}]
    events += [
        {
            "type": "transcript",
            "speaker": "customer",
            "t_start": 1.0,
            "t_end": 2.0,
            "t_emit": 2.5,
            "text": "I've called every week",
        },
    ]
    ev_dir = cache / "heldout" / "events-fast"
    ev_dir.mkdir()
    ev_file = ev_dir / f"{src.stem}.jsonl"
    out = tmp_path / "report.json"
    # Without call_end the replay is unfinished and not scored.
    ev_file.write_text("".join(json.dumps(e) + "\n" for e in events) + '{"type": "cue", "cu')
    assert main(["score", *args, "--json", str(out)]) == 0
    assert json.loads(out.read_text())["missing_event_files"] == [src.stem]
    events.append({"type": "call_end", "t_emit": truth.duration_s})
    ev_file.write_text("".join(json.dumps(e) + "\n" for e in events))
    assert main(["score", *args, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    engine = report["engine"]
    assert engine["micro"]["tp"] == len(required) and engine["micro"]["fp"] == 1
    assert engine["crisis_recall"] == 1.0 and report["escalation"]["rate"] == 1.0
    assert report["calls"] == 1 and "keyword" in report
    assert 0.0 < report["asr_wer"]["customer"] < 1.0 and report["asr_wer"]["agent"] == 1.0
    assert report["transcripts"] == "asr" and report["rerun"] is False

    # --rerun: the engine answers the replay's one transcript again; the hand-placed cues
    # (not the engine's) are dropped, and the transcript is the replay's, word errors and all.
    assert main(["score", *args, "--rerun", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["rerun"] is True and report["transcripts"] == "asr"
    assert report["engine"]["micro"]["tp"] < len(required)
    assert 0.0 < report["asr_wer"]["customer"] < 1.0

    # The same replay scored on the script's own words: no word errors, the engine's own cues.
    assert main(["score", *args, "--transcripts", "script", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["transcripts"] == "script" and report["rerun"] is True
    assert report["asr_wer"] == {"customer": 0.0, "agent": 0.0}
    assert report["calls"] == 1 and report["engine"]["micro"]["tp"] > 0


def test_word_errors_and_transcript_errors() -> None:
    assert word_errors("a b c".split(), "a x c d".split()) == 2
    assert word_errors([], ["a"]) == 1 and word_errors(["a"], []) == 1
    truth = _truth([{**_turn("customer", 0.0, 1.0), "text": "I can't pay, sorry."}])
    events = [_tr("customer", 0.0, 1.0, "I can\u2019t play sorry")]
    assert transcript_errors(truth, events) == {"customer": [1, 4], "agent": [0, 0]}
    two = _truth(
        [
            {**_turn("customer", 0.0, 2.0), "text": "one two"},
            {**_turn("agent", 1.5, 3.0), "text": "three four"},
            {**_turn("customer", 4.0, 6.0), "text": "five six"},
        ]
    )
    heard = [_tr("customer", 0.1, 1.9, "one two"), _tr("agent", 1.6, 2.9, "three")]
    assert turn_wer(two, heard) == [0.0, 0.5, 1.0]


def test_stage_lags_split_a_cues_latency_into_asr_and_engine() -> None:
    def cue(t_emit: float, t_end: float, **extra: Any) -> dict[str, Any]:
        return {
            "type": "cue",
            "speaker": "customer",
            "t_emit": t_emit,
            "evidence": {"t_end": t_end},
            **extra,
        }

    events = [
        _tr("customer", 0.0, 2.0, "short", t_emit=2.4),
        _tr("customer", 3.0, 9.5, "a turn over six seconds long", t_emit=10.2),
        _tr("agent", 8.0, 9.0, "agent turns are not the customer's ASR", t_emit=12.0),
        cue(2.5, 2.0),
        cue(10.4, 9.5),
        cue(6.0, 9.5, early=True),  # read from a partial: no final to wait for
        cue(9.0, 99.0),  # names no final: left out
    ]
    lags = {k: [round(x, 3) for x in v] for k, v in stage_lags(events).items()}
    assert lags == {
        "asr": [0.4, 0.7],
        "asr <3s": [0.4],
        "asr 3-6s": [],
        "asr >=6s": [0.7],
        "engine": [0.1, 0.2],
    }


def _voiced(speaker: str, t0: float, t1: float, text: str, arousal: float) -> dict[str, Any]:
    return {**_tr(speaker, t0, t1, text), "prosody": {"arousal": arousal, "f0_hz": 180.0}}


# What a replay recorded: the ASR mangled the customer's request, and the VAD cut it in two.
SCRIPT_TRUTH = {
    "call_id": "s",
    "duration_s": 30.0,
    "turns": [
        {**_turn("customer", 1.0, 3.0), "text": "Hi, I'm calling about my bill."},
        {**_turn("agent", 3.5, 5.0), "text": "Sure, let me pull that up."},
        {
            **_turn("customer", 15.0, 21.0, ("escalation_request", "dead_air")),
            "text": "I want to speak to your manager right now. Put me through to a supervisor.",
        },
    ],
}
SCRIPT_EVENTS = [
    {"type": "call_start", "t_emit": 0.0},
    _voiced("customer", 1.0, 3.0, "Hi, I'm calling about my bill.", 0.4),
    _voiced("agent", 3.5, 5.0, "Sure, let me pull that up.", 0.5),
    {"type": "cue", "cue": "dead_air", "t_emit": 13.0},
    _voiced("customer", 15.0, 16.0, "I want to peek", 0.9),
    _voiced("customer", 16.2, 21.0, "at your man urge her. Put me through to a super vice.", 0.7),
    {"type": "cue", "cue": "frustration", "t_emit": 21.5},
    {"type": "escalation", "t_emit": 21.5, "reason": "r", "urgency": "high"},
    {"type": "call_end", "t_emit": 30.0},
]


def test_script_transcripts_keep_voice_and_timing_cues_only() -> None:
    out = script_transcripts(SCRIPT_TRUTH, SCRIPT_EVENTS)
    transcripts = [e for e in out if e["type"] == "transcript"]
    assert [t["text"] for t in transcripts] == [t["text"] for t in SCRIPT_TRUTH["turns"]]
    assert [(t["t_start"], t["t_end"]) for t in transcripts] == [
        (1.0, 3.0),
        (3.5, 5.0),
        (15.0, 21.0),
    ]
    # The turn's voice is the recorded utterance that overlaps it most (4.8 s against 1 s).
    assert transcripts[2]["prosody"]["arousal"] == 0.7
    assert all("sentiment" not in t and "state" not in t for t in transcripts)
    # Language cues and escalations answered the ASR's words; the VAD's dead air stays.
    assert [(e["type"], e.get("cue")) for e in out if e["type"] in ("cue", "escalation")] == [
        ("cue", "dead_air")
    ]
    assert [e["type"] for e in out][0] == "call_start" and out[-1]["type"] == "call_end"


def test_script_rescorer_hears_what_the_asr_lost() -> None:
    truth = truth_from_json(SCRIPT_TRUTH)
    heard = match_call(truth, cue_hits(SCRIPT_EVENTS))
    assert [lb.cue for lb in heard.missed] == ["escalation_request"]
    rescored = EngineRescorer(words="script")(SCRIPT_TRUTH, SCRIPT_EVENTS)
    result = match_call(truth, cue_hits(rescored))
    assert sorted(lb.cue for lb, _ in result.matched) == ["dead_air", "escalation_request"]
    assert not result.missed and not result.false_cues
    customer = [e for e in rescored if e["type"] == "transcript" and e["speaker"] == "customer"]
    assert all(e["sentiment"]["label"] and "valence" in e["state"] for e in customer)
    assert any(e["type"] == "escalation" and e["reason"] == "user_request" for e in rescored)


def test_rerun_finds_the_cues_again_on_the_replays_own_words() -> None:
    """--rerun: the recorded cues are thrown away and the engine answers the same transcripts
    again, so a playbook or engine change is measured without replaying the audio."""
    truth = truth_from_json(SCRIPT_TRUTH)
    rerun = EngineRescorer(words="asr")
    # On the garbled words the request is still lost, and the recorded frustration cue and
    # escalation (answers of some earlier engine) are gone; the VAD's dead air stays.
    garbled = rerun(SCRIPT_TRUTH, SCRIPT_EVENTS)
    assert [e["text"] for e in garbled if e["type"] == "transcript"] == [
        e["text"] for e in SCRIPT_EVENTS if e["type"] == "transcript"
    ]
    result = match_call(truth, cue_hits(garbled))
    assert [lb.cue for lb in result.missed] == ["escalation_request"]
    found = [(e["type"], e.get("cue")) for e in garbled if e["type"] in ("cue", "escalation")]
    assert found == [("cue", "dead_air")]
    # Had the ASR heard the request, the engine run again finds it and escalates.
    heard = [
        _voiced("customer", 16.2, 21.0, "I want to speak to your manager right now.", 0.7)
        if e.get("t_start") == 16.2
        else e
        for e in SCRIPT_EVENTS
    ]
    again = rerun(SCRIPT_TRUTH, heard)
    assert "escalation_request" in [lb.cue for lb, _ in match_call(truth, cue_hits(again)).matched]
    assert any(e["type"] == "escalation" and e["reason"] == "user_request" for e in again)


def test_realtime_replays_side_by_side_share_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """N realtime replays stand for one server with N calls: each gets its share of the
    cores as ASR workers, unless the user set COACH_ASR_WORKERS."""
    from coach import settings as settings_module
    from scripts.eval_cues import replay_env

    monkeypatch.delenv("COACH_ASR_WORKERS", raising=False)
    monkeypatch.setattr(settings_module, "usable_cpus", lambda: 4)
    assert replay_env("realtime", 2)["COACH_ASR_WORKERS"] == "2"
    assert replay_env("realtime", 8)["COACH_ASR_WORKERS"] == "1"
    assert "COACH_ASR_WORKERS" not in replay_env("realtime", 1)
    assert "COACH_ASR_WORKERS" not in replay_env("fast", 2)  # --fast decodes inline anyway
    monkeypatch.setenv("COACH_ASR_WORKERS", "3")
    assert replay_env("realtime", 2)["COACH_ASR_WORKERS"] == "3"


OUTSIDE = DATA_DIR.parent / "outside_calls"


def test_the_outside_authors_calls_parse_with_known_labels() -> None:
    """Calls written by outside authors for one-off checks (data/outside_calls/README.md):
    not a split, but `eval_cues run --data` must read them."""
    paths = sorted(OUTSIDE.glob("*/dev/*.call"))
    assert len(paths) >= 10
    for path in paths:
        script, _ = load_call_file(path)
        labels = {c for t in script.turns for c in (*t.labels, *t.optional_labels)}
        assert labels <= set(CUE_IDS), path
