"""Each language cue: paraphrased positives fire it, negatives and traps do not.

The positives are deliberately not copies of the playbook examples: the engine must match
by meaning. Traps are the classic false alarms: negation, the agent's own empathy phrases,
hypotheticals, someone else's story, and neutral questions on the same topic.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from coach.cues.engine import CueEngine, LoadedPlaybook, matched_example
from coach.cues.library import PlaybookLibrary
from coach.cues.playbook import AffectGate, CueSpec
from models.emotion import EmotionModel, EmotionScore
from tests.coach.cues.conftest import Conversation, FixedHolder

POSITIVE = [
    ("frustration", "I have been going around in circles with you people for weeks."),
    ("frustration", "Honestly, this is the most annoying experience I've ever had."),
    ("confusion", "Sorry, I really don't get what you're asking me to do."),
    ("confusion", "Hang on, I'm lost, what is a router login?"),
    ("cost_anxiety", "I honestly don't know how I'm going to pay a bill that big."),
    ("cost_anxiety", "Our budget is really tight this month, we can't take another fee."),
    ("urgency", "I need this sorted before my flight at six tonight."),
    ("urgency", "Please, it has to work today, I have a job interview online at noon."),
    ("escalation_request", "Can I please talk to your manager about this?"),
    ("escalation_request", "I want someone higher up to look at this."),
    # An agent's offer among the near misses ("Let me get my supervisor on the line for you")
    # kept the caller's own request from firing (session 38's probe).
    ("escalation_request", "Put your supervisor on the line, please."),
    # A demand after a condition is a demand (an outside check, session 37).
    ("escalation_request", "If it is ridiculous, I want to speak to your manager right now."),
    ("churn_risk", "I'm seriously thinking of moving to another company."),
    ("churn_risk", "Just close the account, I'm going with a different provider."),
    # An ultimatum whose whole reads as near a deadline as a leaving (session 38's probe).
    ("churn_risk", "If this isn't sorted by Friday, I'm cancelling my contract."),
    # Two words of commitment (session 39's probe: 0.198 from the probe, read whole).
    ("churn_risk", "If nothing changes by Friday, I'm cancelling."),
    # Near no example, all but certain to the meaning probe (session 39, from `dev`, tune and
    # the retired split's transcripts): fire_above.
    ("churn_risk", "Frankly I'm about done handing you guys my money."),
    ("churn_risk", "I'm signing up with the fiber company down the road."),
    ("escalation_request", "I'd like to talk to him in the chat of my team, please."),
    (
        "churn_risk",
        "I've already talked to the neighbours about sharing a ride, and if this happens one "
        "more time, we're done with you, we'll just do the carpool.",
    ),
    # A dropped comma before "not someone ..." read the demand as negated.
    (
        "escalation_request",
        "I want to speak to the person who actually makes the decision not someone reading me a letter.",
    ),
    # The meter, not the feeling, was what the whole clause was near.
    (
        "frustration",
        "I'm sick and tired of sending you photos of the meter and then getting a made up number.",
    ),
    ("repeat_contact", "I rang you about exactly this two days ago."),
    ("repeat_contact", "This is the fourth call I've made about the same thing."),
    ("crisis", "Honestly I don't think I want to be here anymore."),
    ("crisis", "My neighbour is lying on the floor and he won't wake up."),
    # Read whole, the probe took "please hurry" for urgency; the rest alone is a crisis.
    ("crisis", "Please hurry, my daughter isn't breathing properly."),
]

NEGATIVE = [
    # Negations.
    ("frustration", "I'm not annoyed at all, I just want to check something."),
    ("cost_anxiety", "The price is no problem for us."),
    ("urgency", "There's no hurry, next week is absolutely fine."),
    ("churn_risk", "I'm not planning to leave, I just want this fixed."),
    # An outside audit's traps (2026-12-05): negated leaving that means staying.
    ("churn_risk", "Please don't cancel my account, I want to keep it."),
    ("churn_risk", "I'm not going anywhere, I've been with you for twenty years."),
    ("crisis", "Nobody's hurt, we're all fine, I'm just calling about the claim."),
    # Litotes: the models read it said plainly (found by the same audit).
    ("frustration", "I'm not unhappy with anything, honestly."),
    ("confusion", "This bill is killing me!"),
    # Hypotheticals and other people.
    ("churn_risk", "If the price ever doubled I might look around, but I'm happy for now."),
    ("churn_risk", "My sister cancelled her plan with you last year."),
    ("frustration", "I'd be furious if this happened to me, but it's for my neighbour."),
    # A condition and two words that leave nothing (session 39's probe).
    ("churn_risk", "If that's everything, I'm done."),
    ("churn_risk", "If you need me, I'm out until three."),
    # Closing a dead relative's account is not the caller leaving (session 38's probe).
    ("churn_risk", "I'm calling because my mother passed away and I need to close her account."),
    ("churn_risk", "I want to cancel my late husband's phone line, please."),
    # ...nor is the bereavement a crisis.
    ("crisis", "I'm calling because my mother passed away and I need to close her account."),
    ("crisis", "My husband died in March and the bills are still in his name."),
    # Neutral questions on the same topic.
    ("cost_anxiety", "What does the family plan cost per month?"),
    ("escalation_request", "Could you transfer me to the billing department please?"),
    ("confusion", "Could you spell the street name for me?"),
    ("repeat_contact", "This is the first time I've had to call you."),
    ("crisis", "This bill is killing me, but I'll manage."),
    # The README's sample insurance call paged a crisis (an outside audit): the words, and
    # this VM's Whisper's (session 34).
    ("crisis", "Someone backed into my car in a parking lot yesterday"),
    ("crisis", "Someone maxed into my car with a parking lot yesterday"),
    # A garbled "every one of these stupid chargers" (`dev`), near "do something stupid".
    ("crisis", "I'm in stupid charge."),
    # The README's sample billing and outage calls (session 34), the second as Whisper heard
    # "The light on the router keeps blinking orange, and nothing works."
    ("repeat_contact", "Okay. How long will the refund take?"),
    ("repeat_contact", "The life on the router keeps linking our engines and nothing works."),
    ("dejection", "That's great, thank you so much for sorting it out."),
]


@pytest.mark.parametrize(("cue", "text"), POSITIVE)
async def test_paraphrase_fires_its_cue(conversation: Conversation, cue: str, text: str) -> None:
    assert cue in await conversation.cues("customer", text)


async def test_a_word_match_names_its_playbook_example(conversation: Conversation) -> None:
    """scripts/tune_playbook.py --examples credits examples by reading this reason back."""
    found = await conversation.say(
        "customer", "I have been going around in circles with you people for weeks."
    )
    (cue,) = [e for e in found if e["type"] == "cue" and e["cue"] == "frustration"]
    example = matched_example(cue["reasons"])
    assert example in conversation.engine.holder.current.playbook.cues["frustration"].positives


@pytest.mark.parametrize(("cue", "text"), NEGATIVE)
async def test_trap_does_not_fire(conversation: Conversation, cue: str, text: str) -> None:
    assert cue not in await conversation.cues("customer", text)


SHORT_AND_CLEAR = [
    # An outside author's call: the first clause is confusion beyond doubt in 3 words.
    ("confusion", "Sorry, I'm lost. Which one's the firm and which one's the insurance?"),
    ("confusion", "I'm confused."),
    ("frustration", "This is ridiculous."),
]
SHORT_AND_UNCLEAR = [
    ("confusion", "I don't know."),
    ("urgency", "Please hurry."),
    ("confusion", "I'm not confused."),
    ("dejection", "Okay, fine."),
]


@pytest.mark.parametrize(("cue", "text"), SHORT_AND_CLEAR)
async def test_a_short_clause_that_says_its_cue_beyond_doubt_fires(
    conversation: Conversation, cue: str, text: str
) -> None:
    """Under the cue's `min_words`, but as near an example as a paraphrase gets and read as
    the cue by the meaning probe at 90% or more (engine.SHORT_MEANING)."""
    assert cue in await conversation.cues("customer", text)


@pytest.mark.parametrize(("cue", "text"), SHORT_AND_UNCLEAR)
async def test_a_short_clause_that_could_mean_anything_does_not(
    conversation: Conversation, cue: str, text: str
) -> None:
    assert cue not in await conversation.cues("customer", text)


CALM = [
    "Hi, I'm calling to update the address on my account.",
    "Sure, it's forty two Elm Street.",
    "Yes, that's the right email address.",
    "Great, that's everything, thanks for your help.",
    "Okay.",
    "What time does the technician usually arrive?",
]


async def test_calm_turns_fire_nothing(conversation: Conversation) -> None:
    for text in CALM:
        assert await conversation.cues("customer", text) == [], text


async def test_agent_empathy_never_fires_a_customer_cue(conversation: Conversation) -> None:
    for text in (
        "I understand how frustrating this must be.",
        "I know the bill is expensive, and I'm sorry about that.",
        "I'll get my supervisor for you.",
        "I can hear this is really urgent for you.",
    ):
        assert await conversation.cues("agent", text) == [], text


@pytest.mark.parametrize(
    "text",
    [
        "Okay, are you somewhere safe right now?",
        "Please hang up and ring nine nine nine straight away, then call us back.",
        "I need you to get everybody out of the house immediately.",
    ],
)
async def test_the_agents_safety_protocol_alerts_the_supervisors(
    conversation: Conversation, text: str
) -> None:
    """The agent heard danger that the caller's transcript lost ("the line is bad, I..."):
    a critical crisis escalation, once, with no cue on the agent's own panel."""
    await conversation.say("customer", "Hello, the line is really bad, I can barely")
    out = await conversation.say("agent", text)
    assert [(e["type"], e["reason"], e["urgency"]) for e in out] == [
        ("escalation", "crisis_indicators", "critical")
    ], text
    assert out[0]["detail"].startswith("the agent started the safety protocol")
    assert any(t.startswith("safety: ") for t in out[0]["summary"]["agent_tried"])
    assert await conversation.say("agent", "Stay on the line with me, help is on the way.") == []


