"""Timing cues from speech intervals: dead air, overtalk, agent pace, talk ratio."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from coach.cues import dynamics
from coach.cues.dynamics import Spoken, Timeline, TimingCues
from coach.cues.playbook import DEFAULT_PLAYBOOK, PlaybookError, load_playbook, parse_playbook


def tl(now: float, customer=(), agent=(), **kw) -> Timeline:  # type: ignore[no-untyped-def]
    return Timeline(now=now, customer=list(customer), agent=list(agent), **kw)


def test_dead_air_after_eight_seconds_of_silence_mid_call() -> None:
    assert dynamics.dead_air(tl(17.9, [(1, 10)]), silence_s=8, min_call_s=5) is None
    hit = dynamics.dead_air(tl(18.1, [(1, 10)]), silence_s=8, min_call_s=5)
    assert hit is not None and hit.t_start == 10 and "8 s" in hit.why


def test_no_dead_air_before_anyone_spoke_or_while_someone_speaks() -> None:
    assert dynamics.dead_air(tl(20.0), silence_s=8, min_call_s=5) is None
    assert (
        dynamics.dead_air(tl(30.0, [(1, 10)], agent_open_since=11.0), silence_s=8, min_call_s=5)
        is None
    )


def test_overtalk_when_the_agent_cuts_in() -> None:
    # Customer speaks 0..10; agent starts at 6 and talks over for 2.5 s.
    t = tl(8.6, customer=[], agent=[], customer_open_since=0.0, agent_open_since=6.0)
    hit = dynamics.overtalk(t, overlap_s=2.0, interrupt_window_s=0.3)
    assert hit is not None and hit.cue == "overtalk" and hit.t_start == 6.0


def test_short_backchannel_is_not_overtalk() -> None:
    t = tl(8.0, customer=[], agent=[(6.0, 6.8)], customer_open_since=0.0)
    assert dynamics.overtalk(t, overlap_s=2.0, interrupt_window_s=0.3) is None


def test_customer_interrupting_the_agent_is_not_the_agents_overtalk() -> None:
    t = tl(9.0, customer=[], agent=[], customer_open_since=6.0, agent_open_since=0.0)
    assert dynamics.overtalk(t, overlap_s=2.0, interrupt_window_s=0.3) is None


def _utts(t0: float, t1: float, syl_rate: float, step: float = 4.0) -> list[Spoken]:
    out, t = [], t0
    while t < t1:
        end = min(t + step, t1)
        out.append(Spoken(t, end, round((end - t) * syl_rate), end - t))
        t = end + 0.5
    return out


def test_agent_pace_fast_sustained_and_faster_than_the_customer() -> None:
    customer = _utts(0.0, 5.0, 4.5)
    fast = _utts(6.0, 19.0, 6.0)
    hit = dynamics.agent_pace(
        fast, customer, 19.0, syllables_per_s=5.3, min_speech_s=8, window_s=30, vs_customer=1.15
    )
    # Measured over the newest 8 s of speech: the last two 4 s utterances.
    assert hit is not None and "6.0 syllables/s" in hit.why and hit.t_start == 10.5
    normal = _utts(6.0, 19.0, 4.6)
    assert (
        dynamics.agent_pace(
            normal, customer, 19.0, syllables_per_s=5.3, min_speech_s=8, window_s=30
        )
        is None
    )
    brief = _utts(15.0, 19.0, 6.5)
    assert (
        dynamics.agent_pace(brief, customer, 19.0, syllables_per_s=5.3, min_speech_s=8, window_s=30)
        is None
    )


def test_rushed_turn_after_calm_ones_is_measured_on_its_own() -> None:
    """A calm greeting, then 10 s of rushed explanation: the cue comes at the end of the rushed
    stretch, not later when enough of it has pushed the 30 s average over the bar."""
    customer = _utts(0.0, 5.0, 4.5)
    calm = _utts(5.5, 15.0, 4.3)
    rushed = [Spoken(15.5, 25.5, 10.0 * 6.3, 10.0)]
    hit = dynamics.agent_pace(
        calm + rushed,
        customer,
        25.5,
        syllables_per_s=5.7,
        min_speech_s=8,
        window_s=30,
        vs_customer=1.15,
    )
    assert hit is not None and hit.t_start == 15.5 and "6.3 syllables/s" in hit.why
    assert (
        dynamics.agent_pace(calm, customer, 15.0, syllables_per_s=5.7, min_speech_s=8, window_s=30)
        is None
    )


def test_a_calm_greeting_does_not_carry_a_short_rush_over_the_bar() -> None:
    """6 s of rushing after a 3 s greeting is not 8 s of rushing: averaged together they
    clear the bar, but the cue waits until the agent has rushed for 8 s (here, through the
    next turn too). A brief "Okay." inside the rush neither ends it nor is read alone."""
    customer = _utts(0.0, 5.0, 4.5)
    greeting = [Spoken(5.5, 8.7, 3.2 * 4.5, 3.2)]
    first_rush = [Spoken(9.2, 15.2, 6.0 * 7.0, 6.0)]
    pace_args = {"syllables_per_s": 5.7, "min_speech_s": 8.0, "window_s": 30.0, "vs_customer": 1.15}
    # Averaged with the greeting the newest 9.2 s run at 6.1 syllables/s, over the bar.
    assert dynamics.agent_pace(greeting + first_rush, customer, 15.2, **pace_args) is None
    okay = [Spoken(18.0, 18.6, 1.0, 0.6)]
    second_rush = [Spoken(19.0, 23.0, 4.0 * 7.0, 4.0)]
    hit = dynamics.agent_pace(
        greeting + first_rush + okay + second_rush, customer, 23.0, **pace_args
    )
    assert hit is not None and hit.t_start == 9.2 and hit.t_end == 23.0, hit
    assert "over the last 11 s of speech" in hit.why, hit.why


def test_fast_customer_raises_the_bar() -> None:
    customer = _utts(0.0, 5.0, 5.6)
    agent = _utts(6.0, 19.0, 5.8)
    assert (
        dynamics.agent_pace(
            agent,
            customer,
            19.0,
            syllables_per_s=5.3,
            min_speech_s=8,
            window_s=30,
            vs_customer=1.15,
        )
        is None
    )


def test_pace_why_names_the_bar_this_caller_sets() -> None:
    """Above the floor but under 1.15x a fast caller's pace stays quiet (above), so when the
    cue fires its `why` names the bar applied (1.15 x 5.4 = 6.2), not the floor (5.7)."""
    customer = [Spoken(0.0, 5.0, 27, 5.0)]  # 5.4 syllables/s
    agent = [Spoken(6.0, 16.0, 65, 10.0)]  # 6.5 syllables/s
    hit = dynamics.agent_pace(
        agent, customer, 16.0, syllables_per_s=5.7, min_speech_s=8, window_s=30, vs_customer=1.15
    )
    assert hit is not None
    assert "the customer 5.4 (comfortable: under 6.2)" in hit.why, hit.why


def test_talk_ratio() -> None:
    t = tl(120.0, customer=[(0, 5)], agent=[(5, 100)])
    assert dynamics.talk_ratio(t, agent_share=0.8, window_s=120, min_speech_s=60) is not None
    t = tl(120.0, customer=[(0, 40)], agent=[(40, 100)])
    assert dynamics.talk_ratio(t, agent_share=0.8, window_s=120, min_speech_s=60) is None


def test_each_silence_fires_once() -> None:
    pb = load_playbook()
    cues = TimingCues({"dead_air": pb.cues["dead_air"]})
    assert [c for c, _ in cues.check(tl(19.0, [(1, 10)]))] == ["dead_air"]
    assert cues.check(tl(25.0, [(1, 10)])) == []  # same silence
    assert [c for c, _ in cues.check(tl(40.0, [(1, 10), (26, 30)]))] == ["dead_air"]


async def test_after_the_agent_says_they_will_check_a_silence_asks_for_a_check_in(
    conversation: Any,
) -> None:
    """A newcomer watching the demo call: "Tell the customer what you're doing while they
    wait" came right after "Let me pull up your account. This will take a moment." The agent
    had said what they were doing; the silence calls for a check-in (`advice_after`)."""
    conv = conversation
    await conv.say("customer", "I was charged twice for my order last month.")
    await conv.say("agent", "Let me pull up your account. This will take a moment.")
    assert conv.engine.agent_moves and conv.engine.agent_moves[-1].move == "hold"
    silence_from = conv.t
    spoken = [(0.0, silence_from)]
    cues = conv.engine.on_tick(Timeline(now=silence_from + 8.5, customer=spoken, agent=[]))
    dead = [c for c in cues if c["cue"] == "dead_air"]
    assert len(dead) == 1
    assert dead[0]["advice"].startswith("Check back in")
    assert any(r.startswith("after the agent's hold") for r in dead[0]["reasons"])


async def test_a_silence_during_a_transfer_says_who_they_will_speak_to(
    conversation: Any,
) -> None:
    conv = conversation
    await conv.say("customer", "I want to speak to a manager about this.")
    await conv.say("agent", "I'll transfer you to my supervisor now.")
    assert conv.engine.agent_moves and conv.engine.agent_moves[-1].move == "transfer"
    spoken = [(0.0, conv.t)]
    cues = conv.engine.on_tick(Timeline(now=conv.t + 8.5, customer=spoken, agent=[]))
    dead = [c for c in cues if c["cue"] == "dead_air"]
    assert len(dead) == 1 and dead[0]["advice"].startswith("Tell the customer the transfer")


async def test_a_silence_after_other_talk_keeps_the_plain_advice(conversation: Any) -> None:
    conv = conversation
    await conv.say("customer", "I was charged twice for my order last month.")
    await conv.say("agent", "I'm sorry to hear that, that must be annoying.")
    spoken = [(0.0, conv.t)]
    cues = conv.engine.on_tick(Timeline(now=conv.t + 8.5, customer=spoken, agent=[]))
    dead = [c for c in cues if c["cue"] == "dead_air"]
    assert (
        len(dead) == 1
        and dead[0]["advice"] == "Tell the customer what you're doing while they wait."
    )
    assert len(dead[0]["reasons"]) == 1


def test_advice_after_an_unknown_agent_move_is_refused() -> None:
    data = yaml.safe_load(DEFAULT_PLAYBOOK.read_text(encoding="utf-8"))
    data["cues"]["dead_air"]["advice_after"] = {"holding": "Check back in with them."}
    with pytest.raises(PlaybookError, match="advice_after move 'holding' is not in agent_moves"):
        parse_playbook(yaml.safe_dump(data))
    # The error names the line of the move (an outside audit got "(top level)").
    text = DEFAULT_PLAYBOOK.read_text(encoding="utf-8").replace(
        "      hold: Check back in", "      holding: Check back in"
    )
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "holding: Check" in t)
    with pytest.raises(PlaybookError, match=rf"dead_air\.advice_after\.holding \(line {line}\)"):
        parse_playbook(text)
