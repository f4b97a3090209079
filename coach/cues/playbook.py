"""The playbook: cues as data (YAML), validated on load with errors that name the line.

Operators tune coaching without touching Python: each cue's advice, priority, cooldown,
thresholds and example phrases live in `coach/playbook.yaml` (or the file named by
COACH_PLAYBOOK_FILE). A bad edit must never take down live calls, so `load_playbook` raises
`PlaybookError` with every problem and its line, and the reloader keeps the last good
playbook when a new version does not validate.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

DEFAULT_PLAYBOOK = Path(__file__).resolve().parents[1] / "playbook.yaml"

MAX_PHRASES = 10_000
"""Example phrases a playbook may hold in all (cues' positives and negatives, background,
agent moves; the bundled one has about 2,600). Every new phrase is embedded by two encoders
when the file loads, about 30 ms each on a laptop core: a pasted corpus of 20,000 lines held
the CPU, beside the live calls' speech recognition, for ten minutes at each reload."""
MAX_PLAYBOOK_BYTES = 4 * 1024 * 1024
"""Largest playbook file read (the bundled one is about 160 KB): a larger one is refused
before it is read whole."""

EmotionLabel = Literal["frustrated", "anxious", "confused", "sad", "neutral", "positive"]
Urgency = Literal["low", "medium", "high", "critical"]
EscalationReason = Literal[
    "high_emotional_intensity",
    "repeated_frustration",
    "complex_inquiry",
    "user_request",
    "low_confidence",
    "crisis_indicators",
]
# Timing detectors implemented in code (coach/cues/dynamics.py); a dynamics cue names one.
Detector = Literal["dead_air", "overtalk", "agent_pace_fast", "talk_ratio"]
_CUE_ID = re.compile(r"^[a-z][a-z0-9_]{1,40}$")
# The cue taxonomy of /work/shared/CUES.md: each of these must be in every playbook, because
# a deleted or misspelt id (`confusoin`) would silently stop that coaching; an operator turns
# one off with `enabled: false` instead. Language cues (None) read the customer's words; a
# timing cue runs the detector of its own name. Extra cue ids are the operator's own.
STANDARD_CUES: dict[str, Detector | None] = {
    "frustration": None,
    "confusion": None,
    "cost_anxiety": None,
    "urgency": None,
    "dejection": None,
    "escalation_request": None,
    "churn_risk": None,
    "repeat_contact": None,
    "crisis": None,
    "dead_air": "dead_air",
    "overtalk": "overtalk",
    "agent_pace_fast": "agent_pace_fast",
}


def _same(text: str) -> str:
    """Two phrasings that read as the same sentence to the matcher."""
    return " ".join(text.split()).casefold()


def _not_blank(text: str) -> str:
    # An invisible character (zero-width space) is blank too: it matches nothing.
    if not any(ch.isalnum() for ch in text):
        raise ValueError(f"blank phrase {text!r}: no letters or digits")
    return text


def _unique(v: list[str]) -> list[str]:
    if len(set(v)) != len(v):
        dupes = sorted({t for t in v if v.count(t) > 1})
        raise ValueError(f"duplicate phrases: {dupes[:3]}")
    return v


# Example phrases (positives, negatives, background, agent moves): none blank, none twice.
Phrases = Annotated[list[Annotated[str, AfterValidator(_not_blank)]], AfterValidator(_unique)]


class _Strict(BaseModel):
    # strict: `priority: true` or `min_words: 2.5` is a mistake, not 1 and 2; no setting
    # of the playbook has a use for NaN or infinity (`.nan` passes every range check).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class VoiceBoost(_Strict):
    """Add `add` to the semantic score when the voice is this far from the caller's usual."""

    min_arousal: float | None = Field(None, ge=0, le=1)
    max_arousal: float | None = Field(None, ge=0, le=1)
    add: float = Field(0.05, ge=0, le=0.5)