async def test_ordinary_agent_talk_raises_nothing(conversation: Conversation) -> None:
    for text in (
        "Let me check that for you, one moment.",
        "Is there anything else I can help you with today?",
        "Your account is safe, nobody can change it without the PIN.",
        "I'll put a note on the account and call you back tomorrow.",
        "You can cancel any time from the app.",
        # Urgent service talk: "right away" and "as soon as possible" are close to the
        # protocol's "Call an ambulance right away" (0.53 on an AMD EPYC VM's int8 kernels).
        "I'm sorry, let me look into that for you right away.",
        "Let me get someone out to you as soon as possible.",
        "I'll sort that out right away.",
    ):
        assert await conversation.say("agent", text) == [], text


async def test_a_safety_escalation_quotes_what_the_customer_last_said(
    conversation: Conversation,
) -> None:
    """The supervisor joining a safety-protocol alert reads the caller's latest words, which
    fired no cue (on an unseen call VAD cut a crisis into "I don't know why I keep." / "and
    everyone will be better off."): the handoff used to quote only an earlier cost cue."""
    await conversation.say("customer", "I can't pay three hundred dollars this month.")
    await conversation.say("agent", "There is a hardship program that might help.")
    await conversation.say("customer", "I don't know why I keep.", arousal=0.1)
    await conversation.say("customer", "and everyone will be better off.", arousal=0.1)
    out = await conversation.say("agent", "Okay, are you somewhere safe right now?")
    (alert,) = [e for e in out if e["type"] == "escalation"]
    summary = alert["summary"]
    assert summary["last_said"] == ["I don't know why I keep.", "and everyone will be better off."]
    assert (
        'Last said: "I don\'t know why I keep."; "and everyone will be better off."'
        in summary["text"]
    )


