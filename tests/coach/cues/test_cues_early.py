"""Early cues: a cue with `early` fires from the partial transcripts of a turn, before the
customer stops talking, on whole sentences that two partials agree on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest

from coach.cues.engine import EARLY_NOTE, CueEngine
from coach.cues.library import PlaybookLibrary
from coach.cues.playbook import Early
from models.emotion import EmotionModel, EmotionScore
from tests.coach.cues.conftest import Conversation, FixedHolder

COLLAPSE = (
    "My husband just collapsed on the kitchen floor and he isn't breathing. "
    "The kids are here with me and the car is outside, what do I do now?"
)


class Counting:
    """An AnalyzeFn on the real model that records every batch it is asked for."""

    def __init__(self, model: EmotionModel) -> None:
        self.model = model
        self.batches: list[list[str]] = []

    async def __call__(self, texts: Sequence[str]) -> list[EmotionScore]:
        self.batches.append(list(texts))
        return self.model.score(texts)


def _engine(
    library: PlaybookLibrary, analyze: Counting, early: dict[str, Early | None]
) -> CueEngine:
    """The bundled playbook with `early` set (or cleared) on the named cues only."""
    loaded = library.current
    pb = loaded.playbook
    cues = {
        cue_id: spec.model_copy(update={"early": early.get(cue_id)})
        for cue_id, spec in pb.cues.items()
    }
    holder = FixedHolder(replace(loaded, playbook=pb.model_copy(update={"cues": cues})))
    return CueEngine(holder=holder, analyze=analyze)


async def _speak(
    conv: Conversation,
    text: str,
    *,
    partials: Sequence[str] | None = None,
    speaker: str = "customer",
    every: int = 3,
    wps: float = 2.8,
    final: bool = True,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One turn as the pipeline delivers it: partials of its growing prefix (every `every`
    words, or the given texts), then the final. Returns (events from partials, from final)."""
    gap_s = 0.6
    t_start = conv.t + gap_s
    tokens = text.split()
    hypotheses = (
        list(partials)
        if partials is not None
        else [" ".join(tokens[:k]) for k in range(every, len(tokens), every)]
    )
    early: list[dict[str, Any]] = []
    for hyp in hypotheses:
        t_end = t_start + len(hyp.split()) / wps
        event = {
            "type": "partial",
            "speaker": speaker,
            "text": hyp,
            "t_start": t_start,
            "t_end": t_end,
        }
        early.extend(await conv.engine.on_partial(event))
    if not final:
        return early, []
    return early, await conv.say(speaker, text, gap_s=gap_s, wps=wps)


def _cues(events: Sequence[dict[str, Any]]) -> list[str]:
    return [e["cue"] for e in events if e["type"] == "cue"]


@pytest.fixture
def counting(emotion_model: EmotionModel) -> Counting:
    return Counting(emotion_model)


async def test_crisis_fires_before_the_turn_ends(
    library: PlaybookLibrary, counting: Counting, emotion_model: EmotionModel
) -> None:
    conv = Conversation(_engine(library, counting, {"crisis": Early()}), emotion_model)
    early, final = await _speak(conv, COLLAPSE)
    (cue,) = [e for e in early if e["type"] == "cue"]
    assert cue["cue"] == "crisis" and cue["early"] is True
    assert EARLY_NOTE in cue["why"] and "collapsed" in cue["why"]
    # Before the customer finished: the partial that fired it ends well before the turn.
    assert cue["t_end"] < conv.t - 2.0
    # The supervisor is alerted with it, not a turn later.
    (esc,) = [e for e in early if e["type"] == "escalation"]
    assert (esc["reason"], esc["urgency"]) == ("crisis_indicators", "critical")
    # The final of the same turn does not show it again, nor raise the alert again.
    assert "crisis" not in _cues(final)
    assert not [e for e in final if e["type"] == "escalation" and e["urgency"] == "critical"]


async def test_the_final_still_decides_without_early(
    library: PlaybookLibrary, counting: Counting, emotion_model: EmotionModel
) -> None:
    """No `early` anywhere: partials are not even scored, and the final fires the cue."""
    conv = Conversation(_engine(library, counting, {}), emotion_model)
    early, _ = await _speak(conv, COLLAPSE, final=False)
    assert early == [] and counting.batches == []
    assert "crisis" in await conv.cues("customer", COLLAPSE)


async def test_a_sentence_is_read_only_once_the_speaker_is_past_it(
    library: PlaybookLibrary, counting: Counting, emotion_model: EmotionModel
) -> None:
    """Partials that stop at the sentence's end (Whisper's full stop may be where the audio
    was cut) fire nothing early; the final decides."""
    conv = Conversation(_engine(library, counting, {"crisis": Early()}), emotion_model)
    first = COLLAPSE.split(". ")[0] + "."
    early, final = await _speak(conv, first, partials=[first, first, first])
    assert _cues(early) == []
    assert "crisis" in _cues(final)


