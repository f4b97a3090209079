"""How the pages end or resume a stream: a call the server no longer knows (close 4404), a call
cut off by a server stop (`call_end` with reason "interrupted"), an expired token on a socket
(back to the sign-in form), and the wall while its socket is down (stale, then the snapshot).

The server's own 4404 is simulated with playwright's WebSocket routing: the first connection
goes to the real server, the reconnect after a blip gets what a restarted server sends for an
unknown call (an error message, then close 4404). Everything else is the real server.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest

from coach.auth import issue_token
from tests.web.conftest import (
    ARTIFACTS,
    SECRET,
    LiveServer,
    cue,
    customer_state,
    sign_in,
    transcript,
)

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
NOT_FOUND = "was not found: it may have ended before the server restarted"
CUT_OFF = "The call was cut off when the server stopped; what was received is saved."
CALL_EVENTS = re.compile(r"/ws/calls/[^/]+/events")


def gone_after_first_connect(page: Any) -> dict[str, bool]:
    """Route the call sockets: real until `gone["on"]`, then the server's answer for an
    unknown call. Returns the switch."""
    gone = {"on": False}

    def handler(ws: Any) -> None:
        if not gone["on"]:
            ws.connect_to_server()
            return
        ws.send(json.dumps({"type": "error", "code": "unknown_call", "message": "unknown call"}))
        ws.close(code=4404, reason="unknown call")

    page.route_web_socket(CALL_EVENTS, handler)
    return gone


def short_token(user: str, role: str, team: str | None, ttl_s: int) -> str:
    return issue_token(user=user, role=role, secret=SECRET, ttl_s=ttl_s, team=team)  # type: ignore[arg-type]


def test_agent_keeps_what_it_saw_of_a_call_the_server_no_longer_knows(
    live_server: LiveServer, page: Any
) -> None:
    call_id = "rec-gone"
    gone = gone_after_first_connect(page)
    sign_in(page, live_server.base, "/agent/", "ann")
    live_server.start_call(call_id, "ann")
    page.locator("#status").filter(has_text=f"Watching {call_id}").wait_for()
    text = "This is really frustrating, it has happened before."
    live_server.emit(
        call_id, transcript("customer", text, 1, 1.0, state=customer_state(-0.6, 0.7, "frustrated"))
    )
    live_server.emit(
        call_id, cue("frustration", 4.0, utterance_id=1, phrase="really frustrating", text=text)
    )
    page.locator(".cards .card").wait_for()
    # The server restarts: the reconnect finds no such call.
    gone["on"] = True
    page.evaluate("Panel.stream.socket.close(4000, 'blip')")
    notice = page.locator("#notice")
    notice.filter(has_text=f"Call {call_id} {NOT_FOUND}").wait_for()
    assert "not assigned" not in notice.inner_text()
    # What was on screen stays: the agent's own call, nothing to hide.
    assert text in page.locator("#transcript li.customer").inner_text()
    assert page.locator(".card[data-cue='frustration']").count() == 1
    # And the panel stops asking: no reconnect loop against a call that cannot come back.
    assert page.evaluate("Panel.stream.stopped") is True
    tries = page.evaluate("Panel.stream.reconnects")
    page.wait_for_timeout(1500)
    assert page.evaluate("Panel.stream.reconnects") == tries
    live_server.emit(call_id, {"type": "call_end", "duration_s": 5.0, "reason": "end"})


def test_a_forbidden_call_is_still_wiped(live_server: LiveServer, page: Any) -> None:
    """The other side of the one above: a true 1008 "forbidden" shows nothing of the call."""
    call_id = "rec-bens"
    live_server.start_call(call_id, "ben")
    live_server.emit(call_id, transcript("customer", "ben's customer says hello", 1, 1.0))
    sign_in(page, live_server.base, "/agent/", "ann")
    page.goto(f"{live_server.base}/agent/?call={call_id}")
    page.locator("#notice").filter(has_text=f"You are not assigned to call {call_id}").wait_for()
    assert page.locator("#view").inner_text().strip() == ""
    live_server.emit(call_id, {"type": "call_end", "duration_s": 5.0, "reason": "end"})


def test_supervisor_drill_keeps_what_it_saw_of_a_call_the_server_no_longer_knows(
    live_server: LiveServer, page: Any
) -> None:
    call_id = "rec-gone-drill"
    gone = gone_after_first_connect(page)
    live_server.start_call(call_id, "ann")
    live_server.emit(call_id, transcript("customer", "my order never came", 1, 1.0))
    sign_in(page, live_server.base, f"/supervisor/#call/{call_id}", "sam")
    page.locator("#drill-view li.customer.transcript").wait_for()
    gone["on"] = True
    page.evaluate("Wall.drill.stream.socket.close(4000, 'blip')")
    page.locator("#drill-status").filter(has_text=f"Call {call_id} {NOT_FOUND}").wait_for()
    assert "my order never came" in page.locator("#drill-view").inner_text()
    live_server.emit(call_id, {"type": "call_end", "duration_s": 5.0, "reason": "end"})


def test_a_call_cut_off_by_a_server_stop_says_so_and_keeps_its_transcript(
    live_server: LiveServer, page: Any, browser: Any
) -> None:
    call_id = "rec-cut"
    sign_in(page, live_server.base, "/agent/", "ann")
    live_server.start_call(call_id, "ann")
    page.locator("#status").filter(has_text=f"Watching {call_id}").wait_for()
    sup = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
    sign_in(sup, live_server.base, f"/supervisor/#call/{call_id}", "sam")
    live_server.emit(call_id, transcript("customer", "the line keeps dropping", 1, 1.0))
    page.locator("#transcript li.customer.transcript").wait_for()
    sup.locator("#drill-view li.customer.transcript").wait_for()
    # What a restarted server streams for a call that was live when it stopped.
    live_server.emit(call_id, {"type": "call_end", "reason": "interrupted", "t_emit": 3.0})
    for pg, root in ((page, "#view"), (sup, "#drill-view")):
        pg.locator(f"{root} .end-note").filter(has_text=CUT_OFF).wait_for()
        assert "the line keeps dropping" in pg.locator(root).inner_text()
    page.locator("#status").filter(has_text="cut off").wait_for()
    page.screenshot(path=str(ARTIFACTS / "agent-cut-off.png"))
    assert "NaN" not in page.locator("#status").inner_text()
    sup.locator("#drill-status").filter(has_text="cut off").wait_for()
    sup.context.close()


def test_an_expired_token_on_the_call_stream_goes_back_to_sign_in(
    live_server: LiveServer, page: Any
) -> None:
    call_id = "rec-expiring"
    live_server.start_call(call_id, "ann")
    # Only the socket may find out: the panel's poll of /api/calls would also notice a 401.
    page.route("**/api/calls", lambda route: route.fulfill(json={"calls": []}))
    ttl = 6  # seconds: room for the page to load and connect on a loaded machine
    # The token's times are whole seconds (iat = int(now)): it expires up to 1 s before
    # now + ttl, so the expiry is counted from the second it was issued in.
    issued = int(time.time())
    token = short_token("ann", "agent", "blue", ttl)
    page.goto(f"{live_server.base}/agent/?token={token}&call={call_id}")
    page.locator("#status").filter(has_text=f"Watching {call_id}").wait_for()
    # The server ends the stream when its token expires (1008, "unauthorized"): the panel
    # goes back to sign-in by itself, with nothing of the call left on screen.
    page.get_by_label("Name").wait_for(timeout=(ttl + 10) * 1000)
    assert time.time() >= issued + ttl - 0.5
    assert page.locator("#app").is_hidden()
    assert page.evaluate("localStorage.getItem('coach.token')") is None
    # It says why, with the name filled in (an outside audit found a blank form mid-call).
    assert page.get_by_text("Your sign-in has expired").is_visible()
    assert page.get_by_label("Name").input_value() == "ann"
    live_server.emit(call_id, {"type": "call_end", "duration_s": 5.0, "reason": "end"})
    # A sign-in form opened afresh says nothing of an expiry.
    page.reload()
    page.get_by_label("Name").wait_for()
    assert not page.get_by_text("Your sign-in has expired").is_visible()


def test_wall_with_an_expired_token_goes_back_to_sign_in(
    live_server: LiveServer, page: Any
) -> None:
    call_id = "rec-wall-expiring"
    live_server.start_call(call_id, "ann")
    ttl = 6  # seconds: room for the page to load and connect on a loaded machine
    # The token's times are whole seconds (iat = int(now)): it expires up to 1 s before
    # now + ttl, so the expiry is counted from the second it was issued in.
    issued = int(time.time())
    token = short_token("sam", "supervisor", "blue", ttl)
    page.goto(f"{live_server.base}/supervisor/?token={token}")
    page.locator(f'#tiles > li[data-call="{call_id}"]').wait_for()
    # The wall's stream ends when its token expires (1008, "unauthorized"): sign-in again.
    page.get_by_label("Name").wait_for(timeout=(ttl + 10) * 1000)
    assert time.time() >= issued + ttl - 0.5
    assert page.locator("#app").is_hidden()
    assert page.locator("#tiles > li").count() == 0
    assert page.evaluate("localStorage.getItem('coach.token')") is None
    live_server.emit(call_id, {"type": "call_end", "duration_s": 5.0, "reason": "end"})


def test_wall_goes_stale_while_disconnected_and_the_snapshot_replaces_it(
    live_server: LiveServer, page: Any
) -> None:
    call_id = "rec-stale"
    down = {"on": False}

    def handler(ws: Any) -> None:
        if down["on"]:
            ws.close(code=1012, reason="restarting")
        else:
            ws.connect_to_server()

    page.route_web_socket("**/ws/supervisor**", handler)
    live_server.start_call(call_id, "ann")
    sign_in(page, live_server.base, "/supervisor/", "sam")
    tile = page.locator(f'#tiles > li[data-call="{call_id}"]')
    tile.wait_for()
    banner = page.locator("#stale-banner")
    assert banner.is_hidden()
    down["on"] = True
    page.evaluate("Wall.socket.close(4000, 'blip')")
    banner.filter(has_text="Connection lost — reconnecting; calls shown may have ended").wait_for()
    assert "stale" in (page.locator("#tiles").get_attribute("class") or "")
    assert "stale" in (page.locator("#alerts").get_attribute("class") or "")
    # The call ends meanwhile; the wall cannot know, and its timer stands still.
    live_server.emit(call_id, {"type": "call_end", "duration_s": 5.0, "reason": "end"})
    before = tile.locator(".duration").inner_text()
    page.wait_for_timeout(2200)
    assert tile.locator(".duration").inner_text() == before
    assert banner.is_visible()
    page.screenshot(path=str(ARTIFACTS / "wall-stale.png"))
    # The server is back: the fresh snapshot replaces the tiles and the wall is live again.
    down["on"] = False
    page.wait_for_function("!Wall.stale", timeout=20_000)
    assert banner.is_hidden()
    assert "stale" not in (page.locator("#tiles").get_attribute("class") or "")
    assert "stale" not in (page.locator("#alerts").get_attribute("class") or "")
    tile.locator(".duration").filter(has_text="ended").wait_for()
    assert tile.get_by_role("button", name="Post-call summary").is_visible()


def test_a_stalled_call_stream_is_dropped_and_resumed(live_server: LiveServer, page: Any) -> None:
    """Audit: a network path that dies without a close (the socket stays open, nothing comes)
    left the panel saying "Watching" over a frozen transcript for the rest of the call."""
    call_id = "web-stall"
    dead: list[bool] = []  # per connection: its path went dead

    def relay(ws: Any) -> None:
        server = ws.connect_to_server()
        me = len(dead)
        dead.append(False)
        server.on_message(lambda m: None if dead[me] else ws.send(m))

    page.route_web_socket(re.compile(r".*/ws/calls/.*"), relay)
    sign_in(page, live_server.base, "/agent/", "ann")
    live_server.start_call(call_id, "ann")
    page.locator("#status").filter(has_text=f"Watching {call_id}").wait_for()
    page.evaluate("EventStream.STALE_MS = 4000; EventStream.QUIET_MS = 1500")
    live_server.emit(call_id, transcript("customer", "line number 1", 1, 1.0))
    page.locator("#transcript li").first.wait_for()
    dead[:] = [True] * len(dead)  # the path goes dead: the open socket brings nothing more
    # Before it is dropped the panel says the feed went quiet, and does not count a silence
    # on the line (an outside UI audit: ten seconds offline read as "10 s" of silence, red).
    page.locator("#status").filter(has_text="No updates from").wait_for(timeout=5_000)
    page.locator("dd.silence").filter(has_text="no updates").wait_for(timeout=2_000)
    live_server.emit(call_id, transcript("customer", "line number 2", 2, 4.0))
    time.sleep(0.5)
    live_server.emit(call_id, transcript("customer", "line number 3", 3, 7.0))
    page.locator("#transcript li").nth(2).wait_for(timeout=10_000)
    lines = page.locator("#transcript li .text").all_inner_texts()
    assert lines == ["line number 1", "line number 2", "line number 3"]
    assert page.evaluate("Panel.stream.reconnects") >= 1
    page.locator("#status").filter(has_text=f"Watching {call_id}").wait_for()
    live_server.emit(call_id, {"type": "call_end", "duration_s": 9.0, "reason": "end"})


def test_the_panel_says_when_the_computer_goes_offline_and_resumes_when_it_is_back(
    live_server: LiveServer, page: Any
) -> None:
    """The browser's own offline signal is shown at once, and the stream resumes the moment
    the browser is online again, with nothing lost or doubled."""
    call_id = "web-netdrop"
    sign_in(page, live_server.base, "/agent/", "ann")
    live_server.start_call(call_id, "ann")
    page.locator("#status").filter(has_text=f"Watching {call_id}").wait_for()
    live_server.emit(call_id, transcript("customer", "before the outage", 1, 1.0))
    page.locator("#transcript li").first.wait_for()
    page.context.set_offline(True)
    page.locator("#status").filter(has_text="computer is offline").wait_for(timeout=5_000)
    live_server.emit(call_id, transcript("customer", "during the outage", 2, 4.0))
    page.context.set_offline(False)
    page.locator("#transcript li").nth(1).wait_for(timeout=10_000)
    lines = page.locator("#transcript li .text").all_inner_texts()
    assert lines == ["before the outage", "during the outage"]
    page.locator("#status").filter(has_text=f"Watching {call_id}").wait_for()
    live_server.emit(call_id, {"type": "call_end", "duration_s": 9.0, "reason": "end"})


def test_silence_is_not_counted_while_the_stream_is_down(
    live_server: LiveServer, page: Any
) -> None:
    """An outside audit saw the silence count turn red ("14 s", dead air) while the panel was
    reconnecting: a lost connection is not a quiet call."""
    call_id = "web-down"
    sockets: list[Any] = []

    def relay(ws: Any) -> None:
        if sockets:  # the server stays out of reach: every reconnect fails
            ws.close()
            return
        sockets.append(ws)
        server = ws.connect_to_server()
        server.on_message(lambda m: ws.send(m))

    page.route_web_socket(re.compile(r".*/ws/calls/.*"), relay)
    sign_in(page, live_server.base, "/agent/", "ann")
    live_server.start_call(call_id, "ann")
    page.locator("#status").filter(has_text=f"Watching {call_id}").wait_for()
    live_server.emit(call_id, transcript("customer", "line number 1", 1, 1.0))
    page.locator("#transcript li").first.wait_for()
    sockets[0].close()
    page.locator("#status").filter(has_text="reconnecting").wait_for()
    silence = page.locator("dd.silence")
    silence.filter(has_text="not connected").wait_for()
    time.sleep(9)  # past the 8 s at which a silence turns red
    assert silence.inner_text() == "not connected"
    assert "warn" not in (silence.get_attribute("class") or "")


def test_a_mistyped_call_id_is_told_so_not_that_a_restart_lost_it(
    live_server: LiveServer, page: Any
) -> None:
    """An outside audit: a drill-in to a mistyped id said the call "may have ended before the
    server restarted". Nothing of it was ever seen: the id is the likely fault."""
    sign_in(page, live_server.base, "/supervisor/#call/no-such-call-42", "sam")
    status = page.locator("#drill-status")
    status.filter(has_text="No call no-such-call-42 is live or stored: check the id").wait_for()
    assert NOT_FOUND not in status.inner_text() and "Recent calls" in status.inner_text()


