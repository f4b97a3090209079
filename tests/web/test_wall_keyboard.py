"""The supervisor wall used from the keyboard during a busy shift: focus stays where the
supervisor put it while the live content repaints, and escalations are announced whichever
view is open."""

from __future__ import annotations

from typing import Any

import pytest

from tests.web.conftest import LiveServer, focused_in, sign_in
from tests.web.test_supervisor_wall import end, escalation, update

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def focused(page: Any) -> str:
    return focused_in(page, "[data-call]", "call")


def test_escalations_are_announced_off_the_live_view(live_server: LiveServer, page: Any) -> None:
    """Audit: the live regions sat inside the live view, which is display:none while the
    supervisor is drilled into a call or reading Recent calls: a screen reader heard none of
    the escalations raised meanwhile."""
    watched, other = "k-ann-drill", "k-ann-other"
    live_server.start_call(watched, "ann")
    live_server.start_call(other, "cal")
    sign_in(page, live_server.base, "/supervisor/", "sam")
    page.locator(f'#tiles > li[data-call="{watched}"] button.open').click()
    page.wait_for_url(f"**#call/{watched}")
    live_server.emit(other, escalation("user_request", "critical", 9.0, "Now."))
    region = page.locator("#announce-critical")
    page.wait_for_function(
        "document.querySelector('#announce-critical').textContent.includes('k-ann-other')"
    )
    assert region.evaluate("(e) => e.checkVisibility()"), "announced into a hidden region"
    assert page.locator("#announce").evaluate("(e) => e.checkVisibility()")
    for call_id in (watched, other):
        live_server.emit(call_id, end([]))


def test_an_escalation_stays_in_sight_off_the_live_view(live_server: LiveServer, page: Any) -> None:
    """Audit: drilled into one call (or on Recent calls), a supervisor saw a crisis on another
    only in the page title: sound alerts are off by default. A strip over every view but the
    live one says how many are open, the most urgent, and leads back to them."""
    watched, other = "k-strip-drill", "k-strip-other"
    live_server.start_call(watched, "ann")
    live_server.start_call(other, "cal")
    sign_in(page, live_server.base, "/supervisor/", "sam")
    page.locator(f'#tiles > li[data-call="{other}"]').wait_for()
    acknowledge_all(page)  # earlier tests' escalations: this one counts its own
    strip = page.locator("#alert-strip")
    page.locator(f'#tiles > li[data-call="{watched}"] button.open').click()
    page.wait_for_url(f"**#call/{watched}")
    assert strip.is_hidden()
    live_server.emit(other, escalation("user_request", "high", 8.0, "A manager."))
    strip.filter(has_text="1 open escalation; high on call k-strip-other").wait_for()
    assert "critical" not in (strip.get_attribute("class") or "")
    live_server.emit(other, escalation("crisis_indicators", "critical", 9.0, "Now."))
    strip.filter(
        has_text="2 open escalations; the most urgent: critical on call k-strip-other"
    ).wait_for()
    assert "agent cal" in strip.inner_text() and "critical" in (strip.get_attribute("class") or "")
    page.get_by_role("tab", name="Recent calls").click()
    page.wait_for_url("**#history")
    assert strip.is_visible()
    strip.get_by_role("link", name="Show escalations").click()
    page.wait_for_url("**#live")
    page.locator("#alerts > li").nth(1).wait_for()
    assert strip.is_hidden()  # the alerts themselves are on screen
    acknowledge_all(page)  # the tests after this one count their own
    for call_id in (watched, other):
        live_server.emit(call_id, end([]))


def acknowledge_all(page: Any) -> None:
    acks = page.locator("#alerts button.ack")
    while acks.count():
        before = acks.count()
        acks.first.click()
        page.wait_for_function(f"document.querySelectorAll('#alerts button.ack').length < {before}")


def test_focus_on_a_tile_survives_its_live_updates(live_server: LiveServer, page: Any) -> None:
    """Audit: every call_update rebuilt the tile, so a supervisor who had tabbed to "Open call"
    lost focus (to <body>) within seconds, and Enter did nothing."""
    call_id = "k-focus"
    live_server.start_call(call_id, "ann")
    sign_in(page, live_server.base, "/supervisor/", "sam")
    button = page.locator(f'#tiles > li[data-call="{call_id}"] button.open')
    button.focus()
    assert focused(page) == f"BUTTON|Open call|{call_id}"
    for i in range(3):
        live_server.emit(call_id, update(-0.2 - 0.1 * i, 0.5, "frustrated", trend=-0.2))
    page.locator(f'#tiles > li[data-call="{call_id}"]').filter(has_text="frustrated").wait_for()
    page.wait_for_timeout(300)
    assert focused(page) == f"BUTTON|Open call|{call_id}"
    # Nor does the snapshot after a reconnect take it.
    page.evaluate("Wall.socket.close(4000, 'blip')")
    page.wait_for_function("Wall.stale")
    page.wait_for_function("!Wall.stale", timeout=20_000)
    page.wait_for_timeout(300)
    assert focused(page) == f"BUTTON|Open call|{call_id}"
    page.keyboard.press("Enter")
    page.wait_for_url(f"**#call/{call_id}")
    live_server.emit(call_id, end([]))