async def test_the_handoff_quotes_a_line_once(conversation: Conversation) -> None:
    """A trigger phrase that is the whole last line (ASR garble falls back to the clause) is
    not quoted again as what the customer last said."""
    line = "I'm calling on out my learnt pressure tablet."
    await conversation.say("customer", line)
    conversation.engine.shown.append({"cue": "crisis", "evidence": {"phrases": [line]}})
    handoff = conversation.engine.handoff()
    assert handoff["last_said"] == [line]
    assert handoff["text"].count(line) == 1, handoff["text"]


async def test_a_crisis_handoff_says_what_came_before_its_quoted_line_as_before(
    conversation: Conversation,
) -> None:
    """An outside supervisor audit: the crisis line was quoted as a trigger phrase, so "Last
    said" held only the calm question before it, and read as the caller's last words; the
    mood, less negative than an irritated opening, read as "improving"."""
    await conversation.say("customer", "The power is off again and I am really annoyed.")
    crisis = "My husband just collapsed and he is not breathing properly."
    await conversation.say("customer", crisis)
    conversation.engine.states[-2]["valence"] = -0.85  # the irritated opening, as heard
    conversation.engine.states[-1]["valence"] = -0.6
    conversation.engine.shown.append({"cue": "crisis", "evidence": {"phrases": [crisis]}})
    text = conversation.engine.handoff()["text"]
    assert "They said: " in text and f'"{crisis}"' in text, text
    assert 'Before that: "The power is off again and I am really annoyed."' in text
    assert "Last said" not in text and "improving" not in text
    assert "still strongly negative" in text


async def test_an_escalation_names_the_span_of_the_turn_that_raised_it(
    conversation: Conversation,
) -> None:
    """An outside supervisor audit: every escalation had `t_start` equal to `t_end` (the
    turn's end twice); the README's example shows the turn, start to end."""
    await conversation.say("customer", "Hello, I have a question about my account.")
    start = conversation.t + 0.6
    out = await conversation.say("customer", "I want to kill myself, I can't go on anymore.")
    (alert,) = [e for e in out if e["type"] == "escalation"]
    assert alert["t_start"] == pytest.approx(start, abs=1e-3)
    assert alert["t_end"] == pytest.approx(conversation.t, abs=1e-3) and alert["t_end"] > start


async def test_frustration_that_builds_inside_its_cooldown_escalates(
    conversation: Conversation,
) -> None:
    """An outside supervisor audit: a caller angrier on every turn got one frustration card
    (its 45 s cooldown held the rest), and `repeated_frustration`, which counted cards, was
    never raised. A turn that matches again during the cooldown now counts, once."""
    first = await conversation.say("customer", "This is really frustrating, I'm fed up with it.")
    assert [e["cue"] for e in first if e["type"] == "cue"] == ["frustration"]
    assert not [e for e in first if e["type"] == "escalation"]
    second = await conversation.say("customer", "I am sick and tired of this, it's ridiculous.")
    assert not [e for e in second if e["type"] == "cue" and e["cue"] == "frustration"]
    (alert,) = [e for e in second if e["type"] == "escalation"]
    assert alert["reason"] == "repeated_frustration"
    assert alert["detail"] == "frustration on 2 turns (1 shown)"


def test_one_turn_read_twice_is_no_repeat() -> None:
    """The same turn, shown early from its partial and matched again as a final, counts once;
    a match held back on another turn counts."""
    from coach.cues.playbook import load_playbook
    from coach.escalation import EscalationDetector

    pb = load_playbook()
    esc = EscalationDetector()

    def summary() -> dict[str, Any]:
        return {"trend": "steady"}

    esc.observe_cues(
        [("frustration", pb.cues["frustration"])],
        summary=summary,
        state={"t": 12.0, "t_start": 10.0},
    )
    esc.matched_again("frustration", 10.0)
    assert esc._repeats("frustration") == 1
    esc.matched_again("frustration", 20.0)
    assert esc._repeats("frustration") == 2


def test_the_safety_move_must_be_close_and_clearly_ahead() -> None:
    """The move closeness rule on its own: the general threshold for ordinary moves, a
    stricter one and a margin over the runner-up for the move that pages a supervisor."""
    from coach.cues.engine import _agent_moves
    from coach.cues.playbook import EscalationSpec

    spec = EscalationSpec(safety_move="safety", safety_threshold=0.56, safety_margin=0.05)
    ranked = [("safety", 0.532), ("hold", 0.496), ("transfer", 0.404)]
    assert _agent_moves(ranked, 0.52, spec) == []  # the urgent service talk above
    ranked = [("safety", 0.60), ("hold", 0.53)]
    assert _agent_moves(ranked, 0.52, spec) == [("safety", 0.60), ("hold", 0.53)]
    ranked = [("safety", 0.60), ("transfer", 0.57)]  # close, but not clearly ahead
    assert _agent_moves(ranked, 0.52, spec) == [("transfer", 0.57)]
    ranked = [("hold", 0.81), ("safety", 0.58)]  # another move is the clause's best
    assert _agent_moves(ranked, 0.52, spec)[0] == ("hold", 0.81)
    off = EscalationSpec(safety_move=None)
    assert _agent_moves([("safety", 0.53)], 0.52, off) == [("safety", 0.53)]


async def test_dejection_needs_a_resigned_voice_or_words(conversation: Conversation) -> None:
    await conversation.say("customer", "My internet keeps dropping every evening.")
    await conversation.say("agent", "I've reset your line, it should be stable now.")
    # Resigned words after the agent's fix.
    assert "dejection" in await conversation.cues(
        "customer", "Whatever, I suppose it'll break again anyway."
    )


