"""The agent panel from the keyboard: a card that leaves the current suggestions (it expired,
a newer one pushed it out, or the agent dismissed it) does not take the focus with it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.web.conftest import LiveServer, cue, focused_in, transcript, watch_new_call
from tests.web.test_supervisor_wall import end

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def focused(page: Any) -> str:
    return focused_in(page, ".card", "cue")


def metrics_at(t: float) -> dict[str, Any]:
    return {
        "type": "metrics",
        "talk_ratio": {"customer": 0.5, "agent": 0.5},
        "overtalk_s": 0.0,
        "silence_s": 0.0,
        "agent_wps": 2.0,
        "t_start": 0,
        "t_end": t,
        "t_emit": t,
    }


def test_focus_follows_a_card_into_earlier_suggestions(live_server: LiveServer, page: Any) -> None:
    """Audit: an agent who had tabbed to "Helpful" lost the focus to <body> when the card
    expired under it, and again after pressing Dismiss."""
    call_id = "kb-cards"
    watch_new_call(page, live_server, call_id)
    text = "I am confused, this is frustrating"
    live_server.emit(call_id, transcript("customer", text, 1, 1.0))
    live_server.emit(
        call_id,
        cue("confusion", 4.0, utterance_id=1, phrase="confused", text=text, expires_s=5.0),
    )
    live_server.emit(
        call_id, cue("frustration", 5.0, utterance_id=1, phrase="frustrating", text=text)
    )
    page.locator(".cards .card").nth(1).wait_for()
    page.locator('.cards .card[data-cue="confusion"]').get_by_role(
        "button", name="Helpful", exact=True
    ).focus()
    # Call time passes the confusion card's expiry (4 s + 5 s): it collapses under the focus.
    live_server.emit(call_id, metrics_at(10.0))
    page.locator('.older-cards .card[data-cue="confusion"]').wait_for(state="attached")
    assert focused(page).startswith("SUMMARY|Earlier suggestions"), focused(page)
    # Dismissed from the keyboard: the same.
    page.locator('.cards .card[data-cue="frustration"]').get_by_role(
        "button", name="Dismiss"
    ).focus()
    page.keyboard.press("Enter")
    page.locator('.older-cards .card[data-cue="frustration"]').wait_for(state="attached")
    assert focused(page).startswith("SUMMARY|Earlier suggestions"), focused(page)
    # The list open, the focus goes to the card's own toggle, where it can be rated again.
    page.keyboard.press("Enter")
    page.locator('.cards .card[data-cue="confusion"], .older[open]').first.wait_for()
    live_server.emit(call_id, cue("urgency", 11.0, utterance_id=1, phrase="this", text=text))
    page.locator('.cards .card[data-cue="urgency"]').get_by_role(
        "button", name="Not helpful"
    ).focus()
    page.keyboard.press("Enter")
    page.locator('.cards .card[data-cue="urgency"] button[aria-pressed="true"]').wait_for()
    assert focused(page) == "BUTTON|Not helpful|urgency", focused(page)  # not lost while sending
    page.locator('.cards .card[data-cue="urgency"]').get_by_role("button", name="Dismiss").focus()
    page.keyboard.press("Enter")
    page.locator('.older-cards .card[data-cue="urgency"]').wait_for(state="attached")
    assert focused(page) == "BUTTON|Show why and rate|urgency", focused(page)
    live_server.emit(call_id, end([]))


def test_buttons_that_wait_for_the_server_keep_the_focus(
    live_server: LiveServer, page: Any
) -> None:
    """Audit: Play demo call, Report (a missed cue) and Undo are disabled while their request
    runs, which drops the keyboard focus to <body>: Enter, and the agent had to start tabbing
    from the top of the page again."""
    demo_id = "kb-demo-fake"

    def fake_demo(route: Any) -> None:
        route.fulfill(json={"call_id": demo_id, "duration_s": 30.0}, status=201)

    page.route("**/api/demo/calls", fake_demo)
    call_id = "kb-wait"
    watch_new_call(page, live_server, call_id)
    text = "How long will the refund take?"
    live_server.emit(call_id, transcript("customer", text, 1, 1.0))
    line = page.locator("#transcript li.customer.transcript")
    line.locator("details.missed summary").focus()
    page.keyboard.press("Enter")
    report = line.get_by_role("button", name="Report")
    page.wait_for_function("!document.querySelector('#transcript details.missed button').disabled")
    report.focus()
    page.keyboard.press("Enter")
    line.get_by_role("status").filter(has_text="Thanks: reported").wait_for()
    assert focused(page) == "BUTTON|Report|", focused(page)
    line.get_by_role("button", name="Undo").focus()
    page.keyboard.press("Enter")
    line.get_by_role("status").filter(has_text="taken back").wait_for()
    assert focused(page) == "BUTTON|Report|", focused(page)
    # Escape closes the form and leaves the focus on its summary (audit: it did nothing).
    page.keyboard.press("Escape")
    assert not line.locator("details.missed").evaluate("(d) => d.open")
    assert focused(page) == "SUMMARY|Missed a cue?|", focused(page)
    live_server.emit(call_id, end([]))
    demo = page.get_by_role("button", name="Play demo call")
    demo.focus()
    page.keyboard.press("Enter")
    page.wait_for_function(
        f"document.querySelector('#call').value === '{demo_id}' && !document.querySelector('#demo').disabled"
    )
    assert focused(page) == "BUTTON|Play demo call|", focused(page)


def test_earlier_suggestions_stay_newest_first(live_server: LiveServer, page: Any) -> None:
    """An outside audit saw 0:43, 0:53, 0:30: a card that expired and cards collapsed at call
    end went into the list in the order they left, not the order they came."""
    call_id = "kb-order"
    watch_new_call(page, live_server, call_id)
    text = "I am confused, this is frustrating and urgent"
    live_server.emit(call_id, transcript("customer", text, 1, 1.0))
    live_server.emit(
        call_id, cue("confusion", 4.0, utterance_id=1, phrase="confused", text=text, expires_s=5.0)
    )
    live_server.emit(
        call_id, cue("frustration", 6.0, utterance_id=1, phrase="frustrating", text=text)
    )
    live_server.emit(call_id, cue("urgency", 8.0, utterance_id=1, phrase="urgent", text=text))
    page.locator(".cards .card").nth(2).wait_for()
    live_server.emit(call_id, metrics_at(10.0))  # confusion expires (4 s + 5 s)
    page.locator('.older-cards .card[data-cue="confusion"]').wait_for(state="attached")
    live_server.emit(call_id, end([]))  # the other two collapse
    page.locator(".older-cards .card").nth(2).wait_for(state="attached")
    order = [c.get_attribute("data-cue") for c in page.locator(".older-cards .card").all()]
    assert order == ["urgency", "frustration", "confusion"], order