async def test_words_two_partials_disagree_on_are_not_read(
    library: PlaybookLibrary, counting: Counting, emotion_model: EmotionModel
) -> None:
    conv = Conversation(_engine(library, counting, {"crisis": Early()}), emotion_model)
    flip = [
        "My husband just collapsed on the kitchen floor and he isn't breathing. The kids",
        "My husband's just collapsed on the kitchen floor and he isn't breathing. The kids are",
        "My husband just collapsed on the kitchen floor and he isn't breathing. The kids are here",
    ]
    early, _ = await _speak(conv, COLLAPSE, partials=flip, final=False)
    # The first two disagree at the second word; the third agrees with the second only up
    # to the first word, so no whole sentence is settled and nothing is scored.
    assert early == [] and counting.batches == []


async def test_a_partial_is_scored_only_when_agreement_grows(
    library: PlaybookLibrary, counting: Counting, emotion_model: EmotionModel
) -> None:
    conv = Conversation(_engine(library, counting, {"crisis": Early(margin=0.5)}), emotion_model)
    same = "I called about the bill. It went up again this month and"
    early, _ = await _speak(conv, same + " nobody told me why.", partials=[same] * 4, final=False)
    assert early == []
    # Partials 2, 3 and 4 all settle the same sentence: it is scored once.
    assert counting.batches == [["I called about the bill."]]


async def test_margin_keeps_a_cue_for_the_final(
    library: PlaybookLibrary, counting: Counting, emotion_model: EmotionModel
) -> None:
    """A clause that clears the threshold but not the threshold plus `margin` waits."""
    conv = Conversation(_engine(library, counting, {"crisis": Early(margin=0.45)}), emotion_model)
    early, final = await _speak(conv, COLLAPSE)
    assert _cues(early) == []
    assert "crisis" in _cues(final)


async def test_agent_partials_and_late_partials_fire_nothing(
    library: PlaybookLibrary, counting: Counting, emotion_model: EmotionModel
) -> None:
    conv = Conversation(_engine(library, counting, {"crisis": Early()}), emotion_model)
    early, _ = await _speak(conv, COLLAPSE, speaker="agent")
    assert early == []
    # A partial that arrives after its turn's final (a slow partial decode) is dropped.
    router = "I am calling about my router, the lights are all off."
    await _speak(conv, router)
    turn_start = conv.t - len(router.split()) / 2.8
    stale = {
        "type": "partial",
        "speaker": "customer",
        "text": COLLAPSE,
        "t_start": turn_start,
        "t_end": conv.t - 0.1,
    }
    assert await conv.engine.on_partial(stale) == []
    assert await conv.engine.on_partial(stale | {"text": COLLAPSE + " Please"}) == []


async def test_early_cues_count_against_the_turns_limit(
    library: PlaybookLibrary, counting: Counting, emotion_model: EmotionModel
) -> None:
    """At most `max_cues_per_utterance` per turn, early and final together."""
    conv = Conversation(
        _engine(
            library,
            counting,
            {"escalation_request": Early(), "frustration": Early(), "churn_risk": Early()},
        ),
        emotion_model,
    )
    text = (
        "Put me through to your manager right now. I am sick and tired of being passed "
        "around for weeks. I'm cancelling and moving to another provider, and then we're done."
    )
    early, final = await _speak(conv, text)
    limit = conv.engine.holder.current.playbook.max_cues_per_utterance
    assert "escalation_request" in _cues(early)
    assert len(_cues(early)) + len(_cues(final)) <= limit


async def test_a_shed_partial_reading_is_skipped(
    library: PlaybookLibrary, counting: Counting, emotion_model: EmotionModel
) -> None:
    """When the model is too busy for a partial (the session's `analyze_partial` returns
    nothing), the reading is dropped and the final decides as usual."""
    engine = _engine(library, counting, {"crisis": Early()})
    shed: list[list[str]] = []

    async def busy(texts: Sequence[str]) -> list[EmotionScore]:
        shed.append(list(texts))
        return []

    engine.analyze_partial = busy
    conv = Conversation(engine, emotion_model)
    early, final = await _speak(conv, COLLAPSE)
    assert shed and early == []
    assert "crisis" in _cues(final)


async def test_an_early_cues_outcome_reads_the_turns_after_the_one_it_was_raised_in(
    library: PlaybookLibrary, counting: Counting, emotion_model: EmotionModel
) -> None:
    """The post-call summary's `cue_outcomes`: an early cue comes while the customer is still
    talking, so that turn is the mood the agent answered. It was counted as the first turn
    "after" (and the turn before it as "before"), so an early cue could hardly land."""
    conv = Conversation(_engine(library, counting, {"crisis": Early()}), emotion_model)
    await conv.say("customer", "Hi, I'm calling about my account, thanks for picking up.")
    early, _ = await _speak(conv, COLLAPSE)
    assert _cues(early) == ["crisis"]
    await conv.say("agent", "Stay with me. I'm calling an ambulance for you right now.")
    await conv.say("customer", "Okay, thank you, thank you so much, that helps.")
    await conv.say("customer", "Thank you, he is breathing again now, that's great.")
    await conv.say("customer", "Everything is fine now, thanks for your help.")
    raised_in, next1, next2 = (s["valence"] for s in conv.engine.states[1:4])
    (outcome,) = conv.engine.call_summary()["cue_outcomes"]
    assert outcome["valence_before"] == pytest.approx(raised_in, abs=1e-3)
    assert outcome["valence_after"] == pytest.approx((next1 + next2) / 2, abs=1e-3)
    assert outcome["landed"] is True
