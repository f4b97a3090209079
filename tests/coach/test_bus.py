"""Topic names: a call's redacted topic and its agent's unredacted one never collide."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from coach.bus import (
    SUPERVISOR_TOPIC,
    agent_topic,
    call_topic,
    is_agent_topic,
    is_call_topic,
)

# What the ingests accept as a call id (coach/ingest/pcm.py CALL_ID), legs' "~n" included.
call_ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:~-]{0,40}\Z")


@given(call_ids, call_ids)
def test_no_call_id_names_another_calls_agent_topic(a: str, b: str) -> None:
    """A security audit opened call `X:agent` to read call X's unredacted events: with the
    agent topic under the call's namespace, the two names were the same."""
    assert agent_topic(a) != call_topic(b)
    assert is_agent_topic(agent_topic(a)) and not is_call_topic(agent_topic(a))
    assert is_call_topic(call_topic(b)) and not is_agent_topic(call_topic(b))
    assert SUPERVISOR_TOPIC not in (agent_topic(a), call_topic(b))
    assert (agent_topic(a) == agent_topic(b)) == (a == b)


async def test_an_amended_event_reaches_later_subscribers_not_earlier_copies() -> None:
    """An escalation acknowledged after its call ended: who took it is added to the kept
    event, so a panel opened now reads it; the event already handed out is left alone."""
    from coach.bus import InProcessBus

    bus = InProcessBus()
    topic = call_topic("c1")
    first = {"type": "escalation", "seq": 4, "reason": "crisis"}
    bus.publish(topic, {"type": "transcript", "seq": 3})
    bus.publish(topic, first)
    bus.close_topic(topic)
    assert bus.amend(topic, 4, {"acknowledged_by": "sam"})
    assert not bus.amend(topic, 9, {"acknowledged_by": "sam"})
    assert not bus.amend(call_topic("other"), 4, {"acknowledged_by": "sam"})
    assert "acknowledged_by" not in first
    sub = bus.subscribe(topic)
    got = []
    while (ev := await sub.queue.get()) is not None:
        got.append(ev)
    assert [e["seq"] for e in got] == [3, 4]
    assert got[1] == {**first, "acknowledged_by": "sam"}