class VoiceTrigger(_Strict):
    """Fire on voice and text emotion alone, even when no example phrase matched."""

    min_arousal: float | None = Field(None, ge=0, le=1)
    max_arousal: float | None = Field(None, ge=0, le=1)
    emotions: list[EmotionLabel] = Field(default_factory=list)
    """The text emotion must be one of these (empty: any)."""
    min_emotion_prob: float = Field(0.0, ge=0, le=1)
    max_valence: float = Field(1.0, ge=-1, le=1)
    min_words: int = Field(1, ge=0)
    max_words: int | None = Field(None, ge=1)
    needs_context: bool = False
    """Only with the cue's context condition met (e.g. dejection after a resolution attempt)."""
    max_arousal_alone: float | None = Field(None, ge=0, le=1)
    """A voice this far down fires even without the context."""
    min_baseline_s: float = Field(0.0, ge=0, le=60)
    """Seconds of the caller's speech heard before the turn: a voice "far from this caller's
    usual" measured against one short fragment is not (an outside check's false crisis and
    critical page on a confused line, the caller's baseline a single 1.3 s fragment)."""
    words_lean: bool = False
    """The words must be at least as near this cue's examples as ordinary talk in some clause:
    a panicked voice carries garbled words, not "I'm moving the family to another app"."""
    lean_meaning: float = Field(0.0, ge=0, le=1)
    """With `words_lean`, that clause must also be read as this cue by the meaning probe at
    least this (the cue needs `meaning`). An angry complaint the text model calls "sad" ("I
    don't care about my money") leans toward crisis examples as much as garbled panic does;
    the probe tells them apart (BENCHMARKS, "A crisis read by meaning alone")."""

    @model_validator(mode="after")
    def _lean(self) -> VoiceTrigger:
        if self.lean_meaning and not self.words_lean:
            raise ValueError("lean_meaning needs words_lean: true (it reads the leaning clause)")
        return self


class AffectGate(_Strict):
    """A match on words alone is not enough: the turn must also sound like the cue.

    Resigned wording is close to ordinary acceptance ("I'm used to it", "it saves me money"
    after a plan is explained); what tells them apart is how it is said. A word match fires
    only when the turn's text emotion is one of `emotions` (at `min_emotion_prob` or more) or
    the voice is within the arousal bound.
    """

    emotions: list[EmotionLabel] = Field(min_length=1)
    min_emotion_prob: float = Field(0.0, ge=0, le=1)
    max_arousal: float | None = Field(None, ge=0, le=1)
    """Or a voice this flat (None: the text emotion alone decides)."""
    min_arousal: float | None = Field(None, ge=0, le=1)
    """Or a voice this raised (None: the text emotion alone decides)."""


class CloseLook(_Strict):
    """Read a long clause again as short overlapping windows when it comes close to the cue.

    Garbled ASR runs sentences together and buries the few words that carry the meaning:
    "the songs put a tree from a kitchen wall, and then the strong smell of gas in the host,
    my wee voice still up there" scores under the threshold whole, while its window "and then
    the strong smell of gas in the host" is plainly a gas leak. Windows cost a second model
    pass, so they are read only for a clause that scores within `within` of the threshold.
    """

    words: int = Field(8, ge=3, le=30)
    """Window length in words; windows overlap by half."""
    within: float = Field(0.08, gt=0, le=0.5)


class Misheard(_Strict):
    """Read a clause that comes close to the cue again without a word the ASR was unsure of.

    ASR mishears single words of clear sentences, and one odd word moves the sentence's
    vector far: "I called Doom about the exact same thing, and was told it wouldn't happen
    again" is 0.37 from the nearest repeat-contact example, the same sentence without "Doom"
    (which the ASR gave a probability of 0.07) 0.74. The clause is read again without each
    content word the ASR was unsure of (`below`; the `max_variants` least sure, see
    `language.without_each_word`), in a second model pass, only when it scores within
    `within` under the threshold and the meaning probe already leans to the cue
    (`min_meaning`). A reading must keep the clause's framing (negated, hypothetical,
    reported, a question) and pass every check a clause does. A transcript without word
    probabilities gets no second reading: nothing says which word was misheard.
    """

    within: float = Field(0.15, gt=0, le=0.5)
    min_meaning: float = Field(0.6, ge=0, le=1)
    """The probe's reading of the whole clause a second look needs (ignored without a probe)."""
    below: float = Field(0.5, gt=0, le=1)
    """A word the ASR gave a probability under this may have been misheard."""
    max_variants: int = Field(3, ge=1, le=10)
    """Readings per clause at most (each costs the model a text): the least sure words."""
    max_words: int = Field(30, ge=3, le=60)


class ConfirmStep(_Strict):
    within: float = Field(gt=0, le=1)
    """How far above the threshold a match is still a near call."""
    at: float = Field(ge=0, le=1)
    """The probe's reading such a near call needs."""