def test_focus_on_a_tile_survives_the_wall_reordering(live_server: LiveServer, page: Any) -> None:
    """Audit: when the risk order changed, every tile was moved in the list, which takes
    focus away from a button inside any of them."""
    calm, hot = "k-order-calm", "k-order-hot"
    live_server.start_call(calm, "ann")
    live_server.start_call(hot, "cal")
    sign_in(page, live_server.base, "/supervisor/", "sam")
    live_server.emit(calm, update(0.5, 0.2, "positive"))
    live_server.emit(hot, update(0.4, 0.2, "positive"))
    page.locator(f'#tiles > li[data-call="{hot}"]').filter(has_text="positive").wait_for()
    page.locator(f'#tiles > li[data-call="{calm}"] button.open').focus()
    live_server.emit(hot, update(-0.9, 0.9, "angry", trend=-0.5))
    page.wait_for_function(
        f"""() => {{ const ids = [...document.querySelectorAll('#tiles > li')].map((li) => li.dataset.call);
        return ids.indexOf('{hot}') < ids.indexOf('{calm}'); }}"""
    )
    page.wait_for_timeout(300)
    assert focused(page) == f"BUTTON|Open call|{calm}"
    # The call ends: the same button now opens its post-call summary, focus still on it.
    live_server.emit(calm, end([]))
    page.locator(f'#tiles > li[data-call="{calm}"] button.open').filter(
        has_text="Post-call summary"
    ).wait_for()
    assert focused(page) == f"BUTTON|Post-call summary|{calm}"
    page.keyboard.press("Enter")
    page.wait_for_url(f"**#summary/{calm}")
    live_server.emit(hot, end([]))


def test_focus_on_an_alert_survives_another_escalation(live_server: LiveServer, page: Any) -> None:
    """Audit: a new escalation rebuilt every alert card, taking focus off the Acknowledge
    button the supervisor was about to press."""
    first, second = "k-alert-1", "k-alert-2"
    live_server.start_call(first, "ann")
    live_server.start_call(second, "cal")
    sign_in(page, live_server.base, "/supervisor/", "sam")
    live_server.emit(first, escalation("user_request", "high", 10.0, "Wants a manager."))
    ack = page.locator(f'#alerts > li[data-call="{first}"] button.ack')
    ack.focus()
    live_server.emit(second, escalation("user_request", "critical", 11.0, "Wants a manager now."))
    page.locator(f'#alerts > li[data-call="{second}"]').wait_for()
    page.wait_for_timeout(300)
    assert focused(page) == f"BUTTON|Acknowledge|{first}"
    page.keyboard.press("Enter")
    page.locator(f'#alerts > li[data-call="{first}"]').wait_for(state="detached")
    # Acknowledged from the keyboard: focus goes on to the next alert, not to <body>.
    assert focused(page) == f"BUTTON|Acknowledge|{second}"
    page.keyboard.press("Enter")
    page.locator(f'#alerts > li[data-call="{second}"]').wait_for(state="detached")
    assert focused(page) != "BODY||", focused(page)
    for call_id in (first, second):
        live_server.emit(call_id, end([]))


def test_the_tabs_move_with_the_arrow_keys(live_server: LiveServer, page: Any) -> None:
    """ARIA tabs: one tab stop for the list, Left/Right (wrapping), Home and End move along it
    and show the view, the focus staying on the tab (audit: only Tab worked)."""
    sign_in(page, live_server.base, "/supervisor/", "sam")
    tabs = page.get_by_role("tab")
    assert [t.get_attribute("tabindex") for t in tabs.all()] == ["0", "-1", "-1"]
    page.get_by_role("tab", name="Live calls").focus()
    page.keyboard.press("ArrowRight")
    page.wait_for_url("**#history")
    assert focused(page).startswith("BUTTON|Recent calls")
    assert page.locator("#history").is_visible() and page.locator("#live").is_hidden()
    page.keyboard.press("End")
    page.wait_for_url("**#analytics")
    assert focused(page).startswith("BUTTON|Coaching analytics")
    page.keyboard.press("ArrowRight")  # wraps round
    page.wait_for_url("**#live")
    assert focused(page).startswith("BUTTON|Live calls")
    page.keyboard.press("ArrowLeft")
    page.wait_for_url("**#analytics")
    assert [t.get_attribute("tabindex") for t in tabs.all()] == ["-1", "-1", "0"]
    assert (
        page.get_by_role("tab", name="Coaching analytics").get_attribute("aria-selected") == "true"
    )
    page.keyboard.press("Home")
    page.wait_for_url("**#live")
    # Tab leaves the list from the selected tab: the next stop is past the tabs.
    page.keyboard.press("Tab")
    assert "tab" not in (page.evaluate("document.activeElement.getAttribute('role')") or "")
