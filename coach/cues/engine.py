"""The cue engine of one call: transcripts and timing in, cue and escalation events out.

Per customer utterance: cut it into clauses, embed and score each clause (one batched pass
of the emotion model, which also yields the sentence embedding), match the clauses to the
playbook's examples (coach/cues/matcher.py), add the voice (arousal relative to this
caller's baseline) and the context (what the agent just did), and emit at most
`max_cues_per_utterance` cues that are out of their cooldown, most important first.
Per customer partial transcript: the cues with `early` may fire already, from whole
sentences the partials agree on (`on_partial`), and the turn's final does not repeat them.
Per agent utterance: recognise the agent's moves (apology, resolution...) for context and
for the handoff summary; the agent's own words never fire a customer cue. Per tick of
audio: the timing cues (coach/cues/dynamics.py).

The playbook is read through a `PlaybookHolder` at every utterance, so a reload applies to
live calls at their next utterance without dropping anything.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np

from coach import events
from coach.cues import language
from coach.cues.dynamics import Spoken, Timeline, TimingCues, TimingHit, agent_pace
from coach.cues.matcher import ClauseSignals, CueIndex, FloatArray, SemanticMatch
from coach.cues.playbook import ADVICE_AFTER_S, CueSpec, EscalationSpec, Playbook
from coach.escalation import EscalationDetector
from coach.events import AI_LABEL, WRAP_UP_OUTCOMES, Event, EvidenceSource
from coach.messages import Speaker
from coach.signals.state import direction

log = logging.getLogger(__name__)

WORDS: EvidenceSource = "words"
VOICE: EvidenceSource = "voice"
TIMING: EvidenceSource = "timing"
HISTORY: EvidenceSource = "history"
TREND: EvidenceSource = "trend"
EARLY_NOTE = "heard while the customer was still speaking (live transcript)"
SHORT_MIN_WORDS = 2
SHORT_SIMILARITY = 0.6
SHORT_MEANING = 0.9
"""A clause under its cue's `min_words` (but of `SHORT_MIN_WORDS` or more) is still read when
its words, framing considered, are this near one example and the meaning probe reads it as
the cue at `SHORT_MEANING`: "Sorry, I'm lost." and "This is ridiculous." (3 words) say their
cue beyond doubt, "I don't know." (0.50, 41%) and "Please hurry." (0.67, 78%) do not. Never
for a critical cue (a supervisor page needs more words) or an early read of a partial."""


class TextAnalysis(Protocol):
    """What the emotion model returns per text (models.emotion.EmotionScore)."""

    @property
    def scores(self) -> dict[str, float]: ...

    @property
    def embedding(self) -> FloatArray | None: ...


AnalyzeFn = Callable[[Sequence[str]], Awaitable[Sequence[TextAnalysis]]]


@dataclass(frozen=True, slots=True)
class LoadedPlaybook:
    playbook: Playbook
    index: CueIndex
    version: str
    """Changes on every reload (file hash), so per-call state knows to refresh."""
    warnings: tuple[str, ...] = ()
    """What loads but will not work as the operator may expect (`CueIndex.crowded_examples`)."""


class PlaybookHolder(Protocol):
    @property
    def current(self) -> LoadedPlaybook: ...


@dataclass(frozen=True, slots=True)
class Candidate:
    cue: str
    spec: CueSpec
    score: float
    reasons: tuple[str, ...]
    evidence_text: str
    phrases: tuple[str, ...]
    match: SemanticMatch | None
    source: EvidenceSource
    """What raised it (`evidence.source`): words, voice, history or trend."""
    stronger_again: bool = False
    """Shown inside its cooldown because it matches clearly better than the one shown
    (`CueSpec.refire_above`): its escalation is paged again (EscalationDetector)."""


def _word_probabilities(event: Mapping[str, Any]) -> dict[str, float]:
    """Each word of a transcript with the lowest probability the ASR gave it in the turn."""
    out: dict[str, float] = {}
    for w in event.get("words") or ():
        if not isinstance(w, Mapping):
            continue
        word, p = language.bare(str(w.get("w", ""))), w.get("p")
        if word and isinstance(p, int | float):
            out[word] = min(float(p), out.get(word, 1.0))
    return out


def _clause_signals(
    loaded: LoadedPlaybook, texts: Sequence[str], analyses: Sequence[TextAnalysis]
) -> list[ClauseSignals]:
    """The matcher's view of each analysed text (those the model could embed)."""
    return [
        loaded.index.prepare(ClauseSignals(t, a.embedding, a.scores, language.framing(t)))
        for t, a in zip(texts, analyses, strict=True)
        if a.embedding is not None
    ]


@dataclass
class _PartialReading:
    """The customer turn whose partial transcripts are being read for early cues."""

    t_start: float
    tokens: list[str]
    """The last partial's words, to agree with the next one."""
    read: int = 0
    """Agreed words already scored: a partial is read again only when agreement grows."""


@dataclass
class AgentMove:
    move: str
    t: float
    text: str


