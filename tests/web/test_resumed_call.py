"""The agent panel across a call that was cut off and resumed as a new leg (`X` -> `X~2`).

The first test streams a real call into the real server over `/ingest/pcm`, drops the audio
connection mid-call (the call ends `disconnect`) and reconnects under the same id, which the
server opens as the leg `X~2` (coach/calls.py); the panel follows it by itself and must keep
the first part above the new one. The last does the same across a real server process killed
mid-call and started again (the call ends `interrupted`). The others publish the events a
session would, for what the real pipeline does not raise on cue: a rated card, and the calls
that must start clean.
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
from websockets.sync.client import ClientConnection, connect

from tests.e2e.test_restart_mid_call import start_server
from tests.e2e.test_two_servers import wait_ready
from tests.support import free_port
from tests.web.conftest import (
    ARTIFACTS,
    SECRET,
    LiveServer,
    cue,
    sign_in,
    transcript,
    watch_new_call,
)

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
FRAME_S = 0.1


@contextmanager
def pcm_call(
    port: int, call_id: str, rate: int, headers: dict[str, str]
) -> Iterator[tuple[ClientConnection, str]]:
    """A telephony connection streaming call `call_id` of agent ann, once accepted, and the id
    the call runs under. Leaving the block drops the connection (a disconnect, unless an
    `end` was sent)."""
    url = f"ws://127.0.0.1:{port}/ingest/pcm"
    with connect(url, additional_headers=headers) as ws:
        header = {"call_id": call_id, "sample_rate": rate, "encoding": "pcm16", "channels": 2}
        ws.send(json.dumps({**header, "agent_id": "ann"}))
        accepted = json.loads(ws.recv(timeout=10))
        assert accepted["type"] == "accepted", accepted
        yield ws, accepted["call_id"]


def send_audio(ws: ClientConnection, audio: np.ndarray, rate: int) -> None:
    step = int(FRAME_S * rate)
    for i in range(0, len(audio), step):
        ws.send(audio[i : i + step].tobytes())


def test_panel_keeps_the_first_part_of_a_call_resumed_as_a_new_leg(
    live_server: LiveServer, page: Any, billing_call: tuple[Path, dict[str, Any]]
) -> None:
    wav, truth = billing_call
    audio, rate = sf.read(wav, dtype="int16")
    turns = truth["turns"]
    cut = int((turns[1]["t_end"] + 0.4) * rate)  # after the customer's first line
    resume_end = int((turns[3]["t_end"] + 0.4) * rate)  # the next two lines
    call_id = "leg-cut"
    sign_in(page, live_server.base, "/agent/", "ann")
    status = page.locator("#status")
    port = live_server.port
    telephony = {"Authorization": f"Bearer {live_server.token('telephony', 'admin')}"}

    with pcm_call(port, call_id, rate, telephony) as (first, running):
        assert running == call_id
        status.filter(has_text=f"Watching {call_id}").wait_for()
        send_audio(first, audio[:cut], rate)
        page.locator("#transcript li.agent.transcript").first.wait_for(timeout=60_000)
    # The connection dropped mid-call: the call ends "disconnect" with every line heard.
    status.filter(has_text=f"Call {call_id} ended").wait_for(timeout=60_000)
    first_part = page.locator("#transcript li.transcript .text").all_inner_texts()
    assert len(first_part) >= 2, first_part

    with pcm_call(port, call_id, rate, telephony) as (second, resumed):
        assert resumed == f"{call_id}~2"
        status.filter(has_text=f"Watching {resumed}").wait_for()
        earlier = page.locator("#earlier")
        # The first part is still there, above, frozen: the same lines, none in the live part.
        assert earlier.locator(".lines li.transcript .text").all_inner_texts() == first_part
        divider = earlier.locator(".leg-divider")
        assert divider.count() == 1
        assert "Call resumed at" in divider.inner_text()
        assert "after the connection dropped" in divider.inner_text()
        assert f"as {resumed}; the earlier part is above" in divider.inner_text()
        assert page.locator("#transcript li").count() == 0
        send_audio(second, audio[cut:resume_end], rate)
        second.send(json.dumps({"type": "end"}))
        # The new part's lines arrive below, in the live part; the earlier part stays as it was.
        page.locator("#transcript li.transcript").first.wait_for(timeout=60_000)
        status.filter(has_text=f"Call {resumed} ended").wait_for(timeout=60_000)
    new_part = page.locator("#transcript li.transcript .text").all_inner_texts()
    assert new_part and not set(new_part) & set(first_part)
    assert earlier.locator(".lines li.transcript .text").all_inner_texts() == first_part
    earlier_box = earlier.bounding_box()
    live_box = page.locator("#view").bounding_box()
    assert earlier_box is not None and live_box is not None
    assert earlier_box["y"] + earlier_box["height"] <= live_box["y"]
    page.screenshot(path=str(ARTIFACTS / "agent-resumed-call.png"))


def test_a_leg_after_a_server_restart_keeps_the_rated_cards_of_the_first_part(
    live_server: LiveServer, page: Any
) -> None:
    call_id = "leg-restart"
    watch_new_call(page, live_server, call_id)
    text = "This is really frustrating, it has happened before."
    live_server.emit(call_id, transcript("customer", text, 1, 1.0))
    live_server.emit(
        call_id, cue("frustration", 4.0, utterance_id=1, phrase="really frustrating", text=text)
    )
    card = page.locator("#view .card").first
    card.get_by_role("button", name="Helpful", exact=True).click()
    card.get_by_role("status").filter(has_text="marked helpful").wait_for()
    # What a restarted server streams for the call it found cut off, then the reconnect's leg.
    live_server.emit(call_id, {"type": "call_end", "reason": "interrupted", "t_emit": 5.0})
    page.locator("#status").filter(has_text="cut off").wait_for()
    leg = f"{call_id}~2"
    live_server.start_call(leg, "ann")
    page.locator("#status").filter(has_text=f"Watching {leg}").wait_for()

    earlier = page.locator("#earlier")
    assert text in earlier.locator(".lines").inner_text()
    assert "after the server stopped" in earlier.locator(".leg-divider").inner_text()
    kept = earlier.locator(".card[data-cue='frustration']")
    assert kept.count() == 1
    # The call's end collapsed the card; it still opens to show its why and the verdict given,
    # and can still be rated: the verdict is stored under the earlier leg's id.
    kept.get_by_role("button", name="Show why and rate: Customer is frustrated").click()
    helpful = kept.get_by_role("button", name="Helpful", exact=True)
    assert helpful.get_attribute("aria-pressed") == "true"
    assert "marked helpful" in kept.locator(".feedback-status").inner_text()
    kept.get_by_role("button", name="Not helpful", exact=True).click()
    kept.get_by_role("status").filter(has_text="marked not helpful").wait_for()
    # The live part is the new leg's alone, and ids on the page stay unique.
    assert page.locator("#view .card").count() == 0
    live_server.emit(leg, transcript("customer", "Sorry, the line went dead.", 1, 1.0))
    page.locator("#transcript li.customer").filter(has_text="line went dead").wait_for()
    assert text not in page.locator("#transcript").inner_text()
    assert page.evaluate(
        "() => { const ids = [...document.querySelectorAll('[id]')].map((e) => e.id);"
        " return ids.length === new Set(ids).size; }"
    )
    live_server.emit(leg, {"type": "call_end", "reason": "end", "duration_s": 3.0})


def test_a_new_leg_after_a_hang_up_or_a_call_opened_by_hand_starts_clean(
    live_server: LiveServer, page: Any
) -> None:
    call_id = "leg-hangup"
    watch_new_call(page, live_server, call_id)
    live_server.emit(call_id, transcript("customer", "Thanks, bye.", 1, 1.0))
    page.locator("#transcript li.customer").wait_for()
    # Ended by a hang-up: the id used again (a client that reuses ids) is another conversation.
    live_server.emit(call_id, {"type": "call_end", "reason": "end", "duration_s": 3.0})
    live_server.start_call(f"{call_id}~2", "ann")
    page.locator("#status").filter(has_text=f"Watching {call_id}~2").wait_for()
    assert page.locator("#earlier").is_hidden()
    assert page.locator("#earlier .call-part").count() == 0
    assert "Thanks, bye." not in page.locator("body").inner_text()

    # Cut off, but the agent opens the next leg by hand: clean as well.
    live_server.emit(f"{call_id}~2", transcript("customer", "Hello again.", 1, 1.0))
    page.locator("#transcript li.customer").filter(has_text="Hello again.").wait_for()
    live_server.emit(f"{call_id}~2", {"type": "call_end", "reason": "disconnect", "t_emit": 2.0})
    page.locator("#status").filter(has_text=f"Call {call_id}~2 ended").wait_for()
    page.get_by_label("Call id").fill(f"{call_id}~3")
    live_server.start_call(f"{call_id}~3", "ann")
    page.get_by_role("button", name="Watch").click()
    page.locator("#status").filter(has_text=f"Watching {call_id}~3").wait_for()
    assert page.locator("#earlier").is_hidden()
    assert "Hello again." not in page.locator("body").inner_text()
    live_server.emit(f"{call_id}~3", {"type": "call_end", "reason": "end", "duration_s": 1.0})


def test_panel_keeps_the_first_part_across_a_server_killed_mid_call(
    tmp_path: Path, page: Any, billing_call: tuple[Path, dict[str, Any]]
) -> None:
    """The server process dies mid-call; the restarted one closes the call `interrupted` and
    the telephony's reconnect opens `X~2`. The panel, which kept reconnecting meanwhile,
    follows it with the first part kept."""
    wav, truth = billing_call
    audio, rate = sf.read(wav, dtype="int16")
    turns = truth["turns"]
    cut = int((turns[1]["t_end"] + 0.4) * rate)
    key = "restart-test-ingest-key"
    auth = {"COACH_AUTH_SECRET": SECRET, "COACH_INGEST_API_KEY": key, "COACH_DEMO_USERS": "true"}
    auth |= {"COACH_AUTH_DISABLED": "false", "COACH_STORE_FLUSH_INTERVAL_S": "0.1"}
    telephony = {"x-api-key": key}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    call_id = "leg-kill"
    server = start_server(port, tmp_path, auth)
    try:
        wait_ready(port)
        sign_in(page, base, "/agent/", "ann")
        status = page.locator("#status")
        with pcm_call(port, call_id, rate, telephony) as (first, _):
            status.filter(has_text=f"Watching {call_id}").wait_for()
            send_audio(first, audio[:cut], rate)
            page.locator("#transcript li.transcript").nth(1).wait_for(timeout=60_000)
            time.sleep(1.0)  # past the store's flush interval: these lines are on disk
            first_part = page.locator("#transcript li.transcript .text").all_inner_texts()
            server.send_signal(signal.SIGKILL)  # no shutdown, no call_end
            server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=30)

    server = start_server(port, tmp_path, auth)
    try:
        wait_ready(port)
        token = page.evaluate("Auth.token()")
        deadline = time.monotonic() + 20
        while True:  # the restarted server closes the call it finds cut off
            stored = httpx.get(
                f"{base}/api/history/calls/{call_id}",
                headers={"Authorization": f"Bearer {token}"},
                timeout=5,
            ).json()
            if stored["call"]["ended_at"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert stored["call"]["end_reason"] == "interrupted"
        status.filter(has_text=f"Call {call_id} was cut off").wait_for(timeout=30_000)
        with pcm_call(port, call_id, rate, telephony) as (second, resumed):
            assert resumed == f"{call_id}~2"
            status.filter(has_text=f"Watching {resumed}").wait_for()
            earlier = page.locator("#earlier")
            assert earlier.locator(".lines li.transcript .text").all_inner_texts() == first_part
            assert "after the server stopped" in earlier.locator(".leg-divider").inner_text()
            send_audio(second, audio[cut : cut + 6 * rate], rate)
            second.send(json.dumps({"type": "end"}))
            page.locator("#transcript li.transcript").first.wait_for(timeout=60_000)
        assert earlier.locator(".lines li.transcript .text").all_inner_texts() == first_part
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_call_lost_in_a_restart_keeps_its_part_when_its_next_leg_comes(
    live_server: LiveServer, page: Any
) -> None:
    """No call_end at all: the restarted server no longer knows the call (close 4404, as
    simulated in test_stream_recovery.py). Its next leg still continues it."""
    call_id = "leg-lost"
    lost = {"on": False}

    def route(ws: Any) -> None:
        if lost["on"] and f"/ws/calls/{call_id}/" in ws.url:
            ws.send(json.dumps({"type": "error", "code": "unknown_call", "message": "unknown"}))
            ws.close(code=4404, reason="unknown call")
        else:
            ws.connect_to_server()

    page.route_web_socket(re.compile(r"/ws/calls/[^/]+/events"), route)
    watch_new_call(page, live_server, call_id)
    live_server.emit(call_id, transcript("customer", "my order never came", 1, 1.0))
    page.locator("#transcript li.customer").wait_for()
    lost["on"] = True
    page.evaluate("Panel.stream.socket.close(4000, 'blip')")
    page.locator("#notice").filter(has_text=f"Call {call_id} was not found").wait_for()
    leg = f"{call_id}~2"
    live_server.start_call(leg, "ann")
    page.locator("#status").filter(has_text=f"Watching {leg}").wait_for()
    assert "my order never came" in page.locator("#earlier .lines").inner_text()
    assert "after the server lost it" in page.locator("#earlier .leg-divider").inner_text()
    live_server.emit(leg, {"type": "call_end", "reason": "end", "duration_s": 1.0})
    live_server.emit(call_id, {"type": "call_end", "reason": "end", "duration_s": 1.0})


def test_a_supervisors_drill_in_points_to_the_calls_next_leg(
    live_server: LiveServer, page: Any
) -> None:
    """An outside UI audit: the call dropped and came back as `X~2`; the agent's panel followed
    it, the supervisor's drill-in stayed on "Call ended." of the first leg."""
    call_id = "leg-drill"
    live_server.start_call(call_id, "ann")
    sign_in(page, live_server.base, "/supervisor/", "sam")
    page.goto(f"{live_server.base}/supervisor/#call/{call_id}")
    page.locator("#drill-h").filter(has_text=call_id).wait_for()
    live_server.emit(call_id, transcript("customer", "Can you hear me?", 1, 1.0))
    page.locator("#drill-view li.customer").wait_for()
    live_server.emit(call_id, {"type": "call_end", "reason": "disconnect", "duration_s": 3.0})
    live_server.start_call(f"{call_id}~2", "ann")
    status = page.locator("#drill-status")
    status.filter(has_text=f"The call continues as {call_id}~2").wait_for()
    status.get_by_role("link", name=f"open {call_id}~2").click()
    page.locator("#drill-h").filter(has_text=f"{call_id}~2").wait_for()
    live_server.emit(f"{call_id}~2", {"type": "call_end", "reason": "end", "duration_s": 2.0})