class Meaning(_Strict):
    """Read the clause with the playbook's meaning probe as well as by nearest example.

    The nearest-example match asks which single example a clause is most like; one lucky
    example carries a clause that means something else ("I'm in stupid charge", a garbled
    "these stupid chargers", is near "I'm going to do something stupid", a crisis), and a
    paraphrase near none of them is missed. The probe (`coach.cues.matcher.MeaningProbe`) is fitted to all the playbook's
    examples at once, every cue's against every other cue's, the near misses and ordinary
    talk, so it weighs what sets the cues apart. Its reading is the probability that the
    clause means this cue.
    """

    veto_below: float = Field(0.0, ge=0, le=1)
    """A nearest-example match the probe gives less than this is ordinary talk or another
    cue's: dropped (0: no veto)."""
    fire_above: float | None = Field(None, gt=0, le=1)
    """A clause the probe gives at least this fires the cue though no example is near enough
    (never a negated, hypothetical, reported or question clause the framing penalises)."""
    confirm: list[ConfirmStep] = Field(default_factory=list, max_length=8)
    """Near calls the one example decided: a match that clears the threshold by less than a
    step's `within` needs the probe at that step's `at` or more as well (every step that
    applies). Nearer calls can ask for more: crisis asks 0.3 within 0.03 of its threshold
    and 0.15 within 0.07."""

    @model_validator(mode="before")
    @classmethod
    def _one_step_form(cls, data: Any) -> Any:
        """Session 33's form, `confirm_within` and `confirm_at`, is one step of `confirm`:
        a playbook written for it (a ConfigMap not yet updated) still loads."""
        if not isinstance(data, Mapping) or not {"confirm_within", "confirm_at"} & data.keys():
            return data
        if "confirm" in data:
            raise ValueError("give `confirm` or `confirm_within`/`confirm_at`, not both")
        data = dict(data)
        within, at = data.pop("confirm_within", 0.0), data.pop("confirm_at", 0.0)
        data["confirm"] = [{"within": within, "at": at}] if within else []
        return data


class Early(_Strict):
    """Fire from the live transcript, before the customer has finished the turn.

    The final transcript of a turn waits for its end and a full decode (0.5-1.3 s after it
    on two CPU cores); a partial transcript of a long turn often holds the words that mean the cue
    seconds earlier. Partials are rougher (small model, greedy decode, cut mid-phrase), so
    only words that two partials in a row agree on are read, and only a clause that clears
    the threshold by `margin` on its words alone (no voice, emotion or context boost, which
    need the whole turn) fires. Everything else waits for the final as before.
    """

    margin: float = Field(0.06, ge=0, le=0.5)
    """How far above the cue's threshold a clause of a partial must score."""
    min_words: int = Field(5, ge=3, le=30)
    """Agreed words the partial must hold before it is read at all."""


class Context(_Strict):
    """The cue needs the agent to have made one of these moves in the last `within_s`."""

    after_agent_move: list[str] = Field(default_factory=list)
    within_s: float = Field(45.0, gt=0)
    required: bool = False
    """True: never fire without the context; False: the context only lowers the threshold."""
    threshold_drop: float = Field(0.05, ge=0, le=0.5)


class Framings(_Strict):
    """Which clause framings may fire the cue (see coach/cues/language.py)."""

    negated_mismatch_penalty: float = Field(0.12, ge=0, le=1)
    hypothetical_penalty: float = Field(0.2, ge=0, le=1)
    reported_penalty: float = Field(0.25, ge=0, le=1)
    question_penalty: float = Field(0.0, ge=0, le=1)


class Escalate(_Strict):
    reason: EscalationReason
    urgency: Urgency


ADVICE_AFTER_S = 20.0
"""How recent the agent's move must be for a cue's `advice_after` to apply."""


