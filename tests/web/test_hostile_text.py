"""Text that could break the pages: HTML and script in ids and transcripts, very long words,
emoji and right-to-left text. Nothing runs, and the layout holds (no sideways scrolling)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.web.conftest import LiveServer, cue, customer_state, sign_in, transcript
from tests.web.test_supervisor_wall import end, escalation, update

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'
LONG = "Supercalifragilistic" * 12  # 240 characters, no break opportunity
RTL = "مرحبا، أريد استرداد أموالي 😡🙏🏽"


def hostile_page(page: Any) -> list[str]:
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    return dialogs


def sideways(page: Any, selector: str = "html") -> list[str]:
    """Elements matching `selector` that scroll sideways, or stick out of the window (one
    that clips on purpose, like an id cut short with an ellipsis, is fine)."""
    return list(
        page.evaluate(
            """(sel) => {
              const W = document.documentElement.clientWidth, out = [];
              if (document.documentElement.scrollWidth > W) out.push(`page ${document.documentElement.scrollWidth} > ${W}`);
              for (const el of document.querySelectorAll(sel)) {
                if (el.scrollWidth > el.clientWidth + 1 && ['auto', 'scroll'].includes(getComputedStyle(el).overflowX))
                  out.push(`${el.tagName}.${el.className} scrolls ${el.scrollWidth} > ${el.clientWidth}`);
                const r = el.getBoundingClientRect();
                if (r.width && r.right > W + 1) out.push(`${el.tagName}.${el.className} ends at ${Math.round(r.right)}`);
              }
              return out;
            }""",
            selector,
        )
    )


def test_agent_panel_with_hostile_and_long_text(live_server: LiveServer, page: Any) -> None:
    dialogs = hostile_page(page)
    page.set_viewport_size({"width": 800, "height": 768})
    call_id = "x-agent"
    sign_in(page, live_server.base, "/agent/", "ann")
    live_server.start_call(call_id, "ann")
    page.locator("#status").filter(has_text=f"Watching {call_id}").wait_for()
    said = f"{XSS} {LONG} {RTL}"
    live_server.emit(call_id, transcript("agent", f"Hello {XSS}", 1, 0.5))
    live_server.emit(
        call_id,
        transcript("customer", said, 2, 3.0, state=customer_state(-0.6, 0.7, "frustrated")),
    )
    live_server.emit(
        call_id,
        cue(
            "frustration",
            5.5,
            utterance_id=2,
            phrase=LONG,
            text=said,
            advice=f"{XSS} {LONG}",
            why=f"Customer said {LONG}",
        ),
    )
    page.locator(".cards .card").first.wait_for()
    page.locator("#transcript mark.trigger").wait_for()
    page.wait_for_timeout(500)
    assert page.evaluate("window.__xss") is None
    assert not dialogs
    assert sideways(page, ".callview, .callview *") == []
    live_server.emit(call_id, end([]))


def test_wall_history_and_summary_with_hostile_and_long_ids(
    live_server: LiveServer, page: Any
) -> None:
    dialogs = hostile_page(page)
    page.set_viewport_size({"width": 1366, "height": 768})
    call_id = "x-wall-" + "L" * 110
    agent = f"{XSS}{LONG}"
    live_server.start_call(call_id, agent)
    live_server.emit(call_id, transcript("customer", f"{XSS} {LONG} {RTL}", 1, 0.5))
    live_server.emit(call_id, update(-0.6, 0.8, "angry", trend=-0.3))
    live_server.emit(call_id, escalation("user_request", "critical", 3.0, f"{XSS} {LONG}"))
    sign_in(page, live_server.base, "/supervisor/", "ada")
    tile = page.locator(f'#tiles > li[data-call="{call_id}"]')
    tile.filter(has_text="angry").wait_for()
    page.locator(f'#alerts > li[data-call="{call_id}"]').wait_for()
    assert sideways(page, "#tiles > li, #tiles > li *, #alerts > li, #alerts > li *") == []
    page.set_viewport_size({"width": 800, "height": 768})
    page.wait_for_timeout(200)
    assert sideways(page, "#tiles > li, #tiles > li *, #alerts > li, #alerts > li *") == []
    live_server.emit(call_id, end([[0.5, -0.6], [2.0, -0.2]]))
    assert live_server.store_call(call_id) is not None
    for width in (1366, 800):
        page.set_viewport_size({"width": width, "height": 768})
        page.goto(f"{live_server.base}/supervisor/#history")
        page.locator("#history-table tbody tr").first.wait_for()
        assert sideways(page, "#history, #history *") == [], width
        page.goto(f"{live_server.base}/supervisor/#summary/{call_id}")
        page.locator("#summary-transcript li").first.wait_for()
        assert sideways(page, "#summary, #summary *") == [], width
    assert page.evaluate("window.__xss") is None
    assert not dialogs


def test_a_tile_keeps_the_agent_whole_beside_a_long_call_id(
    live_server: LiveServer, page: Any
) -> None:
    """An outside audit at 1280 px: "Unassig / ned", broken mid-word by a long call id beside
    it. The id gives way (an ellipsis); the agent's word stays whole."""
    call_id = "CA" + "7f3e9b2c4d" * 4  # a Twilio-like id, 42 characters
    live_server.start_call(call_id, None)
    page.set_viewport_size({"width": 1280, "height": 800})
    sign_in(page, live_server.base, "/supervisor/", "sam")
    head = page.locator(f'#tiles > li[data-call="{call_id}"] h3 > span').first
    head.wait_for()
    assert head.inner_text() == "Unassigned"
    lines = page.evaluate(
        "(id) => document.querySelector(`#tiles > li[data-call='${id}'] h3 > span`)"
        ".getClientRects().length",
        call_id,
    )
    box = head.bounding_box()
    line_height = page.evaluate(
        "(id) => parseFloat(getComputedStyle(document.querySelector("
        "`#tiles > li[data-call='${id}'] h3 > span`)).lineHeight) || 0",
        call_id,
    )
    assert lines == 1 and box is not None
    assert line_height == 0 or box["height"] < 1.5 * line_height, (box, line_height)
    live_server.emit(call_id, end([]))
