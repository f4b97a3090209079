"""Tests for audio.endpoint: the endpointing state machine driven by synthetic VAD output.

Every test feeds 32 ms windows (what Silero produces at 16 kHz) with chosen probabilities
and checks the exact boundaries and times that come out.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audio.endpoint import Boundary, EndpointConfig, Endpointer, SpeechEnd, SpeechStart

W = 0.032  # window length in seconds
SPEECH, SILENCE, MAYBE = 0.9, 0.05, 0.4  # MAYBE: between neg_threshold and threshold


def t(i: int) -> float:
    return round(i * W, 6)


def feed(ep: Endpointer, probs: Iterable[float], start: int = 0) -> list[tuple[int, Boundary]]:
    """Push windows start, start+1, ...; return (window index, boundary) for every event."""
    out: list[tuple[int, Boundary]] = []
    for i, p in enumerate(probs, start):
        out.extend((i, b) for b in ep.push(t(i), t(i + 1), p))
    return out


def events(ep: Endpointer, probs: Iterable[float]) -> list[Boundary]:
    return [b for _, b in feed(ep, probs)]


def test_defaults() -> None:
    cfg = EndpointConfig()
    assert cfg.neg_threshold < cfg.threshold
    assert cfg.soft_max_s < cfg.max_utterance_s


def test_start_after_min_speech_with_time_of_first_window() -> None:
    ep = Endpointer()  # min_speech_ms=120: the 4th window (128 ms) confirms
    out = feed(ep, [SILENCE] * 5 + [SPEECH] * 6)
    assert out == [(8, SpeechStart(t(5)))]
    assert ep.in_speech
    assert ep.utterance_start_s == pytest.approx(t(5))


def test_no_state_before_confirmation() -> None:
    ep = Endpointer()
    assert feed(ep, [SPEECH] * 3) == []
    assert not ep.in_speech and ep.utterance_start_s is None


@pytest.mark.parametrize("n", [1, 2, 3])
def test_short_blip_is_ignored(n: int) -> None:
    ep = Endpointer()
    out = events(ep, ([SILENCE] * 3 + [SPEECH] * n + [SILENCE] * 12) * 3)
    assert out == []
    assert ep.flush() == []


def test_blip_then_real_speech_starts_at_the_real_speech() -> None:
    ep = Endpointer()
    out = feed(ep, [SPEECH] * 2 + [SILENCE] + [SPEECH] * 4)
    assert out == [(6, SpeechStart(t(3)))]


def test_candidate_is_kept_alive_by_hysteresis() -> None:
    ep = Endpointer()
    # Onset needs >= threshold, but a candidate continues on >= neg_threshold.
    out = feed(ep, [SPEECH, MAYBE, MAYBE, MAYBE])
    assert out == [(3, SpeechStart(t(0)))]


def test_maybe_alone_never_starts_speech() -> None:
    ep = Endpointer()
    assert events(ep, [MAYBE] * 100) == []


def test_end_after_hangover_with_t_end_at_last_speech_window() -> None:
    ep = Endpointer()  # hangover 300 ms: the 10th silent window (320 ms) closes
    out = feed(ep, [SILENCE] * 2 + [SPEECH] * 20 + [SILENCE] * 15)
    assert out == [
        (5, SpeechStart(t(2))),
        (31, SpeechEnd(t(2), t(22), "silence")),
    ]
    assert not ep.in_speech and ep.utterance_start_s is None


def test_pause_shorter_than_hangover_keeps_one_utterance() -> None:
    ep = Endpointer()
    probs = [SPEECH] * 10 + [SILENCE] * 9 + [SPEECH] * 10 + [SILENCE] * 10
    out = feed(ep, probs)
    assert out == [(3, SpeechStart(t(0))), (38, SpeechEnd(t(0), t(29), "silence"))]


def test_hysteresis_maybe_windows_extend_speech() -> None:
    ep = Endpointer()
    probs = [SPEECH] * 10 + [MAYBE] * 20 + [SILENCE] * 10
    out = feed(ep, probs)
    assert out[-1] == (39, SpeechEnd(t(0), t(30), "silence"))


def test_probability_at_exact_thresholds() -> None:
    cfg = EndpointConfig()
    ep = Endpointer(cfg)
    # threshold is inclusive for onset; neg_threshold is inclusive for "still speech".
    out = feed(ep, [cfg.threshold] * 4 + [cfg.neg_threshold] * 5 + [0.0] * 10)
    assert out == [(3, SpeechStart(t(0))), (18, SpeechEnd(t(0), t(9), "silence"))]


def test_limits_are_inclusive() -> None:
    """Windows of 1/32 s make every limit an exact multiple, so >= versus > shows."""
    w = 1 / 32
    cfg = EndpointConfig(
        min_speech_ms=125, hangover_ms=250, soft_max_s=1.0, soft_pause_ms=125, max_utterance_s=2.0
    )

    def run(probs: list[float]) -> list[tuple[int, Boundary]]:
        ep = Endpointer(cfg)
        out: list[tuple[int, Boundary]] = []
        for i, p in enumerate(probs):
            out.extend((i, b) for b in ep.push(i * w, (i + 1) * w, p))
        return out

    # Start on the 4th window (exactly 125 ms); end on the 8th silent one (exactly 250 ms).
    assert run([SPEECH] * 10 + [SILENCE] * 8) == [
        (3, SpeechStart(0.0)),
        (17, SpeechEnd(0.0, 10 * w, "silence")),
    ]
    assert run([SPEECH] * 10 + [SILENCE] * 7)[1:] == []
    # Past soft_max (exactly 1.0 s of speech) a pause of exactly 125 ms cuts.
    assert run([SPEECH] * 32 + [SILENCE] * 4)[1:] == [(35, SpeechEnd(0.0, 1.0, "pause_cut"))]
    assert run([SPEECH] * 31 + [SILENCE] * 4)[1:] == []
    # The hard cut lands when the utterance reaches exactly 2.0 s.
    assert run([SPEECH] * 64)[1:] == [
        (63, SpeechEnd(0.0, 2.0, "max_length")),
        (63, SpeechStart(2.0)),
    ]


def test_soft_pause_cut_after_soft_max() -> None:
    cfg = EndpointConfig(soft_max_s=2.0, soft_pause_ms=130, hangover_ms=300)
    ep = Endpointer(cfg)
    # Before soft_max a 160 ms pause does nothing; after it, the pause cuts.
    early = [SPEECH] * 30 + [SILENCE] * 5
    late = [SPEECH] * 40 + [SILENCE] * 5 + [SPEECH] * 10 + [SILENCE] * 12
    out = feed(ep, early + late)
    # Speech from window 0; last speech before the late pause ends at window 75 (t=2.4 s).
    assert out[0] == (3, SpeechStart(t(0)))
    assert out[1] == (79, SpeechEnd(t(0), t(75), "pause_cut"))  # 5th silent window: 160 ms
    assert out[2] == (83, SpeechStart(t(80)))
    assert out[3] == (99, SpeechEnd(t(80), t(90), "silence"))
    assert len(out) == 4


def test_soft_pause_of_four_windows_is_not_enough() -> None:
    cfg = EndpointConfig(soft_max_s=1.0, soft_pause_ms=130)
    ep = Endpointer(cfg)
    out = events(ep, [SPEECH] * 40 + [SILENCE] * 4 + [SPEECH] * 4)
    assert out == [SpeechStart(t(0))]


def test_hard_max_length_cut_emits_end_then_start() -> None:
    cfg = EndpointConfig(max_utterance_s=3.0, soft_max_s=2.0)
    ep = Endpointer(cfg)
    out = feed(ep, [SPEECH] * 200)
    # 3.0 s / 32 ms -> the cut lands at the end of window 93 (t=3.008).
    assert out[0] == (3, SpeechStart(t(0)))
    assert out[1] == (93, SpeechEnd(t(0), t(94), "max_length"))
    assert out[2] == (93, SpeechStart(t(94)))
    assert out[3] == (187, SpeechEnd(t(94), t(188), "max_length"))
    assert out[4] == (187, SpeechStart(t(188)))
    assert len(out) == 5
    assert ep.in_speech and ep.utterance_start_s == pytest.approx(t(188))
    # The utterance after a cut ends normally, from where it was cut.
    tail = feed(ep, [SILENCE] * 10, start=200)
    assert tail == [(209, SpeechEnd(t(188), t(200), "silence"))]


def test_max_length_cut_inside_a_short_pause_does_not_open_an_empty_utterance() -> None:
    """The cut can fall in a pause shorter than soft_pause: nobody is speaking at that moment,
    so no new utterance may start there (it would contain no speech at all)."""
    cfg = EndpointConfig(max_utterance_s=3.0, soft_max_s=2.0, soft_pause_ms=130)
    ep = Endpointer(cfg)
    probs = [SPEECH] * 92 + [SILENCE] * 12
    out = feed(ep, probs)
    assert out[0] == (3, SpeechStart(t(0)))
    assert out[1] == (93, SpeechEnd(t(0), t(92), "max_length"))
    assert len(out) == 2, out
    assert not ep.in_speech
    assert ep.flush() == []
    # The next speech starts a fresh utterance the usual way.
    assert feed(ep, [SPEECH] * 4, start=104) == [(107, SpeechStart(t(104)))]


def test_flush_closes_an_open_utterance_at_its_last_speech() -> None:
    ep = Endpointer()
    feed(ep, [SPEECH] * 10 + [SILENCE] * 3)
    assert ep.flush() == [SpeechEnd(t(0), t(10), "flush")]
    assert not ep.in_speech
    assert ep.flush() == []


def test_flush_drops_an_unconfirmed_candidate() -> None:
    ep = Endpointer()
    feed(ep, [SPEECH] * 2)
    assert ep.flush() == []
    # ... and the candidate is really gone: two more windows are not a 4-window burst.
    assert events(ep, [SPEECH] * 2) == []


def test_min_speech_zero_starts_on_first_window() -> None:
    ep = Endpointer(EndpointConfig(min_speech_ms=0))
    assert feed(ep, [SILENCE, SPEECH]) == [(1, SpeechStart(t(1)))]


def test_time_offset_and_irregular_windows() -> None:
    """Only the given times matter, not a window count: a stream may start mid-call."""
    ep = Endpointer()
    base = 1234.5
    out: list[Boundary] = []
    for i in range(4):
        out += ep.push(base + i * 0.05, base + (i + 1) * 0.05, SPEECH)
    assert out == [SpeechStart(base)]  # 150 ms >= 120 ms after 3 windows of 50 ms
    end = ep.push(base + 0.2, base + 0.55, SILENCE)  # one long window of 350 ms silence
    assert end == [SpeechEnd(base, base + 0.2, "silence")]


# -- properties ------------------------------------------------------------------------------

probs_strategy = st.lists(
    st.one_of(
        st.floats(0.0, 1.0),
        st.sampled_from([0.0, 0.34, 0.35, 0.5, 1.0]),
    ),
    max_size=1200,
)
runs_strategy = st.lists(
    st.tuples(st.sampled_from([SPEECH, SILENCE, MAYBE, 0.2, 0.6]), st.integers(1, 250)),
    max_size=40,
).map(lambda runs: [p for p, n in runs for _ in range(n)])
# Long speech with short gaps: hard cuts then often land inside a pause.
choppy_strategy = st.lists(st.tuples(st.integers(10, 120), st.integers(1, 5)), max_size=15).map(
    lambda runs: [p for s, g in runs for p in [SPEECH] * s + [SILENCE] * g]
)
any_probs = st.one_of(probs_strategy, runs_strategy, choppy_strategy)

small_cfg = st.builds(
    EndpointConfig,
    min_speech_ms=st.sampled_from([0, 64, 120, 250]),
    hangover_ms=st.sampled_from([100, 300, 600]),
    soft_max_s=st.sampled_from([1.0, 2.0, 7.0]),
    soft_pause_ms=st.sampled_from([50, 130]),
    max_utterance_s=st.sampled_from([2.5, 4.0, 15.0]),
)


@settings(max_examples=300, deadline=None)
@given(any_probs, small_cfg)
def test_boundaries_alternate_and_respect_limits(probs: list[float], cfg: EndpointConfig) -> None:
    ep = Endpointer(cfg)
    out = feed(ep, probs) + [(len(probs), b) for b in ep.flush()]
    open_start: float | None = None
    opened_by_cut = False
    cut_window: int | None = None  # window of the last max_length end
    for window, b in out:
        if isinstance(b, SpeechStart):
            assert open_start is None, "two starts without an end"
            assert 0 <= b.t_start_s <= t(len(probs))
            k = round(b.t_start_s / W)
            opened_by_cut = window == cut_window
            if opened_by_cut:
                # A hard cut re-opens only while speaking: the window just cut was speech.
                assert k == window + 1 and probs[window] >= cfg.neg_threshold
            else:
                assert probs[k] >= cfg.threshold  # an onset starts on a speech window
            open_start = b.t_start_s
        else:
            assert isinstance(b, SpeechEnd)
            assert open_start is not None, "end without a start"
            assert b.t_start_s == open_start
            assert b.t_end_s >= b.t_start_s
            assert b.t_end_s - b.t_start_s <= cfg.max_utterance_s + W + 1e-9
            if not opened_by_cut:
                # Opened by an onset: it holds at least min_speech of (candidate) speech.
                assert (b.t_end_s - b.t_start_s) * 1000 >= cfg.min_speech_ms - 1e-6
            cut_window = window if b.reason == "max_length" else None
            open_start = None
    assert open_start is None, "flush must close every utterance"
    assert not ep.in_speech


@settings(max_examples=200, deadline=None)
@given(any_probs)
def test_utterances_do_not_overlap_and_cover_confirmed_speech(probs: list[float]) -> None:
    cfg = EndpointConfig()
    ep = Endpointer(cfg)
    out = events(ep, probs) + ep.flush()
    ends = [b for b in out if isinstance(b, SpeechEnd)]
    for prev, nxt in zip(ends, ends[1:], strict=False):
        assert nxt.t_start_s >= prev.t_end_s
    for e in ends:
        # An utterance always ends on a window that was speech (>= neg_threshold).
        i = round(e.t_end_s / W) - 1
        assert probs[i] >= cfg.neg_threshold
    # Every run of >= 4 windows at or above threshold lies inside some utterance.
    run = 0
    for i, p in enumerate(probs):
        run = run + 1 if p >= cfg.threshold else 0
        if run >= 4:
            assert any(e.t_start_s - 1e-9 <= t(i) and t(i + 1) <= e.t_end_s + 1e-9 for e in ends), (
                f"confirmed speech at window {i} is in no utterance"
            )
