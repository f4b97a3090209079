"""One party's pipeline on a real call: when it asks for partials, and when pace is reported."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from coach import events
from coach.messages import AudioChunk
from coach.pipeline import VAD_WINDOW_S, PartyPipeline
from coach.runtime import Runtime
from coach.settings import Settings
from models.asr import AsrRequest, AsrResult
from models.runtime import InferenceScheduler

FRAME_S = 0.02  # what telephony sends: 20 ms frames


def customer_audio(billing_call: tuple[Path, dict[str, Any]]) -> tuple[np.ndarray, int]:
    wav, _ = billing_call
    audio, rate = sf.read(str(wav), dtype="float32")
    return np.ascontiguousarray(audio[:, 0]), int(rate)


async def feed(
    pipe: PartyPipeline, pcm: np.ndarray, rate: int, seconds: float | None = None
) -> None:
    step = int(rate * FRAME_S)
    end = len(pcm) if seconds is None else min(len(pcm), int(seconds * rate))
    for i in range(0, end, step):
        await pipe.push(AudioChunk("c1", "customer", pcm[i : i + step], rate, i / rate))


async def test_no_partial_is_asked_for_once_the_party_pauses(
    runtime: Runtime, settings: Settings, billing_call: tuple[Path, dict[str, Any]]
) -> None:
    """Partials stop at the first non-speech VAD window, not after the final's padding: a
    partial started in a pause would hold an ASR worker just when the final needs it. With a
    partial every 0.1 s, the old rule (stop after 0.15 s of silence) asked for one in the
    pause of nearly every turn."""
    pcm, rate = customer_audio(billing_call)
    emitted: list[events.Event] = []

    async def emit(ev: events.Event) -> None:
        emitted.append(ev)

    pipe = PartyPipeline(
        call_id="c1",
        speaker="customer",
        runtime=runtime,
        settings=settings.model_copy(update={"partial_interval_s": 0.1}),
        emit=emit,
        inline=True,
    )
    await feed(pipe, pcm, rate, seconds=30.0)
    await pipe.finish()
    finals = {ev["utterance_id"]: ev for ev in emitted if ev["type"] == "transcript"}
    partials = [ev for ev in emitted if ev["type"] == "partial"]
    assert len(finals) >= 3 and len(partials) >= 3 * len(finals)
    for ev in partials:
        final = finals.get(ev["utterance_id"])
        if final is None:
            continue  # an utterance ASR found no words in
        # `t_end` of a partial is the audio it was asked for at; the last VAD window that
        # was speech ended at or before the final's end.
        assert ev["t_end"] < final["t_end"] + VAD_WINDOW_S + FRAME_S, (ev, final)


async def test_pace_is_reported_before_the_decode_ends(
    runtime: Runtime, settings: Settings, billing_call: tuple[Path, dict[str, Any]]
) -> None:
    """Pace needs only the audio: the pipeline reports it while the final is still decoding
    (an agent-pace cue does not wait for the words). Here the ASR cannot finish a final until
    pace has been reported; reporting pace after the decode would never get there."""
    pcm, rate = customer_audio(billing_call)
    paced = threading.Event()

    def run_batch(reqs: Sequence[AsrRequest]) -> list[AsrResult]:
        if any(r.words for r in reqs) and not paced.wait(timeout=5.0):
            raise TimeoutError("the final decode waited for pace in vain")
        return runtime.asr.decode_batch(reqs)

    gated: InferenceScheduler[AsrRequest, AsrResult] = InferenceScheduler(
        name="asr-gated", run_batch=run_batch, workers=2
    )
    loop = asyncio.get_running_loop()
    reported: list[tuple[float, float]] = []
    transcripts: list[events.Event] = []

    async def on_pace(speaker: str, t_start: float, t_end: float, pace: Any) -> None:
        reported.append((t_start, t_end))
        loop.call_soon_threadsafe(paced.set)

    async def emit(ev: events.Event) -> None:
        if ev["type"] == "transcript":
            transcripts.append(ev)

    original = runtime.asr_scheduler
    runtime.asr_scheduler = gated
    try:
        pipe = PartyPipeline(
            call_id="c1",
            speaker="customer",
            runtime=runtime,
            settings=settings,
            emit=emit,
            inline=False,
            on_pace=on_pace,
        )
        await feed(pipe, pcm, rate, seconds=12.0)
        await asyncio.wait_for(pipe.finish(), timeout=60.0)
    finally:
        runtime.asr_scheduler = original
        gated.close()
    assert reported and transcripts
    assert transcripts[0]["t_start"] == pytest.approx(reported[0][0])


def test_the_final_model_is_timed_on_the_bundled_demo_speech(runtime: Runtime) -> None:
    """At start-up the final model decodes real speech once, so the first finals of a
    process already know whether it fits COACH_ASR_FINAL_BUDGET_S on this machine."""
    from audio.types import PIPELINE_RATE
    from coach.runtime import calibration_speech
    from models.asr import DecodeTimes, TwoPassAsr

    speech = calibration_speech()
    assert speech is not None and len(speech) > 30 * PIPELINE_RATE
    frame = PIPELINE_RATE // 50
    assert np.sqrt(np.mean(speech[:frame] ** 2)) > 0.02  # it starts where the speech does
    asr = runtime.asr
    assert isinstance(asr, TwoPassAsr)
    saved, asr.final_times = asr.final_times, DecodeTimes()
    try:
        assert asr.final_times.predict(6.0) is None
        asr.calibrate(speech, lengths_s=(1.5, 4.0))
        expected = asr.final_times.predict(6.0)
        assert expected is not None and 0.0 < expected < 30.0
    finally:
        asr.final_times = saved
    assert calibration_speech(Path("/nonexistent/demo-call.wav")) is None


async def _push_a_gap(
    runtime: Runtime,
    settings: Settings,
    billing_call: tuple[Path, dict[str, Any]],
    cut: float,
    gap_s: float,
) -> tuple[PartyPipeline, list[events.Event], int]:
    """The customer's audio up to `cut`, then one frame `gap_s` later: the pipeline, the
    transcripts said after the gap, and the peak of memory traced while the frame went in."""
    import tracemalloc

    pcm, rate = customer_audio(billing_call)
    emitted: list[events.Event] = []

    async def emit(ev: events.Event) -> None:
        emitted.append(ev)

    pipe = PartyPipeline(
        call_id="c1", speaker="customer", runtime=runtime, settings=settings, emit=emit, inline=True
    )
    await feed(pipe, pcm, rate, seconds=cut)
    before = len([ev for ev in emitted if ev["type"] == "transcript"])
    tracemalloc.start()
    try:
        later = AudioChunk("c1", "customer", pcm[: int(rate * FRAME_S)] * 0, rate, cut + gap_s)
        await pipe.push(later)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    await pipe.finish()
    said = [ev for ev in emitted if ev["type"] == "transcript"][before:]
    return pipe, said, peak


async def test_a_long_gap_keeps_the_sentence_before_it_and_memory_flat(
    runtime: Runtime, settings: Settings, billing_call: tuple[Path, dict[str, Any]]
) -> None:
    """A pause (AudioHook pause/resume, a hold, a Twilio timestamp jump) arrives as a gap in
    t0. It used to be filled with one block of zeros: longer than the audio ring, it pushed
    the last sentence out before the endpointer closed it, and it cost memory per second of
    gap (an hour: gigabytes). Now the sentence is transcribed and an hour costs little."""
    first = next(t for t in billing_call[1]["turns"] if t["speaker"] == "customer")
    cut = first["t_end"] + 0.1  # the speech ended, the endpointer has not closed it yet
    gap_s = 3600.0
    pipe, said, peak_hour = await _push_a_gap(runtime, settings, billing_call, cut, gap_s)
    # The turn's last words: closed by the gap's silence, decoded from the ring.
    assert said and first["t_end"] - 1.0 <= said[0]["t_end"] <= cut + 0.05, said
    assert said[0]["text"].split(), said[0]
    assert pipe.gap_filled_s == pytest.approx(gap_s, abs=0.05)
    assert pipe.audio_s >= cut + gap_s
    # The peak holds the decode of that sentence too (its size depends on the CPU's kernels
    # and the words heard), so it is measured against the same sentence closed by a minute's
    # gap: an hour must cost no more than a minute (one block of zeros cost over 100 MiB).
    _, _, peak_minute = await _push_a_gap(runtime, settings, billing_call, cut, 60.0)
    extra = peak_hour - peak_minute
    assert extra < 4 * 2**20, f"an hour's gap took {extra / 2**20:.1f} MiB more than a minute's"


async def _customer_12s_through(
    run_batch: Callable[[Sequence[AsrRequest]], list[AsrResult]],
    runtime: Runtime,
    settings: Settings,
    billing_call: tuple[Path, dict[str, Any]],
) -> list[events.Event]:
    """The events of the billing call's first 12 s of customer audio, decoded by `run_batch`
    in place of the runtime's own ASR scheduler."""
    asr: InferenceScheduler[AsrRequest, AsrResult] = InferenceScheduler(
        name="asr-under-test", run_batch=run_batch, workers=1
    )
    emitted: list[events.Event] = []

    async def emit(ev: events.Event) -> None:
        emitted.append(ev)

    pcm, rate = customer_audio(billing_call)
    original = runtime.asr_scheduler
    runtime.asr_scheduler = asr
    try:
        pipe = PartyPipeline(
            call_id="c1",
            speaker="customer",
            runtime=runtime,
            settings=settings,
            emit=emit,
            inline=True,
        )
        await feed(pipe, pcm, rate, seconds=12.0)
        await pipe.finish()
    finally:
        runtime.asr_scheduler = original
        asr.close()
    return emitted