@dataclass
class CueEngine:
    holder: PlaybookHolder
    analyze: AnalyzeFn
    analyze_partial: AnalyzeFn | None = None
    """For the early cues' reading of partials (None: `analyze`). May return nothing when
    the model is too busy: that reading is then skipped."""
    history_hint: str | None = None
    """Set when the store knows this customer called recently (repeat_contact)."""
    _history_pending: bool = False
    fired_at: dict[str, float] = field(default_factory=dict)
    fired_score: dict[str, float] = field(default_factory=dict)
    """The score of each language cue as last shown (CueSpec.refire_above)."""
    fired_meaning: dict[str, float] = field(default_factory=dict)
    """The meaning probe's reading of each language cue's match as last shown."""
    shown: list[Event] = field(default_factory=list)
    agent_moves: list[AgentMove] = field(default_factory=list)
    states: list[dict[str, Any]] = field(default_factory=list)
    agent_pace: list[Spoken] = field(default_factory=list)
    customer_pace: list[Spoken] = field(default_factory=list)
    _timing: TimingCues | None = None
    _timing_version: str = ""
    escalation: EscalationDetector = field(default_factory=EscalationDetector)
    redacted_phrases: list[str] = field(default_factory=list)
    """The trigger phrases of the cues shown, as the redacted view has them (latest
    `KEPT_PHRASES`): all of them the session state (coach/recap.py) may hold."""
    earlier_phrases: list[str] = field(default_factory=list)
    """Trigger phrases of the part of the call another instance ran (redacted), restored
    from the session state: the handoff quotes them before this part's own."""
    earlier_counts: dict[str, int] = field(default_factory=dict)
    """Cues shown earlier in the call that the restored state counts but no longer lists
    one by one (it keeps the latest only): still counted in the call's summary."""
    _outcomes: dict[int, tuple[float | None, float | None]] = field(default_factory=dict)
    """id of a shown cue -> its final outcome (`cue_outcome`)."""
    _reading: _PartialReading | None = None
    _customer_final_end: float = float("-inf")
    _customer_heard_s: float = 0.0
    """Seconds of the customer's speech before the turn being read (what their voice
    baseline is worth: `VoiceTrigger.min_baseline_s`)."""
    _heard_before_turn: float = 0.0
    _early_this_turn: int = 0

    # ------------------------------------------------------------------ transcripts

    async def on_transcript(self, event: Mapping[str, Any]) -> list[Event]:
        text = str(event.get("text") or "").strip()
        if not text:
            return []
        loaded = self.holder.current
        if event.get("speaker") == "agent":
            return await self._agent_utterance(loaded, event, text)
        return await self._customer_utterance(loaded, event, text)

    async def on_partial(self, event: Mapping[str, Any]) -> list[Event]:
        """A customer partial transcript: fire the cues with `early` (playbook.Early) whose
        words are already plain, before the turn ends. Only words two partials in a row
        agree on are read, and only when that agreement has grown."""
        if event.get("speaker") != "customer":
            return []
        loaded = self.holder.current
        # Only customer language cues have `early` (the schema).
        early = {k: s for k, s in loaded.playbook.enabled().items() if s.early is not None}
        t_start, t_end = float(event["t_start"]), float(event["t_end"])
        if not early or t_start < self._customer_final_end:
            return []  # nothing reads partials, or this turn's final is already in
        tokens = str(event.get("text") or "").split()
        reading = self._reading
        if reading is None or reading.t_start != t_start:
            self._reading = _PartialReading(t_start, tokens)
            return []
        agreed = language.settled_prefix(reading.tokens, tokens)
        reading.tokens = tokens
        if agreed <= reading.read:
            return []
        text = " ".join(tokens[:agreed])
        n_words = len(language.words(text))
        early = {k: s for k, s in early.items() if s.early and n_words >= s.early.min_words}
        if not early:
            return []
        reading.read = agreed
        parts = language.pieces(text) or [text]
        plain = [language.plain_meaning(p) for p in parts]
        analyses = list(await (self.analyze_partial or self.analyze)(plain))
        if len(analyses) != len(parts):
            return []  # shed: the model had finals to score first
        if t_start < self._customer_final_end:
            return []  # the final overtook this partial while it was being scored
        clause_signals = _clause_signals(loaded, parts, analyses)
        candidates: list[Candidate] = []
        for cue_id, spec in early.items():
            assert spec.early is not None
            # Words alone: the voice, the text emotion and the fused state belong to the
            # whole turn, which is not over.
            cand = self._language_candidate(
                loaded,
                cue_id,
                spec,
                clause_signals,
                {},
                {},
                t_start,
                text,
                raise_by=spec.early.margin,
            )
            if cand is not None:
                candidates.append(replace(cand, reasons=(*cand.reasons, EARLY_NOTE)))
        room = loaded.playbook.max_cues_per_utterance - self._early_this_turn
        if not candidates or room <= 0:
            return []
        chosen = self._choose(candidates, t_end, room, turn=t_start)
        self._early_this_turn += len(chosen)
        out = [self._cue_event(c, event, t_start, t_end, early=True) for c in chosen]
        out.extend(
            self.escalation.observe_cues(
                [(c.cue, c.spec) for c in chosen],
                summary=self.handoff,
                state={"t": t_end, "t_start": t_start},
                stronger_again={c.cue for c in chosen if c.stronger_again},
            )
        )
        return out

    def on_pace(self, speaker: str, spoken: Spoken) -> list[Event]:
        """Every finished utterance's syllable count, transcribed or not (agent pace)."""
        if speaker != "agent":
            self.customer_pace.append(spoken)
            return []
        self.agent_pace.append(spoken)
        loaded = self.holder.current
        now = spoken.t_end
        out = []
        for cue_id, spec in loaded.playbook.enabled().items():
            if spec.detector != "agent_pace_fast":
                continue
            p = spec.params
            hit = agent_pace(
                self.agent_pace,
                self.customer_pace,
                now,
                syllables_per_s=p.get("syllables_per_s", 5.5),
                min_speech_s=p.get("min_speech_s", 8.0),
                window_s=p.get("window_s", 30.0),
                vs_customer=p.get("vs_customer", 0.0),
            )
            last = self.fired_at.get(cue_id)
            if hit is None or (last is not None and now - last < spec.cooldown_s):
                continue
            self.fired_at[cue_id] = now
            out.append(self._timing_event(cue_id, spec, hit))
        return out

    async def _analyze(self, texts: Sequence[str]) -> list[TextAnalysis]:
        """The models' reading of each text, litotes said plainly (`language.plain_meaning`),
        ended as a sentence (`language.as_sentence`)."""
        read = [language.as_sentence(language.plain_meaning(t)) for t in texts]
        return list(await self.analyze(read))

    async def _agent_utterance(
        self, loaded: LoadedPlaybook, event: Mapping[str, Any], text: str
    ) -> list[Event]:
        """Record the agent's moves (context for cues, the handoff's "what was tried"); the
        safety move (EscalationSpec.safety_move) also alerts the supervisors."""
        pb = loaded.playbook
        safety = pb.escalation.safety_move
        parts = language.clauses(text) or [text]
        analyses = await self._analyze(parts)
        t_end = float(event["t_end"])
        out: list[Event] = []
        for clause, a in zip(parts, analyses, strict=True):
            if a.embedding is None:
                continue
            moves = _agent_moves(
                loaded.index.agent_moves(a.embedding, 0.0), pb.agent_move_threshold, pb.escalation
            )
            if not moves:
                continue
            self.agent_moves.append(AgentMove(moves[0][0], t_end, clause))
            if moves[0][0] == safety:
                out.extend(
                    self.escalation.observe_agent_safety(
                        clause,
                        summary=self.handoff,
                        state={"t": t_end, "t_start": float(event.get("t_start", t_end))},
                    )
                )
        return out

    async def _customer_utterance(
        self, loaded: LoadedPlaybook, event: Mapping[str, Any], text: str
    ) -> list[Event]:
        pb = loaded.playbook
        parts = language.pieces(text) or [text]
        analyses = await self._analyze(parts)
        # Each clause's best example per cue is computed once here, not once per cue.
        clause_signals = _clause_signals(loaded, parts, analyses)
        closer = await self._close_looks(loaded, clause_signals, _word_probabilities(event))
        t_start, t_end = float(event["t_start"]), float(event["t_end"])
        self._heard_before_turn = self._customer_heard_s
        self._customer_heard_s += max(0.0, t_end - t_start)
        # This turn is decided now: its partials are no longer read, and the cues they
        # fired count against the turn's limit.
        self._customer_final_end = max(self._customer_final_end, t_end)
        self._reading = None
        shown_early, self._early_this_turn = self._early_this_turn, 0
        prosody: Mapping[str, Any] = event.get("prosody") or {}
        sentiment: Mapping[str, Any] = event.get("sentiment") or {}
        state: Mapping[str, Any] = event.get("state") or {}
        self.states.append(
            {
                "t": t_end,
                "valence": float(state.get("valence", sentiment.get("valence", 0.0))),
                "arousal": float(state.get("arousal", prosody.get("arousal", 0.5))),
                "emotion": str(state.get("emotion", sentiment.get("label", "neutral"))),
                "text": text,
                "confidence": _mean_word_prob(event.get("words") or []),
            }
        )
        candidates: list[Candidate] = []
        for cue_id, spec in pb.enabled().items():
            if spec.kind != "language" or spec.party != "customer":
                continue
            cand = self._language_candidate(
                loaded,
                cue_id,
                spec,
                [*clause_signals, *closer.get(cue_id, ())],
                prosody,
                sentiment,
                t_start,
                text,
                state_valence=float(state["valence"]) if "valence" in state else None,
            )
            if cand is not None:
                candidates.append(cand)
        history = self._history_candidate(pb, text)
        if history is not None and not any(c.cue == "repeat_contact" for c in candidates):
            candidates.append(history)
        intense = self._sustained_intense(pb)
        if intense is not None and "crisis" in pb.enabled():
            candidates.append(
                Candidate("crisis", pb.cues["crisis"], 1.0, (intense,), text, (), None, TREND)
            )
        out: list[Event] = []
        room = pb.max_cues_per_utterance - shown_early
        if room <= 0:  # a crisis still goes through
            candidates = [c for c in candidates if c.spec.severity == "critical"]
        chosen = self._choose(candidates, t_end, max(1, room), turn=t_start)
        for cand in chosen:
            ev = self._cue_event(cand, event, t_start, t_end)
            out.append(ev)
        out.extend(
            self.escalation.observe_customer(
                pb,
                state={**self.states[-1], "t_start": t_start},  # the span the event names
                states=self.states,
                # A crisis card raised by the trend is paged as what it is, an intense state
                # (`intense` below), not a second time as crisis language.
                fired=[(c.cue, c.spec) for c in chosen if c.source != TREND],
                stronger_again={c.cue for c in chosen if c.stronger_again},
                summary=self.handoff,
                intense=intense,
            )
        )
        return out

    async def _close_looks(
        self,
        loaded: LoadedPlaybook,
        clauses: Sequence[ClauseSignals],
        heard: Mapping[str, float] | None = None,
    ) -> dict[str, list[ClauseSignals]]:
        """Second readings of the clauses that came close to a cue, per cue, analysed in one
        batch for every such cue: short windows of a long clause (`close_look`, CloseLook)
        and the clause without one of the words the ASR was unsure of (`misheard`, Misheard;
        `heard`: each word's lowest probability in the turn)."""
        pb = loaded.playbook
        wanted: dict[str, list[str]] = {}
        # A reading without one word: the word, and the framing of the clause it came from.
        misread: dict[str, tuple[str, language.Framing]] = {}
        for cue_id, spec in pb.enabled().items():
            look, misheard = spec.close_look, spec.misheard  # language cues only (the schema)
            if (look is None and misheard is None) or spec.party != "customer":
                continue  # the cues `_customer_utterance` scores, and no others
            assert spec.threshold is not None
            for clause in clauses:
                windowed = look is not None and len(clause.text.split()) > look.words
                if not windowed and (misheard is None or not heard):
                    continue  # no second reading could apply: the clause need not be scored
                m = loaded.index.score(cue_id, spec, clause)
                if m.score >= spec.threshold:
                    continue
                if windowed and look is not None and m.score >= spec.threshold - look.within:
                    wanted.setdefault(cue_id, []).extend(language.windows(clause.text, look.words))
                if (
                    misheard is not None
                    and heard
                    and m.score >= spec.threshold - misheard.within
                    and (m.meaning is None or m.meaning >= misheard.min_meaning)
                ):
                    unsure = sorted(
                        (heard[language.bare(word)], word, variant)
                        for word, variant in language.without_each_word(
                            clause.text, max_words=misheard.max_words
                        )
                        if heard.get(language.bare(word), 1.0) < misheard.below
                    )
                    for _, word, variant in unsure[: misheard.max_variants]:
                        wanted.setdefault(cue_id, []).append(variant)
                        misread.setdefault(variant, (word, clause.framing))
        if not wanted:
            return {}
        texts = list(dict.fromkeys(t for ws in wanted.values() for t in ws))
        analyses = await self._analyze(texts)
        signals = {}
        for c in _clause_signals(loaded, texts, analyses):
            if c.text in misread:
                word, framing = misread[c.text]
                if c.framing != framing:
                    continue  # the word left out changed what the clause says of itself
                c = replace(c, left_out=word)
            signals[c.text] = c
        return {
            cue_id: [signals[t] for t in dict.fromkeys(ws) if t in signals]
            for cue_id, ws in wanted.items()
        }

    def _language_candidate(
        self,
        loaded: LoadedPlaybook,
        cue_id: str,
        spec: CueSpec,
        clauses: Sequence[ClauseSignals],
        prosody: Mapping[str, Any],
        sentiment: Mapping[str, Any],
        t_start: float,
        text: str,
        state_valence: float | None = None,
        raise_by: float = 0.0,
    ) -> Candidate | None:
        assert spec.threshold is not None
        threshold = spec.threshold + raise_by
        reasons: list[str] = []
        context_met = self._context_met(spec, t_start)
        if spec.context is not None:
            if spec.context.required and not context_met:
                return None
            if context_met:
                threshold -= spec.context.threshold_drop
        # The voice's arousal counts only where pitch was found: for the boost, the affect gate
        # and the voice trigger alike.
        raw_arousal = prosody.get("arousal")
        arousal = (
            float(raw_arousal)
            if isinstance(raw_arousal, (int, float)) and prosody.get("f0_hz")
            else None
        )
        voice_note = _voice_note(prosody)
        boost = 0.0
        vb = spec.voice_boost
        if (
            vb is not None
            and arousal is not None
            and (vb.min_arousal is None or arousal >= vb.min_arousal)
            and (vb.max_arousal is None or arousal <= vb.max_arousal)
        ):
            boost = vb.add
        best: SemanticMatch | None = None
        best_by_meaning = False  # `best` fired by the probe alone (Meaning.fire_above)
        best_left_out: str | None = None  # `best` read without this word (Misheard)
        # The best clause among those that pass every check: a long turn may hold one clause
        # that clearly means the cue next to another that scores higher but is ordinary talk.
        read = spec.meaning
        for clause in clauses:
            m = loaded.index.score(cue_id, spec, clause)
            n_words = len(language.words(clause.text))
            if n_words < spec.min_words and not self._clear_though_short(
                spec, m, n_words, early=bool(raise_by)
            ):
                continue  # "I don't know." is too ambiguous alone
            by_meaning = False
            near = (
                m.score + boost >= threshold
                # The words themselves must be nearer this cue than ordinary talk: a frustrated
                # tone or a raised voice does not turn "I already have that" into a cue.
                and m.semantic >= m.negative + spec.margin
                and m.similarity >= spec.min_similarity
                and m.similarity >= m.rival - spec.rival_margin
            )
            if read is not None and m.meaning is not None:
                if near and m.meaning < read.veto_below:
                    near = False  # nearest to an example, but the probe reads another meaning
                elif near and any(
                    m.score + boost - threshold < step.within and m.meaning < step.at
                    for step in read.confirm
                ):
                    near = False  # a near call that one example decided, the probe doubts
                elif (
                    not near
                    and not raise_by  # an early read needs its words to clear the margin
                    and read.fire_above is not None
                    and m.meaning >= read.fire_above
                    and not m.adjustments  # negated, hypothetical, reported or a question
                ):
                    # Near no example, but plainly this cue's meaning: ranked at the threshold.
                    near = by_meaning = True
                    m = replace(m, score=max(m.score, threshold - boost))
            if near and (best is None or m.score > best.score):
                best, best_by_meaning, best_left_out = m, by_meaning, clause.left_out
        if best is not None and not _affect_ok(spec, sentiment, arousal):
            best = None  # the words alone are not enough for this cue (AffectGate)
        if best is not None:
            total = best.score + boost
            if best_by_meaning:
                # Not a word match: no example earned it (`matched_example` finds none).
                reasons.append(
                    f'words: "{best.clause}" read as this cue by meaning ({best.meaning:.0%}); '
                    f'no example is near (nearest "{best.example}", {best.similarity:.2f})'
                )
            else:
                reasons.append(words_reason(best.clause, best.example, best.similarity))
            if best_left_out is not None:
                reasons.append(f'read without "{best_left_out}", perhaps misheard')
            if best.adjustments:
                reasons.append("framing considered: " + ", ".join(best.adjustments))
            if read is not None and best.meaning is not None and not best_by_meaning:
                reasons.append(f"meaning read as this cue ({best.meaning:.0%})")
            emo = _emotion_note(sentiment)
            if emo:
                reasons.append(emo)
            if boost and voice_note:
                reasons.append(voice_note)
            if context_met and spec.context is not None:
                reasons.append(f"after the agent's {self._last_move_name(spec, t_start)}")
            # The words that carry the example's meaning, else the whole clause matched (from
            # this line, else from the turn it was heard with): the panel marks them.
            phrase = (
                None  # no example's words carry it: the panel marks the whole clause
                if best_by_meaning
                else language.find_phrase(best.clause, language.content_words(best.example))
            )
            if phrase is None:
                phrase = best.clause if best.clause.lower() in text.lower() else text
            return Candidate(cue_id, spec, total, tuple(reasons), text, (phrase,), best, WORDS)
        vt = spec.voice_trigger
        if vt is None or arousal is None or self._heard_before_turn < vt.min_baseline_s:
            return None
        if language.is_thanks(text):
            return None  # a flat or loud "thank you" is thanks, whatever the voice
        n_words = len(language.words(text))
        label, prob = _text_emotion(sentiment)
        # The fused state already lowers valence for a raised or flat voice (signals/state.py).
        valence = float(state_valence if state_valence is not None else sentiment.get("valence", 0))
        if (
            (vt.min_arousal is None or arousal >= vt.min_arousal)
            and (vt.max_arousal is None or arousal <= vt.max_arousal)
            and (not vt.emotions or label in vt.emotions)
            and prob >= vt.min_emotion_prob
            and valence <= vt.max_valence
            and n_words >= vt.min_words
            and (vt.max_words is None or n_words <= vt.max_words)
            and (
                context_met
                or not vt.needs_context
                or (vt.max_arousal_alone is not None and arousal <= vt.max_arousal_alone)
            )
            and (not vt.words_lean or self._words_lean(loaded, cue_id, spec, clauses))
        ):
            reasons = [voice_note or "voice far from this caller's usual"]
            reasons.append(f'words: "{text}" ({label})')
            if context_met and spec.context is not None:
                reasons.append(f"after the agent's {self._last_move_name(spec, t_start)}")
            return Candidate(cue_id, spec, threshold, tuple(reasons), text, (text,), None, VOICE)
        return None

    @staticmethod
    def _clear_though_short(spec: CueSpec, m: SemanticMatch, n_words: int, *, early: bool) -> bool:
        """A clause too short for the cue that still says it beyond doubt (SHORT_MEANING)."""
        return (
            not early
            and spec.severity != "critical"
            and m.meaning is not None
            and m.meaning >= SHORT_MEANING
            and m.semantic >= SHORT_SIMILARITY
            and n_words >= SHORT_MIN_WORDS
        )

    @staticmethod
    def _words_lean(
        loaded: LoadedPlaybook, cue_id: str, spec: CueSpec, clauses: Sequence[ClauseSignals]
    ) -> bool:
        """Some clause is at least as near the cue's examples as ordinary talk and the cue's
        near misses are (see VoiceTrigger.words_lean), and read as the cue by the meaning probe
        at `lean_meaning` or more."""
        vt = spec.voice_trigger
        floor = vt.lean_meaning if vt is not None else 0.0
        min_words = vt.min_words if vt is not None else 0
        for clause in clauses:
            if len(language.words(clause.text)) < min_words:
                # A fragment too short to say anything: "I am omnis", the garbled half of a
                # shouted "I am sick and tired of this", leaned toward crisis at 0.23 and
                # paged a supervisor critical (an outside UI audit).
                continue
            m = loaded.index.score(cue_id, spec, clause)
            if m.similarity >= m.negative and (m.meaning is None or m.meaning >= floor):
                return True
        return False

    def _context_met(self, spec: CueSpec, t_start: float) -> bool:
        if spec.context is None:
            return False
        wanted = set(spec.context.after_agent_move)
        return any(
            m.move in wanted and t_start - spec.context.within_s <= m.t <= t_start + 0.5
            for m in self.agent_moves
        )

    def _advice_for(self, spec: CueSpec, t: float) -> tuple[str, str | None]:
        """The cue's advice, or its `advice_after` variant when the agent's latest move
        before `t` calls for it, with the reason that says so."""
        if not spec.advice_after:
            return spec.advice, None
        last = next((m for m in reversed(self.agent_moves) if m.t <= t + 0.5), None)
        if last is None or last.move not in spec.advice_after or t - last.t > ADVICE_AFTER_S:
            return spec.advice, None
        said = f' ("{last.text}")' if last.text else ""
        return spec.advice_after[last.move], f"after the agent's {last.move}{said}"

    def _last_move_name(self, spec: CueSpec, t_start: float) -> str:
        wanted = set(spec.context.after_agent_move) if spec.context else set()
        for m in reversed(self.agent_moves):
            if m.move in wanted and m.t <= t_start + 0.5:
                return f'{m.move} ("{m.text}")' if m.text else m.move
        return "last move"

    def _sustained_intense(self, pb: Playbook) -> str | None:
        e = pb.escalation
        last = self.states[-e.intense_turns :]
        if len(last) < e.intense_turns:
            return None
        if all(s["arousal"] > e.intense_arousal and s["valence"] < e.intense_valence for s in last):
            return (
                f"intense negative state over {e.intense_turns} customer turns "
                f"(arousal > {e.intense_arousal}, valence < {e.intense_valence})"
            )
        return None

    def _choose(
        self, candidates: list[Candidate], t: float, limit: int, *, turn: float
    ) -> list[Candidate]:
        """The candidates to show; `turn`: the start of the customer turn they come from."""
        chosen = []
        # Critical first (crisis), then by priority and strength.
        ranked = sorted(
            candidates,
            key=lambda c: (c.spec.severity != "critical", c.spec.priority, -c.score),
        )
        for cand in ranked:
            last = self.fired_at.get(cand.cue)
            if last is not None and t - last < cand.spec.cooldown_s:
                stronger = cand.spec.refire_above
                shown = self.fired_score.get(cand.cue)
                if stronger is None or shown is None or cand.score < shown + stronger:
                    if cand.source == WORDS:  # not the voice alone: one loud line is no trend
                        self.escalation.matched_again(cand.cue, turn)
                    continue
                read, read_shown = _meaning_of(cand), self.fired_meaning.get(cand.cue)
                if (
                    read is not None
                    and read_shown is not None
                    and read < min(read_shown, REPAGE_DOUBT_BELOW)
                ):
                    # Nearer an example, but the probe doubts it, and more than the one shown:
                    # not a clearer match. "It's talking through the door" (a garbled stuck
                    # lift) re-paged a crisis 1.5 s after the first page, near a break-in
                    # example at 0.59 with the probe at 8% (22% for the first; session 34).
                    continue
                cand = replace(cand, stronger_again=True)
            chosen.append(cand)
            if len(chosen) >= limit:
                break
        for cand in chosen:
            self.fired_at[cand.cue] = t
            self.fired_score[cand.cue] = cand.score
            read = _meaning_of(cand)
            if read is None:
                self.fired_meaning.pop(cand.cue, None)
            else:
                self.fired_meaning[cand.cue] = read
        return chosen

    def _cue_event(
        self,
        cand: Candidate,
        event: Mapping[str, Any],
        t_start: float,
        t_end: float,
        *,
        early: bool = False,
    ) -> Event:
        advice, after = self._advice_for(cand.spec, t_start)
        ev = events.cue(
            cue=cand.cue,
            title=cand.spec.title,
            advice=advice,
            reasons=(*cand.reasons, *((after,) if after and after not in cand.reasons else ())),
            priority=cand.spec.priority,
            severity=cand.spec.severity,
            speaker="customer",
            t_start=t_start,
            t_end=t_end,
            evidence_text=cand.evidence_text,
            phrases=cand.phrases,
            source=cand.source,
            utterance_id=event.get("utterance_id"),
            expires_s=cand.spec.expires_s,
            score=cand.score,
            label=AI_LABEL,
        )
        if early:
            ev["early"] = True
        self.shown.append(ev)
        return ev

    # ------------------------------------------------------------------ timing

    def on_tick(self, timeline: Timeline) -> list[Event]:
        loaded = self.holder.current
        if self._timing is None or self._timing_version != loaded.version:
            specs = {k: v for k, v in loaded.playbook.enabled().items() if v.kind == "dynamics"}
            fired = self._timing._fired if self._timing else {}
            self._timing = TimingCues(specs, fired)
            self._timing_version = loaded.version
        out: list[Event] = []
        for cue_id, hit in self._timing.check(timeline):
            spec = self._timing.specs[cue_id]
            last = self.fired_at.get(cue_id)
            if last is not None and timeline.now - last < spec.cooldown_s:
                continue
            self.fired_at[cue_id] = timeline.now
            out.append(self._timing_event(cue_id, spec, hit))
        return out

    def _timing_event(self, cue_id: str, spec: CueSpec, hit: TimingHit) -> Event:
        speaker: Speaker | None = "agent" if spec.party == "agent" else None
        advice, after = self._advice_for(spec, hit.t_start)
        ev = events.cue(
            cue=cue_id,
            title=spec.title,
            advice=advice,
            reasons=(f"timing: {hit.why}", *((after,) if after else ())),
            priority=spec.priority,
            severity=spec.severity,
            speaker=speaker,
            t_start=hit.t_start,
            t_end=hit.t_end,
            evidence_text="",
            phrases=(),
            source=TIMING,
            utterance_id=None,
            expires_s=spec.expires_s,
            score=1.0,
            label=AI_LABEL,
        )
        self.shown.append(ev)
        return ev

    def set_history(self, previous: Sequence[Any], *, now: datetime | None = None) -> None:
        """The customer's previous calls (newest first): a recent one is a repeat contact."""
        spec = self.holder.current.playbook.cues.get("repeat_contact")
        if spec is None or not previous:
            return
        days = float(spec.params.get("history_days", 7.0))
        now = now or datetime.now(UTC)
        recent = [
            c
            for c in previous
            if isinstance(getattr(c, "started_at", None), datetime)
            and (now - _aware(c.started_at)).total_seconds() <= days * 86400
        ]
        if not recent:
            return
        last = recent[0]
        ago = (now - _aware(last.started_at)).total_seconds()
        when = f"{ago / 86400:.0f} days ago" if ago >= 86400 else f"{ago / 3600:.0f} hours ago"
        cues = ", ".join(sorted(getattr(last, "cue_counts", {}) or {})) or "no cues"
        outcome = getattr(last, "outcome", None)
        if outcome and outcome not in WRAP_UP_OUTCOMES:
            # Free text typed through the API: this cue is stored with this call and shown
            # to supervisors, so words about the earlier call would outlive its erasure (an
            # outside audit found "customer disputes divorce settlement..." in the next call
            # after the first was erased). The wrap-up's own choices are no such words.
            outcome = "noted in its record"
        outcome = outcome or getattr(last, "end_reason", None) or "unknown"
        self.history_hint = (
            f"history: {len(recent)} call(s) in the last {days:.0f} days; the last {when} "
            f"(outcome {outcome}; cues {cues})"
        )
        self._history_pending = True

    def _history_candidate(self, pb: Playbook, text: str) -> Candidate | None:
        spec = pb.enabled().get("repeat_contact")
        if not self._history_pending or spec is None or self.history_hint is None:
            return None
        self._history_pending = False  # once per call, at the customer's first utterance
        return Candidate("repeat_contact", spec, 1.0, (self.history_hint,), text, (), None, HISTORY)

    # ------------------------------------------------------------------ persistence

    def cooldowns_wall(self, *, now_audio: float, now_wall: float) -> dict[str, float]:
        """When each cue last fired, as wall-clock time (call audio time restarts elsewhere)."""
        return {cue: now_wall - max(0.0, now_audio - t) for cue, t in self.fired_at.items()}

    def restore_cooldowns(
        self, fired_wall: Mapping[str, float], *, now_audio: float, now_wall: float
    ) -> None:
        for cue, wall in fired_wall.items():
            self.fired_at[cue] = now_audio - max(0.0, now_wall - float(wall))

    # ------------------------------------------------------------------ summaries

    def handoff(self) -> dict[str, Any]:
        """What whoever joins needs: the state, its trend, what was said, shown and tried."""
        last = self.states[-1] if self.states else None
        trend = direction([float(s["valence"]) for s in self.states])
        phrases: list[str] = list(self.earlier_phrases)
        for ev in self.shown:
            for p in ev.get("evidence", {}).get("phrases", []):
                if p and p not in phrases:
                    phrases.append(p)
        cues_shown = list(dict.fromkeys([*self.earlier_counts, *(ev["cue"] for ev in self.shown)]))
        # A move restored from another instance's part of the call has no words (they are
        # not kept outside the instance that heard them): named only.
        tried = list(
            dict.fromkeys(f'{m.move}: "{m.text}"' if m.text else m.move for m in self.agent_moves)
        )[-6:]
        state = (
            {
                "valence": round(last["valence"], 3),
                "arousal": round(last["arousal"], 3),
                "emotion": last["emotion"],
            }
            if last
            else {"valence": 0.0, "arousal": 0.5, "emotion": "neutral"}
        )
        mood = _mood(self.states)
        text = (
            f"Customer now seems {state['emotion']} (valence {state['valence']:+.2f}, arousal "
            f"{state['arousal']:.2f})"
        )
        if mood["mostly"] is not None and mood["mostly"] != state["emotion"]:
            text += f", mostly {mood['mostly']} over the last {mood['turns']} turns"
        worst = mood["worst"]
        if worst is not None:
            text += (
                f"; at worst {worst['emotion']} (valence {worst['valence']:+.2f}) "
                f"at {worst['t']:.0f} s"
            )
        if trend == "improving" and last is not None and float(last["valence"]) <= WORST_VALENCE:
            # Less negative than an angry opening is no relief: a caller whose husband has
            # just collapsed read as "improving" on an outside supervisor audit's call.
            text += "; no better than before, still strongly negative."
        else:
            text += f"; {trend} over the call."
        if phrases:
            text += " They said: " + "; ".join(f'"{p}"' for p in phrases[-4:]) + "."
        # The customer's latest words, cue or not: an escalation the agent's safety protocol
        # raised (or a trend) comes from turns that fired no cue, so no phrase quotes them.
        # Turns restored from another instance have no words (coach/recap.py).
        last_said = [str(s["text"]) for s in self.states[-LAST_SAID_TURNS:] if s.get("text")]
        unquoted = [t for t in last_said if t not in phrases[-4:]]  # quoted once is enough
        if unquoted:
            # The latest line quoted above already: what is left came before it, and said
            # "Last said" it read as the caller's last words (an outside supervisor audit).
            label = "Before that" if last_said[-1] in phrases[-4:] else "Last said"
            text += f" {label}: " + "; ".join(f'"{t}"' for t in unquoted) + "."
        if cues_shown:
            # By their titles, as the agent saw them (ids read as jargon to a supervisor).
            cues = self.holder.current.playbook.cues
            titles = [cues[c].title if c in cues else c for c in cues_shown]
            text += " Cues shown: " + ", ".join(titles) + "."
        moves = list(dict.fromkeys(m.move for m in self.agent_moves))
        text += (
            " Agent tried: " + ", ".join(moves) + "."
            if moves
            else " No agent move recognised yet (apology, fix, safety question...)."
        )
        if self.history_hint:
            text += f" {self.history_hint}"
        return {
            "text": text,
            "state": state,
            "trend": trend,
            "mostly": mood["mostly"],
            "worst": worst,
            "trigger_phrases": phrases[-8:],
            "last_said": last_said,
            "cues_shown": cues_shown,
            "agent_tried": tried,
        }

    def published(
        self, cue: Mapping[str, Any], seq: int, *, redacted_phrases: Sequence[str] = ()
    ) -> None:
        """The bus `seq` the session gave `cue`, one of this engine's events: the session
        stamps a copy, so without this `call_summary` could not name the cue the way
        feedback does (`POST /api/calls/{id}/cues/{seq}/feedback`). `redacted_phrases`: its
        trigger phrases as the redacted view has them, what the session state may keep."""
        for p in redacted_phrases:
            if p and p not in self.redacted_phrases:
                self.redacted_phrases.append(p)
        del self.redacted_phrases[:-KEPT_PHRASES]
        for ev in reversed(self.shown):
            if ev is cue:
                ev["seq"] = seq
                return

    def cue_outcome(self, cue: Mapping[str, Any]) -> tuple[float | None, float | None, bool]:
        """The customer's valence before a shown cue (for an early cue, the turn it was raised
        in), the mean of the next two turns', and whether that is final (both turns heard;
        kept then, as the session state reads it at every customer turn). A cue restored from another instance's part of the call
        may carry its final outcome (coach/recap.py): the turns it was read from may since
        have been thinned out of the restored arc."""
        frozen = cue.get("outcome")
        if isinstance(frozen, tuple):
            return frozen[0], frozen[1], True
        known = self._outcomes.get(id(cue))
        if known is not None:
            return known[0], known[1], True
        t = float(cue["t_end"])
        before = [s["valence"] for s in self.states if s["t"] <= t + 0.01][-1:]
        after = [s["valence"] for s in self.states if s["t"] > t + 0.01][:3]
        if cue.get("early"):
            # Raised while the customer was still talking: that turn is the mood the agent
            # answered, not the answer's effect (counted as "after", it kept an early cue
            # from ever landing, and it shows before the turn ends, so it has no before).
            before, after = after[:1], after[1:]
        after = after[:2]
        outcome = (
            float(before[0]) if before else None,
            float(np.mean(after)) if after else None,
        )
        if len(after) == 2:
            self._outcomes[id(cue)] = outcome  # `shown` keeps the cue, so its id stays its own
        return outcome[0], outcome[1], len(after) == 2

    def _came_back(self, cue: Mapping[str, Any]) -> bool:
        """The cue matched again on one of the two customer turns its outcome is read from:
        it did not land, whatever the mean says (an outside audit: a frustration card
        "landed" because a calm "All right" followed the very next, still frustrated,
        turn)."""
        t = float(cue["t_end"])
        later = [float(s["t"]) for s in self.states if s["t"] > t + 0.01]
        if cue.get("early"):
            later = later[1:]  # the turn it was raised in is its "before"
        if not later:
            return False
        until = later[min(1, len(later) - 1)]
        return any(t + 0.01 < start < until for start in self.escalation.turns_matched(cue["cue"]))

    def call_summary(self) -> dict[str, Any]:
        """For call_end: cue counts and, per cue, whether the customer's mood improved after."""
        counts: dict[str, int] = dict(self.earlier_counts)
        detail = []
        for ev in self.shown:
            counts[ev["cue"]] = counts.get(ev["cue"], 0) + 1
            before, after, _ = self.cue_outcome(ev)
            landed = None
            if before is not None and after is not None:
                landed = bool(after - before >= 0.15) and not self._came_back(ev)
            detail.append(
                {
                    "cue": ev["cue"],
                    "seq": ev.get("seq"),
                    "t": round(float(ev["t_end"]), 3),
                    "valence_before": round(before, 3) if before is not None else None,
                    "valence_after": round(after, 3) if after is not None else None,
                    "landed": landed,
                }
            )
        return {"cues": counts, "cue_outcomes": detail, "escalations": self.escalation.raised}


