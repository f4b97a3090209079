"""The meaning probe (coach/cues/matcher.py `MeaningProbe`) and its veto in the cue engine."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from coach.cues.engine import CueEngine, matched_example
from coach.cues.library import PlaybookLibrary
from coach.cues.matcher import NONE, MeaningProbe
from models.emotion import EmotionModel, EmotionScore
from tests.coach.cues.conftest import Conversation, FixedHolder

# Nearest to a frustration example about a refund that never comes (the words "refund" and
# "no fuss" are there), but a caller saying a past refund went well.
PRAISE_OF_A_PAST_REFUND = (
    "I phoned last spring about a different order and that refund was sorted quickly, "
    "no fuss at all."
)


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _clusters(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = _unit(rng.standard_normal((3, 16)))
    return {
        name: _unit(centre + 0.3 * rng.standard_normal((20, 16)))
        for name, centre in zip(("billing", "leaving", NONE), centres, strict=True)
    }


def test_the_probe_reads_each_class_and_is_fitted_once_per_example_set() -> None:
    examples = _clusters()
    probe = MeaningProbe.fit(examples)
    for name in ("billing", "leaving"):
        p = probe.probabilities(examples[name][0])
        assert max(p, key=p.__getitem__) == name and p[name] > 0.5, p
        assert NONE not in p  # "no cue" is what the cues' probabilities leave over
    assert sum(probe.probabilities(examples[NONE][0]).values()) < 0.5
    # The same vectors again (a reload of an unchanged playbook): the same fit, not a new one.
    assert MeaningProbe.fit({k: v.copy() for k, v in examples.items()}) is probe
    # Another example set: a new fit, the same every time it is made (zero start, fixed steps).
    other = MeaningProbe._fit(tuple(sorted(_clusters(1))), _clusters(1))
    again = MeaningProbe._fit(tuple(sorted(_clusters(1))), _clusters(1))
    assert np.array_equal(other.weights, again.weights)


async def _fires(library: PlaybookLibrary, model: EmotionModel, text: str, drop: str) -> list[str]:
    """The cues a customer turn fires with the bundled playbook, minus `meaning` on `drop`."""
    loaded = library.current
    pb = loaded.playbook
    cues = dict(pb.cues) | {drop: pb.cues[drop].model_copy(update={"meaning": None})}

    async def analyze(texts: list[str]) -> list[EmotionScore]:
        return model.score(texts)

    holder = FixedHolder(replace(loaded, playbook=pb.model_copy(update={"cues": cues})))
    conv = Conversation(CueEngine(holder=holder, analyze=analyze), model)
    return await conv.cues("customer", text)


async def test_a_near_example_the_probe_reads_as_another_meaning_does_not_fire(
    library: PlaybookLibrary, emotion_model: EmotionModel
) -> None:
    assert library.current.index.probe is not None  # the bundled playbook reads meaning
    assert "frustration" in await _fires(
        library, emotion_model, PRAISE_OF_A_PAST_REFUND, drop="frustration"
    )
    assert "frustration" not in await _fires(
        library, emotion_model, PRAISE_OF_A_PAST_REFUND, drop="crisis"
    )


async def test_the_why_says_how_the_probe_read_a_cue_it_let_through(
    library: PlaybookLibrary, emotion_model: EmotionModel
) -> None:
    async def analyze(texts: list[str]) -> list[EmotionScore]:
        return emotion_model.score(texts)

    conv = Conversation(CueEngine(holder=library, analyze=analyze), emotion_model)
    events = await conv.say("customer", "Honestly, I'm comparing a few other firms right now.")
    (cue,) = [e for e in events if e["type"] == "cue"]
    assert cue["cue"] == "churn_risk"
    assert "meaning read as this cue (" in cue["why"], cue["why"]


# A threat to a parent at a nursery ("if you won't tell me whose kid it is, I'll find the
# father ...") as the ASR heard it on a `dev` call: near no crisis example (0.36 against a
# threshold of 0.46), but read as a crisis by the probe at over 0.99.
GARBLED_THREAT = "When in there I'll find the gun if you won't tell me who killed him."


async def test_a_garbled_crisis_the_probe_is_sure_of_fires_and_says_why(
    library: PlaybookLibrary, emotion_model: EmotionModel
) -> None:
    assert "crisis" not in await _fires(library, emotion_model, GARBLED_THREAT, drop="crisis")

    async def analyze(texts: list[str]) -> list[EmotionScore]:
        return emotion_model.score(texts)

    conv = Conversation(CueEngine(holder=library, analyze=analyze), emotion_model)
    events = await conv.say("customer", GARBLED_THREAT)
    (cue,) = [e for e in events if e["type"] == "cue" and e["cue"] == "crisis"]
    assert "read as this cue by meaning" in cue["why"], cue["why"]
    assert matched_example(cue["reasons"]) is None  # no example earned it (tune_playbook)
    # The panel marks the clause, not the one word it shares with an example ("gun").
    (phrase,) = cue["evidence"]["phrases"]
    assert phrase in GARBLED_THREAT and len(phrase.split()) >= 10, phrase
    assert any(e["type"] == "escalation" and e["urgency"] == "critical" for e in events)