async def test_a_turn_the_final_model_calls_silence_keeps_the_words_its_partials_heard(
    runtime: Runtime,
    settings: Settings,
    billing_call: tuple[Path, dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An outside check: a loud 6.6 s turn came back blank from the final model (Whisper's
    no-speech verdict, 0.74) and vanished: no transcript, no cue, no log line, though its
    partials had its words. Here the final model says "no speech" to every turn; the small
    model's second listen keeps each turn's words, and the log says so."""

    def run_batch(reqs: Sequence[AsrRequest]) -> list[AsrResult]:
        real = runtime.asr.decode_batch(reqs)
        return [
            AsrResult("", (), -1.5, 0.74, r.decode_s, by_final_model=True)
            if req.use_final_model
            else r
            for req, r in zip(reqs, real, strict=True)
        ]

    always_final = settings.model_copy(update={"asr_final_fallback": False})
    emitted = await _customer_12s_through(run_batch, runtime, always_final, billing_call)
    heard = {ev["utterance_id"] for ev in emitted if ev["type"] == "partial"}
    finals = {ev["utterance_id"]: ev for ev in emitted if ev["type"] == "transcript"}
    assert heard and heard <= set(finals), (heard, set(finals))
    assert all(finals[u]["text"] and finals[u]["words"] for u in heard)
    assert "the final model heard no speech (0.74) where a partial heard words" in caplog.text


async def test_a_blank_from_the_small_model_is_not_decoded_again(
    runtime: Runtime,
    settings: Settings,
    billing_call: tuple[Path, dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The second listen asks the small model; when the small model made the final itself (a
    lone model, or a busy server's fallback) it would decode the same audio to the same
    blank, a wasted decode when the server is busiest. Here every final comes back blank
    from the small model: none is decoded again, and each long blank turn is logged."""
    caplog.set_level(logging.INFO, logger="coach.pipeline")
    finals_asked: list[AsrRequest] = []

    def run_batch(reqs: Sequence[AsrRequest]) -> list[AsrResult]:
        real = runtime.asr.decode_batch(reqs)
        out = []
        for req, r in zip(reqs, real, strict=True):
            if req.words:  # a final (partials ask for no word timings)
                finals_asked.append(req)
                r = AsrResult("", (), -1.5, 0.74, r.decode_s, by_final_model=False)
            out.append(r)
        return out

    emitted = await _customer_12s_through(run_batch, runtime, settings, billing_call)
    heard = {ev["utterance_id"] for ev in emitted if ev["type"] == "partial"}
    assert heard and not [ev for ev in emitted if ev["type"] == "transcript"]
    # The second listen sends the utterance's own audio again: no audio is asked twice.
    assert len({id(r.audio) for r in finals_asked}) == len(finals_asked), "decoded again"
    assert "has no words: dropped" in caplog.text
