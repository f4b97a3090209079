"""The playbook schema: the bundled file loads, and bad files are refused with clear errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from coach.cues.library import PlaybookLibrary
from coach.cues.playbook import (
    DEFAULT_PLAYBOOK,
    MAX_PHRASES,
    MAX_PLAYBOOK_BYTES,
    PlaybookError,
    load_playbook,
    parse_playbook,
)
from coach.metrics import PLAYBOOK_REFUSED
from scripts.make_test_calls import CUE_IDS


def _bundled() -> dict:
    return yaml.safe_load(DEFAULT_PLAYBOOK.read_text())


def test_bundled_playbook_has_every_cue_of_the_taxonomy() -> None:
    pb = load_playbook()
    assert set(CUE_IDS) <= set(pb.enabled())
    assert pb.cues["crisis"].severity == "critical"
    assert pb.cues["crisis"].escalate is not None
    assert pb.cues["crisis"].escalate.urgency == "critical"
    assert pb.cues["escalation_request"].escalate is not None
    assert pb.cues["escalation_request"].escalate.reason == "user_request"


def _error(text: str) -> str:
    with pytest.raises(PlaybookError) as exc:
        parse_playbook(text, source="test.yaml")
    return str(exc.value)


def test_threshold_out_of_range_names_the_field_and_line() -> None:
    text = DEFAULT_PLAYBOOK.read_text().replace("threshold: 0.5", "threshold: 1.5", 1)
    msg = _error(text)
    assert "threshold" in msg and "(line " in msg and "less than or equal to 1" in msg


def test_unknown_field_is_refused() -> None:
    data = _bundled()
    data["cues"]["frustration"]["treshold"] = 0.5
    msg = _error(yaml.safe_dump(data))
    assert "cues.frustration.treshold" in msg and "Extra inputs" in msg


def test_language_cue_needs_examples_and_threshold() -> None:
    data = _bundled()
    data["cues"]["confusion"]["positives"] = ["I don't get it."]
    del data["cues"]["urgency"]["threshold"]
    msg = _error(yaml.safe_dump(data))
    assert "cues.confusion" in msg and "at least 3 positive examples" in msg
    assert "cues.urgency" in msg and "needs a threshold" in msg


def test_dynamics_cue_needs_a_known_detector() -> None:
    data = _bundled()
    data["cues"]["dead_air"]["detector"] = "long_silence"
    msg = _error(yaml.safe_dump(data))
    assert "cues.dead_air.detector" in msg


def test_unknown_context_move() -> None:
    data = _bundled()
    data["cues"]["dejection"]["context"]["after_agent_move"] = ["magic"]
    assert "'magic' is not in agent_moves" in _error(yaml.safe_dump(data))


def test_safety_move_must_be_an_agent_move() -> None:
    assert load_playbook().escalation.safety_move == "safety"
    data = _bundled()
    data["escalation"]["safety_move"] = "rescue"
    assert "escalation.safety_move 'rescue' is not in agent_moves" in _error(yaml.safe_dump(data))
    data["escalation"]["safety_move"] = None  # off
    assert parse_playbook(yaml.safe_dump(data)).escalation.safety_move is None


def test_affect_gate_needs_known_emotions_and_a_language_cue() -> None:
    data = _bundled()
    data["cues"]["dejection"]["affect_gate"] = {"emotions": []}
    assert "cues.dejection.affect_gate.emotions" in _error(yaml.safe_dump(data))
    data["cues"]["dejection"]["affect_gate"] = {"emotions": ["gloomy"]}
    msg = _error(yaml.safe_dump(data))
    assert "cues.dejection.affect_gate.emotions" in msg and "'sad'" in msg
    data = _bundled()
    data["cues"]["dead_air"]["affect_gate"] = {"emotions": ["sad"]}
    assert "affect_gate is only for language cues" in _error(yaml.safe_dump(data))


def test_close_look_bounds_and_kind() -> None:
    data = _bundled()
    data["cues"]["crisis"]["close_look"] = {"words": 2}
    assert "cues.crisis.close_look.words" in _error(yaml.safe_dump(data))
    data["cues"]["crisis"]["close_look"] = {"words": 8, "within": 0}
    assert "cues.crisis.close_look.within" in _error(yaml.safe_dump(data))
    data = _bundled()
    data["cues"]["overtalk"]["close_look"] = {"words": 8}
    assert "close_look is only for language cues" in _error(yaml.safe_dump(data))


def test_misheard_bounds_and_kind() -> None:
    data = _bundled()
    data["cues"]["confusion"]["misheard"] = {"within": 0}
    assert "cues.confusion.misheard.within" in _error(yaml.safe_dump(data))
    data["cues"]["confusion"]["misheard"] = {"min_meaning": 1.5}
    assert "cues.confusion.misheard.min_meaning" in _error(yaml.safe_dump(data))
    data = _bundled()
    data["cues"]["dead_air"]["misheard"] = {}
    assert "misheard is only for language cues" in _error(yaml.safe_dump(data))


def test_early_bounds_and_where_it_applies() -> None:
    data = _bundled()
    data["cues"]["crisis"]["early"] = {"margin": 0.7}
    assert "cues.crisis.early.margin" in _error(yaml.safe_dump(data))
    data["cues"]["crisis"]["early"] = {"min_words": 1}
    assert "cues.crisis.early.min_words" in _error(yaml.safe_dump(data))
    data = _bundled()
    data["cues"]["dead_air"]["early"] = {}
    assert "early is only for language cues" in _error(yaml.safe_dump(data))
    data = _bundled()
    data["cues"]["confusion"] |= {"party": "agent", "early": {}}  # language cues are the customer's
    assert "agent-side language cues are not supported" in _error(yaml.safe_dump(data))
    data = _bundled()
    data["cues"]["dejection"]["early"] = {}
    assert "early cannot go with affect_gate" in _error(yaml.safe_dump(data))
    data = _bundled()
    data["cues"]["crisis"]["early"] = {"margin": 0.05}
    assert parse_playbook(yaml.safe_dump(data)).cues["crisis"].early is not None


def test_refire_above_bounds() -> None:
    data = _bundled()
    data["cues"]["crisis"]["refire_above"] = 0
    assert "cues.crisis.refire_above" in _error(yaml.safe_dump(data))
    data = _bundled()
    data["cues"]["dead_air"]["refire_above"] = 0.1
    assert "refire_above is only for language cues" in _error(yaml.safe_dump(data))


def test_meaning_bounds_and_kind() -> None:
    data = _bundled()
    data["cues"]["crisis"]["meaning"] = {"veto_below": 1.5}
    assert "cues.crisis.meaning.veto_below" in _error(yaml.safe_dump(data))
    data["cues"]["crisis"]["meaning"] = {"fire_above": 0}
    assert "cues.crisis.meaning.fire_above" in _error(yaml.safe_dump(data))
    data = _bundled()
    data["cues"]["dead_air"]["meaning"] = {"veto_below": 0.2}
    assert "meaning is only for language cues" in _error(yaml.safe_dump(data))


def test_lean_meaning_needs_words_lean_and_the_probe() -> None:
    data = _bundled()
    data["cues"]["crisis"]["voice_trigger"]["words_lean"] = False
    assert "lean_meaning needs words_lean" in _error(yaml.safe_dump(data))
    data = _bundled()
    del data["cues"]["crisis"]["meaning"]
    assert "lean_meaning needs the cue's meaning" in _error(yaml.safe_dump(data))
    data = _bundled()
    data["cues"]["crisis"]["voice_trigger"]["lean_meaning"] = 2
    assert "cues.crisis.voice_trigger.lean_meaning" in _error(yaml.safe_dump(data))


def test_bad_cue_id() -> None:
    data = _bundled()
    data["cues"]["Bad-Id"] = data["cues"]["confusion"]
    assert "snake_case" in _error(yaml.safe_dump(data))


def test_not_yaml_and_not_a_mapping() -> None:
    assert "not valid YAML" in _error("cues: [unclosed")
    assert "<unicode string>" not in _error("cues: [unclosed")  # the file is named already
    assert "top level must be a mapping" in _error("- just\n- a list\n")


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PlaybookError, match="cannot read"):
        load_playbook(tmp_path / "nope.yaml")


def _with_extra_positives(n: int) -> str:
    """The bundled playbook with `n` more positives of cost_anxiety."""
    extra = "".join(f"      - I can't afford bill number {i} this month.\n" for i in range(n))
    text = DEFAULT_PLAYBOOK.read_text()
    first = "      - I can't afford this.\n"
    assert first in text
    return text.replace(first, first + extra, 1)


def test_a_playbook_of_too_many_phrases_is_refused_at_its_longest_list() -> None:
    """A pasted corpus would be embedded at every load, for minutes, beside the live calls."""
    error = _error(_with_extra_positives(MAX_PHRASES))
    assert "cues.cost_anxiety.positives (line " in error and f"more than {MAX_PHRASES}" in error
    parse_playbook(_with_extra_positives(1000))  # a playbook that grew is fine


def test_an_oversized_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "playbook.yaml"
    text = DEFAULT_PLAYBOOK.read_text()
    path.write_text(text + "#" * MAX_PLAYBOOK_BYTES + "\n")
    with pytest.raises(PlaybookError, match="larger than 4 MiB"):
        load_playbook(path)


def test_reload_swaps_valid_versions_and_keeps_the_last_good_one(tmp_path: Path) -> None:
    path = tmp_path / "playbook.yaml"
    path.write_text(DEFAULT_PLAYBOOK.read_text())
    calls: list[int] = []

    def embed(texts):  # type: ignore[no-untyped-def]
        import numpy as np

        calls.append(len(texts))
        rng = np.random.default_rng(len(texts))
        v = rng.normal(size=(len(texts), 8)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    lib = PlaybookLibrary(path, embed=embed)
    first = lib.current
    assert not lib.changed() and not lib.reload()

    path.write_text(DEFAULT_PLAYBOOK.read_text().replace("cooldown_s: 45", "cooldown_s: 50", 1))
    assert lib.changed() and lib.reload()
    assert lib.current.version != first.version
    assert lib.current.playbook.cues["frustration"].cooldown_s == 50

    good = lib.current
    path.write_text("version: 1\ncues: {}\n")
    assert lib.changed() and not lib.reload()
    assert lib.current is good and lib.last_error and "no cues" in lib.last_error
    assert not lib.changed()  # the refused version is not retried every poll

    embedded = sum(calls)
    path.write_text(_with_extra_positives(MAX_PHRASES))
    assert lib.changed() and not lib.reload()
    assert lib.current is good and lib.last_error and "more than" in lib.last_error
    assert sum(calls) == embedded  # refused before a single phrase was embedded
    path.write_text(DEFAULT_PLAYBOOK.read_text() + "#" * MAX_PLAYBOOK_BYTES)
    assert lib.changed() and not lib.reload()
    assert lib.current is good and lib.last_error and "larger than" in lib.last_error
    assert not lib.changed()


DEEP = "version: 1\ncues: " + "[" * 5000 + "]" * 5000 + "\n"


def _unit_embed(texts):  # type: ignore[no-untyped-def]
    import numpy as np

    v = np.random.default_rng(len(texts)).normal(size=(len(texts), 8)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_a_file_nested_too_deeply_is_refused_not_a_crash() -> None:
    assert "nested too deeply" in _error(DEEP)


async def test_hot_reload_goes_on_after_a_file_that_broke_the_loader(tmp_path: Path) -> None:
    """A RecursionError (a file nested thousands deep) escaped the reload and ended the
    watcher task: no later edit was ever loaded, and nothing was logged."""
    import asyncio

    path = tmp_path / "playbook.yaml"
    good = DEFAULT_PLAYBOOK.read_text()
    path.write_text(good)
    lib = PlaybookLibrary(path, embed=_unit_embed)
    first = lib.version
    watcher = asyncio.create_task(lib.watch(0.02))
    try:
        path.write_text(DEEP)
        await _until(lambda: lib.last_error is not None)
        assert "nested too deeply" in str(lib.last_error) and lib.version == first

        path.write_text(good.replace("cooldown_s: 45", "cooldown_s: 46", 1))
        await _until(lambda: lib.version != first)
        assert lib.current.playbook.cues["frustration"].cooldown_s == 46 and not lib.last_error
        assert not watcher.done()  # still watching
    finally:
        watcher.cancel()

    # A failure that is not the file's (the encoders'): refused and logged, not raised.
    def failing(texts):  # type: ignore[no-untyped-def]
        raise RuntimeError("encoder out of memory")

    lib._embed = failing
    path.write_text(good.replace("cooldown_s: 45", "cooldown_s: 48", 1))
    assert not lib.reload() and "out of memory" in str(lib.last_error)
    assert lib.current.playbook.cues["frustration"].cooldown_s == 46


async def test_the_watcher_refuses_a_file_moved_away_and_loads_it_back(tmp_path: Path) -> None:
    """An outside audit moved the playbook away on a running server: no log, no
    coach_playbook_refused, until the next start failed on the missing file."""
    import asyncio

    path = tmp_path / "playbook.yaml"
    path.write_text(DEFAULT_PLAYBOOK.read_text())
    lib = PlaybookLibrary(path, embed=_unit_embed)
    first = lib.version
    watcher = asyncio.create_task(lib.watch(0.02))
    try:
        path.rename(tmp_path / "moved.yaml")
        await _until(lambda: lib.last_error is not None)
        assert "cannot read" in str(lib.last_error) and lib.refused_now()
        assert lib.version == first and PLAYBOOK_REFUSED._value.get() == 1
        (tmp_path / "moved.yaml").rename(path)
        await _until(lambda: lib.last_error is None)
        assert not lib.refused_now() and lib.version == first
        assert PLAYBOOK_REFUSED._value.get() == 0
    finally:
        watcher.cancel()


def test_a_read_that_failed_while_the_file_came_back_does_not_stick(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A review: the refusal of a failed read was noted against the file read again, so a
    file put back in between (a writer that deletes and recreates it) was taken for the
    refused version: never loaded, and coach_playbook_refused stuck at 1."""
    from coach.cues import library as library_module

    path = tmp_path / "playbook.yaml"
    good = DEFAULT_PLAYBOOK.read_text()
    path.write_text(good)
    lib = PlaybookLibrary(path, embed=_unit_embed)
    first = lib.version
    path.write_text(good.replace("cooldown_s: 45", "cooldown_s: 47", 1))  # a new version...
    real = library_module.read_playbook_file

    def gone_for_this_read(p: Path) -> bytes:
        raise PlaybookError(p, ["cannot read: No such file or directory"]) from OSError(2, "gone")

    monkeypatch.setattr(library_module, "read_playbook_file", gone_for_this_read)
    assert lib.changed() and not lib.reload() and lib.last_error
    monkeypatch.setattr(library_module, "read_playbook_file", real)  # ...back on disk
    assert lib.changed() and lib.reload() and lib.version != first
    assert lib.last_error is None and PLAYBOOK_REFUSED._value.get() == 0