_WORDS_REASON = re.compile(r'^words: ".*" means the same as "(?P<example>.*)" \(-?\d+\.\d+\)$')


REPAGE_DOUBT_BELOW = 0.15
"""A stronger match inside the cooldown that the meaning probe reads under this (and under the
match shown) is not shown again. Only doubt this low counts: the probe's readings of two
clauses are weak evidence against each other (a true crisis of the development splits read
0.20), and a page raised by the probe alone (0.99) must not mute every later one."""


def _meaning_of(cand: Candidate) -> float | None:
    """The probe's reading of a candidate's words (None: raised by voice, trend or history)."""
    return None if cand.match is None else cand.match.meaning


def words_reason(clause: str, example: str, similarity: float) -> str:
    """The reason line of a word match; `matched_example` reads the example back."""
    return f'words: "{clause}" means the same as "{example}" ({similarity:.2f})'


def matched_example(reasons: Sequence[str]) -> str | None:
    """The playbook example a cue's words matched, from its `reasons` (None: no word match).

    Lets offline tools (scripts/tune_playbook.py --examples) credit each example with the
    hits and false cues it caused without widening the event contract."""
    for line in reasons:
        m = _WORDS_REASON.match(line)
        if m:
            return m.group("example")
    return None


def _text_emotion(sentiment: Mapping[str, Any]) -> tuple[str, float]:
    """The turn's text emotion label and its probability."""
    label = str(sentiment.get("label", "neutral"))
    return label, float((sentiment.get("scores") or {}).get(label, 0.0))