class CueSpec(_Strict):
    title: str = Field(min_length=3, max_length=60)
    advice: str = Field(min_length=5, max_length=160)
    priority: int = Field(ge=1, le=5)
    cooldown_s: float = Field(ge=0, le=3600)
    party: Literal["customer", "agent", "call"]
    kind: Literal["language", "dynamics"]
    enabled: bool = True
    severity: Literal["normal", "critical"] = "normal"
    expires_s: float = Field(30.0, gt=0, le=600)
    # Language cues.
    threshold: float | None = Field(None, gt=0, le=1)
    margin: float = Field(0.02, ge=-0.5, le=0.5)
    """The best positive example must beat the best negative/background one by this much."""
    rival_margin: float = Field(0.08, ge=0, le=1)
    """A clause that matches another cue's examples better than this cue's by more than this
    belongs to the other cue ("I want to end my membership" is churn, not crisis)."""
    min_similarity: float = Field(0.35, ge=0, le=1)
    """Boosts (emotion, voice, context) never carry a clause whose words are this far off."""
    min_words: int = Field(4, ge=1, le=20)
    """Shorter clauses ("Okay.", "I don't know.") are too ambiguous to match by meaning alone,
    unless they say the cue beyond doubt (coach/cues/engine.py `SHORT_MEANING`)."""
    emotion_boost: dict[EmotionLabel, Annotated[float, Field(ge=-0.5, le=0.5)]] = Field(
        default_factory=dict
    )
    """Added per unit of that text emotion's probability. The bundled ones are 0.06-0.12: a
    boost near the threshold itself would let a tone alone carry a clause."""
    voice_boost: VoiceBoost | None = None
    voice_trigger: VoiceTrigger | None = None
    affect_gate: AffectGate | None = None
    close_look: CloseLook | None = None
    misheard: Misheard | None = None
    refire_above: float | None = Field(None, gt=0, le=1)
    """Inside the cooldown, show the cue again when a turn matches it by this much more than
    the match last shown (None: the cooldown holds). For crisis: a weak false alarm must not
    mute the real one that follows, on a call where missing it costs most."""
    early: Early | None = None
    meaning: Meaning | None = None
    context: Context | None = None
    framing: Framings = Field(default_factory=Framings)
    positives: Phrases = Field(default_factory=list)
    negatives: Phrases = Field(default_factory=list)
    # Dynamics cues.
    detector: Detector | None = None
    params: dict[str, float] = Field(default_factory=dict)
    escalate: Escalate | None = None
    advice_after: dict[str, Annotated[str, Field(min_length=5, max_length=160)]] = Field(
        default_factory=dict
    )
    """Advice in place of `advice` when the agent's latest move, at most ADVICE_AFTER_S before
    the cue's moment, is this agent move (`agent_moves`): after "let me pull up your account",
    a long silence needs a check-in, not an explanation of what is going on (a newcomer
    watching the demo call read the plain advice as wrong there)."""

    @model_validator(mode="after")
    def _kind_fields(self) -> CueSpec:
        if self.kind == "language":
            if self.party != "customer":
                # The engine reads language cues on customer turns only (engine.py): one
                # for the agent or the call would load and never fire.
                raise ValueError(
                    f"a language cue must have party: customer, not {self.party} "
                    "(agent-side language cues are not supported: they would never fire)"
                )
            both = {_same(t) for t in self.positives} & {_same(t) for t in self.negatives}
            if both:
                raise ValueError(
                    f"both a positive and a negative example: {sorted(both)[:3]} "
                    "(it would both fire and block the cue)"
                )
            if self.threshold is None:
                raise ValueError("a language cue needs a threshold (0..1)")
            if len(self.positives) < 3:
                raise ValueError("a language cue needs at least 3 positive examples")
            if self.detector is not None:
                raise ValueError("detector is only for dynamics cues")
            vt = self.voice_trigger
            if vt is not None and vt.lean_meaning and self.meaning is None:
                raise ValueError("voice_trigger.lean_meaning needs the cue's meaning (the probe)")
            if self.early is not None and self.affect_gate is not None:
                raise ValueError(
                    "early cannot go with affect_gate: the gate needs the whole turn's emotion"
                )
        else:
            if self.detector is None:
                raise ValueError("a dynamics cue needs a detector: " + ", ".join(_detectors()))
            if self.positives or self.negatives:
                raise ValueError("a dynamics cue has no example phrases")
            if self.affect_gate is not None:
                raise ValueError("affect_gate is only for language cues (it gates word matches)")
            if self.close_look is not None:
                raise ValueError("close_look is only for language cues (it rereads clauses)")
            if self.misheard is not None:
                raise ValueError("misheard is only for language cues (it rereads clauses)")
            if self.early is not None:
                raise ValueError("early is only for language cues (it reads partial transcripts)")
            if self.refire_above is not None:
                raise ValueError("refire_above is only for language cues (it compares matches)")
            if self.meaning is not None:
                raise ValueError("meaning is only for language cues (it reads clauses)")
        return self