@pytest.mark.parametrize(
    "text",
    [
        # Calm acceptance that shares resigned wording's words (like the development splits'
        # false cues, reworded).
        "All good, my partner's been worried about the bills all month, so I'm handling this bit.",
        "Great, my son's been nagging me about this for weeks, so I'm sorting it today.",
    ],
)
async def test_acceptance_in_resigned_words_is_not_dejection(
    conversation: Conversation, text: str
) -> None:
    """Dejection's word match needs the text to read sad (its playbook `affect_gate`)."""
    await conversation.say("customer", "My internet keeps dropping every evening.")
    await conversation.say("agent", "I've moved you to the yearly plan, it works out cheaper.")
    assert "dejection" not in await conversation.cues("customer", text)


async def _cues_with(
    conversation: Conversation, cue_id: str, variants: dict[str, CueSpec], text: str
) -> dict[str, list[str]]:
    """The cues `text` fires with each variant of one cue's spec in the bundled playbook
    (cooldowns cleared between them), by variant name."""
    loaded = conversation.engine.holder.current
    pb = loaded.playbook
    found = {}
    for name, spec in variants.items():
        conversation.engine.holder = FixedHolder(
            replace(loaded, playbook=pb.model_copy(update={"cues": {**pb.cues, cue_id: spec}}))
        )
        conversation.engine.fired_at.clear()
        found[name] = await conversation.cues("customer", text)
    return found


async def test_affect_gate_decides_a_word_match(conversation: Conversation) -> None:
    """The same words fire dejection without the gate and not with it: the gate, not the
    similarity, is what holds back calm acceptance."""
    text = (
        "All good, my partner's been worried about the bills all month, so I'm handling this bit."
    )
    await conversation.say("customer", "My internet keeps dropping every evening.")
    await conversation.say("agent", "I've moved you to the yearly plan, it works out cheaper.")
    loaded = conversation.engine.holder.current
    pb = loaded.playbook
    ungated = pb.cues["dejection"].model_copy(update={"affect_gate": None, "threshold": 0.3})
    gated = ungated.model_copy(update={"affect_gate": AffectGate(emotions=["sad"])})
    found = await _cues_with(conversation, "dejection", {"ungated": ungated, "gated": gated}, text)
    assert "dejection" in found["ungated"]
    assert "dejection" not in found["gated"]


async def test_a_near_crisis_match_the_probe_doubts_does_not_page(
    conversation: Conversation,
) -> None:
    """An outside audit's false critical page: "I'll lose my job if I miss my meeting again"
    cleared crisis's threshold by 0.02 on its likeness to "Someone at your office is going
    to get hurt"; the meaning probe read it at 0.27. A near call needs the probe to agree
    (`Meaning.confirm`): without that rule the line pages."""
    text = "I'll lose my job if I miss my meeting again."
    loaded = conversation.engine.holder.current
    pb = loaded.playbook
    spec = pb.cues["crisis"]
    assert spec.meaning is not None and spec.meaning.confirm
    unconfirmed = spec.model_copy(
        update={"meaning": spec.meaning.model_copy(update={"confirm": []})}
    )
    found = await _cues_with(
        conversation, "crisis", {"bundled": spec, "unconfirmed": unconfirmed}, text
    )
    assert "crisis" in found["unconfirmed"]
    assert "crisis" not in found["bundled"]


async def test_a_second_confirmation_step_holds_a_garbled_near_crisis(
    conversation: Conversation,
) -> None:
    """`dev`'s garbled "every one of these stupid chargers" clears crisis's threshold by 0.06
    on its likeness to "I'm going to do something stupid", past the first step (0.03); the
    probe reads it at about 0.05, under the second step's 0.15."""
    text = "I'm in stupid charge."
    loaded = conversation.engine.holder.current
    pb = loaded.playbook
    spec = pb.cues["crisis"]
    assert spec.meaning is not None and len(spec.meaning.confirm) == 2
    one_step = spec.model_copy(
        update={"meaning": spec.meaning.model_copy(update={"confirm": spec.meaning.confirm[:1]})}
    )
    found = await _cues_with(conversation, "crisis", {"bundled": spec, "one step": one_step}, text)
    assert "crisis" in found["one step"]
    assert "crisis" not in found["bundled"]


async def test_flat_short_reply_after_a_fix_is_dejection_by_voice(
    conversation: Conversation,
) -> None:
    await conversation.say("customer", "The package never arrived and I needed it.")
    await conversation.say("agent", "I've issued a refund to your card.")
    found = await conversation.cues(
        "customer", "Fine.", arousal=0.12, voice_why=["pitch -1.8 SD", "loudness -1.5 SD"]
    )
    assert found == ["dejection"]


async def test_a_flat_fragment_of_ordinary_talk_after_a_fix_is_not_dejection(
    conversation: Conversation,
) -> None:
    """ASR often cuts a trailing fragment off a reply; a quiet "in the owner." is no sign of
    resignation, however flat the voice (the words must lean toward the cue)."""
    await conversation.say("customer", "The package never arrived and I needed it.")
    await conversation.say("agent", "I've issued a refund to your card.")
    for fragment in ("in the owner.", "today"):
        found = await conversation.cues(
            "customer", fragment, arousal=0.12, voice_why=["pitch -2.7 SD", "loudness -1.8 SD"]
        )
        assert found == [], fragment


async def test_the_same_short_reply_in_a_normal_voice_is_not(conversation: Conversation) -> None:
    await conversation.say("customer", "The package never arrived and I needed it.")
    await conversation.say("agent", "I've issued a refund to your card.")
    assert await conversation.cues("customer", "Fine.", arousal=0.5) == []


