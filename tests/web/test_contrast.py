"""Every text on both pages is legible: WCAG AA contrast (4.5:1, 3:1 for large text) against
what is actually behind it, measured in Chromium on pages in the states people see them in
(live and ended tiles, an alert, a drill-in, a post-call summary, the agent's cards, earlier
suggestions, partials). An outside audit found greys below 4.5:1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from coach.events import call_end
from tests.web.conftest import LiveServer, cue, customer_state, sign_in, transcript, watch_new_call

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
CONTRAST_JS = (Path(__file__).parent / "contrast.js").read_text()


def low_contrast(page: Any) -> list[str]:
    return list(page.evaluate(CONTRAST_JS))


def test_the_supervisor_wall_is_legible(live_server: LiveServer, page: Any) -> None:
    for call_id, valence in (("k-live", -0.6), ("k-ended", 0.3)):
        live_server.start_call(call_id, "ann")
        live_server.emit(
            call_id,
            transcript(
                "customer",
                "I was charged twice",
                1,
                1.0,
                state=customer_state(valence, 0.6, "frustrated"),
            ),
        )
        live_server.emit(
            call_id, cue("frustration", 4.0, utterance_id=1, phrase="charged twice", text="x")
        )
    live_server.emit(
        "k-live",
        {
            "type": "escalation",
            "reason": "user_request",
            "urgency": "high",
            "detail": "escalation_request cue",
            "summary": {"text": "Customer wants a manager.", "trend": "worsening"},
        },
    )
    live_server.emit("k-ended", call_end(duration_s=9, reason="end", arc=[(3, -0.2)], cues={}))
    live_server.start_call("k-lost", "ann")
    wall = live_server.app.state.wall
    live_server.call_soon(lambda: wall.mark_contact("k-lost", lost=True))
    sign_in(page, live_server.base, "/supervisor/", "sam")
    page.locator('#tiles > li[data-call="k-ended"].ended').wait_for()
    page.locator('#tiles > li[data-call="k-lost"] .lost').wait_for()
    page.locator('#alerts > li[data-call="k-live"]').wait_for()
    assert low_contrast(page) == []
    page.goto(f"{live_server.base}/supervisor/#call/k-live")
    page.locator("#drill-view li.customer.transcript").wait_for()
    assert low_contrast(page) == []
    page.goto(f"{live_server.base}/supervisor/#summary/k-ended")
    page.locator("#summary-transcript li").first.wait_for()
    assert low_contrast(page) == []
    for call_id in ("k-live", "k-lost"):  # ann's next call is the agent panel test's
        live_server.emit(call_id, call_end(duration_s=9, reason="end", arc=[], cues={}))


def test_the_agent_panel_is_legible(live_server: LiveServer, page: Any) -> None:
    call_id = "k-agent"
    watch_new_call(page, live_server, call_id)
    live_server.emit(call_id, transcript("customer", "I am confused about this bill", 1, 1.0))
    live_server.emit(
        call_id, cue("confusion", 4.0, utterance_id=1, phrase="confused", text="x", expires_s=2.0)
    )
    live_server.emit(
        call_id,
        {
            "type": "partial",
            "speaker": "agent",
            "text": "let me",
            "utterance_id": 2,
            "t_start": 5.0,
            "t_end": 5.5,
            "t_emit": 8.0,
        },
    )
    page.locator(".older-cards .card").wait_for(state="attached")
    page.locator("li.partial").wait_for()
    page.locator("details.older summary").click()
    assert low_contrast(page) == []