class EscalationSpec(_Strict):
    intense_arousal: float = Field(0.95, ge=0, le=1)
    intense_valence: float = Field(-0.8, ge=-1, le=1)
    intense_turns: int = Field(3, ge=1)
    high_arousal: float = Field(0.8, ge=0, le=1)
    high_valence: float = Field(-0.6, ge=-1, le=1)
    high_turns: int = Field(2, ge=1)
    repeated_frustration_cues: int = Field(2, ge=2)
    complex_inquiry_cues: int = Field(2, ge=2)
    low_confidence_prob: float = Field(0.45, ge=0, le=1)
    low_confidence_turns: int = Field(3, ge=1)
    safety_move: str | None = None
    """An agent move (`agent_moves`) that raises a critical `crisis_indicators` escalation at
    once: the agent has heard danger and started the safety protocol, which matters most when
    the caller's own words were lost to a bad line (None: off)."""
    safety_threshold: float = Field(0.56, gt=0, le=1)
    """Closeness to a `safety_move` example that counts as that move. Stricter than
    `agent_move_threshold`: it pages a supervisor, and ordinary service talk ("let me look
    into that for you right away") came within 0.53 of "Call an ambulance right away"."""
    safety_margin: float = Field(0.05, ge=0, le=1)
    """...and by how much it must beat the agent's closest other move (that service talk
    was also 0.50 from "Let me look at your account")."""


class Playbook(_Strict):
    version: int = Field(ge=1)
    max_cues_per_utterance: int = Field(2, ge=1, le=5)
    cues: dict[str, CueSpec]
    background: Phrases = Field(default_factory=list)
    """Ordinary call talk that earns no cue: every language cue must beat it."""
    agent_moves: dict[str, Phrases] = Field(default_factory=dict)
    """What the agent does (apology, empathy, resolution...): context and handoff summaries."""
    agent_move_threshold: float = Field(0.5, gt=0, le=1)
    escalation: EscalationSpec = Field(default_factory=EscalationSpec)

    @field_validator("cues")
    @classmethod
    def _ids(cls, v: dict[str, CueSpec]) -> dict[str, CueSpec]:
        for cue_id in v:
            if not _CUE_ID.match(cue_id):
                raise ValueError(f"cue id {cue_id!r} must be snake_case (a-z, 0-9, _)")
        if not v:
            raise ValueError("the playbook has no cues")
        return v

    @model_validator(mode="after")
    def _whole_playbook_rules(self) -> Playbook:
        """Rules across cues, each problem reported at its own place in the file."""
        problems = [
            *_missing_standard_cues(self.cues),
            *_standard_kinds(self.cues),
            *_below_safety_floor(self.cues),
            *_param_problems(self.cues),
            *_too_many_phrases(self),
        ]
        if problems:
            raise _Located(problems)
        return self

    @model_validator(mode="after")
    def _moves_known(self) -> Playbook:
        """Every agent move a cue's context or the escalation rules name is defined."""
        named: list[tuple[Loc, str, str]] = [
            (("cues", cue_id, "context", "after_agent_move"), f"cue {cue_id}: context move", move)
            for cue_id, spec in self.cues.items()
            for move in (spec.context.after_agent_move if spec.context else [])
        ]
        named += [
            (("cues", cue_id, "advice_after", move), f"cue {cue_id}: advice_after move", move)
            for cue_id, spec in self.cues.items()
            for move in spec.advice_after
        ]
        if self.escalation.safety_move is not None:
            named.append(
                (
                    ("escalation", "safety_move"),
                    "escalation.safety_move",
                    self.escalation.safety_move,
                )
            )
        problems = [
            (
                loc,
                f"{where} {move!r} is not in agent_moves "
                f"({', '.join(sorted(self.agent_moves)) or 'none defined'})",
            )
            for loc, where, move in named
            if move not in self.agent_moves
        ]
        if problems:
            # Located, so the error names the line (an outside audit got "(top level)").
            raise _Located(problems)
        return self

    def enabled(self) -> dict[str, CueSpec]:
        return {k: v for k, v in self.cues.items() if v.enabled}


Loc = tuple[str, ...]