async def test_raised_voice_alone_fires_frustration(conversation: Conversation) -> None:
    await conversation.say("customer", "I'm calling about my order.")
    said = "I already gave you the order number twice."
    events = await conversation.say(
        "customer",
        said,
        arousal=0.93,
        voice_why=["pitch +2.4 SD", "loudness +2.0 SD", "rate +1.5 SD"],
    )
    cue = next(e for e in events if e["type"] == "cue" and e["cue"] == "frustration")
    # The voice raised it: the whole line is what the panel marks.
    assert cue["evidence"]["source"] == "voice" and cue["evidence"]["phrases"] == [said]


@pytest.mark.parametrize(
    "text",
    [
        # The text model reads these "anxious" and "sad": a raised voice says they are angry.
        "The heating's gone off and I don't know how long it will be.",
        "It's gone dark in the whole flat and the fridge has stopped.",
    ],
)
async def test_raised_voice_with_anxious_or_sad_words_is_frustration(
    conversation: Conversation, text: str
) -> None:
    label = conversation.model.score([text])[0].to_sentiment()["label"]
    assert label in ("anxious", "sad")  # what makes this case: not "frustrated"
    await conversation.say("customer", "I'm calling about my delivery.")
    found = await conversation.cues(
        "customer", text, arousal=0.95, voice_why=["pitch +2.8 SD", "loudness +2.1 SD"]
    )
    assert "frustration" in found


async def test_cooldown_holds_a_repeated_cue(conversation: Conversation) -> None:
    assert "frustration" in await conversation.cues("customer", "This is completely ridiculous.")
    assert "frustration" not in await conversation.cues(
        "customer", "Honestly, this is a total joke."
    )


async def test_cue_explains_itself(conversation: Conversation) -> None:
    events = await conversation.say("customer", "I can't afford another charge like that.")
    cue = next(e for e in events if e["type"] == "cue")
    assert cue["cue"] == "cost_anxiety"
    assert cue["label"] == "AI suggestion"
    assert "means the same as" in cue["why"]
    assert cue["evidence"]["phrases"] and cue["evidence"]["phrases"][0] in cue["evidence"]["text"]
    assert cue["evidence"]["source"] == "words"
    assert cue["priority"] == 2 and cue["advice"]


@dataclass
class PreviousCall:
    call_id: str
    started_at: datetime
    outcome: str | None = None
    end_reason: str | None = "hangup"
    cue_counts: dict[str, int] = field(default_factory=dict)


async def test_recent_call_in_the_customers_history_is_a_repeat_contact(
    conversation: Conversation,
) -> None:
    now = datetime.now(UTC)
    conversation.engine.set_history(
        [PreviousCall("old-1", now - timedelta(days=2), cue_counts={"frustration": 1})]
    )
    events = await conversation.say("customer", "Hi, I'm calling about my internet connection.")
    cue = next(e for e in events if e["type"] == "cue")
    assert cue["cue"] == "repeat_contact"
    assert "history: 1 call(s)" in cue["why"] and "2 days ago" in cue["why"]
    assert "frustration" in cue["why"]
    # The words of the line had nothing to do with it: none to mark.
    assert cue["evidence"]["source"] == "history" and cue["evidence"]["phrases"] == []
    # Once per call.
    again = await conversation.cues("customer", "It keeps dropping in the evening.")
    assert "repeat_contact" not in again


@pytest.mark.parametrize(
    ("outcome", "said"),
    [
        ("callback scheduled", "outcome callback scheduled"),
        ("customer disputes divorce settlement payment", "outcome noted in its record"),
    ],
)
async def test_a_repeat_contact_names_only_a_wrap_up_outcome(
    conversation: Conversation, outcome: str, said: str
) -> None:
    """An outside audit: an outcome typed as free text was copied into the next call's
    stored cue and stayed there after the first call was erased."""
    now = datetime.now(UTC)
    conversation.engine.set_history([PreviousCall("old-1", now - timedelta(hours=3), outcome)])
    events = await conversation.say("customer", "Hi, I'm calling about my internet connection.")
    cue = next(e for e in events if e["type"] == "cue")
    assert said in cue["why"] and "divorce" not in json.dumps(cue)


async def test_old_history_is_not_a_repeat_contact(conversation: Conversation) -> None:
    now = datetime.now(UTC)
    conversation.engine.set_history([PreviousCall("old-1", now - timedelta(days=40))])
    assert await conversation.cues("customer", "Hi, I'm calling about my internet.") == []


async def test_a_flat_thank_you_after_a_fix_is_not_dejection(conversation: Conversation) -> None:
    await conversation.say("customer", "The package never arrived and I needed it.")
    await conversation.say("agent", "I've issued a refund to your card.")
    found = await conversation.cues(
        "customer", "Thank you.", arousal=0.12, voice_why=["pitch -1.8 SD", "loudness -1.5 SD"]
    )
    assert found == []


async def test_they_said_quoting_the_company_is_still_the_callers_complaint(
    conversation: Conversation,
) -> None:
    assert "frustration" in await conversation.cues(
        "customer", "They promised it would be sorted by Friday and it still isn't working."
    )


async def test_someone_elses_anger_is_not_the_callers(conversation: Conversation) -> None:
    assert "frustration" not in await conversation.cues(
        "customer", "My neighbour said she was furious with her provider last winter."
    )


@pytest.mark.parametrize(
    "text",
    [
        "Honestly, some days I wonder whether anyone would notice if I wasn't here.",
        "My dad's just collapsed in the garden and he isn't breathing properly.",
        "There's a strong smell of gas in the flat and the baby is asleep upstairs.",
        "I'm scared to go home, my partner said he'd hurt me if I called anyone.",
    ],
)
async def test_crisis_raises_a_critical_escalation(conversation: Conversation, text: str) -> None:
    events = await conversation.say("customer", text)
    assert "crisis" in [e["cue"] for e in events if e["type"] == "cue"]
    esc = [e for e in events if e["type"] == "escalation"]
    assert [(e["reason"], e["urgency"]) for e in esc][:1] == [("crisis_indicators", "critical")]
    assert esc[0]["summary"]["text"]