async def _until(predicate: Callable[[], bool]) -> None:
    """Poll (the watcher runs on its own; there is nothing to await) for up to 10 s."""
    import asyncio

    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("timed out")


def test_cli_refuses_a_bad_playbook_before_loading_models(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    bad = tmp_path / "playbook.yaml"
    bad.write_text("version: 1\ncues: {}\n")
    env = {**os.environ, "COACH_PLAYBOOK_FILE": str(bad)}
    out = subprocess.run(
        [sys.executable, "-m", "coach", "replay", "missing.wav", "--events", str(tmp_path / "e")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert out.returncode == 2
    assert "invalid playbook" in out.stderr and "no cues" in out.stderr


def _line(text: str, needle: str) -> int:
    """1-based line of the first line of `text` that is exactly `needle`."""
    return text.splitlines().index(needle) + 1


def test_duplicate_keys_are_refused_with_both_lines() -> None:
    # Last one wins in plain YAML: a second `frustration:` (a renamed `confusion:`) silently
    # replaced the real frustration cue and dropped confusion.
    bundled = DEFAULT_PLAYBOOK.read_text()
    text = bundled.replace("\n  confusion:\n", "\n  frustration:\n", 1)
    first, second = _line(bundled, "  frustration:"), _line(bundled, "  confusion:")
    msg = _error(text)
    assert f"duplicate key 'frustration' (line {second}; first at line {first})" in msg

    # A field twice inside one cue, and the top-level version twice: every one is reported.
    text = bundled.replace("    cooldown_s: 45\n", "    cooldown_s: 45\n    cooldown_s: 5\n", 1)
    text += "version: 2\n"
    at = _line(bundled, "    cooldown_s: 45")
    msg = _error(text)
    assert f"duplicate key 'cooldown_s' (line {at + 1}; first at line {at})" in msg
    assert f"first at line {_line(bundled, 'version: 1')})" in msg
    assert msg.count("duplicate key") == 2


def test_a_merge_key_is_not_a_duplicate() -> None:
    # `<<: *anchor` then the cue's own keys is how YAML overrides a shared block on purpose.
    text = DEFAULT_PLAYBOOK.read_text().replace("\n  frustration:\n", "\n  frustration: &f\n", 1)
    text = text.replace("\n  confusion:\n", "\n  confusion:\n    <<: *f\n", 1)
    pb = parse_playbook(text)
    assert pb.cues["confusion"].title == load_playbook().cues["confusion"].title
    assert pb.cues["confusion"].voice_trigger == pb.cues["frustration"].voice_trigger


def test_the_one_step_confirmation_form_still_loads() -> None:
    """Session 33's `confirm_within`/`confirm_at` is one step of `confirm`: a playbook (a
    ConfigMap) written for it still loads; both forms at once are refused."""
    data = _bundled()
    meaning = data["cues"]["crisis"]["meaning"]
    del meaning["confirm"]
    meaning.update({"confirm_within": 0.03, "confirm_at": 0.3})
    pb = parse_playbook(yaml.safe_dump(data))
    assert pb.cues["crisis"].meaning is not None
    assert [(c.within, c.at) for c in pb.cues["crisis"].meaning.confirm] == [(0.03, 0.3)]
    meaning["confirm"] = [{"within": 0.07, "at": 0.15}]
    assert "not both" in _error(yaml.safe_dump(data))
    del meaning["confirm_within"], meaning["confirm_at"]
    meaning["confirm"] = [{"within": 0, "at": 0.15}]
    assert "cues.crisis.meaning.confirm.0.within" in _error(yaml.safe_dump(data))


def test_every_standard_cue_must_be_present() -> None:
    # A typo'd id (`confusoin`) silently removed confusion; an operator turns a cue off instead.
    data = _bundled()
    data["cues"]["confusoin"] = data["cues"].pop("confusion")
    msg = _error(yaml.safe_dump(data))
    assert "standard cue 'confusion' is missing" in msg and "enabled: false" in msg
    assert "is 'confusoin' a misspelling of it?" in msg  # the likely culprit, named
    data = _bundled()
    data["cues"]["confusion"]["enabled"] = False  # the way to turn it off
    data["cues"]["billing_dispute"] = data["cues"]["cost_anxiety"]  # extra cue ids are fine
    assert not parse_playbook(yaml.safe_dump(data)).cues["confusion"].enabled


@pytest.mark.parametrize(
    ("edit", "where", "says"),
    [
        (
            lambda c: c.pop("escalate"),
            "cues.crisis.escalate.urgency (line",
            "missing: must be 'critical'",
        ),
        (
            lambda c: c.update(escalate={"reason": "crisis_indicators", "urgency": "low"}),
            "cues.crisis.escalate.urgency (line",
            "must be 'critical', not 'low'",
        ),
        (
            lambda c: c.update(escalate={"reason": "complex_inquiry", "urgency": "critical"}),
            "cues.crisis.escalate.reason (line",
            "must be 'crisis_indicators', not 'complex_inquiry'",
        ),
        (lambda c: c.update(enabled=False), "cues.crisis.enabled (line", "must be True"),
        (lambda c: c.update(severity="normal"), "cues.crisis.severity (line", "'critical'"),
        (lambda c: c.pop("severity"), "cues.crisis.severity (line", "not 'normal'"),
    ],
)
def test_crisis_handling_cannot_be_turned_off_or_downgraded(
    edit: Callable[[dict[str, Any]], object], where: str, says: str
) -> None:
    # A reloaded edit like these left a suicidal caller with a low complex_inquiry alert.
    data = _bundled()
    edit(data["cues"]["crisis"])
    msg = _error(yaml.safe_dump(data))
    assert where in msg and says in msg and "safety floor" in msg


def test_crisis_must_exist() -> None:
    data = _bundled()
    del data["cues"]["crisis"]
    assert "'crisis' is missing" in _error(yaml.safe_dump(data))


def test_escalation_request_keeps_its_user_request_escalation() -> None:
    data = _bundled()
    del data["cues"]["escalation_request"]["escalate"]
    msg = _error(yaml.safe_dump(data))
    assert "cues.escalation_request.escalate.reason (line" in msg and "'user_request'" in msg
    data = _bundled()
    data["cues"]["escalation_request"]["escalate"]["reason"] = "complex_inquiry"
    msg = _error(yaml.safe_dump(data))
    assert "cues.escalation_request.escalate.reason" in msg and "'user_request'" in msg


@pytest.mark.parametrize("boost", [7.0, -3.0, float("nan"), float("inf")])
def test_emotion_boost_is_bounded_and_finite(boost: float) -> None:
    data = _bundled()
    data["cues"]["frustration"]["emotion_boost"] = {"frustrated": boost}
    assert "cues.frustration.emotion_boost.frustrated (line" in _error(yaml.safe_dump(data))


def test_no_setting_may_be_nan_or_infinite() -> None:
    data = _bundled()
    data["cues"]["crisis"]["context"] = {"within_s": float("inf")}
    data["escalation"]["intense_arousal"] = float("nan")
    msg = _error(yaml.safe_dump(data))
    assert "cues.crisis.context.within_s" in msg and "escalation.intense_arousal" in msg


def test_numbers_in_exponent_form_are_numbers() -> None:
    # PyYAML (YAML 1.1) read `6e1` and `1.5e1` as strings: "Input should be a valid number".
    text = DEFAULT_PLAYBOOK.read_text()
    edited = text.replace("cooldown_s: 60\n", "cooldown_s: 6e1\n", 1)
    edited = edited.replace("params: {history_days: 7}", "params: {history_days: 1.5e1}", 1)
    assert edited.count("6e1") == 1 and "1.5e1" in edited
    playbook = parse_playbook(edited)
    assert 60.0 in [c.cooldown_s for c in playbook.cues.values()]
    assert playbook.cues["repeat_contact"].params["history_days"] == 15.0
    huge = text.replace("params: {history_days: 7}", "params: {history_days: 1e300}", 1)
    assert "must be above 0 and at most 365, not 1e+300" in _error(huge)


def test_integers_are_strict() -> None:
    # `priority: true` was read as priority 1.
    data = _bundled()
    data["cues"]["urgency"]["priority"] = True
    data["cues"]["urgency"]["min_words"] = 2.5
    msg = _error(yaml.safe_dump(data))
    assert "cues.urgency.priority (line" in msg and "cues.urgency.min_words" in msg


@pytest.mark.parametrize(
    ("cue", "params", "says"),
    [
        ("dead_air", {"silence_s": -8.0, "min_call_s": 5.0}, "cues.dead_air.params.silence_s"),
        ("dead_air", {"silence_s": 8.0, "bogus": 1.0}, "unknown param 'bogus'"),
        ("overtalk", {"overlap_s": 0.0}, "cues.overtalk.params.overlap_s"),
        ("talk_ratio", {"agent_share": 1.5}, "cues.talk_ratio.params.agent_share"),
        ("agent_pace_fast", {"syllables_per_s": float("nan")}, "finite number"),
        ("repeat_contact", {"history_days": -7.0}, "cues.repeat_contact.params.history_days"),
        ("confusion", {"history_days": 7.0}, "cues.confusion.params (line"),
    ],
)
def test_params_are_checked_per_detector(cue: str, params: dict[str, float], says: str) -> None:
    data = _bundled()
    data["cues"][cue]["params"] = params
    assert says in _error(yaml.safe_dump(data))


def test_params_that_are_off_at_zero_and_the_bundled_ones_load() -> None:
    data = _bundled()
    data["cues"]["agent_pace_fast"]["params"]["vs_customer"] = 0.0  # off: pace alone
    data["cues"]["dead_air"]["params"] = {}  # the detector's defaults
    pb = parse_playbook(yaml.safe_dump(data))
    assert pb.cues["agent_pace_fast"].params["vs_customer"] == 0.0


def test_a_standard_cue_keeps_its_kind_and_detector() -> None:
    data = _bundled()
    data["cues"]["dead_air"]["detector"] = "overtalk"
    msg = _error(yaml.safe_dump(data))
    assert "cues.dead_air.detector (line" in msg and "'dead_air'" in msg
    data = _bundled()
    data["cues"]["frustration"] = data["cues"]["overtalk"]
    msg = _error(yaml.safe_dump(data))
    assert "cues.frustration.kind (line" in msg and "language cue" in msg


def test_blank_examples_moves_and_background_are_refused() -> None:
    data = _bundled()
    data["background"].append("   ")
    data["agent_moves"]["apology"].append("")
    data["cues"]["confusion"]["negatives"].append("\u200b")  # invisible: nothing to match
    msg = _error(yaml.safe_dump(data))
    lists = (
        data["background"],
        data["agent_moves"]["apology"],
        data["cues"]["confusion"]["negatives"],
    )
    background, apology, negative = (len(x) - 1 for x in lists)  # each list's new last item
    assert f"background.{background} (line" in msg
    assert f"agent_moves.apology.{apology} (line" in msg
    assert f"cues.confusion.negatives.{negative} (line" in msg and "blank phrase" in msg


def test_a_sentence_cannot_be_both_positive_and_negative() -> None:
    data = _bundled()
    cue = data["cues"]["churn_risk"]
    cue["negatives"].append(" " + cue["positives"][0].upper())
    msg = _error(yaml.safe_dump(data))
    assert "cues.churn_risk (line" in msg and "both a positive and a negative" in msg


@pytest.mark.parametrize("party", ["agent", "call"])
def test_a_language_cue_reads_the_customer(party: str) -> None:
    # The engine reads language cues on customer turns only: an agent-side one never fired,
    # and a crisis cue moved to the agent's side would silently stop paging anyone.
    data = _bundled()
    data["cues"]["crisis"]["party"] = party
    msg = _error(yaml.safe_dump(data))
    assert "cues.crisis (line" in msg and "agent-side language cues are not supported" in msg


def _library(path: Path) -> PlaybookLibrary:
    def embed(texts):  # type: ignore[no-untyped-def]
        import numpy as np

        v = np.random.default_rng(len(texts)).normal(size=(len(texts), 8)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    return PlaybookLibrary(path, embed=embed)


def test_fixing_a_refused_edit_clears_the_error(tmp_path: Path) -> None:
    # The operator undoes a refused edit: the file is again the version in force, which must
    # be noticed (and the refusal forgotten) although no new version comes in.
    path = tmp_path / "playbook.yaml"
    path.write_text(DEFAULT_PLAYBOOK.read_text())
    lib = _library(path)
    good = lib.version
    path.write_text(DEFAULT_PLAYBOOK.read_text().replace("priority: 2", "priority: 9", 1))
    assert lib.changed() and not lib.reload() and lib.last_error and lib.refused_now()

    path.write_text(DEFAULT_PLAYBOOK.read_text())
    assert lib.changed()  # the watcher must look again
    assert not lib.reload()  # nothing new to swap in...
    assert lib.last_error is None and not lib.refused_now()  # ...but the refusal is over
    assert lib.version == good and not lib.changed()


def test_an_unreadable_file_is_a_refusal(tmp_path: Path) -> None:
    path = tmp_path / "playbook.yaml"
    path.write_text(DEFAULT_PLAYBOOK.read_text())
    lib = _library(path)
    path.unlink()
    assert not lib.reload() and lib.last_error and "cannot read" in lib.last_error
    assert lib.refused_now()
    path.write_bytes(b"version: 1\ncues:\n  \xff\xfe: {}\n")  # not UTF-8
    assert not lib.reload() and lib.last_error and "not UTF-8" in lib.last_error
    assert lib.refused_now()


def test_an_edit_read_half_written_is_loaded_once_the_write_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An editor saving in place: the poll reads the file half-written and refuses it, and
    the write ends before the refusal is noted. The refusal was noted against the file read
    again (the whole, good edit), so that edit was taken for the refused one and never
    loaded until the next edit."""
    from coach.cues import library as library_module

    path = tmp_path / "playbook.yaml"
    good = DEFAULT_PLAYBOOK.read_text()
    path.write_text(good)
    lib = PlaybookLibrary(path, embed=_unit_embed)
    edited = good.replace("cooldown_s: 45", "cooldown_s: 44", 1)
    path.write_text(edited[: len(edited) // 2])  # the editor is halfway through its write
    read = library_module.read_playbook_file

    def read_then_the_write_ends(p: Path) -> bytes:
        raw = read(p)
        path.write_text(edited)
        return raw

    monkeypatch.setattr(library_module, "read_playbook_file", read_then_the_write_ends)
    assert not lib.reload() and lib.last_error
    monkeypatch.setattr(library_module, "read_playbook_file", read)
    assert lib.changed() and lib.reload()
    assert lib.current.playbook.cues["frustration"].cooldown_s == 44 and not lib.last_error


@pytest.mark.parametrize(
    ("key", "read_as"), [("yes", "true or false"), ("~", "null"), ("12", "a number")]
)
def test_a_cue_id_yaml_reads_as_no_word_names_its_line(key: str, read_as: str) -> None:
    """An outside audit: `yes:` as a cue id was reported as "cues.1.[key] (line 36)", the
    line of `cues:`, not of the cue."""
    text = DEFAULT_PLAYBOOK.read_text(encoding="utf-8").replace(
        "\n  dead_air:\n", f"\n  {key}:\n    title: Some cue\n  dead_air:\n", 1
    )
    line = text.splitlines().index(f"  {key}:") + 1
    with pytest.raises(
        PlaybookError, match=rf"\(line {line}\): YAML reads the cue id .* as {read_as}"
    ):
        parse_playbook(text)
