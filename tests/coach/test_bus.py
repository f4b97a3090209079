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
