"""Escalation reasons, urgencies and the once-per-situation rule."""

from __future__ import annotations

from typing import Any

from coach.cues.playbook import load_playbook
from coach.escalation import EscalationDetector

PB = load_playbook()


def summary() -> dict[str, Any]:
    return {"text": "s", "trend": "worsening", "state": {}}


def state(t: float, valence: float, arousal: float, confidence: float = 0.9) -> dict[str, Any]:
    return {"t": t, "valence": valence, "arousal": arousal, "confidence": confidence}


def test_crisis_cue_raises_a_critical_escalation_once() -> None:
    det = EscalationDetector()
    s = [state(1, -0.5, 0.6)]
    out = det.observe_customer(
        PB,
        state=s[-1],
        states=s,
        fired=[("crisis", PB.cues["crisis"])],
        summary=summary,
        intense=None,
    )
    assert [(e["reason"], e["urgency"], e["cue"]) for e in out] == [
        ("crisis_indicators", "critical", "crisis")
    ]
    assert out[0]["summary"]["text"] == "s"
    again = det.observe_customer(
        PB,
        state=s[-1],
        states=s,
        fired=[("crisis", PB.cues["crisis"])],
        summary=summary,
        intense=None,
    )
    assert again == []


def test_escalation_request_is_a_user_request() -> None:
    det = EscalationDetector()
    s = [state(1, -0.2, 0.5)]
    out = det.observe_customer(
        PB,
        state=s[-1],
        states=s,
        fired=[("escalation_request", PB.cues["escalation_request"])],
        summary=summary,
        intense=None,
    )
    assert [(e["reason"], e["urgency"]) for e in out] == [("user_request", "high")]


def test_intensity_rises_from_high_to_critical() -> None:
    det = EscalationDetector()
    states = [state(1, -0.7, 0.85), state(2, -0.7, 0.85)]
    out = det.observe_customer(
        PB, state=states[-1], states=states, fired=[], summary=summary, intense=None
    )
    assert [(e["reason"], e["urgency"]) for e in out] == [("high_emotional_intensity", "high")]
    states.append(state(3, -0.9, 0.97))
    out = det.observe_customer(
        PB, state=states[-1], states=states, fired=[], summary=summary, intense="sustained"
    )
    assert [(e["reason"], e["urgency"]) for e in out] == [("high_emotional_intensity", "critical")]


def test_crisis_words_and_an_intense_state_at_once_page_once() -> None:
    """A crisis line in the third intense turn pages the supervisor as crisis language; the
    sustained state adds no second critical page for the same moment."""
    det = EscalationDetector()
    states = [state(i, -0.9, 0.97) for i in (1, 2, 3)]
    fired = [("crisis", PB.cues["crisis"])]
    out = det.observe_customer(
        PB, state=states[-1], states=states, fired=fired, summary=summary, intense="sustained"
    )
    critical = [(e["reason"], e["urgency"]) for e in out if e["urgency"] == "critical"]
    assert critical == [("crisis_indicators", "critical")]


def test_repeated_frustration_and_complex_inquiry() -> None:
    det = EscalationDetector()
    s = [state(1, -0.3, 0.6)]
    kinds = []
    for cue in ("frustration", "confusion", "frustration", "confusion"):
        kinds += [
            e["reason"]
            for e in det.observe_customer(
                PB,
                state=s[-1],
                states=s,
                fired=[(cue, PB.cues[cue])],
                summary=summary,
                intense=None,
            )
        ]
    assert kinds == ["repeated_frustration", "complex_inquiry"]


def test_low_asr_confidence_asks_someone_to_listen() -> None:
    det = EscalationDetector()
    states = [state(i, 0.0, 0.5, confidence=0.3) for i in range(3)]
    out = det.observe_customer(
        PB, state=states[-1], states=states, fired=[], summary=summary, intense=None
    )
    assert [(e["reason"], e["urgency"]) for e in out] == [("low_confidence", "low")]


def test_agent_safety_protocol_is_critical_once_and_after_no_crisis_cue() -> None:
    det = EscalationDetector()
    out = det.observe_agent_safety("Are you safe right now?", summary=summary, state={"t": 5.0})
    assert [(e["reason"], e["urgency"], e["cue"]) for e in out] == [
        ("crisis_indicators", "critical", None)
    ]
    assert out[0]["detail"] == 'the agent started the safety protocol: "Are you safe right now?"'
    assert det.observe_agent_safety("Call 911 now.", summary=summary, state={"t": 9.0}) == []
    # A crisis cue already put the call at critical: the agent's protocol adds no second alert.
    det = EscalationDetector()
    s = [state(1, -0.5, 0.6)]
    fired = [("crisis", PB.cues["crisis"])]
    det.observe_customer(PB, state=s[-1], states=s, fired=fired, summary=summary, intense=None)
    assert det.observe_agent_safety("Are you safe?", summary=summary, state={"t": 3.0}) == []


def test_a_crisis_shown_again_for_a_clearer_match_pages_again() -> None:
    """A weak false alarm must not use up the call's crisis page (`refire_above`)."""
    det = EscalationDetector()
    s = [state(1, -0.5, 0.6)]
    crisis = [("crisis", PB.cues["crisis"])]
    first = det.observe_customer(
        PB, state=s[-1], states=s, fired=crisis, summary=summary, intense=None
    )
    again = det.observe_customer(
        PB,
        state=s[-1],
        states=s,
        fired=crisis,
        summary=summary,
        intense=None,
        stronger_again={"crisis"},
    )
    assert [e["detail"] for e in first] == ["crisis cue"]
    assert [(e["reason"], e["urgency"]) for e in again] == [("crisis_indicators", "critical")]
    assert "again" in again[0]["detail"]
    assert det.levels["crisis_indicators"] == 3  # still critical, not raised past it
    # An early cue (from a partial transcript) takes the same path.
    early = det.observe_cues(crisis, summary=summary, state={"t": 2.0}, stronger_again={"crisis"})
    assert len(early) == 1
    assert det.observe_cues(crisis, summary=summary, state={"t": 3.0}) == []
