"""One party's pipeline: audio in, utterance boundaries, partial and final transcripts out.

Stages, in order: place the chunk on the call clock (fill gaps, drop duplicates), resample to
16 kHz and run VAD (in the DSP executor), endpoint, and ask the shared ASR scheduler for
partials while the party speaks and for a final transcript at each endpoint.

Two modes. `inline` (replay --fast) awaits every decode before taking the next frame, so the
output depends only on the audio. Live mode decodes concurrently: finals go through an
ordered per-party queue, and at most one partial is in flight per party; a partial that
would arrive after its utterance ended is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from audio import prosody
from audio.echo import MAX_LAG_S, EchoMatch, echo_match
from audio.endpoint import Endpointer, SpeechEnd, SpeechStart
from audio.resample import StreamResampler
from audio.ring import AudioRing
from audio.types import PIPELINE_RATE, Samples
from audio.vad import WINDOW_SAMPLES, VadFrame, VadStream
from coach import events, metrics
from coach.events import Event
from coach.logs import call_fields
from coach.messages import AudioChunk, Speaker
from coach.runtime import PRIORITY_FINAL, PRIORITY_PARTIAL, Runtime
from coach.settings import Settings
from coach.signals.state import CustomerStateTracker
from models.asr import AsrRequest, AsrResult, TwoPassAsr, Word
from models.runtime import Shed, adaptive_beam, backoff_interval, has_spare_worker

log = logging.getLogger(__name__)

EmitFn = Callable[[Event], Awaitable[None]]
PaceFn = Callable[[Speaker, float, float, prosody.SpeakingRate], Awaitable[None]]
"""(speaker, t_start, t_end, syllable count) of every finished utterance, words or not."""

PAD_BEFORE_S = 0.15
PAD_AFTER_S = 0.15
VAD_WINDOW_S = WINDOW_SAMPLES / PIPELINE_RATE
MIN_PARTIAL_SPEECH_S = 0.6
# Seconds of a filled gap the VAD model still runs on (enough to end any utterance).
GAP_VAD_S = 2
GAP_PIECE_S = 10  # seconds of a long gap fed at once once the VAD is skipped


@dataclass(frozen=True, slots=True)
class Utterance:
    utterance_id: int
    speaker: Speaker
    t_start_s: float
    t_end_s: float
    detected_wall: float
    """Wall-clock time at which the endpoint was detected."""
    detected_audio_s: float
    """Party audio time (ring end) at which the endpoint was detected."""
    audio: Samples
    """The utterance's samples, cut when it ended: a backlog must not outlive the ring."""
    audio_t0_s: float
    early: Future[AsrResult] | None = None
    """A decode started during the hangover on exactly this audio (see `_maybe_speculate`)."""


