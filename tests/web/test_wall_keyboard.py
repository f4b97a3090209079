"""The supervisor wall used from the keyboard during a busy shift: focus stays where the
supervisor put it while the live content repaints, and escalations are announced whichever
view is open."""

from __future__ import annotations

from typing import Any

import pytest

from tests.web.conftest import LiveServer, sign_in
from tests.web.test_supervisor_wall import end, escalation

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def focused(page: Any) -> str:
    return str(
        page.evaluate(
            "() => { const e = document.activeElement;"
            " const tile = e && e.closest('[data-call]');"
            " return `${e.tagName}|${e.textContent.trim()}|${tile ? tile.dataset.call : ''}`; }"
        )
    )


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