@pytest.mark.parametrize("stop", ["", "."])
async def test_a_crisis_without_its_full_stop_is_still_a_crisis(
    conversation: Conversation, stop: str
) -> None:
    """A `dev` call's widower: Whisper wrote the line well but, the VAD having ended the
    utterance there, without its full stop, and that alone put it under crisis's threshold."""
    text = "I don't know what I'm still here for without her" + stop
    assert "crisis" in await conversation.cues("customer", text, arousal=0.3)


async def test_the_handoff_tells_the_callers_mood_not_only_the_last_line(
    conversation: Conversation,
) -> None:
    """An audit saw a handoff call an angry caller "neutral, improving": its feeling came from
    the last utterance alone ("I want to speak to your manager" reads neutral)."""
    for line in (
        "This is the third time I've called about the same outage.",
        "It's completely unacceptable, nobody there knows what they're doing.",
        "I'm sick and tired of being passed around like this.",
        "No.",
    ):
        await conversation.say("customer", line)
    events = await conversation.say("customer", "I want to speak to your manager right now.")
    esc = [e for e in events if e["type"] == "escalation" and e["reason"] == "user_request"]
    summary = esc[0]["summary"]
    assert summary["mostly"] == "frustrated"
    assert summary["worst"]["emotion"] == "frustrated" and summary["worst"]["valence"] < -0.5
    assert "mostly frustrated over the last 5 turns" in summary["text"]
    assert "at worst frustrated" in summary["text"]


async def test_panic_in_the_voice_with_lost_words_is_a_crisis(conversation: Conversation) -> None:
    await conversation.say("customer", "Hello, I am calling from my mum's house.")
    found = await conversation.cues(
        "customer",
        "I don't know what to do.",
        arousal=0.95,
        voice_why=["pitch +3.3 SD", "loudness +2.0 SD"],
    )
    assert "crisis" in found


async def test_a_shouted_complaint_garbled_to_a_fragment_is_no_voice_crisis(
    conversation: Conversation,
) -> None:
    """An outside UI audit's angry billing call: a shouted "I am sick and tired of this" came
    out as "I am sick and I am omnis", read "sad", and its fragment "I am omnis" leaned toward
    crisis: a critical page. A leaning clause needs as many words as the voice trigger."""
    await conversation.say("customer", "I've been charged twice for my internet this month.")
    found = await conversation.cues(
        "customer",
        "I am sick and I am omnis",
        arousal=0.95,
        voice_why=["pitch +2.1 SD", "pace +1.8 SD"],
    )
    assert "crisis" not in found


@pytest.mark.parametrize(
    ("first", "pages"), [("Hi.", False), ("Hello, I am calling from my mum's house.", True)]
)
async def test_a_voice_crisis_needs_a_voice_to_compare_with(
    conversation: Conversation, first: str, pages: bool
) -> None:
    """An outside check: against a baseline of one 1.3 s fragment, a confused line read as a
    raised voice became a crisis and a critical page. The same voice after a real sentence
    of the caller's still does (crisis's `min_baseline_s`, 2 s)."""
    await conversation.say("customer", first)
    found = await conversation.cues(
        "customer", "I don't know what to do.", arousal=0.95, voice_why=["pitch +3.3 SD"]
    )
    assert ("crisis" in found) is pages


async def test_a_raised_voice_does_not_make_ordinary_words_a_crisis(
    conversation: Conversation,
) -> None:
    # Anxious by the text emotion model and loud, but the words are plainly a plan to leave.
    found = await conversation.cues(
        "customer",
        "I'm moving the whole family to another app this weekend.",
        arousal=0.95,
        voice_why=["pitch +3.0 SD", "loudness +2.1 SD"],
    )
    assert "crisis" not in found


# A seller shouting about a payout held for ten days, as the ASR heard it on a `dev` call: the
# text model reads it "sad", and a clause leans toward the crisis examples ("I don't care
# about ..." is near "I don't care anymore") as much as garbled panic does.
ANGRY_AND_READ_AS_SAD = (
    "I don't care about this. I don't care about my money. I pay my supply and then we know "
    "you'll make ways. Always ways."
)


async def test_a_shouted_complaint_read_as_sad_is_no_crisis_by_its_meaning(
    conversation: Conversation,
) -> None:
    """Crisis's voice trigger needs its leaning clause read as a crisis by the meaning probe
    too (`lean_meaning`); without that the same turn pages a supervisor."""
    loaded = conversation.engine.holder.current
    spec = loaded.playbook.cues["crisis"]
    assert spec.voice_trigger is not None and spec.voice_trigger.lean_meaning > 0
    found = {}
    for name, vt in (
        ("without", spec.voice_trigger.model_copy(update={"lean_meaning": 0.0})),
        ("with", spec.voice_trigger),
    ):
        _crisis_as(conversation, loaded, spec.model_copy(update={"voice_trigger": vt}))
        await conversation.say("customer", "Hello, I am calling about my seller account.")
        found[name] = await conversation.cues(
            "customer",
            ANGRY_AND_READ_AS_SAD,
            arousal=0.97,
            voice_why=["pitch +3.8 SD", "loudness +2.2 SD"],
        )
    assert "crisis" in found["without"]
    assert "crisis" not in found["with"]


# A gas leak buried in a long run-on turn, as garbled ASR delivers it: whole, the clause
# scores just under crisis's threshold; the window that holds the leak is plainly a crisis.
RUN_ON_GAS_LEAK = (
    "Yes hi calling about the the storm on the roof of the garden shed where the panels went "
    "over the fence into the car park of the school and a strong smell of gas by the cooker "
    "the boys asleep up on the top floor."
)


def _crisis_as(conversation: Conversation, loaded: LoadedPlaybook, spec: CueSpec) -> None:
    """Start the conversation's engine afresh (no cooldowns, no alerts raised) on `loaded`
    with crisis's spec replaced."""
    pb = loaded.playbook
    holder = FixedHolder(
        replace(loaded, playbook=pb.model_copy(update={"cues": {**pb.cues, "crisis": spec}}))
    )
    conversation.engine = CueEngine(holder=holder, analyze=conversation.engine.analyze)


