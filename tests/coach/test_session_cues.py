"""The session runs the cue engine on customer transcripts and partials; when the engine
fails on one, that transcript's cues are lost and logged, never the call."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytest

from coach.bus import InProcessBus, agent_topic
from coach.runtime import Runtime
from coach.session import CallSession
from coach.settings import Settings

COLLAPSE = (
    "My husband just collapsed on the kitchen floor and he isn't breathing. "
    "The kids are here with me"
)


def _session(bus: InProcessBus, runtime: Runtime, settings: Settings) -> CallSession:
    return CallSession(
        call_id="cues",
        source="test",
        speakers=("customer", "agent"),
        runtime=runtime,
        settings=settings,
        bus=bus,
        inline=True,
    )


def _partial(text: str) -> dict[str, object]:
    return {"type": "partial", "speaker": "customer", "text": text, "t_start": 1.0, "t_end": 6.0}


async def test_partials_reach_the_engines_early_cues(runtime: Runtime, settings: Settings) -> None:
    bus = InProcessBus()
    s = _session(bus, runtime, settings)
    await s.start()
    # The bundled playbook reads partials for escalation requests.
    text = "Put me through to your manager right now. I have been waiting"
    await s.emit(_partial(text))
    await s.emit(_partial(text + " for an hour"))
    await s.end("end")
    cues = [e for e in bus.history(agent_topic("cues")) if e["type"] == "cue"]
    assert [(c["cue"], c.get("early")) for c in cues] == [("escalation_request", True)]


async def test_an_engine_failure_loses_one_transcripts_cues_not_the_call(
    runtime: Runtime, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    bus = InProcessBus()
    s = _session(bus, runtime, settings)
    await s.start()
    assert s.cues is not None
    working = s.cues.analyze

    async def broken(texts: Sequence[str]) -> Sequence[object]:
        raise RuntimeError("model gone")

    s.cues.analyze = broken  # type: ignore[assignment]
    s.cues.analyze_partial = broken  # type: ignore[assignment]
    with caplog.at_level(logging.ERROR):
        await s.emit(_partial(COLLAPSE))
        await s.emit(_partial(COLLAPSE + " and"))
        await s.emit(
            {
                "type": "transcript",
                "speaker": "customer",
                "text": COLLAPSE,
                "words": [],
                "t_start": 1.0,
                "t_end": 7.0,
            }
        )
    assert "cue engine failed on a partial" in caplog.text
    assert "cue engine failed on a transcript" in caplog.text
    s.cues.analyze = working
    s.cues.analyze_partial = None
    await s.emit(
        {
            "type": "transcript",
            "speaker": "customer",
            "text": COLLAPSE,
            "words": [],
            "t_start": 8.0,
            "t_end": 14.0,
        }
    )
    await s.end("end")
    seen = bus.history(agent_topic("cues"))
    assert [e["cue"] for e in seen if e["type"] == "cue"] == ["crisis"]
    assert seen[-1]["type"] == "call_end"


async def test_the_summarys_cue_outcomes_name_each_cue_by_its_published_seq(
    runtime: Runtime, settings: Settings
) -> None:
    """`call_end.summary.cue_outcomes[].seq` was always null: the engine built the summary
    from its own copy of each cue, and the bus `seq` was stamped on another. It is the cue
    event's `seq`, the key feedback is given by (POST /api/calls/{id}/cues/{seq}/feedback)."""
    bus = InProcessBus()
    s = _session(bus, runtime, settings)
    await s.start()
    for t in (1.0, 20.0):
        await s.emit(
            {
                "type": "transcript",
                "speaker": "customer",
                "text": "Put me through to your manager right now, I want a supervisor.",
                "words": [],
                "t_start": t,
                "t_end": t + 5.0,
            }
        )
    await s.end("end")
    seen = bus.history(agent_topic("cues"))
    cues = [e for e in seen if e["type"] == "cue"]
    assert cues, "the bundled playbook shows a cue for an escalation request"
    outcomes = seen[-1]["summary"]["cue_outcomes"]
    assert [(o["cue"], o["seq"]) for o in outcomes] == [(c["cue"], c["seq"]) for c in cues]
    assert all(isinstance(o["seq"], int) for o in outcomes)
