"""A live call: one pipeline per party, bounded audio queues, and the call's event stream.

Ingest pushes decoded chunks with `push()` (never blocks: a full queue drops its oldest
audio and counts it). Each party has one worker task. `end()` is a control message: it is
queued behind the audio already accepted (so nothing heard is lost), then the session
closes open utterances, waits for their transcripts, and emits `call_end`.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from enum import Enum
from typing import Any, TypeGuard

from audio.prosody import SpeakingRate
from coach import events, metrics, recap
from coach.bus import SUPERVISOR_TOPIC, InProcessBus, agent_topic, call_topic
from coach.cues.dynamics import Spoken, Timeline
from coach.cues.engine import CueEngine, TextAnalysis
from coach.events import Event
from coach.logs import call_fields, call_id_var
from coach.messages import AudioChunk, EndOfStream, Speaker, follows, join_chunks
from coach.pipeline import PartyPipeline
from coach.redaction import CallRedactor
from coach.runtime import PRIORITY_FINAL, PRIORITY_PARTIAL, Runtime
from coach.settings import Settings
from coach.signals import dynamics
from coach.signals.state import CustomerStateTracker
from models.runtime import Shed

log = logging.getLogger(__name__)

METRICS_SLACK_S = 0.12
"""The most call audio one step of a party's pipeline adds (joined 20 ms frames)."""


class CallState(Enum):
    NEW = "new"
    LIVE = "live"
    ENDING = "ending"
    ENDED = "ended"


HANDED_OVER = "handed_over"
"""`end_reason` of a call stopped here without ending, for another instance to resume."""
HANDING_OVER = "handing_over"
"""Set in the saved session state while a call's instance is handing it over."""


class CallEnded(RuntimeError):
    """Audio offered to a call that has ended (or is ending): the end of this stream.

    A RuntimeError, so ingest handlers that already treat RuntimeError from `feed` as
    "the call was ended under us" keep working.
    """

    def __init__(self, call_id: str, reason: str) -> None:
        super().__init__(f"call {call_id} has ended ({reason}), not accepting audio")
        self.call_id = call_id
        self.reason = reason


DEFAULT_MAX_CALL_S = 4 * 3600.0

RECENT_INTERVALS = 64
"""Utterances per party the timing cues look at (well over the two-minute talk-ratio window)."""
MAX_JOINED_S = 0.25
"""A party worker that fell behind takes the back-to-back chunks already queued, up to this
much audio, as one pipeline step: one DSP executor hop and one resample/VAD call instead of
one per 20 ms frame, which is what lets the event loop keep up with many calls. A worker
that keeps up finds its queue empty and never waits to join, so this adds no latency."""

HistoryLookup = Callable[[str], Awaitable[Sequence[Any]]]
"""customer_id -> that customer's previous calls, newest first (coach.store CustomerCall)."""


