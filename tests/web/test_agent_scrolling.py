"""A long call on the agent panel: the transcript scrolls inside its own box and follows the
newest line only while the agent is at its end; the page itself stays put, so the newest cue
card stays in sight (the narrow, one-column layout included)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.web.conftest import ARTIFACTS, LiveServer, cue, transcript, watch_new_call
from tests.web.test_supervisor_wall import end

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def in_view(page: Any, selector: str) -> bool:
    return bool(
        page.evaluate(
            """(sel) => { const r = document.querySelector(sel).getBoundingClientRect();
            return r.top >= 0 && r.bottom <= window.innerHeight; }""",
            selector,
        )
    )


def lines_at_end(page: Any) -> bool:
    return bool(
        page.evaluate(
            """() => { const l = document.querySelector('#transcript');
            return l.scrollHeight - l.scrollTop - l.clientHeight < 2; }"""
        )
    )


@pytest.mark.parametrize("width", [800, 1366])
def test_a_long_transcript_scrolls_in_its_box_and_the_cue_stays_in_sight(
    live_server: LiveServer, page: Any, width: int
) -> None:
    """Audit: each new line called scrollIntoView, which scrolls the window too: at 800 px
    (cards above the transcript) the page slid down a line at a time and the cue cards left
    the screen; and an agent reading back up the transcript was pulled to the end."""
    page.set_viewport_size({"width": width, "height": 768})
    call_id = f"scroll-{width}"
    watch_new_call(page, live_server, call_id)
    try:
        text = "This is really frustrating, I have called three times about this bill."
        live_server.emit(call_id, transcript("customer", text, 1, 1.0))
        live_server.emit(
            call_id, cue("frustration", 3.0, utterance_id=1, phrase="really frustrating", text=text)
        )
        page.locator(".cards .card").first.wait_for()
        for i in range(2, 40):
            speaker = "agent" if i % 2 else "customer"
            live_server.emit(call_id, transcript(speaker, f"Line {i}: {text}", i, 2.0 + i))
        page.locator("#transcript li").nth(38).wait_for()
        page.wait_for_timeout(200)
        assert page.evaluate("window.scrollY") == 0
        assert in_view(page, ".cards .card")
        assert lines_at_end(page)
        # The agent scrolls back to read: a new line does not pull the transcript to the end.
        page.evaluate("document.querySelector('#transcript').scrollTop = 0")
        live_server.emit(call_id, transcript("customer", "Are you still there?", 40, 45.0))
        page.locator("#transcript li").nth(39).wait_for()
        page.wait_for_timeout(200)
        assert page.evaluate("document.querySelector('#transcript').scrollTop") == 0
        # Back at the end, it follows again.
        page.evaluate(
            "const l = document.querySelector('#transcript'); l.scrollTop = l.scrollHeight"
        )
        live_server.emit(call_id, transcript("agent", "Yes, one moment please.", 41, 47.0))
        page.locator("#transcript li").nth(40).wait_for()
        page.wait_for_timeout(200)
        assert lines_at_end(page)
        assert page.evaluate("window.scrollY") == 0
    finally:
        live_server.emit(call_id, end([]))


def test_at_800_px_a_crisis_and_an_escalation_leave_the_live_transcript_in_sight(
    live_server: LiveServer, page: Any
) -> None:
    """An outside audit: at 800 px, one crisis card or two escalation cards pushed the live
    transcript below the fold (one column, cards first). Now the transcript sits beside them."""
    page.set_viewport_size({"width": 800, "height": 768})
    call_id = "scroll-crisis-800"
    watch_new_call(page, live_server, call_id)
    try:
        said = "I don't see the point of any of it any more, honestly."
        live_server.emit(call_id, transcript("customer", said, 1, 1.0))
        live_server.emit(call_id, cue("crisis", 4.0, utterance_id=1, phrase="the point", text=said))
        live_server.emit(
            call_id,
            {
                "type": "escalation",
                "reason": "crisis_indicators",
                "urgency": "critical",
                "detail": "crisis cue",
                "summary": {"text": "Possible crisis."},
                "t_emit": 4.1,
            },
        )
        live_server.emit(
            call_id,
            cue("escalation_request", 6.0, utterance_id=1, phrase="manager", text="a manager"),
        )
        for i in range(2, 12):
            speaker = "agent" if i % 2 else "customer"
            live_server.emit(call_id, transcript(speaker, f"Line {i} of the call.", i, 6.0 + i))
        page.locator("#transcript li").nth(10).wait_for()
        page.wait_for_timeout(200)
        assert in_view(page, ".cards .card.critical")
        assert in_view(page, ".escalation-banner")
        assert in_view(page, "#transcript li:last-child")
        page.screenshot(path=str(ARTIFACTS / "agent-800-crisis.png"))
    finally:
        live_server.emit(call_id, end([]))