async def test_close_look_reads_a_run_on_turn_in_windows(conversation: Conversation) -> None:
    """Crisis's `close_look` rereads a near-miss clause in short windows; without it the
    same turn is missed."""
    loaded = conversation.engine.holder.current
    pb = loaded.playbook
    assert pb.cues["crisis"].close_look is not None
    found = {}
    for name, spec in (
        ("without", pb.cues["crisis"].model_copy(update={"close_look": None})),
        ("with", pb.cues["crisis"]),
    ):
        _crisis_as(conversation, loaded, spec)
        found[name] = await conversation.say("customer", RUN_ON_GAS_LEAK)
    assert "crisis" not in [e.get("cue") for e in found["without"] if e["type"] == "cue"]
    (cue,) = [e for e in found["with"] if e["type"] == "cue" and e["cue"] == "crisis"]
    # The reason names the window, not the whole run-on clause.
    assert "smell of gas" in cue["why"] and "garden shed" not in cue["why"]


async def test_close_look_costs_nothing_on_ordinary_turns(
    library: PlaybookLibrary, emotion_model: EmotionModel
) -> None:
    """Windows are analysed only for a clause near a close-look cue's threshold: a long,
    ordinary turn takes one model pass, as before."""
    batches: list[list[str]] = []

    async def analyze(texts: Sequence[str]) -> list[EmotionScore]:
        batches.append(list(texts))
        return emotion_model.score(texts)

    conv = Conversation(CueEngine(holder=library, analyze=analyze), emotion_model)
    await conv.say(
        "customer",
        "I moved house last month so I need the address on the account changed to the new "
        "flat on Station Road, and the bills should go to my new email as well please.",
    )
    assert len(batches) == 1
    batches.clear()
    await conv.say("customer", RUN_ON_GAS_LEAK)
    assert len(batches) == 2
    assert all(len(w.split()) <= 10 for w in batches[1])


async def test_a_clause_with_one_misheard_word_is_read_without_it(
    conversation: Conversation,
) -> None:
    """`dev` d22: ASR heard "I called Tuesday about the exact same thing" as "I called Doom
    about ...", 0.37 from the nearest repeat-contact example where the sentence without the
    odd word is 0.74. `misheard` reads it again without each content word; without it the turn
    is missed."""
    loaded = conversation.engine.holder.current
    pb = loaded.playbook
    assert pb.cues["repeat_contact"].misheard is not None
    said = "I called Doom about the exact same thing, and was told it wouldn't happen again."
    found = {}
    for name, spec in (
        ("without", pb.cues["repeat_contact"].model_copy(update={"misheard": None})),
        ("with", pb.cues["repeat_contact"]),
    ):
        holder = FixedHolder(
            replace(
                loaded,
                playbook=pb.model_copy(update={"cues": {**pb.cues, "repeat_contact": spec}}),
            )
        )
        conversation.engine = CueEngine(holder=holder, analyze=conversation.engine.analyze)
        heard = await conversation.say("customer", said, unsure={"Doom": 0.07, "about": 0.2})
        found[name] = [e for e in heard if e["type"] == "cue"]
    assert "repeat_contact" not in [e["cue"] for e in found["without"]]
    (cue,) = [e for e in found["with"] if e["cue"] == "repeat_contact"]
    assert 'read without "Doom", perhaps misheard' in cue["why"]
    # The panel marks the words the customer said, not the reading without one of them.
    assert cue["evidence"]["text"] == said
    # Heard with confidence, "Doom" is what the caller said: no second reading.
    conversation.engine = CueEngine(
        holder=conversation.engine.holder, analyze=conversation.engine.analyze
    )
    assert "repeat_contact" not in await conversation.cues("customer", said)


async def test_leaving_a_word_out_never_turns_ordinary_talk_into_a_cue(
    conversation: Conversation,
) -> None:
    """Second readings only for clauses already near a cue and read as it by the probe: a
    calm caller's prior contact about something else and a plain price question stay calm."""
    for said in (
        "I called in the spring about an ear mould, so you should have my address.",
        "What does the premium plan cost per month?",
        "I'm not upset at all, I just wondered when the engineer is coming.",
    ):
        cues = [e["cue"] for e in await conversation.say("customer", said) if e["type"] == "cue"]
        assert cues == [], (said, cues)


async def test_a_weak_crisis_match_does_not_mute_a_real_one(conversation: Conversation) -> None:
    """Crisis has `refire_above`: inside its cooldown a clearly stronger match shows again;
    a match no stronger than the one shown does not."""
    loaded = conversation.engine.holder.current
    pb = loaded.playbook
    assert pb.cues["crisis"].refire_above is not None
    weak = "I'm stranded on the hard shoulder with a baby in the back."
    strong = "My husband just collapsed on the kitchen floor and he isn't breathing."
    found = {}
    for name, spec in (
        ("without", pb.cues["crisis"].model_copy(update={"refire_above": None})),
        ("with", pb.cues["crisis"]),
    ):
        _crisis_as(conversation, loaded, spec)
        found[name] = [
            await conversation.say("customer", weak),
            await conversation.say("customer", weak),  # as strong as the one shown
            await conversation.say("customer", strong),
        ]

    def kinds(turns: list[list[dict]], kind: str) -> list[list[str]]:
        return [[e.get("cue", "") for e in t if e["type"] == kind] for t in turns]

    assert kinds(found["without"], "cue") == [["crisis"], [], []]
    assert kinds(found["with"], "cue") == [["crisis"], [], ["crisis"]]
    # The supervisor was paged by the first, and is paged again by the clearly stronger one:
    # one who dismissed a false alarm must hear of the real crisis, with its own words in the
    # handoff (an outside audit: a car accident read as danger used up the call's one page).
    assert kinds(found["with"], "escalation") == [["crisis"], [], ["crisis"]]
    (again,) = [e for e in found["with"][2] if e["type"] == "escalation"]
    assert again["urgency"] == "critical" and "again" in again["detail"]
    assert "collapsed" in " ".join(again["summary"]["trigger_phrases"])