class CallSession:
    def __init__(
        self,
        *,
        call_id: str,
        source: str,
        speakers: tuple[Speaker, ...],
        runtime: Runtime,
        settings: Settings,
        bus: InProcessBus,
        inline: bool = False,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.call_id = call_id
        self.source = source
        self.speakers = speakers
        self.meta = dict(meta or {})
        self.state = CallState.NEW
        self.started_wall = time.time()
        self._settings = settings
        self._bus = bus
        self._inline = inline
        self._seq = 0
        self._redactor = CallRedactor()  # the PII-safe view, which spans utterances
        self._fed_s = 0.0
        self._next_metrics_s = self._metrics_due(0.0)
        self._queues: dict[Speaker, asyncio.Queue[AudioChunk | EndOfStream]] = {
            s: asyncio.Queue(maxsize=settings.audio_queue_frames) for s in speakers
        }
        self.customer_state = CustomerStateTracker()
        self.parties: dict[Speaker, PartyPipeline] = {
            s: PartyPipeline(
                call_id=call_id,
                speaker=s,
                runtime=runtime,
                settings=settings,
                emit=self.emit,
                inline=inline,
                state=self.customer_state if s == "customer" else None,
                on_pace=self._on_pace,
            )
            for s in speakers
        }
        if "customer" in self.parties and "agent" in self.parties:
            # The agent's voice leaking back on the customer's line is not the customer.
            self.parties["customer"].far_end = self.parties["agent"].audio_between
        self._runtime = runtime
        self.cues: CueEngine | None = (
            CueEngine(
                holder=runtime.playbook,
                analyze=self._analyze,
                analyze_partial=self._analyze_partial,
            )
            if runtime.playbook is not None
            else None
        )
        self._next_timing_s = 0.0
        self._tasks: dict[Speaker, asyncio.Task[None]] = {}
        self._ended = asyncio.Event()
        self.dropped_frames = 0
        self.last_event: Event | None = None
        self.max_call_s = float(settings.max_call_s)
        self.last_audio_at = time.monotonic()
        """Monotonic wall time audio was last accepted (or the call (re)attached)."""
        self.end_reason: str | None = None
        self.reconnects = 0
        self.escalations_taken: set[int] = set()
        """Seqs of this call's escalations a supervisor acknowledged (told once, app.py)."""
        self.on_end_request: Callable[[CallSession, str], None] | None = None
        """Set by the CallManager: runs an end this session asks for (e.g. max_length)."""
        self._end_requested: str | None = None
        self.history_lookup: HistoryLookup | None = None
        self._history_task: asyncio.Task[None] | None = None
        self._end_task: asyncio.Task[None] | None = None
        self._clock_resumed = False
        self._handing_over = False
        """`hand_over` is under way: every state saved says so (`HANDING_OVER`)."""
        self._recap: tuple[tuple[Any, ...], recap.Recap] | None = None
        """The last recap built and what it was built from (`_session_state`)."""

    @property
    def fed_s(self) -> float:
        """Call audio fed so far: a re-attached connection places its audio after this."""
        return self._fed_s

    @property
    def inline(self) -> bool:
        return self._inline

    @property
    def end_requested(self) -> str | None:
        return self._end_requested

    def touch(self) -> None:
        self.last_audio_at = time.monotonic()

    def claim_end(self, reason: str) -> None:
        """Mark the call as ending for `reason` now, before its end task runs, so that nothing
        else ends it for another reason in between (the idle watchdog once ended a call whose
        reconnect grace had just expired as `idle_timeout`). An end asked for earlier keeps
        its reason."""
        if self._end_requested is None and self.state is CallState.LIVE:
            self._end_requested = reason

    def request_end(self, reason: str) -> None:
        """Stop accepting audio now and end the call soon (finalized in the background)."""
        if self._end_requested is not None or self.state is not CallState.LIVE:
            return
        self._end_requested = reason
        if self.on_end_request is not None:
            self.on_end_request(self, reason)
        else:
            self._end_task = asyncio.create_task(self.end(reason), name=f"end-{self.call_id}")

    async def start(self) -> None:
        if self.state is not CallState.NEW:
            raise RuntimeError(f"call {self.call_id} already started")
        self.state = CallState.LIVE
        call_id_var.set(self.call_id)  # tasks created from here on inherit it
        metrics.ACTIVE_CALLS.inc()
        prior = await self._bus.load_session_state(self.call_id)
        if prior:
            self._restore(prior)
        start = events.call_start(source=self.source, channels=self.speakers, meta=self.meta)
        if self._clock_resumed:
            # The store keeps the call's first start, not this takeover's (coach/store/writes.py).
            start["started_at"] = datetime.fromtimestamp(self.started_wall, UTC).isoformat()
        await self.emit(start)
        customer_id = self.meta.get("customer_id")
        if customer_id and self.history_lookup is not None and self.cues is not None:
            # In the background: a slow or unreachable store must not delay the call.
            self._history_task = asyncio.create_task(
                self._load_history(str(customer_id)), name=f"history-{self.call_id}"
            )
        if not self._inline:
            for s in self.speakers:
                self._tasks[s] = asyncio.create_task(
                    self._party_worker(s), name=f"{self.call_id}-{s}"
                )

    def _restore(self, prior: dict[str, Any]) -> None:
        """The call's stream came back (here or on another instance): continue its event
        sequence so panels resume without gaps, and, unless it had ended, its clock, the cue
        cooldowns and what its summaries need of the part already heard (coach/recap.py).

        The state may be stale or corrupt (another version wrote it, a hand-edited key):
        whatever of it cannot be read is left out, logged once, and the call goes on."""
        unreadable: list[str] = []
        seq = prior.get("seq", 0)
        if isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0:
            self._seq = seq
        else:
            unreadable.append(f"seq {seq!r}")
        ended = bool(prior.get("ended"))
        if not ended:
            self._resume_clock(prior)
        if self.cues is not None and not ended:
            fired = prior.get("cue_fired_wall", {})
            if isinstance(fired, dict) and all(
                isinstance(k, str) and _is_time(v) for k, v in fired.items()
            ):
                self.cues.restore_cooldowns(fired, now_audio=self._fed_s, now_wall=time.time())
            else:
                unreadable.append("cue cooldowns")
        if not ended and "recap" in prior:
            try:
                recap.restore(prior["recap"], tracker=self.customer_state, engine=self.cues)
            except recap.RecapError as exc:
                unreadable.append(f"summary so far ({exc})")
            except Exception:  # a bug here must cost the earlier part's summary, not the call
                log.exception(
                    "call %s: the summary so far could not be restored",
                    self.call_id,
                    extra=call_fields(self.call_id),
                )
        if unreadable:
            log.warning(
                "call %s: saved session state partly unreadable, left out: %s",
                self.call_id,
                "; ".join(unreadable),
                extra=call_fields(self.call_id),
            )
        self.meta.setdefault("resumed", not ended)

    def _resume_clock(self, prior: dict[str, Any]) -> None:
        """A call that comes back in a new session (another instance took it over after
        the first one was lost) keeps its clock and its start: the new connection's audio
        is placed after what was heard (every ingest starts at `fed_s`; the pipelines hear
        the part they missed as silence), so transcripts, duration and the stored record's
        times go on from where the call was, as on a reconnect to the same instance."""
        fed = prior.get("fed_s")
        if _is_time(fed) and fed > self._fed_s:
            self._fed_s = float(fed)
            self._next_metrics_s = self._metrics_due(self._fed_s)
        started = prior.get("started_wall")
        if _is_time(started) and 0 < started < self.started_wall:
            self.started_wall = float(started)
            self._clock_resumed = True

    async def feed(self, chunk: AudioChunk) -> None:
        """Queue a chunk, waiting briefly for room before dropping the oldest audio.

        A sender faster than real time (file upload, test client) is slowed down by this
        wait (TCP backpressure); a real-time sender whose pipeline has fallen behind by a
        whole queue loses its oldest audio instead of delaying every later cue.
        """
        q = self._checked_queue(chunk)
        try:
            async with asyncio.timeout(self._settings.backpressure_s):
                await q.put(chunk)
        except TimeoutError:
            self.push(chunk)
            return
        except asyncio.CancelledError:
            # The connection's task was cancelled while this chunk waited for room (a server
            # that cancels a handler when its client goes): the audio was received, so it is
            # heard, and a reconnect is placed after it. Lost here, a loaded CI machine put the
            # reconnected part of a call 0.2 s early, over the end of the first.
            with contextlib.suppress(CallEnded):  # ended meanwhile: nothing left to hear it
                self.push(chunk)
            raise
        self._fed_s = max(self._fed_s, chunk.t1)
        self.last_audio_at = time.monotonic()

    def push(self, chunk: AudioChunk) -> None:
        """Queue a chunk without waiting; a full queue drops its oldest audio (counted)."""
        q = self._checked_queue(chunk)
        if q.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                q.get_nowait()
                q.task_done()
                self.dropped_frames += 1
                metrics.DROPPED_FRAMES.labels(reason="queue_full").inc()
                if self.dropped_frames == 1 or self.dropped_frames % 50 == 0:
                    log.warning(
                        "call %s %s: pipeline behind real time, %d frames dropped so far",
                        self.call_id,
                        chunk.speaker,
                        self.dropped_frames,
                        extra=call_fields(self.call_id),
                    )
        q.put_nowait(chunk)
        self._fed_s = max(self._fed_s, chunk.t1)
        self.last_audio_at = time.monotonic()

    def _checked_queue(self, chunk: AudioChunk) -> asyncio.Queue[AudioChunk | EndOfStream]:
        self._check_accepting(chunk)
        if chunk.speaker not in self._queues:
            raise ValueError(f"call {self.call_id} has no party {chunk.speaker!r}")
        return self._queues[chunk.speaker]

    def _check_accepting(self, chunk: AudioChunk) -> None:
        if self._end_requested is not None or self.state is not CallState.LIVE:
            raise CallEnded(
                self.call_id, self._end_requested or self.end_reason or self.state.value
            )
        if self.max_call_s > 0 and chunk.t0 >= self.max_call_s:
            log.warning(
                "call %s reached the maximum length (%.0f s)",
                self.call_id,
                self.max_call_s,
                extra=call_fields(self.call_id),
            )
            self.request_end("max_length")
            raise CallEnded(self.call_id, "max_length")

    async def process_inline(self, chunk: AudioChunk) -> None:
        """Replay --fast: process one chunk completely before the next is fed."""
        self._check_accepting(chunk)
        self._fed_s = max(self._fed_s, chunk.t1)
        self.last_audio_at = time.monotonic()
        await self.parties[chunk.speaker].push(chunk)
        await self._maybe_metrics()
        await self._maybe_timing_cues()

    async def end(self, reason: str = "end") -> None:
        """Finish the call: drain accepted audio, finalize, emit call_end. Idempotent."""
        if self.state in (CallState.ENDING, CallState.ENDED):
            await self._ended.wait()
            return
        if self.state is CallState.NEW:
            await self.start()
        self.state = CallState.ENDING
        reason = self._end_requested or reason  # an end asked for first (max_length...) wins
        self.end_reason = reason
        try:
            if self._inline:
                for party in self.parties.values():
                    await party.finish()
            else:
                for s, q in self._queues.items():
                    await q.put(EndOfStream(reason))
                    await self._tasks[s]
            await self._emit_metrics(final=True)
            duration = max([self._fed_s, *(p.audio_s for p in self.parties.values())])
            arc = [(t, v) for t, v, _ in self.customer_state.arc]
            summary = self.cues.call_summary() if self.cues else {"cues": {}}
            cue_counts = summary.pop("cues")
            end = events.call_end(
                duration_s=duration, reason=reason, arc=arc, cues=cue_counts, extra=summary
            )
            if self.meta.get("agent_id"):
                end["agent_id"] = self.meta["agent_id"]  # may have been assigned mid-call
            # The meta as the call ends: what changed during it (Twilio's mark and DTMF
            # counts) reaches the store, which only saw call_start's.
            end["meta"] = copy.deepcopy(self.meta)
            await self.emit(end)
        finally:
            self.state = CallState.ENDED
            metrics.ACTIVE_CALLS.dec()
            self._bus.close_topic(call_topic(self.call_id))
            self._bus.close_topic(agent_topic(self.call_id))
            self._ended.set()

    async def hand_over(self) -> bool:
        """Stop running the call here without ending it: the audio already accepted is
        transcribed and coached (the open sentence closes), the state is saved with the
        clock where the audio stopped, and the call stops with no `call_end` and its topics
        open, so that another instance can resume it (`CallManager.detach` while draining).
        False, and nothing done, unless the call is live and streamed (not a replay)."""
        if self.state is not CallState.LIVE or self._end_requested is not None or self._inline:
            return False
        self._end_requested = self.end_reason = HANDED_OVER
        self.state = CallState.ENDING
        # Said at once, and in every state saved until the pipelines are done (each event
        # saves one): an instance its reconnect reaches waits for the hand-over to finish
        # rather than refuse the call as live here (`CallManager._claim_or_refuse`).
        self._handing_over = True
        self._bus.save_session_state(self.call_id, self._session_state(ended=False))
        try:
            for s, q in self._queues.items():
                await q.put(EndOfStream(HANDED_OVER))
                await self._tasks[s]
        finally:
            self._handing_over = False
            self._bus.save_session_state(self.call_id, self._session_state(ended=False))
            self.state = CallState.ENDED
            metrics.ACTIVE_CALLS.dec()
            self._ended.set()
        return True

    async def aclose(self) -> None:
        if self._history_task is not None:
            self._history_task.cancel()
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for party in self.parties.values():
            await party.aclose()

    async def wait_ended(self) -> None:
        await self._ended.wait()

    async def emit(self, event: Event) -> None:
        self._seq += 1
        stamped = {
            "seq": self._seq,
            "call_id": self.call_id,
            **event,
            "t_emit": round(self._fed_s, 3),
        }
        self.last_event = stamped
        self._bus.publish(agent_topic(self.call_id), stamped)
        redacted = self._redactor.view(stamped)
        kind = stamped["type"]
        if kind == "cue" and self.cues is not None:
            # Before the state is saved: it lists the cue by its seq, with its trigger
            # phrases as the redacted view has them (the state goes to Redis).
            evidence = redacted.get("evidence")
            phrases = evidence.get("phrases") if isinstance(evidence, dict) else None
            self.cues.published(
                event,
                self._seq,
                redacted_phrases=[p for p in phrases if isinstance(p, str)]
                if isinstance(phrases, list)
                else (),
            )
        self._bus.save_session_state(self.call_id, self._session_state(ended=kind == "call_end"))
        self._bus.publish(call_topic(self.call_id), redacted)
        if kind in ("call_start", "call_end", "cue", "escalation", "agent_assigned"):
            self._bus.publish(SUPERVISOR_TOPIC, redacted)
        if kind == "cue":
            metrics.CUES.labels(cue=stamped["cue"]).inc()
            if not self._inline:
                metrics.CUE_LATENCY.observe(max(0.0, self._fed_s - float(stamped["t_end"])))
        elif kind == "escalation":
            metrics.ESCALATIONS.labels(reason=stamped["reason"], urgency=stamped["urgency"]).inc()
        elif kind == "transcript":
            if stamped.get("speaker") == "customer" and "state" in stamped:
                self._bus.publish(SUPERVISOR_TOPIC, self._call_update(stamped))
            if self.cues is not None:
                await self._cues_from(self.cues.on_transcript, stamped)
        elif kind == "partial" and self.cues is not None and stamped.get("speaker") == "customer":
            await self._cues_from(self.cues.on_partial, stamped)

    async def _cues_from(
        self, read: Callable[[Event], Awaitable[list[Event]]], transcript: Event
    ) -> None:
        """Emit what the cue engine finds in a transcript; a failure there loses the cues of
        that one transcript, never the call."""
        try:
            found = await read(transcript)
        except Exception:
            log.exception(
                "call %s: cue engine failed on a %s",
                self.call_id,
                transcript["type"],
                extra=call_fields(self.call_id),
            )
            found = []
        for ev in found:
            await self.emit(ev)

    async def _load_history(self, customer_id: str) -> None:
        assert self.history_lookup is not None and self.cues is not None
        try:
            previous = await self.history_lookup(customer_id)
        except Exception as exc:
            log.warning(
                "call %s: customer history unavailable: %s",
                self.call_id,
                exc,
                extra=call_fields(self.call_id),
            )
            return
        # Earlier legs of this same call (cut off, reconnected as `id~2`) are not an earlier
        # contact: counted, a first-time caller got "Has called before" two seconds into the
        # second leg (found by an outside audit with two servers).
        base = str(self.meta.get("telephony_call_id") or self.call_id)
        self.cues.set_history(
            [
                c
                for c in previous
                if (leg := str(getattr(c, "call_id", ""))) != base
                and not leg.startswith(f"{base}~")
            ]
        )

    def _session_state(self, *, ended: bool) -> dict[str, Any]:
        fired = (
            self.cues.cooldowns_wall(now_audio=self._fed_s, now_wall=time.time())
            if self.cues is not None
            else {}
        )
        return {
            "seq": self._seq,
            "cue_fired_wall": fired,
            "ended": ended,
            **({HANDING_OVER: True} if self._handing_over else {}),
            # Where the call's clock is and when it started: a takeover continues from here.
            "fed_s": round(self._fed_s, 3),
            "started_wall": self.started_wall,
            # What the call's summaries need of the part heard so far (no unredacted words).
            "recap": self._current_recap(),
        }

    def _current_recap(self) -> recap.Recap:
        """The recap, rebuilt only when something it holds changed: the state is saved on
        every event (partials, metrics), most of which change none of it."""
        cues = self.cues
        key: tuple[Any, ...] = (len(self.customer_state.arc),)
        if cues is not None:
            key += (
                len(cues.states),
                len(cues.shown),
                cues.shown[-1].get("seq") if cues.shown else None,
                len(cues.agent_moves),
                len(cues.escalation.raised),
                tuple(cues.redacted_phrases),
            )
        if self._recap is None or self._recap[0] != key:
            self._recap = (key, recap.build(tracker=self.customer_state, engine=cues))
        return self._recap[1]

    def _call_update(self, transcript: Event) -> Event:
        """The supervisor wall's live tile: the customer's state after each utterance."""
        state = transcript["state"]
        last = self.cues.shown[-1] if self.cues and self.cues.shown else None
        last_cue = (
            {k: last.get(k) for k in ("seq", "cue", "title", "priority", "severity", "t_emit")}
            if last
            else None
        )
        return {
            "type": "call_update",
            "call_id": self.call_id,
            "seq": transcript["seq"],
            "t_emit": transcript["t_emit"],
            "valence": state["valence"],
            "arousal": state["arousal"],
            "emotion": state["emotion"],
            "trend_valence": state["trend"]["valence"],
            "trend": state["trend"].get("direction"),
            "last_cue": last_cue,
            "agent_id": self.meta.get("agent_id"),
        }

    async def _on_pace(
        self, speaker: Speaker, t_start: float, t_end: float, pace: SpeakingRate
    ) -> None:
        if self.cues is None:
            return
        for ev in self.cues.on_pace(speaker, Spoken(t_start, t_end, pace.syllables, pace.speech_s)):
            await self.emit(ev)

    async def _analyze(self, texts: Sequence[str]) -> Sequence[TextAnalysis]:
        """Clause-level emotion and embeddings, batched with every other call's utterances."""
        return await asyncio.gather(
            *(
                self._runtime.emotion_scheduler.run(t, priority=PRIORITY_FINAL["customer"])
                for t in texts
            )
        )

    async def _analyze_partial(self, texts: Sequence[str]) -> Sequence[TextAnalysis]:
        """Like `_analyze` for the early cues' reading of a partial: behind every final's
        texts in the queue, and dropped (nothing returned) when the model is too busy to
        answer before the partial is stale. A final's texts go ahead of it in the queue."""
        inline = self._inline
        try:
            return await asyncio.gather(
                *(
                    self._runtime.emotion_scheduler.run(
                        t,
                        priority=PRIORITY_PARTIAL["customer"],
                        max_wait_s=None if inline else self._settings.partial_max_wait_s,
                    )
                    for t in texts
                )
            )
        except Shed:
            return []

    async def _maybe_timing_cues(self) -> None:
        """Dead air, overtalk and talk ratio: checked every 100 ms of call audio.

        Only each party's recent utterances are passed (the detectors look back two minutes
        at most), so the check costs the same an hour into a call as at its start.
        """
        if self.cues is None:
            return
        now = min(p.audio_s for p in self.parties.values())
        if now < self._next_timing_s:
            return
        self._next_timing_s = now + 0.1
        customer, agent = self.parties.get("customer"), self.parties.get("agent")
        timeline = Timeline(
            now=now,
            customer=customer.speech_intervals[-RECENT_INTERVALS:] if customer else [],
            agent=agent.speech_intervals[-RECENT_INTERVALS:] if agent else [],
            customer_open_since=_open_since(customer),
            agent_open_since=_open_since(agent),
        )
        for ev in self.cues.on_tick(timeline):
            await self.emit(ev)

    async def _party_worker(self, speaker: Speaker) -> None:
        call_id_var.set(self.call_id)  # every log line of this call's tasks carries its id
        q, party = self._queues[speaker], self.parties[speaker]
        held: AudioChunk | EndOfStream | None = None  # taken from the queue, not yet joinable
        while True:
            item = held if held is not None else await q.get()
            held, taken = None, 1
            if isinstance(item, AudioChunk):
                parts = [item]
                joined_s = item.duration_s
                while joined_s < MAX_JOINED_S and not q.empty():
                    nxt = q.get_nowait()
                    if isinstance(nxt, AudioChunk) and follows(parts[-1], nxt):
                        parts.append(nxt)
                        joined_s += nxt.duration_s
                        taken += 1
                    else:
                        held = nxt  # its own step next time round (task_done then)
                        break
                item = join_chunks(parts)
            try:
                if isinstance(item, EndOfStream):
                    await party.finish()
                    return
                await party.push(item)
                await self._maybe_metrics()
                await self._maybe_timing_cues()
            except Exception:
                log.exception(
                    "call %s %s: pipeline error, frame skipped",
                    self.call_id,
                    speaker,
                    extra=call_fields(self.call_id),
                )
                metrics.DROPPED_FRAMES.labels(reason="pipeline_error").inc()
            finally:
                for _ in range(taken):
                    q.task_done()

    async def _maybe_metrics(self) -> None:
        now = min(p.audio_s for p in self.parties.values())
        if now >= self._next_metrics_s:
            self._next_metrics_s = self._metrics_due(now)
            await self._emit_metrics(final=False)

    def _metrics_due(self, last_s: float) -> float:
        """When the metrics event after one at `last_s` (or the call's start) is due.

        Audio arrives in pieces of up to METRICS_SLACK_S: due that much early, no gap between
        two metrics events, nor between the start and the first, exceeds the interval
        (CONTRACT: at least every 5 s; audits measured 5.08-5.10 s at 8 kHz, and the first
        one still at 5.08 s, 5.03 s at 22.05 and 44.1 kHz)."""
        interval = self._settings.metrics_interval_s
        return last_s + max(interval - METRICS_SLACK_S, interval / 2)

    async def _emit_metrics(self, *, final: bool) -> None:
        now = (
            max(p.audio_s for p in self.parties.values())
            if final
            else min(p.audio_s for p in self.parties.values())
        )

        def intervals(s: Speaker) -> list[tuple[float, float]]:
            p = self.parties.get(s)
            if p is None:
                return []
            return [*p.speech_intervals, *([p.open_speech] if p.open_speech else [])]

        agent = self.parties.get("agent")
        snap = dynamics.snapshot(
            customer=intervals("customer"),
            agent=intervals("agent"),
            now_s=now,
            agent_words=agent.word_times if agent else [],
        )
        await self.emit(
            events.metrics(
                talk_ratio=snap.talk_ratio,
                overtalk_s=snap.overtalk_s,
                silence_s=snap.silence_s,
                agent_wps=snap.agent_wps,
                t_start=0.0,
                t_end=now,
            )
        )


def _is_time(value: object) -> TypeGuard[float]:
    """A number of seconds as a saved state may hold it (not a bool, not NaN or infinite)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _open_since(party: PartyPipeline | None) -> float | None:
    if party is None:
        return None
    span = party.open_speech
    return span[0] if span else None