class PartyPipeline:
    def __init__(
        self,
        *,
        call_id: str,
        speaker: Speaker,
        runtime: Runtime,
        settings: Settings,
        emit: EmitFn,
        inline: bool,
        state: CustomerStateTracker | None = None,
        on_pace: PaceFn | None = None,
    ) -> None:
        self.call_id = call_id
        self._on_pace = on_pace
        self.speaker = speaker
        self._rt = runtime
        self._settings = settings
        self._emit = emit
        self._inline = inline
        self._resampler: StreamResampler | None = None
        self._n_in = 0
        self._ring = AudioRing(sample_rate=PIPELINE_RATE, capacity_s=settings.max_utterance_s + 10)
        self._vad = VadStream(model=runtime.vad)
        self._endpointer = Endpointer(settings.endpoint_config())
        self._utt_id = 0
        self._utt_start: float | None = None
        self._ended_utts: set[int] = set()
        self._heard_utts: set[int] = set()
        """Utterances a partial transcript found words in (`_second_listen`)."""
        self._next_partial_at = 0.0
        self._partial_task: asyncio.Task[None] | None = None
        self._early: tuple[int, float, float, Future[AsrResult]] | None = None
        self._finals: asyncio.Queue[Utterance | None] = asyncio.Queue()
        self._final_task: asyncio.Task[None] | None = None
        self._baseline = prosody.SpeakerBaseline()
        self._state = state  # the customer's fused state; None for the agent
        self.speech_intervals: list[tuple[float, float]] = []
        self.word_times: list[tuple[float, float]] = []
        self.gap_filled_s = 0.0
        self.far_end: Callable[[float, float], tuple[Samples, float]] | None = None
        """The other party's audio between two call times (the customer's pipeline gets the
        agent's): an utterance that is only the agent's voice leaking back is dropped."""
        self._open_echo = False

    @property
    def audio_s(self) -> float:
        return self._ring.end_s

    @property
    def open_speech(self) -> tuple[float, float] | None:
        """The utterance in progress (start, now), for live talk-time figures; None while it
        looks like the other party's voice coming back (checked with each partial)."""
        if self._utt_start is None or self._open_echo:
            return None
        return (self._utt_start, self._ring.end_s)

    async def push(self, chunk: AudioChunk) -> None:
        gap, pcm = self._place(chunk)
        if gap == 0 and pcm.size == 0:
            return
        metrics.AUDIO_SECONDS.labels(speaker=self.speaker).inc(len(pcm) / chunk.sample_rate)
        loop = asyncio.get_running_loop()
        # A gap (a pause, a hold, skipped timestamps) is heard as silence, in pieces: the
        # utterance before it then ends after its usual trailing silence, while its audio
        # is still in the ring, and memory stays flat however long the gap (past its first
        # seconds the VAD model does not run on it, so an hour's pause costs little).
        second = chunk.sample_rate
        silence = np.zeros(min(gap, GAP_PIECE_S * second), dtype=np.float32)
        filled = 0
        while filled < gap:
            # The VAD hears the first seconds as any silence, a second at a time (a short loss
            # is then the same as the silence it replaced); after that it is skipped and the
            # rest goes in longer pieces, well inside the audio ring.
            skip_vad = filled >= GAP_VAD_S * second
            step = GAP_PIECE_S * second if skip_vad else second
            piece = silence[: min(gap - filled, step)]
            filled += len(piece)
            samples, frames = await loop.run_in_executor(
                self._rt.dsp_executor, self._dsp, piece, False, skip_vad
            )
            await self._advance(samples, frames)
        if pcm.size:
            samples, frames = await loop.run_in_executor(
                self._rt.dsp_executor, self._dsp, pcm, False
            )
            await self._advance(samples, frames)

    async def finish(self) -> None:
        """End of this party's audio: close the open utterance and wait for its transcript."""
        if self._resampler is not None:
            loop = asyncio.get_running_loop()
            empty = np.zeros(0, dtype=np.float32)
            samples, frames = await loop.run_in_executor(
                self._rt.dsp_executor, self._dsp, empty, True
            )
            await self._advance(samples, frames)
        for boundary in self._endpointer.flush():
            if isinstance(boundary, SpeechEnd):
                await self._on_end(boundary)
        if self._partial_task is not None:
            self._partial_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._partial_task
        if self._final_task is not None:
            self._finals.put_nowait(None)
            await self._final_task

    async def aclose(self) -> None:
        for task in (self._partial_task, self._final_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    # -- stages -----------------------------------------------------------------------------

    def _place(self, chunk: AudioChunk) -> tuple[int, Samples]:
        """Put the chunk where its t0 says: (samples of silence before it, the new audio);
        what was already heard is trimmed."""
        if self._resampler is None:
            self._resampler = StreamResampler(in_rate=chunk.sample_rate, out_rate=PIPELINE_RATE)
        elif chunk.sample_rate != self._resampler.in_rate:
            raise ValueError(
                f"{self.speaker}: sample rate changed from {self._resampler.in_rate} to {chunk.sample_rate}"
            )
        rate = chunk.sample_rate
        start = int(round(chunk.t0 * rate))
        pcm = chunk.pcm
        gap = 0
        if start > self._n_in + rate // 100:  # a gap of more than 10 ms: the sender skipped audio
            gap = start - self._n_in
            self.gap_filled_s += gap / rate
        elif start < self._n_in:
            overlap = self._n_in - start
            if overlap >= len(pcm):
                metrics.DROPPED_FRAMES.labels(reason="duplicate").inc()
                return 0, np.zeros(0, dtype=np.float32)
            pcm = pcm[overlap:]
        self._n_in += gap + len(pcm)
        return gap, pcm

    def _dsp(self, pcm: Samples, last: bool, gap: bool = False) -> tuple[Samples, list[VadFrame]]:
        assert self._resampler is not None
        samples = self._resampler.push(pcm, last=last)
        return samples, self._vad.push(samples, silence=gap)

    async def _advance(self, samples: Samples, frames: list[VadFrame]) -> None:
        self._ring.append(samples)
        for frame in frames:
            for boundary in self._endpointer.push(frame.t_start_s, frame.t_end_s, frame.prob):
                if isinstance(boundary, SpeechStart):
                    self._on_start(boundary)
                else:
                    await self._on_end(boundary)
        if not self._inline:
            self._maybe_speculate()
        await self._maybe_partial()

    def _on_start(self, start: SpeechStart) -> None:
        self._utt_id += 1
        self._open_echo = False
        self._utt_start = start.t_start_s
        self._next_partial_at = start.t_start_s + max(
            MIN_PARTIAL_SPEECH_S, self._settings.partial_interval_s
        )

    def audio_between(self, t_start_s: float, t_end_s: float) -> tuple[Samples, float]:
        """This party's audio between two call times (what is still kept) and its start."""
        return self._ring.slice_s(t_start_s, t_end_s)

    def _echo(self, audio: Samples, t0: float) -> EchoMatch | None:
        """How much `audio` (from call time `t0`) looks like the far end coming back."""
        if self.far_end is None:
            return None
        far, far_t0 = self.far_end(t0 - MAX_LAG_S, t0 + len(audio) / PIPELINE_RATE)
        lead = t0 - far_t0
        if lead < 0:
            return None
        return echo_match(audio, far, PIPELINE_RATE, lead_s=lead)

    def _is_echo(self, audio: Samples, t0: float, *, logged_as: int | None = None) -> bool:
        """Whether `audio` is the far end coming back; named in the log as utterance
        `logged_as` when given (a whole utterance dropped, not a partial skipped)."""
        match = self._echo(audio, t0)
        if match is None or not match.is_echo:
            return False
        if logged_as is None:
            return True
        log.info(
            "call %s %s: utterance %d is the other party's voice coming back (envelope "
            "correlation %.2f at %.0f ms, %.0f dB quieter): not transcribed",
            self.call_id,
            self.speaker,
            logged_as,
            match.correlation,
            match.lag_s * 1000,
            match.quieter_db,
            extra=call_fields(self.call_id),
        )
        return True

    async def _on_end(self, end: SpeechEnd) -> None:
        audio, audio_t0 = self._ring.slice_s(
            end.t_start_s - PAD_BEFORE_S, end.t_end_s + PAD_AFTER_S
        )
        if self._is_echo(audio, audio_t0, logged_as=self._utt_id):
            # Line echo is not this party speaking: no transcript, no cue, no talk time, and
            # the voice baseline never sees it (it read the agent's voice as the caller's).
            self._ended_utts.add(self._utt_id)
            self._utt_start = None
            early = self._take_early(self._utt_id, end.t_start_s, end.t_end_s)
            if early is not None:
                early.cancel()
            return
        utt = Utterance(
            utterance_id=self._utt_id,
            speaker=self.speaker,
            t_start_s=end.t_start_s,
            t_end_s=end.t_end_s,
            detected_wall=time.monotonic(),
            detected_audio_s=self._ring.end_s,
            audio=audio,
            audio_t0_s=audio_t0,
            early=self._take_early(self._utt_id, end.t_start_s, end.t_end_s),
        )
        self._ended_utts.add(utt.utterance_id)
        self._utt_start = None
        self.speech_intervals.append((end.t_start_s, end.t_end_s))
        if self._inline:
            await self._finalize(utt)
            return
        if self._final_task is None:
            self._final_task = asyncio.create_task(
                self._final_worker(), name=f"finals-{self.call_id}-{self.speaker}"
            )
        self._finals.put_nowait(utt)

    async def _final_worker(self) -> None:
        while (utt := await self._finals.get()) is not None:
            try:
                await self._finalize(utt)
            except Exception:
                log.exception(
                    "call %s %s: final transcript failed",
                    self.call_id,
                    self.speaker,
                    extra=call_fields(self.call_id),
                )

    async def _finalize(self, utt: Utterance) -> None:
        heard = utt.utterance_id in self._heard_utts
        self._heard_utts.discard(utt.utterance_id)
        if utt.audio.size < PIPELINE_RATE // 10:
            log.warning(
                "call %s %s: utterance %d too short to decode",
                self.call_id,
                self.speaker,
                utt.utterance_id,
                extra=call_fields(self.call_id),
            )
            return
        t0 = utt.audio_t0_s
        loop = asyncio.get_running_loop()
        # Pitch and energy need no words: extract them while the ASR decodes.
        frames = loop.run_in_executor(self._rt.dsp_executor, prosody.frame_features, utt.audio)
        decode = asyncio.ensure_future(self._decode_final(utt))
        try:
            features = await frames
            if self._on_pace is not None:
                # Pace comes from the audio, so it counts even when ASR returns nothing
                # (rushed speech is exactly what ASR drops), and it is reported before the
                # decode finishes: a pace cue need not wait for the words.
                pace = prosody.speaking_rate(features)
                await self._on_pace(self.speaker, utt.t_start_s, utt.t_end_s, pace)
        except BaseException:
            decode.cancel()
            raise
        result = await decode
        if result is not None and not result.text and heard and result.by_final_model:
            # Only the final model's verdict is worth a second opinion: the small one would
            # decode the same audio to the same blank, a wasted decode on a busy server.
            result = await self._second_listen(utt, result)
        if result is None or not result.text:
            if utt.t_end_s - utt.t_start_s >= 1.0:
                log.info(
                    "call %s %s: utterance %d (%.1f s) has no words: dropped",
                    self.call_id,
                    self.speaker,
                    utt.utterance_id,
                    utt.t_end_s - utt.t_start_s,
                    extra=call_fields(self.call_id),
                )
            return
        voice = self._prosody(features, result)
        emotion = await self._rt.emotion_scheduler.run(
            result.text, priority=PRIORITY_FINAL[self.speaker]
        )
        sentiment = emotion.to_sentiment()
        state = None
        if self._state is not None:
            metrics.CUSTOMER_VALENCE.observe(emotion.valence)
            state = self._state.update(
                t_end=utt.t_end_s,
                duration_s=utt.t_end_s - utt.t_start_s,
                sentiment={**sentiment, "confidence": emotion.confidence},
                prosody=voice,
            ).as_dict()
        # Within the utterance: the decoded audio starts a pre-roll before `t_start`, and the
        # aligner puts the first word at its very start, so every first word read 0.15 s
        # early (a newcomer's audit of the README's example).
        words = tuple(
            Word(w.w, start, max(start, _within(w.t1 + t0, utt)), w.p)
            for w in result.words
            for start in (_within(w.t0 + t0, utt),)
        )
        self.word_times.extend((w.t0, w.t1) for w in words)
        if not self._inline:
            # End of speech happened (ring end - t_end) of audio before the endpoint fired.
            end_wall = utt.detected_wall - (utt.detected_audio_s - utt.t_end_s)
            metrics.ASR_LATENCY.observe(max(0.0, time.monotonic() - end_wall))
        await self._emit(
            events.transcript(
                speaker=self.speaker,
                text=result.text,
                t_start=utt.t_start_s,
                t_end=utt.t_end_s,
                words=words,
                utterance_id=utt.utterance_id,
                prosody=dict(voice),
                sentiment=sentiment,
            )
            | ({"state": state} if state is not None else {})
        )

    def _prosody(self, features: prosody.FrameFeatures, result: AsrResult) -> prosody.ProsodyFields:
        """Voice features of the utterance relative to this speaker's own baseline."""
        summary = prosody.summarize(features, word_times=[(w.t0, w.t1) for w in result.words])
        z = self._baseline.observe(summary)
        score, why = prosody.arousal(z)
        return prosody.prosody_event_fields(summary, z, score, why=why)

    async def _decode_final(self, utt: Utterance) -> AsrResult | None:
        if utt.early is not None:
            try:
                return await asyncio.wrap_future(utt.early)
            except Shed:
                pass  # replaced or shed before it ran: decode now
        try:
            return await self._rt.asr_scheduler.run(
                self._final_request(utt.audio),
                priority=PRIORITY_FINAL[self.speaker],
                batch_group="final",
            )
        except Shed:
            log.error(
                "call %s %s: final transcript shed",
                self.call_id,
                self.speaker,
                extra=call_fields(self.call_id),
            )
            return None

    async def _second_listen(self, utt: Utterance, blank: AsrResult) -> AsrResult:
        """The final model called an utterance silence (no-speech) that the VAD found and a
        partial heard words in: the small model decodes it again, and its words are kept.

        Whisper's no-speech verdict is unreliable on these voices: an outside check's 6.6 s,
        -19 dBFS turn ("I spoke to somebody about this exact upgrade charge on Monday") came
        back blank (no-speech 0.74) from the final model and vanished without a trace, no
        transcript, no cue, no log line, while its partials had its words."""
        try:
            again = await self._rt.asr_scheduler.run(
                AsrRequest(audio=utt.audio, words=True, beam_size=self._settings.asr_beam_size),
                priority=PRIORITY_FINAL[self.speaker],
                batch_group="final",
            )
        except Shed:
            return blank
        if again.text:
            log.warning(
                "call %s %s: utterance %d: the final model heard no speech (%.2f) where a "
                "partial heard words; kept the small model's %d words",
                self.call_id,
                self.speaker,
                utt.utterance_id,
                blank.no_speech_prob,
                len(again.words) or len(again.text.split()),
                extra=call_fields(self.call_id),
            )
            return again
        return blank

    def _maybe_speculate(self) -> None:
        """Start the final decode during the hangover instead of after it.

        Once the party has been silent for PAD_AFTER_S, the audio the final will decode is
        already fixed (the endpoint, if it comes, cuts at the same place), so decoding can
        overlap the rest of the hangover. If speech resumes, the result is simply unused and
        a newer speculation replaces a queued older one. Skipped when the model is busy.
        """
        last = self._endpointer.last_speech_end_s
        if last is None or self._utt_start is None:
            return
        if self._ring.end_s - last < PAD_AFTER_S:
            return
        key = (self._utt_id, self._utt_start, last)
        if self._early is not None and self._early[:3] == key:
            return
        if self._rt.asr_scheduler.depth > 1:
            return
        audio, _ = self._ring.slice_s(self._utt_start - PAD_BEFORE_S, last + PAD_AFTER_S)
        fut = self._rt.asr_scheduler.submit(
            self._final_request(audio),
            priority=PRIORITY_FINAL[self.speaker],
            batch_group="final",
            coalesce_key=f"early:{self.call_id}:{self.speaker}:{self._utt_id}",
        )
        self._early = (*key, fut)

    def _take_early(self, utt_id: int, t_start: float, t_end: float) -> Future[AsrResult] | None:
        early, self._early = self._early, None
        if early is not None and early[:3] == (utt_id, t_start, t_end):
            return early[3]
        return None

    async def _maybe_partial(self) -> None:
        if self._utt_start is None or self._ring.end_s < self._next_partial_at:
            return
        last = self._endpointer.last_speech_end_s
        if last is not None and self._ring.end_s - last >= VAD_WINDOW_S:
            # The party has paused (the last VAD window was not speech). There is nothing new
            # to show, and if the turn is ending, a partial started now would hold an ASR
            # worker just when the final needs it (it then waits, or falls back to the small
            # model). The next partial comes as soon as speech resumes.
            return
        if not self._inline and self._partial_task is not None and not self._partial_task.done():
            return  # one in flight is enough; the next one will carry newer audio
        utt_id, start, upto = self._utt_id, self._utt_start, self._ring.end_s
        self._next_partial_at = upto + self._partial_interval()
        audio, audio_t0 = self._ring.slice_s(start - PAD_BEFORE_S, upto)
        self._open_echo = self._is_echo(audio, audio_t0)
        if self._open_echo:
            return  # the other party's voice coming back: no partial, no early cue from it
        if self._inline:
            await self._partial(utt_id, start, upto, audio)
        else:
            self._partial_task = asyncio.create_task(self._partial(utt_id, start, upto, audio))

    def _partial_interval(self) -> float:
        """Back off as the ASR scheduler gets loaded: partials are a budget, finals are not.

        The interval grows with the queue depth and the recent queueing delay
        (`models.runtime.backoff_interval`), up to COACH_PARTIAL_MAX_INTERVAL_S; a cap at or
        below COACH_PARTIAL_INTERVAL_S keeps a fixed cadence. Replay --fast never backs off.
        """
        base = self._settings.partial_interval_s
        if self._inline:
            return base
        cap = self._settings.partial_max_interval_s
        return backoff_interval(base, cap, self._rt.asr_scheduler.load())

    def _final_request(self, audio: Samples) -> AsrRequest:
        """A final decode: on the final model (COACH_ASR_FINAL_MODEL) when an ASR worker is
        free (`models.runtime.has_spare_worker`) and this machine decodes it within
        COACH_ASR_FINAL_BUDGET_S (`_final_fits`), else on the small one (unless
        COACH_ASR_FINAL_FALLBACK is off), so a busy server keeps its small model's capacity
        instead of falling behind; the beam is
        COACH_ASR_BEAM_SIZE, narrower as the queue grows (`adaptive_beam`). Replay --fast
        never adapts, so offline results do not depend on machine load."""
        base = self._settings.asr_beam_size
        if self._inline:
            beam, big = base, True
        else:
            load = self._rt.asr_scheduler.load()
            beam = adaptive_beam(base, self._settings.asr_min_beam_size, load)
            big = (
                has_spare_worker(load) and self._final_fits(len(audio) / PIPELINE_RATE)
            ) or not self._settings.asr_final_fallback
            metrics.ASR_FINAL_BEAM.observe(beam)
        two_models = isinstance(self._rt.asr, TwoPassAsr)
        metrics.ASR_FINALS.labels(model="final" if big and two_models else "small").inc()
        return AsrRequest(audio=audio, words=True, beam_size=beam, use_final_model=big)

    def _final_fits(self, audio_s: float) -> bool:
        """The final model is expected to decode this utterance within
        COACH_ASR_FINAL_BUDGET_S on this machine (`models.asr.DecodeTimes`). The same model
        takes 0.3 s a turn on one 2-core VM and 0.6 s on another, more under load and for
        long turns; a final later than the budget makes every cue of the turn late, so it goes
        to the small model instead."""
        asr = self._rt.asr
        if not isinstance(asr, TwoPassAsr):
            return True
        return asr.final_fits(audio_s, self._settings.asr_final_budget_s)

    async def _partial(self, utt_id: int, start: float, upto: float, audio: Samples) -> None:
        try:
            result: AsrResult = await self._rt.asr_scheduler.run(
                AsrRequest(
                    audio=audio,
                    words=False,
                    beam_size=self._settings.asr_partial_beam_size,
                    min_window_s=self._settings.asr_partial_min_window_s,
                ),
                priority=PRIORITY_PARTIAL[self.speaker],
                batch_group="partial",
                coalesce_key=None if self._inline else f"{self.call_id}:{self.speaker}",
                max_wait_s=None if self._inline else self._settings.partial_max_wait_s,
            )
        except Shed:
            metrics.PARTIALS_SHED.inc()
            return
        if utt_id in self._ended_utts or not result.text:
            return
        self._heard_utts.add(utt_id)
        await self._emit(
            events.partial(speaker=self.speaker, text=result.text, t_start=start, t_end=upto)
            | {"utterance_id": utt_id}
        )


def _within(t: float, utt: Utterance) -> float:
    """`t` moved into the utterance's span."""
    return round(min(max(t, utt.t_start_s), utt.t_end_s), 3)