def _too_many_phrases(playbook: Playbook) -> list[tuple[Loc, str]]:
    """Past MAX_PHRASES, one problem, placed at the longest list (where to cut first)."""
    lists: list[tuple[Loc, int]] = [
        (("cues", cue_id, field), len(getattr(spec, field)))
        for cue_id, spec in playbook.cues.items()
        for field in ("positives", "negatives")
    ]
    lists.append((("background",), len(playbook.background)))
    lists += [(("agent_moves", move), len(texts)) for move, texts in playbook.agent_moves.items()]
    total = sum(n for _, n in lists)
    if total <= MAX_PHRASES:
        return []
    loc, longest = max(lists, key=lambda item: item[1])
    return [
        (
            loc,
            f"{longest} phrases here, {total} in the playbook: more than {MAX_PHRASES} "
            "(each is embedded when the file loads, which would hold the CPU for minutes)",
        )
    ]


class _Located(ValueError):
    """Problems found across the playbook, each with the place it is about, so that
    `parse_playbook` can name the line of each (a model validator's own errors have none)."""

    def __init__(self, problems: list[tuple[Loc, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{'.'.join(loc)}: {msg}" for loc, msg in problems))


def _missing_standard_cues(cues: Mapping[str, CueSpec]) -> list[tuple[Loc, str]]:
    extra = [c for c in cues if c not in STANDARD_CUES]
    problems: list[tuple[Loc, str]] = []
    for cue_id in STANDARD_CUES:
        if cue_id in cues:
            continue
        msg = (
            f"standard cue {cue_id!r} is missing: every cue of the taxonomy must be in the "
            f"playbook (to turn one off, keep it with `enabled: false`)"
        )
        # A misspelt id reads as an extra cue plus a missing one (an outside audit's
        # `frustraton:`): name the likely culprit.
        close = difflib.get_close_matches(cue_id, extra, n=1, cutoff=0.8)
        if close:
            msg += f"; is {close[0]!r} a misspelling of it?"
        problems.append((("cues",), msg))
    return problems


def _standard_kinds(cues: Mapping[str, CueSpec]) -> list[tuple[Loc, str]]:
    """A standard cue keeps its meaning: `dead_air` on the overtalk detector is not dead air."""
    problems: list[tuple[Loc, str]] = []
    for cue_id, detector in STANDARD_CUES.items():
        spec = cues.get(cue_id)
        if spec is None:
            continue  # reported as missing
        if detector is None and spec.kind != "language":
            problems.append((("cues", cue_id, "kind"), f"{cue_id} is a language cue"))
        elif detector is not None and spec.detector != detector:
            problems.append(
                (
                    ("cues", cue_id, "detector"),
                    f"{cue_id} is a timing cue on its own detector: must be {detector!r}, "
                    f"not {spec.detector!r}",
                )
            )
    return problems


@dataclass(frozen=True)
class _Range:
    """A param above 0 and at most `high` (every param is a duration, rate, share or ratio)."""

    high: float
    zero_ok: bool = False
    """0 is allowed too (it means off, or no minimum)."""

    def check(self, value: float) -> str | None:
        if value < 0 or (value == 0 and not self.zero_ok) or value > self.high:
            low = "0 or more" if self.zero_ok else "above 0"
            return f"must be {low} and at most {self.high:g}, not {value:g}"
        return None


# Each cue's `params` and who reads them: a timing cue's detector (coach/cues/dynamics.py,
# engine.py on_pace) or, for a language cue, the engine by cue id (repeat_contact's history
# window). They are read with .get and a default, so a misspelt key would silently do
# nothing: only these names are accepted.
PARAMS: Mapping[str, Mapping[str, _Range]] = {
    "dead_air": {"silence_s": _Range(600), "min_call_s": _Range(3600, zero_ok=True)},
    "overtalk": {"overlap_s": _Range(60), "interrupt_window_s": _Range(10, zero_ok=True)},
    "agent_pace_fast": {
        "syllables_per_s": _Range(20),
        "min_speech_s": _Range(600),
        "window_s": _Range(3600),
        "vs_customer": _Range(10, zero_ok=True),
    },
    "talk_ratio": {
        "agent_share": _Range(1),
        "window_s": _Range(3600),
        "min_speech_s": _Range(3600),
    },
    "repeat_contact": {"history_days": _Range(365)},
}


def _param_problems(cues: Mapping[str, CueSpec]) -> list[tuple[Loc, str]]:
    problems: list[tuple[Loc, str]] = []
    for cue_id, spec in cues.items():
        reader = spec.detector if spec.kind == "dynamics" else cue_id
        known = PARAMS.get(reader or "", {})
        if spec.params and not known:
            problems.append(
                (("cues", cue_id, "params"), "this cue takes no params (nothing reads them)")
            )
            continue
        for key, value in spec.params.items():
            bounds = known.get(key)
            if bounds is None:
                problems.append(
                    (
                        ("cues", cue_id, "params", key),
                        f"unknown param {key!r} for {reader}: known {', '.join(known)}",
                    )
                )
            elif (wrong := bounds.check(value)) is not None:
                problems.append((("cues", cue_id, "params", key), wrong))
    return problems


@dataclass(frozen=True)
class _Floor:
    why: str
    required: Mapping[Loc, object]
    """Field path within the cue -> the only value allowed."""


# What no playbook edit may take away: an operator tunes these cues, but cannot turn them
# off or downgrade them. A live server once reloaded a crisis cue without its escalation and
# a suicidal caller raised only a low complex_inquiry alert. ARCHITECTURE.md: crisis language
# is a critical `crisis_indicators` escalation; a request for a supervisor is `user_request`.
SAFETY_FLOOR: Mapping[str, _Floor] = {
    "crisis": _Floor(
        why="a caller in danger must page a supervisor at once",
        required={
            ("enabled",): True,
            ("severity",): "critical",
            ("escalate", "reason"): "crisis_indicators",
            ("escalate", "urgency"): "critical",
        },
    ),
    "escalation_request": _Floor(
        why="a customer who asks for a supervisor gets one alerted",
        required={("escalate", "reason"): "user_request"},
    ),
}


def _below_safety_floor(cues: Mapping[str, CueSpec]) -> list[tuple[Loc, str]]:
    problems = []
    for cue_id, floor in SAFETY_FLOOR.items():
        spec = cues.get(cue_id)
        if spec is None:
            continue  # reported as a missing standard cue
        for path, required in floor.required.items():
            value: object = spec
            for name in path:
                value = getattr(value, name) if value is not None else None
            if value == required:
                continue
            wrong = f"must be {required!r}, not {value!r}"
            if value is None:
                wrong = f"missing: must be {required!r}"
            problems.append((("cues", cue_id, *path), f"{wrong} (safety floor: {floor.why})"))
    return problems


def _detectors() -> tuple[str, ...]:
    return Detector.__args__  # type: ignore[attr-defined,no-any-return]


class PlaybookError(ValueError):
    """A playbook that cannot be used, with every problem and where it is."""

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        self.path = str(path)
        self.problems = problems
        super().__init__(f"invalid playbook {path}:\n  " + "\n  ".join(problems))


def _line_of(root: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """1-based line of the YAML node at a pydantic error location, as far as it exists."""
    node, line = root, None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if k.value == str(key)), None)
            if match is None:
                break
            key_node = next(k for k, v in node.value if v is match)
            line, node = key_node.start_mark.line + 1, match
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            break
    return line


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that notes every mapping key given twice.

    Plain YAML keeps the last of two equal keys without a word: a second `frustration:`
    replaced the real cue, a second `cooldown_s:` overrode the first. A merge (`<<: *anchor`)
    followed by the mapping's own keys is YAML's way to override on purpose, so merged keys
    are not duplicates.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[int, str]] = []
        """(line, problem) of each key given again."""
        self._checked: set[int] = set()

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        # construct_mapping flattens each mapping first, and flattening rewrites node.value
        # in place with the merged pairs: check the pairs as written, once per node.
        if id(node) not in self._checked:
            self._checked.add(id(node))
            self._note_duplicates(node)
        super().flatten_mapping(node)

    def _note_duplicates(self, node: yaml.MappingNode) -> None:
        first: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                seen = first.setdefault(key, key_node)
            except TypeError:
                continue  # an unhashable key: construct_mapping reports it
            if seen is not key_node:
                line = key_node.start_mark.line + 1
                self.duplicates.append(
                    (
                        line,
                        f"duplicate key {key!r} (line {line}; first at line "
                        f"{seen.start_mark.line + 1}): YAML would silently keep only the last",
                    )
                )


# YAML 1.1 (PyYAML) reads a float only with a dot and a signed exponent: `6e1`, `1e-3` and
# `1.5e3` came through as strings and were refused as "not a valid number". Read them as the
# numbers YAML 1.2 and every editor take them for.
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _load_yaml(text: str) -> tuple[Any, yaml.Node | None, list[str]]:
    """The document, its node tree (for line numbers) and its duplicate keys."""
    loader = _UniqueKeyLoader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
        return data, root, [problem for _, problem in sorted(loader.duplicates)]
    finally:
        loader.dispose()


def _problems(exc: ValidationError, root: yaml.Node | None) -> list[str]:
    """Each validation error as `where (line N): what`."""
    located: list[tuple[tuple[int | str, ...], str]] = []
    for err in exc.errors():
        error = err.get("ctx", {}).get("error")
        if isinstance(error, _Located):
            located.extend(error.problems)
        else:
            located.append((tuple(err["loc"]), err["msg"]))
    problems = []
    for loc, msg in located:
        where = ".".join(str(p) for p in loc) or "(top level)"
        line = _line_of(root, loc)
        at = f" (line {line})" if line else ""
        problems.append(f"{where}{at}: {msg}")
    return problems


def parse_playbook(text: str, *, source: Path | str = "<playbook>") -> Playbook:
    try:
        data, root, duplicates = _load_yaml(text)
    except yaml.YAMLError as exc:
        # PyYAML names the text it parsed "<unicode string>"; the error already names the file.
        what = re.sub(r'in "<unicode string>", ', "at ", str(exc))
        raise PlaybookError(source, [f"not valid YAML: {what}"]) from exc
    except RecursionError as exc:  # "[[[[..." thousands deep: a refusal like any other
        raise PlaybookError(source, ["not valid YAML: nested too deeply"]) from exc
    if duplicates:
        raise PlaybookError(source, duplicates)
    if not isinstance(data, Mapping):
        raise PlaybookError(source, ["the top level must be a mapping with version and cues"])
    odd = _unquoted_ids(root)
    if odd:
        raise PlaybookError(source, odd)
    try:
        return Playbook.model_validate(data)
    except ValidationError as exc:
        raise PlaybookError(source, _problems(exc, root)) from exc


def _unquoted_ids(root: yaml.Node | None) -> list[str]:
    """Cue ids YAML reads as something else than text (`yes` is true, `~` is null, `12` a
    number): an outside audit got "cues.1.[key] (line 36)" for a cue at line 2410."""
    if not isinstance(root, yaml.MappingNode):
        return []
    cues = next((v for k, v in root.value if k.value == "cues"), None)
    if not isinstance(cues, yaml.MappingNode):
        return []
    return [
        f"cues.{key.value} (line {key.start_mark.line + 1}): YAML reads the cue id "
        f"{key.value!r} as {_YAML_TYPES.get(key.tag, key.tag)}; quote it or choose a word"
        for key, _ in cues.value
        if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:str"
    ]


_YAML_TYPES = {
    "tag:yaml.org,2002:bool": "true or false",
    "tag:yaml.org,2002:null": "null",
    "tag:yaml.org,2002:int": "a number",
    "tag:yaml.org,2002:float": "a number",
}


def read_playbook_file(path: Path) -> bytes:
    """The file's bytes, or PlaybookError if it cannot be read or is past MAX_PLAYBOOK_BYTES
    (checked before reading it whole)."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_PLAYBOOK_BYTES + 1)
    except OSError as exc:
        raise PlaybookError(path, [f"cannot read: {exc.strerror or exc}"]) from exc
    if len(raw) > MAX_PLAYBOOK_BYTES:
        raise PlaybookError(path, [f"larger than {MAX_PLAYBOOK_BYTES // (1024 * 1024)} MiB"])
    return raw


def parse_playbook_bytes(raw: bytes, *, source: Path | str) -> Playbook:
    """A playbook file's bytes, validated; PlaybookError (a refusal like any other, not a
    dead watcher) for text that is not UTF-8 too."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PlaybookError(source, [f"not UTF-8: {exc}"]) from exc
    return parse_playbook(text, source=source)


def load_playbook(path: Path | None = None) -> Playbook:
    path = Path(path) if path else DEFAULT_PLAYBOOK
    return parse_playbook_bytes(read_playbook_file(path), source=path)


def dump_example(playbook: Playbook) -> dict[str, Any]:
    """The playbook as plain data (for tools that rewrite thresholds)."""
    return playbook.model_dump(mode="json", exclude_defaults=False)