async def test_a_crisis_is_not_paged_again_for_a_match_the_probe_doubts_more(
    conversation: Conversation,
) -> None:
    """An outside set's stuck lift (session 34): a garbled line nearer a break-in example
    than the first match was to its example, but read by the meaning probe as crisis far
    less surely (8% against 22%), paged the supervisor a second time 1.5 s after the first.
    A clearly stronger match the probe also reads more surely still shows."""
    first = (
        "between the second and third floor, and visit her cafe within time. She wants "
        "outing a few minutes ago, and how she's gone quiet, and I can see her breathing like..."
    )
    turns = [
        await conversation.say("customer", first),
        await conversation.say("customer", "It's talking through the door"),
        await conversation.say(
            "customer", "My husband just collapsed on the kitchen floor and he isn't breathing."
        ),
    ]
    assert [[e["type"] for e in t if e["type"] in ("cue", "escalation")] for t in turns] == [
        ["cue", "escalation"],
        [],
        ["cue", "escalation"],
    ]


async def test_a_crisis_from_a_sustained_state_names_no_words(conversation: Conversation) -> None:
    """Three turns in an intense negative state raise the crisis without any one line
    meaning it: no words of the last line to mark."""
    lines = [
        "This is absolutely unacceptable.",
        "I am sick of being passed around like this.",
        "You people are useless, all of you.",
    ]
    found: list[dict[str, Any]] = []
    pages: list[tuple[str, str]] = []
    for i, line in enumerate(lines):
        t = 3.0 * i
        event = {
            "type": "transcript",
            "speaker": "customer",
            "text": line,
            "t_start": t,
            "t_end": t + 2.0,
            "utterance_id": i + 1,
            "words": [{"w": w, "t0": t, "t1": t + 2.0, "p": 0.9} for w in line.split()],
            "sentiment": conversation.model.score([line])[0].to_sentiment(),
            "prosody": {"f0_hz": 240.0, "arousal": 0.99, "why": ["loudness +3.0 SD"]},
            # What the fused state reads after minutes of shouting (thresholds 0.95, -0.8).
            "state": {"t": t + 2.0, "valence": -0.9, "arousal": 0.97, "emotion": "frustrated"},
        }
        events = await conversation.engine.on_transcript(event)
        found += [e for e in events if e["type"] == "cue" and e["cue"] == "crisis"]
        pages += [(e["reason"], e["urgency"]) for e in events if e["type"] == "escalation"]
    assert len(found) == 1, found
    # One critical page, named for what raised it (an audit saw a second one, as crisis
    # language, for the same moment).
    assert [p for p in pages if p[1] == "critical"] == [("high_emotional_intensity", "critical")]
    evidence = found[0]["evidence"]
    assert evidence["source"] == "trend" and evidence["phrases"] == []
    assert "intense negative state over 3 customer turns" in found[0]["why"]


async def test_frustration_after_an_apology_asks_for_the_plan(conversation: Conversation) -> None:
    """A caller still angry after the agent apologised needs the fix, not a second apology
    (`advice_after`); the reasons name the apology."""
    await conversation.say("customer", "I'm calling about my bill.")
    await conversation.say("agent", "I'm so sorry about that, I apologise for the trouble.")
    assert conversation.engine.agent_moves[-1].move == "apology"
    events = await conversation.say("customer", "This is completely ridiculous.")
    cue = next(e for e in events if e["type"] == "cue" and e["cue"] == "frustration")
    assert cue["advice"].startswith("They have had the apology")
    assert any(r.startswith("after the agent's apology") for r in cue["reasons"])


async def test_frustration_with_no_agent_move_keeps_its_advice(
    conversation: Conversation,
) -> None:
    await conversation.say("customer", "I'm calling about my bill.")
    await conversation.say("agent", "Can I have your account number please?")
    events = await conversation.say("customer", "This is completely ridiculous.")
    cue = next(e for e in events if e["type"] == "cue" and e["cue"] == "frustration")
    assert cue["advice"].startswith("Validate the feeling")


async def test_confusion_after_an_explanation_asks_for_another_way_in(
    conversation: Conversation,
) -> None:
    await conversation.say("customer", "Why is my bill higher this month?")
    await conversation.say(
        "agent",
        "That's because the promotional discount ended, so the standard rate applies now.",
    )
    assert conversation.engine.agent_moves[-1].move == "explanation"
    events = await conversation.say(
        "customer", "Sorry, I don't follow. I don't understand what that means."
    )
    cue = next(e for e in events if e["type"] == "cue" and e["cue"] == "confusion")
    assert cue["advice"].startswith("Try another way in")


async def test_a_cue_that_comes_back_on_the_next_turn_did_not_land(
    conversation: Conversation,
) -> None:
    """An outside audit: a frustration card read as landed because a calm "All right" came
    after the next turn, which was frustrated again (and escalated)."""
    conv = conversation
    await conv.say("customer", "I'm calling about my bill.")
    first = await conv.cues("customer", "This is completely ridiculous, I'm fed up with you.")
    assert "frustration" in first
    await conv.say("agent", "I'm sorry. Let me look at the charges.")
    await conv.say("customer", "Honestly this is a total joke, I'm sick of it.")  # again
    await conv.say("customer", "All right, thank you, that's great, I'm really happy now.")
    outcome = next(
        c for c in conv.engine.call_summary()["cue_outcomes"] if c["cue"] == "frustration"
    )
    assert outcome["valence_after"] is not None
    assert outcome["landed"] is False