def _affect_ok(spec: CueSpec, sentiment: Mapping[str, Any], arousal: float | None) -> bool:
    """Whether the turn sounds like the cue, where its playbook entry asks (AffectGate)."""
    gate = spec.affect_gate
    if gate is None:
        return True
    label, prob = _text_emotion(sentiment)
    if label in gate.emotions and prob >= gate.min_emotion_prob:
        return True
    if arousal is None:
        return False
    return (gate.max_arousal is not None and arousal <= gate.max_arousal) or (
        gate.min_arousal is not None and arousal >= gate.min_arousal
    )


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def _mean_word_prob(words: Sequence[Mapping[str, Any]]) -> float | None:
    ps = [float(w["p"]) for w in words if "p" in w]
    return float(np.mean(ps)) if ps else None


KEPT_PHRASES = 8
"""Trigger phrases the handoff quotes (its `trigger_phrases`), and the session state keeps."""

LAST_SAID_TURNS = 2
"""The customer's latest turns the handoff quotes whole (`last_said`)."""
MOOD_TURNS = 6
"""The customer turns the handoff's "mostly" reads: one turn ("No.") is not the caller's mood."""
WORST_VALENCE = -0.5
"""Below this the handoff names the call's most negative moment."""


def _mood(states: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The caller's feeling beyond the last utterance: the emotion most of the recent turns
    carried (None if no emotion held at least two of them) and the most negative moment."""
    recent = states[-MOOD_TURNS:]
    counts = Counter(str(s["emotion"]) for s in recent if s.get("emotion") != "neutral")
    mostly = None
    if counts:
        label, n = counts.most_common(1)[0]
        mostly = label if n >= 2 else None
    worst = min(states, key=lambda s: float(s["valence"]), default=None)
    return {
        "turns": len(recent),
        "mostly": mostly,
        "worst": (
            {
                "t": round(float(worst.get("t", 0.0)), 1),
                "valence": round(float(worst["valence"]), 3),
                "emotion": worst["emotion"],
            }
            if worst is not None and float(worst["valence"]) < WORST_VALENCE
            else None
        ),
    }


def _voice_note(prosody: Mapping[str, Any]) -> str | None:
    why = [str(w) for w in prosody.get("why") or []]
    arousal = prosody.get("arousal")
    if not why or not isinstance(arousal, (int, float)):
        return None
    level = "raised" if arousal >= 0.5 else "subdued"
    return f"voice {level} vs this caller's usual: " + ", ".join(why[:3])


def _emotion_note(sentiment: Mapping[str, Any]) -> str | None:
    label = sentiment.get("label")
    scores = sentiment.get("scores") or {}
    if not label or label in ("neutral", "positive"):
        return None
    return f"text emotion: {label} ({float(scores.get(label, 0.0)):.0%})"


def _agent_moves(
    ranked: Sequence[tuple[str, float]], threshold: float, escalation: EscalationSpec
) -> list[tuple[str, float]]:
    """The moves an agent clause makes, best first, from every move's closeness (`ranked`).
    The safety move pages a supervisor, so it must be closer (`safety_threshold`) and clearly
    ahead of the next move (`safety_margin`); otherwise the clause is read without it."""
    safety = escalation.safety_move
    others = [sim for move, sim in ranked if move != safety]
    runner_up = max(others, default=-1.0)
    return [
        (move, sim)
        for move, sim in ranked
        if sim >= threshold
        and (
            move != safety
            or (sim >= escalation.safety_threshold and sim - runner_up >= escalation.safety_margin)
        )
    ]