def test_a_first_visit_prints_no_error_in_the_console(live_server: LiveServer, page: Any) -> None:
    """An outside audit: every first visit to a page printed a 401 in the browser's console,
    its check of a token it did not have. It now asks `/api/auth` first."""
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    for path in ("/agent/", "/supervisor/"):
        page.goto(live_server.base + path)
        page.locator("#signin-title").wait_for()
    assert errors == []
    sign_in(page, live_server.base, "/agent/", "ann")
    page.locator("#status").wait_for()
    assert errors == []


def test_no_socket_carries_the_token_in_its_address(live_server: LiveServer, page: Any) -> None:
    """An outside audit found tokens in Chromium's own console when a WebSocket failed: the
    console prints the socket's address, which held `?token=`. The pages now offer the token
    as a subprotocol; the address has none, failed or not."""
    urls: list[str] = []
    console: list[str] = []
    page.on("websocket", lambda ws: urls.append(ws.url))
    page.on("console", lambda msg: console.append(msg.text))
    call_id = "rec-plain-address"
    live_server.start_call(call_id, "ann")
    live_server.emit(call_id, transcript("customer", "hello there", 1, 1.0))
    sign_in(page, live_server.base, f"/supervisor/#call/{call_id}", "sam")
    page.locator("#drill-view li.customer.transcript").wait_for()
    # A socket refused at the handshake (here: one the page opens to a path that has none).
    page.evaluate("new WebSocket(`ws://${location.host}/ws/none`, Auth.socketProtocols())")
    page.wait_for_timeout(500)
    token = page.evaluate("Auth.token()")
    assert token and len(urls) >= 3
    assert not [u for u in urls if "token" in u or token in u], urls
    assert not [m for m in console if token in m], console
    live_server.emit(call_id, {"type": "call_end", "duration_s": 5.0, "reason": "end"})


