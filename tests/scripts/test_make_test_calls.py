"""Tests for the espeak-ng test-call synthesizer: layout, ground truth, formats, determinism."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import soundfile as sf
from hypothesis import given
from hypothesis import strategies as st

from scripts.make_test_calls import (
    BUILTIN_CALLS,
    CUE_IDS,
    DEMO_CALL,
    CallScript,
    Encoding,
    Turn,
    load_call_file,
    main,
    parse_call,
    parse_turn_line,
    parse_turns,
    render_call,
)

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")

# Overlap of 0.4 s: the customer's thank-you starts before the agent has finished.
SHORT = CallScript(
    "short",
    (
        Turn("customer", "Hello, I need help with my bill."),
        Turn("agent", "Sure, I can help with that today.", gap_before_s=0.5),
        Turn("customer", "Thank you so much.", overlap_s=0.4),
    ),
)
FRAME_S = 0.01
THRESHOLD = 0.01  # the synthesizer's trim level; mu-law/PCM keep silence far below it
TOL_S = 0.05


def _load(wav: Path, truth: Path) -> tuple[npt.NDArray[np.float64], int, dict[str, Any]]:
    audio, sr = sf.read(wav, dtype="float64", always_2d=True)
    return audio, int(sr), json.loads(truth.read_text())


def _active(x: npt.NDArray[np.float64], sr: int, t0: float, t1: float) -> bool:
    """Whether any 10 ms frame in [t0, t1) has speech-level energy."""
    seg = x[max(0, round(t0 * sr)) : max(0, round(t1 * sr))]
    frame = round(FRAME_S * sr)
    n = len(seg) // frame
    if n == 0:
        return False
    rms = np.sqrt(np.mean(seg[: n * frame].reshape(n, frame) ** 2, axis=1))
    return bool(np.any(rms > THRESHOLD))


@pytest.fixture(scope="module")
def stereo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return render_call(SHORT, tmp_path_factory.mktemp("stereo"), encoding="pcm16")


def test_stereo_layout_and_truth_header(stereo: tuple[Path, Path]) -> None:
    audio, sr, truth = _load(*stereo)
    assert audio.shape[1] == 2 and sr == 8000
    assert truth["call_id"] == "short" and truth["encoding"] == "pcm16"
    assert truth["channels"] == 2
    assert truth["duration_s"] == pytest.approx(len(audio) / sr, abs=0.001)
    assert [t["channel"] for t in truth["turns"]] == [0, 1, 0]
    assert [t["speaker"] for t in truth["turns"]] == ["customer", "agent", "customer"]
    assert truth["turns"][0]["t_start"] == pytest.approx(0.5, abs=0.001)
    assert truth["duration_s"] == pytest.approx(truth["turns"][-1]["t_end"] + 1.0, abs=0.002)


def test_truth_times_ordered_and_match_energy(stereo: tuple[Path, Path]) -> None:
    audio, sr, truth = _load(*stereo)
    turns = truth["turns"]
    for t in turns:
        assert t["t_start"] < t["t_end"]
        x = audio[:, t["channel"]]
        # Speech right inside both edges, silence just outside them (same channel).
        assert _active(x, sr, t["t_start"], t["t_start"] + TOL_S)
        assert _active(x, sr, t["t_end"] - TOL_S, t["t_end"])
        assert not _active(x, sr, t["t_start"] - 0.3, t["t_start"] - TOL_S)
        assert not _active(x, sr, t["t_end"] + TOL_S, t["t_end"] + 0.3)
    starts = [t["t_start"] for t in turns]
    assert starts == sorted(starts)
    assert turns[1]["t_start"] - turns[0]["t_end"] == pytest.approx(0.5, abs=0.002)


def test_channel_separation(stereo: tuple[Path, Path]) -> None:
    audio, sr, truth = _load(*stereo)
    for t in truth["turns"]:
        own, other = t["channel"], 1 - t["channel"]
        seg = audio[round(t["t_start"] * sr) : round(t["t_end"] * sr)]
        others = [o for o in truth["turns"] if o["channel"] == other]
        # Only judge the other channel where the other party isn't legitimately talking.
        quiet = np.ones(len(seg), dtype=bool)
        for o in others:
            a = max(0, round((o["t_start"] - t["t_start"]) * sr))
            b = max(0, round((o["t_end"] - t["t_start"]) * sr))
            quiet[a:b] = False
        assert np.sqrt(np.mean(seg[:, own] ** 2)) > 0.03
        assert quiet.any()
        assert np.max(np.abs(seg[quiet, other])) < 1e-3


def test_overlap_turn_really_overlaps(stereo: tuple[Path, Path]) -> None:
    audio, sr, truth = _load(*stereo)
    agent, thanks = truth["turns"][1], truth["turns"][2]
    assert thanks["t_start"] == pytest.approx(agent["t_end"] - 0.4, abs=0.002)
    mid = (thanks["t_start"] + agent["t_end"]) / 2
    assert _active(audio[:, 0], sr, mid - 0.1, mid + 0.1)
    assert _active(audio[:, 1], sr, mid - 0.1, mid + 0.1)


def test_mulaw_8k_reads_back_as_ulaw(tmp_path: Path) -> None:
    wav, truth_path = render_call(SHORT, tmp_path, sample_rate=8000, encoding="mulaw")
    info = sf.info(wav)
    assert (info.format, info.subtype, info.samplerate, info.channels) == ("WAV", "ULAW", 8000, 2)
    audio, sr, truth = _load(wav, truth_path)
    assert truth["encoding"] == "mulaw"
    first = truth["turns"][0]
    assert _active(audio[:, 0], sr, first["t_start"], first["t_start"] + TOL_S)


def test_pcm16_16k_mono_mix_and_customer_only(tmp_path: Path) -> None:
    kw: dict[str, Any] = {"sample_rate": 16000, "encoding": "pcm16", "channels": 1}
    wav, truth_path = render_call(SHORT, tmp_path, name="mix", **kw)
    info = sf.info(wav)
    assert (info.subtype, info.samplerate, info.channels) == ("PCM_16", 16000, 1)
    audio, sr, truth = _load(wav, truth_path)
    assert truth["channels"] == 1 and len(truth["turns"]) == 3
    agent = truth["turns"][1]
    assert all(t["channel"] == 0 for t in truth["turns"])
    assert _active(audio[:, 0], sr, agent["t_start"], agent["t_start"] + TOL_S)

    wav, truth_path = render_call(SHORT, tmp_path, name="cust", mono_party="customer", **kw)
    audio, sr, truth = _load(wav, truth_path)
    assert [t["speaker"] for t in truth["turns"]] == ["customer", "customer"]
    # The agent's turn before the customer's overlapping reply is silent in customer-only mono.
    assert not _active(audio[:, 0], sr, agent["t_start"], truth["turns"][1]["t_start"])


def test_rendering_is_byte_identical(tmp_path: Path) -> None:
    encodings: tuple[Encoding, ...] = ("mulaw", "mulaw", "pcm16", "pcm16")
    outs = [
        render_call(SHORT, tmp_path / str(i), encoding=enc, noise_dbfs=-55.0)
        for i, enc in enumerate(encodings)
    ]
    for first, second in (outs[0:2], outs[2:4]):
        assert first[0].read_bytes() == second[0].read_bytes()
        assert first[1].read_bytes() == second[1].read_bytes()
    audio, _, _ = _load(*outs[2])
    assert np.max(np.abs(audio[:100])) > 0  # noise really fills the leading silence


def test_text_starting_with_dash_is_spoken(tmp_path: Path) -> None:
    script = CallScript("dash", (Turn("agent", "-- one moment please."),))
    _, truth_path = render_call(script, tmp_path)
    turn = json.loads(truth_path.read_text())["turns"][0]
    assert turn["t_end"] - turn["t_start"] > 0.5


def test_invalid_inputs_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="same speaker"):
        CallScript("x", (Turn("agent", "Hi."), Turn("agent", "Hello.", overlap_s=0.5)))
    with pytest.raises(ValueError, match="nothing to overlap"):
        CallScript("x", (Turn("agent", "Hi.", overlap_s=0.5),))
    with pytest.raises(ValueError, match="variant"):
        render_call(CallScript("x", (Turn("agent", "Hi.", voice="en-us+nosuch"),)), tmp_path)
    with pytest.raises(ValueError, match="channels"):
        render_call(SHORT, tmp_path, channels=3)


def test_parse_turns() -> None:
    turns = parse_turns("agent: One moment.\nagent [gap=9.0]: Thanks for\n  waiting.\n")
    assert turns == (
        Turn("agent", "One moment."),
        Turn("agent", "Thanks for waiting.", gap_before_s=9.0),
    )
    with pytest.raises(ValueError, match="bad script line"):
        parse_turns("narrator: hello")


def test_builtin_calls_cover_required_scenarios() -> None:
    assert len(BUILTIN_CALLS) >= 4 and DEMO_CALL in BUILTIN_CALLS
    turns = [t for c in BUILTIN_CALLS.values() for t in c.turns]
    assert any(t.overlap_s >= 0.8 for t in turns)
    assert any(t.gap_before_s >= 8.0 for t in turns)
    for call_id, call in BUILTIN_CALLS.items():
        assert call.call_id == call_id
        assert {t.speaker for t in call.turns} == {"customer", "agent"}


def test_cli_renders_selected_call(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path), "--calls", "travel_rebooking", "--encoding", "pcm16"]) == 0
    wav, truth_path = capsys.readouterr().out.strip().split("\t")
    truth = json.loads(Path(truth_path).read_text())
    assert sf.info(wav).channels == 2
    assert 30 <= truth["duration_s"] <= 70
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--calls", "nope"])


def test_parse_attributes_and_labels() -> None:
    turn = parse_turn_line(
        "customer [speed=220 pitch=75, amp=170 voice=en-us+m3] {frustration, churn_risk?}: No!"
    )
    assert turn == Turn(
        "customer",
        "No!",
        speed_wpm=220,
        pitch=75,
        amplitude=170,
        voice="en-us+m3",
        labels=("frustration",),
        optional_labels=("churn_risk",),
    )
    # Labels without attributes, attributes without labels, old single-attribute form.
    assert parse_turn_line("agent {dead_air}: Thanks for waiting.").labels == ("dead_air",)
    assert parse_turn_line("agent [overlap=2.5]: Sorry.").overlap_s == 2.5
    assert parse_turn_line("agent [gap=9.5,speed=280]: Hi.").gap_before_s == 9.5


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("customer {frustrated}: I'm annoyed.", "unknown cue id 'frustrated'.*I'm annoyed"),
        ("customer {urgency, urgency?}: Now.", "labelled twice"),
        ("customer [pitch=120]: Hi.", "bad value for 'pitch'"),
        ("customer [amp=-1]: Hi.", "bad value for 'amp'"),
        ("customer [speed=fast]: Hi.", "bad value for 'speed'"),
        ("customer [volume=3]: Hi.", "bad attribute 'volume=3'"),
        ("customer [gap=1 gap=2]: Hi.", "given twice"),
        ("agent [gap=1, overlap=2]: Hi.", "not both"),
        ("agent [voice=en us]: Hi.", "bad attribute"),
        ("narrator: Hi.", "bad script line"),
    ],
)
def test_bad_turn_lines_are_rejected_with_the_line(line: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_turn_line(line)


def test_turn_validates_labels() -> None:
    with pytest.raises(ValueError, match="unknown cue id"):
        Turn("customer", "Hi.", labels=("nope",))
    with pytest.raises(ValueError, match="twice"):
        Turn("customer", "Hi.", labels=("crisis",), optional_labels=("crisis",))


def test_parse_turns_skips_comments_and_blank_lines() -> None:
    turns = parse_turns(
        "# a comment\nagent: One.\n\n# another\ncustomer {confusion}: Two\n  three."
    )
    assert [t.text for t in turns] == ["One.", "Two three."]
    assert turns[1].labels == ("confusion",)


_attr_values = {
    "gap": st.floats(0, 30, allow_nan=False).map(lambda x: round(x, 2)),
    "speed": st.integers(80, 500),
    "pitch": st.integers(0, 99),
    "amp": st.integers(0, 200),
    "voice": st.sampled_from(["en-us", "en-gb+f3", "en-029", "en-gb-scotland+m4"]),
}


@given(
    speaker=st.sampled_from(["customer", "agent"]),
    attrs=st.fixed_dictionaries({}, optional=_attr_values),
    cues=st.lists(st.sampled_from(CUE_IDS), unique=True, max_size=4),
    optional_flags=st.lists(st.booleans(), min_size=4, max_size=4),
    sep=st.sampled_from([" ", ", ", ",", "  "]),
    text=st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1).filter(
        lambda t: t.strip() != ""
    ),
)
def test_turn_line_round_trip(
    speaker: str,
    attrs: dict[str, Any],
    cues: list[str],
    optional_flags: list[bool],
    sep: str,
    text: str,
) -> None:
    line = speaker
    if attrs:
        line += " [" + sep.join(f"{k}={v}" for k, v in attrs.items()) + "]"
    if cues:
        marked = [c + ("?" if opt else "") for c, opt in zip(cues, optional_flags, strict=False)]
        line += " {" + sep.join(marked) + "}"
    turn = parse_turn_line(f"{line}: {text}")
    assert turn.speaker == speaker and turn.text == text.strip()
    assert turn.gap_before_s == attrs.get("gap", 0.6)
    assert (turn.speed_wpm, turn.pitch) == (attrs.get("speed"), attrs.get("pitch"))
    assert (turn.amplitude, turn.voice) == (attrs.get("amp"), attrs.get("voice"))
    flags = dict(zip(cues, optional_flags, strict=False))
    assert turn.labels == tuple(c for c in cues if not flags[c])
    assert turn.optional_labels == tuple(c for c in cues if flags[c])


CALL_FILE = """# call_id: labeled_short
# split: tune
# domain: billing
# customer_voice: en-gb+m3
# agent_speed: 150
# customer_pitch: 30
# notes: a tiny labeled call
agent: Hello, how can I help?
customer [speed=210 pitch=80 amp=170] {frustration, churn_risk?}: This is the third
  bill in a row that is wrong.
