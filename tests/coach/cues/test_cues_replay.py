"""End to end, one call per cue family: audio in, cues out, through the whole pipeline.

Each call is rendered with espeak-ng as 8 kHz mu-law stereo (how telephony delivers it),
replayed --fast, and checked against its script: the right cue inside the trigger turn's
window (start .. end + 4 s), nothing on the calm turns, and for crisis a critical
escalation to supervisors carrying the handoff summary.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from coach.bus import SUPERVISOR_TOPIC, InProcessBus
from coach.calls import CallManager
from coach.replay import read_call, replay
from coach.runtime import Runtime
from coach.settings import Settings
from scripts.make_test_calls import parse_call, render_call

pytestmark = pytest.mark.slow

LANGUAGE_CALL = """
# call_id: family_language
agent: Thank you for calling Northwind billing, this is Priya. How can I help?
customer: Hi. My bill went up again this month and I really can't afford it anymore.
agent: I'm sorry to hear that. Let me look at your account.
customer [amp=150]: This is the third time I've called about this.
  Nobody ever fixes anything.
agent: I understand. I can see the increase came from a promotion that ended.
customer: I want to speak to a manager, please.
agent: Of course, I'll bring my supervisor in now.
"""

TIMING_CALL = """
# call_id: family_timing
agent: Good afternoon, this is Tom from Fernway internet. What can I do for you?
customer: Hi, I'd like to move my service to a new address next month,
  because we are moving to a bigger flat closer to my office.
agent [overlap=2.8]: Sure, sure, I can do that, what's the new address?
customer: It's twenty four Birch Road.
agent: Thank you. Let me check availability at that address.
agent [gap=10.0]: Thanks for waiting. Fibre is available there.
customer: Great, thank you.
"""

CRISIS_CALL = """
# call_id: family_crisis
agent: Thank you for calling Eastgate energy, this is Lena. How can I help you today?
customer: I got a letter saying my power will be cut off on Friday.
agent: I'm sorry, let me look into that for you right away.
customer [speed=120 pitch=20 amp=60]: Honestly, I don't see the point in going on anymore.
agent: I'm really glad you told me. You are not alone, and I'm going to stay on the line with you.
"""


def render(tmp: Path, script_text: str) -> tuple[Path, dict[str, Any]]:
    script, _ = parse_call(script_text, default_call_id="call")
    wav, truth = render_call(script, tmp)
    return wav, json.loads(truth.read_text())


async def run(wav: Path, runtime: Runtime, settings: Settings) -> tuple[list[dict], list[dict]]:
    bus = InProcessBus()
    sup = bus.subscribe(SUPERVISOR_TOPIC, replay=False)
    manager = CallManager(runtime=runtime, settings=settings, bus=bus)
    events = await replay(read_call(wav, None), manager=manager, call_id="c", realtime=False)
    wall = []
    while not sup.queue.empty():
        ev = sup.queue.get_nowait()
        if ev is not None:
            wall.append(ev)
    return events, wall


def cues_in(events: list[dict], cue: str, turn: dict[str, Any]) -> list[dict]:
    return [
        e
        for e in events
        if e["type"] == "cue"
        and e["cue"] == cue
        and turn["t_start"] <= e["t_emit"] <= turn["t_end"] + 4.0
    ]


async def test_language_cues(tmp_path: Path, runtime: Runtime, settings: Settings) -> None:
    wav, truth = render(tmp_path, LANGUAGE_CALL)
    events, wall = await run(wav, runtime, settings)
    turns = truth["turns"]
    assert cues_in(events, "cost_anxiety", turns[1])
    assert cues_in(events, "repeat_contact", turns[3])
    request = cues_in(events, "escalation_request", turns[5])
    assert request and request[0]["label"] == "AI suggestion" and request[0]["why"]
    # Nothing fires on the agent's own turns or the opening.
    fired = {e["cue"] for e in events if e["type"] == "cue"}
    assert not fired & {"crisis", "churn_risk", "dead_air", "overtalk"}, fired
    escalations = [e for e in events if e["type"] == "escalation"]
    assert any(e["reason"] == "user_request" for e in escalations)
    assert any(e["type"] == "escalation" for e in wall)  # supervisors are told
    end = next(e for e in events if e["type"] == "call_end")
    assert end["summary"]["cues"].get("escalation_request") == 1


async def test_timing_cues(tmp_path: Path, runtime: Runtime, settings: Settings) -> None:
    wav, truth = render(tmp_path, TIMING_CALL)
    events, _ = await run(wav, runtime, settings)
    turns = truth["turns"]
    overtalk = [e for e in events if e["type"] == "cue" and e["cue"] == "overtalk"]
    assert overtalk and turns[2]["t_start"] <= overtalk[0]["t_emit"] <= turns[2]["t_end"] + 4.0
    silence_start, silence_end = turns[4]["t_end"], turns[5]["t_start"]
    dead = [e for e in events if e["type"] == "cue" and e["cue"] == "dead_air"]
    assert len(dead) == 1
    # Fired during the silence, about 8 s in: before the agent spoke again.
    assert silence_start + 7.5 <= dead[0]["t_emit"] <= silence_end
    assert "timing:" in dead[0]["why"]
    assert dead[0]["evidence"]["source"] == overtalk[0]["evidence"]["source"] == "timing"
    assert dead[0]["evidence"]["phrases"] == []
    assert not [
        e for e in events if e["type"] == "cue" and e["cue"] not in ("overtalk", "dead_air")
    ]


async def test_crisis_escalates_to_supervisors_at_once(
    tmp_path: Path, runtime: Runtime, settings: Settings
) -> None:
    wav, truth = render(tmp_path, CRISIS_CALL)
    events, wall = await run(wav, runtime, settings)
    turn = truth["turns"][3]
    crisis = cues_in(events, "crisis", turn)
    assert crisis and crisis[0]["severity"] == "critical" and crisis[0]["priority"] == 1
    critical = [e for e in wall if e["type"] == "escalation" and e["urgency"] == "critical"]
    assert critical and critical[0]["reason"] == "crisis_indicators"
    assert critical[0]["seq"] == crisis[0]["seq"] + 1  # raised with the cue, not later
    summary = critical[0]["summary"]
    assert summary["cues_shown"][-1] == "crisis" and summary["text"]
    assert summary["trigger_phrases"]


EARLY_CALL = """
# call_id: family_early
agent: Thank you for calling Northwind billing, this is Priya. How can I help?
customer: I want to speak to your manager right now. I have been on hold for forty minutes
  and I have explained this same problem to three different people already today.
agent: I'm sorry. I'll bring my supervisor in now.
"""


async def test_a_cue_can_come_before_the_customer_stops(
    tmp_path: Path, runtime: Runtime, settings: Settings
) -> None:
    """Escalation request has `early`: its sentence is settled in the partials while the
    customer goes on talking, so the cue and the escalation come before the turn ends."""
    wav, truth = render(tmp_path, EARLY_CALL)
    events, wall = await run(wav, runtime, settings)
    turn = truth["turns"][1]
    (request,) = cues_in(events, "escalation_request", turn)
    assert request.get("early") is True, request
    assert request["t_emit"] < turn["t_end"] - 1.0
    assert "still speaking" in request["why"]
    raised = [e for e in wall if e["type"] == "escalation" and e["reason"] == "user_request"]
    assert raised and raised[0]["t_emit"] == request["t_emit"]