def test_an_older_server_that_finds_no_token_gets_it_in_the_address_once(
    live_server: LiveServer, page: Any
) -> None:
    """An outside scale-out audit, mid rolling upgrade: pages from a new server, sockets to an
    old one that reads `?token=` only, and both panels fell to the sign-in form. Refused for
    "missing credentials", a page tries once more with the token in the address."""
    old_server = re.compile(r"/ws/(supervisor|calls/[^/]+/events)")
    opened: list[str] = []

    def handler(ws: Any) -> None:
        opened.append(ws.url)
        if "token=" in ws.url:
            ws.connect_to_server()
            return
        ws.send(
            json.dumps({"type": "error", "code": "unauthorized", "message": "missing credentials"})
        )
        ws.close(code=1008, reason="missing credentials")

    page.route_web_socket(old_server, handler)
    call_id = "rec-old-server"
    live_server.start_call(call_id, "ann")
    live_server.emit(call_id, transcript("customer", "is anybody there", 1, 1.0))
    sign_in(page, live_server.base, f"/supervisor/#call/{call_id}", "sam")
    page.locator("#drill-view li.customer.transcript").wait_for()
    page.locator("#status").filter(has_text="Live").wait_for()
    assert page.locator("#signin form").count() == 0
    plain = [u.split("?")[0] for u in opened if "token=" not in u]
    assert len(plain) == len(set(plain)) <= 2, opened  # each socket refused once at most
    live_server.emit(call_id, {"type": "call_end", "duration_s": 5.0, "reason": "end"})