agent [gap=9.5] {dead_air}: Thanks for waiting.
"""


def test_load_call_file_header_and_defaults(tmp_path: Path) -> None:
    path = tmp_path / "some_name.call"
    path.write_text(CALL_FILE)
    script, meta = load_call_file(path)
    assert script.call_id == "labeled_short"
    assert (script.customer_voice, script.agent_speed_wpm, script.customer_pitch) == (
        "en-gb+m3",
        150,
        30,
    )
    assert meta["split"] == "tune" and meta["notes"] == "a tiny labeled call"
    assert [t.labels for t in script.turns] == [(), ("frustration",), ("dead_air",)]
    path.write_text(CALL_FILE.replace("# call_id: labeled_short\n", ""))
    assert load_call_file(path)[0].call_id == "some_name"


@pytest.mark.parametrize(
    ("header", "match"),
    [
        ("# split: test\n", "split must be one of"),
        ("# custmer_voice: en-us\n", "unknown header key 'custmer_voice'"),
        ("# agent_speed: fast\n", "must be an integer"),
        ("# domain: a\n# domain: b\n", "given twice"),
    ],
)
def test_bad_headers_rejected(header: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_call(header + "agent: Hi.\n", default_call_id="x")


def test_comment_after_turns_is_not_a_header() -> None:
    script, meta = parse_call("agent: Hi.\n# anything: goes here\n", default_call_id="x")
    assert meta == {"call_id": "x"} and len(script.turns) == 1


def test_render_writes_labels_timing_and_meta(tmp_path: Path) -> None:
    script, meta = parse_call(CALL_FILE, default_call_id="x")
    _, truth_path = render_call(script, tmp_path, meta=meta)
    truth = json.loads(truth_path.read_text())
    assert truth["meta"]["domain"] == "billing"
    turns = truth["turns"]
    assert [t["cues"] for t in turns] == [[], ["frustration"], ["dead_air"]]
    assert [t["optional_cues"] for t in turns] == [[], ["churn_risk"], []]
    assert [t["gap_before_s"] for t in turns] == [0.6, 0.6, 9.5]
    assert turns[2]["t_start"] - turns[1]["t_end"] == pytest.approx(9.5, abs=0.002)
    assert (turns[1]["speed_wpm"], turns[1]["pitch"], turns[1]["amplitude"]) == (210, 80, 170)
    assert turns[1]["voice"] == "en-gb+m3" and turns[0]["speed_wpm"] == 150


def test_cli_renders_call_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.call"
    path.write_text(CALL_FILE)
    assert main([str(tmp_path / "out"), "--file", str(path)]) == 0
    wav, truth_path = capsys.readouterr().out.strip().split("\t")
    assert Path(wav).name == "labeled_short.wav"
    assert json.loads(Path(truth_path).read_text())["meta"]["split"] == "tune"


def test_without_espeak_ng_it_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`make run` installs no Debian packages, and the README's first script renders a call
    with this tool: a newcomer got a FileNotFoundError traceback (found by a README audit)."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "out"), "--calls", DEMO_CALL])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "espeak-ng" in err and "web/demo/demo-call.wav" in err
    assert not (tmp_path / "out").exists()
