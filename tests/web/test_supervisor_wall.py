"""The supervisor wall in headless Chromium: tiles by risk, team scoping, escalation alerts and
acknowledgement, drill-in, post-call summary, analytics, and 50 simulated live calls."""

from __future__ import annotations

import json
import re
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlparse
from zoneinfo import ZoneInfo

import pytest

from tests.web.conftest import (
    ARTIFACTS,
    LiveServer,
    cue,
    customer_state,
    sign_in,
    transcript,
)

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def update(
    valence: float, arousal: float, emotion: str, trend: float = 0.0, **extra: Any
) -> dict[str, Any]:
    return {
        "type": "call_update",
        "valence": valence,
        "arousal": arousal,
        "emotion": emotion,
        "trend_valence": trend,
        "last_cue": None,
        **extra,
    }


def escalation(reason: str, urgency: str, t_emit: float, text: str) -> dict[str, Any]:
    return {
        "type": "escalation",
        "reason": reason,
        "urgency": urgency,
        "cue": "escalation_request" if reason == "user_request" else None,
        "detail": "escalation_request cue" if reason == "user_request" else f"{reason} seen",
        "t_emit": t_emit,
        "summary": {
            "text": text,
            "state": {"valence": -0.7, "arousal": 0.8, "emotion": "frustrated"},
            "trend": "worsening",
            "trigger_phrases": ["let me talk to your manager"],
            "cues_shown": ["frustration"],
            "agent_tried": ["apologised", "offered a refund"],
        },
    }


def end(arc: list[list[float]]) -> dict[str, Any]:
    return {
        "type": "call_end",
        "duration_s": 40.0,
        "reason": "end",
        "summary": {"arc": arc, "cues": {}},
    }


def tile_order(page: Any) -> list[str]:
    return [li.get_attribute("data-call") for li in page.locator("#tiles > li").all()]


def wait_order(page: Any, expected_prefix: list[str], timeout_s: float = 10) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while True:
        order = tile_order(page)
        if order[: len(expected_prefix)] == expected_prefix or time.monotonic() > deadline:
            return order
        time.sleep(0.1)


def test_tiles_by_risk_team_scope_and_escalation_alert_acknowledged(
    live_server: LiveServer, page: Any
) -> None:
    live_server.start_call("w-calm", "ann")
    live_server.start_call("w-upset", "ann")
    live_server.start_call("w-other-team", "ben")
    # No call_update for this call: its tile follows the customer's transcripts instead.
    live_server.emit(
        "w-calm",
        transcript(
            "customer", "thanks, that is great", 1, 2.0, state=customer_state(0.5, 0.3, "positive")
        ),
    )
    live_server.emit("w-upset", update(-0.7, 0.8, "frustrated", -0.3))
    sign_in(page, live_server.base, "/supervisor/", "sam")
    page.locator('#tiles > li[data-call="w-upset"]').wait_for()
    order = wait_order(page, ["w-upset", "w-calm"])
    assert order[:2] == ["w-upset", "w-calm"], order
    # sam supervises team blue: ben's call (team green) is not on the wall.
    assert "w-other-team" not in order
    assert "risk-high" in (
        page.locator('#tiles > li[data-call="w-upset"]').get_attribute("class") or ""
    )

    assert "positive" in page.locator('#tiles > li[data-call="w-calm"] .mood').inner_text()

    # The calm call asks for a manager: an alert with the handoff summary, and it goes on top.
    live_server.emit(
        "w-calm",
        escalation("user_request", "high", 12.0, "Customer wants a manager after a double charge."),
    )
    alert = page.locator('#alerts > li[data-call="w-calm"]')
    alert.wait_for()
    text = alert.inner_text()
    assert "Customer asked for a supervisor" in text
    assert "Customer wants a manager after a double charge." in text
    assert "Raised by\nescalation_request cue" in text
    assert "let me talk to your manager" in text and "offered a refund" in text
    assert "worsening" in text
    # The cues shown by the titles the agent saw, not by their ids.
    cues_shown = alert.locator("dd.cues-shown")
    cues_shown.filter(has_text="Customer is frustrated").wait_for()
    assert "frustration" not in cues_shown.inner_text()
    assert "Escalation, high" in page.locator("#announce-critical").inner_text()
    assert wait_order(page, ["w-calm", "w-upset"])[:2] == ["w-calm", "w-upset"]
    # A few more of the team's calls, for a wall that looks like a working day.
    extra = {
        "w-a": (0.4, "positive"),
        "w-b": (-0.3, "anxious"),
        "w-c": (0.0, "neutral"),
        "w-d": (0.2, "neutral"),
    }
    for i, (call_id, (valence, emotion)) in enumerate(extra.items()):
        live_server.start_call(call_id, "cal" if i % 2 else "ann")
        live_server.emit(call_id, update(valence, 0.4, emotion, 0.0))
    live_server.emit("w-b", cue("confusion", 8.0, utterance_id=1, phrase="what", text="what"))
    page.locator('#tiles > li[data-call="w-d"]').wait_for()
    assert "null" not in page.locator("#tiles").inner_text()
    assert wait_order(page, ["w-calm", "w-upset", "w-b"])[:3] == ["w-calm", "w-upset", "w-b"]
    page.screenshot(path=str(ARTIFACTS / "supervisor-wall.png"), full_page=False)

    alert.get_by_role("button", name="Acknowledge").click()
    alert.wait_for(state="detached")
    assert page.locator("#no-alerts").is_visible()
    # The tile says who took it (an outside supervisor audit: it said only "acknowledged").
    tile = page.locator('#tiles > li[data-call="w-calm"] .esc')
    tile.filter(has_text="Escalation acknowledged by sam").wait_for()
    detail = live_server.store_call("w-calm")
    assert [e.acknowledged_by for e in detail.escalations] == ["sam"]

    # A crisis escalation outranks everything.
    live_server.emit(
        "w-upset", escalation("crisis_indicators", "critical", 20.0, "Customer mentions self-harm.")
    )
    # w-upset may lead already (its risk was high and w-calm's alert is acknowledged): wait
    # for the crisis itself to be painted, not just for the order (a fresh-clone CI run under
    # load read the class before that paint).
    page.locator('#tiles > li[data-call="w-upset"].risk-critical').wait_for(timeout=10_000)
    assert wait_order(page, ["w-upset"])[0] == "w-upset"
    for call_id in ("w-calm", "w-upset", "w-other-team", *extra):
        live_server.emit(call_id, end([[1.0, 0.0], [2.0, -0.1]]))


def test_drill_in_post_call_summary_and_analytics(live_server: LiveServer, page: Any) -> None:
    call_id = "w-drill"
    live_server.start_call(call_id, "ann")
    text = "I was charged twice, my card is 4111 1111 1111 1111, this is really frustrating"
    live_server.emit(
        call_id,
        transcript("customer", text, 1, 1.0, state=customer_state(-0.6, 0.7, "frustrated", -0.2)),
    )
    shown = live_server.emit(
        call_id, cue("frustration", 4.0, utterance_id=1, phrase="really frustrating", text=text)
    )
    # The agent rates the cue (over the API, as the panel does).
    token = live_server.token("ann", "agent")
    sign_in(page, live_server.base, "/supervisor/", "sam")
    deadline = time.monotonic() + 10
    while True:
        r = page.request.post(
            f"{live_server.base}/api/calls/{call_id}/cues/{shown['seq']}/feedback",
            data={"verdict": "helpful"},
            headers={"Authorization": f"Bearer {token}"},
        )
        if r.ok or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert r.ok, r.text()

    tile = page.locator(f'#tiles > li[data-call="{call_id}"]')
    tile.get_by_role("button", name="Open call").click()
    page.locator("#drill-h").filter(has_text=call_id).wait_for()
    line = page.locator("#drill-view li.customer.transcript")
    line.wait_for()
    assert "[CARD]" in line.inner_text() and "4111" not in page.locator("body").inner_text()
    card = page.locator("#drill-view .card")
    card.wait_for()
    assert card.get_by_role("button").count() == 0  # read-only: no feedback buttons
    assert line.locator("mark.trigger").inner_text() == "really frustrating"
    row = page.locator("#cue-history tbody tr")
    row.filter(has_text="Helpful (ann)").wait_for()
    # A call nobody knows shows none of this one's cue history (an outside audit saw it
    # listed under "No call ... is live or stored").
    page.goto(f"{live_server.base}/supervisor/#call/no-such-call")
    page.locator("#drill-h").filter(has_text="no-such-call").wait_for()
    page.wait_for_timeout(500)
    assert row.count() == 0
    page.goto(f"{live_server.base}/supervisor/#call/{call_id}")
    row.filter(has_text="Helpful (ann)").wait_for()

    # The call ends: the post-call summary from the store, with the arc and the cue marked.
    live_server.emit(
        call_id,
        {
            "type": "metrics",
            "talk_ratio": {"customer": 0.5, "agent": 0.5},
            "overtalk_s": 0.0,
            "silence_s": 0.0,
            "agent_wps": 2.5,
            "t_start": 0,
            "t_end": 30,
            "t_emit": 30.0,
        },
    )
    live_server.emit(call_id, end([[2.0, -0.6], [10.0, -0.4], [20.0, 0.1], [30.0, 0.5]]))
    # Its tile stays a while; the heading counts it apart from the live calls.
    count = page.locator("#call-count").filter(has_text=re.compile(r"^\d+; \d+ just ended$"))
    count.wait_for(state="attached")  # behind the drill-in view
    page.locator("#drill-summary").click()
    page.locator("#summary-h").filter(has_text=call_id).wait_for()
    page.locator("#arc polyline.line-valence").wait_for()
    assert page.locator("#arc g.cue-mark").count() == 1
    assert page.locator("#arc g.cue-mark").get_attribute("data-cue") == "frustration"
    # The verdict and the figures it is judged on: the mean of each end's two points here.
    facts = page.locator("#summary-facts").inner_text()
    assert "first 2 turns -0.50 → last 2 0.30 (ended better than it started)" in facts, facts
    assert "[CARD]" in page.locator("#summary-transcript").inner_text()
    assert "Helpful (ann)" in page.locator("#summary-cues").inner_text()
    page.screenshot(path=str(ARTIFACTS / "supervisor-summary.png"), full_page=True)

    # The reviewer says the line should also have shown "Might leave": stored for the
    # playbook (scripts/tune_playbook.py --missed), shown on the line.
    said = page.locator("#summary-transcript li.customer.transcript")
    assert page.locator("#summary-transcript li.agent details.missed").count() == 0
    said.locator("details.missed summary").click()
    said.get_by_role("combobox").select_option(label="Might leave")
    said.get_by_role("button", name="Report").click()
    said.locator(".missed-report").filter(has_text="Missed: Might leave (sam)").wait_for()
    assert "Saved" in said.locator(".missed-status").inner_text()
    stored = page.request.get(
        f"{live_server.base}/api/history/calls/{call_id}",
        headers={"Authorization": f"Bearer {live_server.token('sam', 'supervisor')}"},
    ).json()["missed_cues"]
    assert [(m["cue"], m["user"]) for m in stored] == [("churn_risk", "sam")]
    assert "[CARD]" in stored[0]["text"] and "4111" not in stored[0]["text"]
    # A wrong report is taken back by its author from the same line.
    said.get_by_role("combobox").select_option(label="Worried about cost")
    said.get_by_role("button", name="Report").click()
    wrong = said.locator(".missed-report").filter(has_text="Worried about cost")
    wrong.get_by_role("button", name="Take back Missed: Worried about cost (sam)").click()
    said.locator(".missed-status").filter(has_text="taken back").wait_for()
    assert wrong.count() == 0
    stored = page.request.get(
        f"{live_server.base}/api/history/calls/{call_id}",
        headers={"Authorization": f"Bearer {live_server.token('sam', 'supervisor')}"},
    ).json()["missed_cues"]
    assert [(m["cue"], m["user"]) for m in stored] == [("churn_risk", "sam")]

    # The agents' wrap-up outcomes: this call ended escalated, with its frustration card
    # shown; another ended escalated with no warning at all, listed to review.
    quiet = "w-unwarned"
    live_server.start_call(quiet, "ann")
    live_server.emit(quiet, transcript("customer", "right, put me through then", 1, 1.0))
    live_server.emit(quiet, end([[2.0, -0.1], [4.0, -0.1]]))
    ann = {"Authorization": f"Bearer {token}"}
    for done in (call_id, quiet):
        deadline = time.monotonic() + 10
        while not (
            r := page.request.put(
                f"{live_server.base}/api/calls/{done}/outcome",
                data={"outcome": "escalated"},
                headers=ann,
            )
        ).ok:
            assert time.monotonic() < deadline, r.text()
            time.sleep(0.2)

    # Keyboard: the tabs are buttons; analytics for today's calls shows the rated cue.
    page.get_by_role("tab", name="Coaching analytics").focus()
    page.keyboard.press("Enter")
    page.locator("#analytics-body table").first.wait_for()
    cue_rows = page.locator("#analytics-body section").nth(1).locator("tbody tr")
    # By title, as the agent saw it (an outside audit found the ids there).
    frustration = cue_rows.filter(has_text="Customer is frustrated").inner_text().split("\t")
    assert frustration[:3] == ["Customer is frustrated", "1", "100 %"], frustration
    assert frustration[6] == "escalated 1", frustration
    unwarned = page.locator("#an-unflagged-list")
    assert unwarned.get_by_role("link", name=quiet).count() == 1
    assert unwarned.get_by_role("link", name=call_id, exact=True).count() == 0
    churn = cue_rows.filter(has_text="Might leave").inner_text().split("\t")
    assert (churn[0], churn[1], churn[-1]) == ("Might leave", "0", "1"), churn  # reported missed
    assert "Better:" in page.locator("#an-outcome").inner_text()

    page.get_by_role("tab", name="Recent calls").click()
    row = page.locator("#history-table tbody tr").filter(has_text=call_id)
    row.wait_for()
    # How it ended in the words the summary uses, not the bare reason (a newcomer's audit).
    assert "the call ended" in row.inner_text() and "\tend\t" not in row.inner_text()


def test_an_agent_gets_no_wall(live_server: LiveServer, page: Any) -> None:
    sign_in(page, live_server.base, "/supervisor/", "ann")
    page.locator("#notice").filter(has_text="for supervisors").wait_for()
    assert page.locator("main").is_hidden()


def test_fifty_live_calls_stay_responsive(live_server: LiveServer, page: Any) -> None:
    """Event-to-screen latency in the browser with 50 calls updating at once."""
    ids = [f"load-{i:02d}" for i in range(50)]
    sign_in(page, live_server.base, "/supervisor/", "ada")  # admin: sees every call
    for i, call_id in enumerate(ids):
        live_server.start_call(call_id, "ann" if i % 2 else "ben")
    page.locator("#call-count").filter(has_text="50").wait_for()
    page.evaluate("window.wallStats.latencies = []")
    rounds, t0 = 10, time.monotonic()
    for r in range(rounds):

        def burst(r: int = r) -> None:
            for i, call_id in enumerate(ids):
                v = ((i * 7 + r * 3) % 20) / 10 - 1
                stamped = {
                    "call_id": call_id,
                    **update(v, 0.5, "neutral", t_wall=time.time(), t_emit=float(r)),
                }
                live_server.bus.publish("supervisor", stamped)

        live_server.call_soon(burst)
        time.sleep(0.2)  # 250 updates per second across the wall
    deadline = time.monotonic() + 10
    while (
        page.evaluate("window.wallStats.latencies.length") < rounds * len(ids)
        and time.monotonic() < deadline
    ):
        time.sleep(0.1)
    latencies = sorted(page.evaluate("window.wallStats.latencies"))
    assert len(latencies) == rounds * len(ids)
    p50 = statistics.median(latencies)
    p95 = latencies[int(0.95 * (len(latencies) - 1))]
    report = {
        "calls": len(ids),
        "events": len(latencies),
        "seconds": round(time.monotonic() - t0, 2),
        "p50_ms": round(p50 * 1000, 1),
        "p95_ms": round(p95 * 1000, 1),
        "max_ms": round(latencies[-1] * 1000, 1),
        "paints": page.evaluate("window.wallStats.paints"),
    }
    (ARTIFACTS / "wall-latency.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wall event-to-screen latency with 50 calls: {report}")
    assert p95 < 1.0, report
    # Sorted by risk: the most negative valence of the last round leads.
    order = tile_order(page)
    assert len(order) >= 50
    first = page.locator(f'#tiles > li[data-call="{order[0]}"] .valence-bar').get_attribute(
        "aria-label"
    )
    assert first is not None and float(first.split()[-1]) <= -0.9
    for call_id in ids:
        live_server.emit(call_id, end([]))


def test_history_and_analytics_days_are_the_browsers_local_days(
    live_server: LiveServer, browser: Any
) -> None:
    """A browser whose local date is not the UTC date: the date fields mean local days."""
    call_id = "w-local-day"
    live_server.start_call(call_id, "ann")
    live_server.emit(call_id, end([]))
    assert live_server.store_call(call_id) is not None
    now = datetime.now(UTC)
    # UTC+14 is a day ahead from 10:00 UTC on, UTC-11 a day behind until 11:00 UTC.
    zone = "Pacific/Kiritimati" if now.hour >= 10 else "Pacific/Pago_Pago"
    today = now.astimezone(ZoneInfo(zone)).date()
    assert today != now.date()
    context = browser.new_context(viewport={"width": 1400, "height": 900}, timezone_id=zone)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    asked: list[dict[str, list[str]]] = []
    page.on(
        "request",
        lambda r: (
            asked.append(parse_qs(urlparse(r.url).query))
            if "/api/history/calls?" in r.url
            else None
        ),
    )
    try:
        sign_in(page, live_server.base, "/supervisor/#history", "sam")
        row = page.locator("#history-table tbody tr").filter(has_text=call_id)
        row.wait_for()
        form = page.locator("#history-form")
        assert form.locator("input[name=until]").input_value() == today.isoformat()
        # Only that local day: the call started in it (shown in local time), so it is listed.
        form.locator("input[name=since]").fill(today.isoformat())
        form.locator("input[name=until]").fill(today.isoformat())
        asked.clear()
        form.get_by_role("button", name="Show").click()
        page.locator("#history-status").filter(has_text="call(s)").wait_for()
        row.wait_for()
        midnight = datetime(today.year, today.month, today.day, tzinfo=ZoneInfo(zone))
        (query,) = asked
        since = datetime.fromisoformat(query["since"][0])
        until = datetime.fromisoformat(query["until"][0])
        assert since == midnight and since.utcoffset() == midnight.utcoffset(), query
        assert (until - since).total_seconds() == 86400, query
        # Analytics counts the same local days.
        page.get_by_role("tab", name="Coaching analytics").click()
        page.locator("#analytics-status").filter(has_text="in range").wait_for()
        analytics = page.locator("#analytics-form")
        assert analytics.locator("input[name=until]").input_value() == today.isoformat()
        assert not page.locator("#analytics-status").inner_text().startswith("0 call")
    finally:
        context.close()
    assert not errors, errors


def test_arc_cue_labels_a_few_seconds_apart_do_not_overlap(
    live_server: LiveServer, page: Any
) -> None:
    call_id = "w-arc-labels"
    live_server.start_call(call_id, "ann")
    text = "I am confused and frustrated and I want a manager, this is the third time"
    live_server.emit(
        call_id, transcript("customer", text, 1, 1.0, state=customer_state(-0.6, 0.7, "frustrated"))
    )
    names = [
        "frustration",
        "confusion",
        "escalation_request",
        "repeat_contact",
        "churn_risk",
        "cost_anxiety",
    ]
    for i, name in enumerate(names):
        live_server.emit(call_id, cue(name, 60.0 + 2 * i, utterance_id=1, phrase="I am", text=text))
    raised = live_server.emit(call_id, escalation("user_request", "high", 64.0, "Wants a manager."))
    live_server.emit(
        call_id,
        {
            "type": "call_end",
            "duration_s": 300.0,
            "reason": "end",
            "summary": {"arc": [[2.0, -0.6], [290.0, 0.2]], "cues": {}},
        },
    )
    assert live_server.store_call(call_id) is not None
    sign_in(page, live_server.base, f"/supervisor/#summary/{call_id}", "sam")
    page.locator("#arc polyline.line-valence").wait_for()
    assert page.locator("#arc g.cue-mark").count() == len(names)
    # Its escalation with its time, as the cues have theirs (an outside supervisor audit).
    assert "1:04 high: " in page.locator("#summary-escalations").inner_text()
    taken = page.request.post(  # taken, so that no later test counts it as open
        f"{live_server.base}/api/calls/{call_id}/escalations/{raised['seq']}/ack",
        headers={"Authorization": f"Bearer {live_server.token('sam', 'supervisor', team='blue')}"},
    )
    assert taken.ok, taken.text()
    page.locator("#arc").screenshot(path=str(ARTIFACTS / "arc-labels.png"))
    boxes = page.evaluate(
        """() => [...document.querySelectorAll('#arc g.cue-mark text')].map((t) => {
          const b = t.getBBox();
          return { text: t.textContent, x: b.x, y: b.y, w: b.width, h: b.height };
        })"""
    )
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            apart = (
                a["x"] + a["w"] <= b["x"]
                or b["x"] + b["w"] <= a["x"]
                or a["y"] + a["h"] <= b["y"]
                or b["y"] + b["h"] <= a["y"]
            )
            assert apart, (a, b)
    # Every cue is named on the chart, by its own label or in a "+N" count.
    counted = sum(int(x["text"].rsplit("+", 1)[1]) for x in boxes if " +" in x["text"])
    assert len(boxes) + counted == len(names), boxes


def test_a_tile_names_the_agent_put_on_the_call(live_server: LiveServer, page: Any) -> None:
    """The wall ignored `agent_assigned`: the tile said "Unassigned" until the next snapshot."""
    call_id = "w-assign"
    live_server.start_call(call_id, None)
    sign_in(page, live_server.base, "/supervisor/", "sam")
    head = page.locator(f'#tiles > li[data-call="{call_id}"] h3')
    head.filter(has_text="Unassigned").wait_for()
    live_server.emit(call_id, {"type": "agent_assigned", "agent_id": "cal"})
    head.filter(has_text="Agent cal").wait_for()
    live_server.emit(call_id, end([]))


def test_open_escalations_lead_the_page_title(live_server: LiveServer, page: Any) -> None:
    """Audit: an escalation showed only inside the page; a supervisor on another tab (or
    another window) had nothing to notice it by."""
    sign_in(page, live_server.base, "/supervisor/", "sam")
    base_title = "Voice coach: supervisor wall"
    live_server.start_call("w-title", "ann")
    page.locator('#tiles > li[data-call="w-title"]').wait_for()
    before = int(page.locator("#alert-count").inner_text())  # other tests' open alerts
    live_server.emit("w-title", escalation("user_request", "high", 12.0, "Asked for a manager."))
    page.locator(f'#alert-count[data-n="{before + 1}"]').wait_for()
    plural = "s" if before else ""
    page.wait_for_function(f"document.title === '({before + 1}) Escalation{plural} · {base_title}'")
    alert = page.locator("#alerts > li").filter(has_text="w-title")
    # The caller hangs up: the page stays open on the wall, and its alert says the call is over.
    assert "call ended" not in alert.locator(".alert-meta").inner_text()
    live_server.emit("w-title", end([[3.0, -0.5]]))
    alert.locator(".alert-meta", has_text="call ended").wait_for()
    assert page.title().startswith(f"({before + 1}) Escalation")
    alert.get_by_role("button", name="Acknowledge").click()
    alert.wait_for(state="detached")
    title = page.title()
    assert title == (f"({before}) Escalation · {base_title}" if before else base_title), title


def test_a_call_a_server_stop_cut_off_says_so_on_its_tile_and_alert(
    live_server: LiveServer, page: Any
) -> None:
    """A tile said "ended" whether the caller hung up or a deploy cut the call off; a
    supervisor deciding whom to call back needs to tell them apart, on a reload too."""
    sign_in(page, live_server.base, "/supervisor/", "sam")
    tile = page.locator('#tiles > li[data-call="w-cut"]')
    live_server.start_call("w-cut", "ann")
    live_server.emit("w-cut", escalation("user_request", "high", 8.0, "Asked for a manager."))
    alert = page.locator("#alerts > li").filter(has_text="w-cut")
    alert.wait_for()
    live_server.emit("w-cut", {**end([[3.0, -0.5]]), "reason": "shutdown"})
    tile.locator(".duration", has_text="cut off").wait_for()
    alert.locator(".alert-meta", has_text="call cut off").wait_for()
    page.reload()
    tile.locator(".duration", has_text="cut off").wait_for()  # from the snapshot
    assert "call cut off" in alert.locator(".alert-meta").inner_text()
    # A call that ended by itself still says "ended".
    live_server.start_call("w-hung-up", "ann")
    live_server.emit("w-hung-up", end([]))
    page.locator('#tiles > li[data-call="w-hung-up"] .duration', has_text="ended").wait_for()
    alert.get_by_role("button", name="Acknowledge").click()
    alert.wait_for(state="detached")


# -- sound alerts ----------------------------------------------------------------------------
# The page's Web Audio is watched from the test side: every oscillator started is recorded with
# its pitch and whether the context was running (a tone on a held-back context is not heard).
TONE_PROBE = """
window.__tones = [];
const startTone = OscillatorNode.prototype.start;
OscillatorNode.prototype.start = function (...args) {
  window.__tones.push({ hz: this.frequency.value, state: this.context.state, at: performance.now() });
  return startTone.apply(this, args);
};
"""
SOUND_PREF_ON = "localStorage.setItem('coach.wall.sound', 'on');"


def tones(page: Any) -> list[dict[str, Any]]:
    played: list[dict[str, Any]] = page.evaluate("window.__tones")
    assert all(t["state"] == "running" for t in played), played
    return played


def wait_tones(page: Any, n: int, settle_s: float = 1.5) -> list[dict[str, Any]]:
    """The tones once `n` have played and no more followed for `settle_s` (longer than the
    one-second rate limit, so a pattern held back by it would have played by then)."""
    page.wait_for_function(f"window.__tones.length >= {n}", timeout=10_000)
    time.sleep(settle_s)
    played = tones(page)
    assert len(played) == n, played
    return played


def pattern(played: list[dict[str, Any]]) -> tuple[int, float]:
    """(beeps, pitch) of one pattern: its beeps share one pitch."""
    pitches = {t["hz"] for t in played}
    assert len(pitches) == 1, played
    return len(played), pitches.pop()


def sound_toggle(page: Any) -> Any:
    return page.get_by_role("button", name="Sound alerts")


def test_sound_alerts_play_each_new_escalation_once_by_urgency(
    live_server: LiveServer, page: Any
) -> None:
    """Feature: with sound on, a new critical escalation plays three quick high beeps, a high
    one two lower beeps, a medium one nothing; an acknowledgement or a reconnect's snapshot
    never sounds an escalation again, while one raised during the outage sounds once; a burst
    plays at most one pattern a second, and its critical is never the one dropped."""
    snapshots: list[int] = []

    def watch(ws: Any) -> None:
        def frame(payload: str | bytes) -> None:
            if json.loads(payload).get("type") == "snapshot":
                snapshots.append(1)

        ws.on("framereceived", frame)

    page.on("websocket", watch)
    page.add_init_script(TONE_PROBE)
    calls = ("s-crit", "s-high", "s-medium", "s-gap", "s-burst-1", "s-burst-2", "s-burst-3")
    for call_id in calls:
        live_server.start_call(call_id, "ann")
    sign_in(page, live_server.base, "/supervisor/", "sam")
    toggle = sound_toggle(page)
    assert toggle.get_attribute("aria-pressed") == "false"  # off until the supervisor asks
    toggle.click()
    page.locator('#sound-toggle[aria-pressed="true"]').wait_for()
    page.locator('#tiles > li[data-call="s-burst-3"]').wait_for()

    live_server.emit("s-crit", escalation("crisis_indicators", "critical", 20.0, "Self-harm."))
    beeps, critical_hz = pattern(wait_tones(page, 3))
    assert beeps == 3 and critical_hz >= 880
    live_server.emit("s-high", escalation("user_request", "high", 12.0, "Asked for a manager."))
    beeps, high_hz = pattern(wait_tones(page, 5)[3:])
    assert beeps == 2 and high_hz < critical_hz
    live_server.emit("s-medium", escalation("complex_inquiry", "medium", 30.0, "Confused."))
    page.locator('#alerts > li[data-call="s-medium"]').wait_for()

    # The same escalations again: acknowledged, then all of them in a reconnect's snapshot.
    alert = page.locator('#alerts > li[data-call="s-crit"]')
    alert.get_by_role("button", name="Acknowledge").click()
    alert.wait_for(state="detached")

    def reconnect(while_down: Callable[[], Any] = lambda: None) -> None:
        seen = len(snapshots)
        page.evaluate("Wall.socket.close()")  # a dropped connection, as the network would
        while_down()
        deadline = time.monotonic() + 10
        while len(snapshots) == seen and time.monotonic() < deadline:
            page.wait_for_timeout(100)  # playwright delivers the frames while it waits
        assert len(snapshots) > seen, "the wall did not reconnect"

    reconnect()
    assert len(wait_tones(page, 5)) == 5
    # Raised while the wall was down, it comes in the reconnect's snapshot: new, so it sounds.
    reconnect(
        lambda: live_server.emit(
            "s-gap", escalation("crisis_indicators", "critical", 25.0, "Raised meanwhile.")
        )
    )
    assert pattern(wait_tones(page, 8)[5:]) == (3, critical_hz)

    # A burst: the first high sounds at once, the critical a second later, the last high not.
    for call_id, urgency in (
        ("s-burst-1", "high"),
        ("s-burst-2", "critical"),
        ("s-burst-3", "high"),
    ):
        reason = "crisis_indicators" if urgency == "critical" else "user_request"
        live_server.emit(call_id, escalation(reason, urgency, 15.0, "One of many."))
    burst = wait_tones(page, 13)[8:]
    assert pattern(burst[:2]) == (2, high_hz) and pattern(burst[2:]) == (3, critical_hz)
    assert burst[2]["at"] - burst[0]["at"] >= 900, burst  # one pattern a second at most
    for call_id in calls:
        live_server.emit(call_id, end([]))


def test_sound_alerts_turned_off_stay_silent(live_server: LiveServer, page: Any) -> None:
    """Feature: the toggle turns sound off again, and that is remembered."""
    page.add_init_script(TONE_PROBE)
    sign_in(page, live_server.base, "/supervisor/", "sam")
    toggle = sound_toggle(page)
    toggle.focus()
    page.keyboard.press("Space")  # a real button: the keyboard works it too
    page.locator('#sound-toggle[aria-pressed="true"]').wait_for()
    toggle.click()
    page.locator('#sound-toggle[aria-pressed="false"]').wait_for()
    assert page.evaluate("localStorage.getItem('coach.wall.sound')") == "off"
    live_server.start_call("s-off", "ann")
    live_server.emit("s-off", escalation("crisis_indicators", "critical", 20.0, "Self-harm."))
    page.locator('#alerts > li[data-call="s-off"]').wait_for()
    time.sleep(1.5)
    assert tones(page) == []
    live_server.emit("s-off", end([]))


def test_escalations_open_at_page_load_play_no_sound(live_server: LiveServer, page: Any) -> None:
    """Feature: what was already open when the wall loaded is on screen, not sounded; the
    next new escalation is."""
    live_server.start_call("s-before", "ann")
    live_server.emit("s-before", escalation("crisis_indicators", "critical", 20.0, "Self-harm."))
    page.add_init_script(SOUND_PREF_ON)
    page.add_init_script(TONE_PROBE)
    # Signing in is a click on the page, so the browser lets the wall's audio start at once.
    sign_in(page, live_server.base, "/supervisor/", "sam")
    page.locator('#alerts > li[data-call="s-before"]').wait_for()
    assert sound_toggle(page).get_attribute("aria-pressed") == "true"
    time.sleep(1.5)
    assert tones(page) == []
    live_server.start_call("s-after", "ann")
    live_server.emit("s-after", escalation("crisis_indicators", "critical", 20.0, "Self-harm."))
    assert pattern(wait_tones(page, 3))[0] == 3
    for call_id in ("s-before", "s-after"):
        live_server.emit(call_id, end([]))


def test_sound_preference_survives_reload_and_a_click_lets_it_play(
    live_server: LiveServer, page: Any
) -> None:
    """Feature: after a reload the browser holds audio back until the user interacts; with
    the preference on, a notice (also said in a live region) asks for a click or a key press,
    which brings the sound back and hides the notice."""
    page.add_init_script(TONE_PROBE)
    sign_in(page, live_server.base, "/supervisor/", "sam")
    sound_toggle(page).click()
    page.locator('#sound-toggle[aria-pressed="true"]').wait_for()
    notice = page.locator("#sound-notice")
    live = page.locator('#sound-live[aria-live="polite"]')
    for wake in ("click", "key"):
        # Reloading takes the page's user activation away, as a supervisor's reload does.
        with page.expect_websocket(lambda ws: "/ws/supervisor" in ws.url):
            page.reload()
        page.locator('#sound-toggle[aria-pressed="true"]').wait_for()
        notice.filter(has_text="Click anywhere to turn sound alerts back on").wait_for()
        live.filter(has_text="click anywhere or press any key").wait_for(state="attached")
        if wake == "click":
            page.locator("#alerts-h").click()
        else:
            page.keyboard.press("Tab")
        notice.wait_for(state="hidden")
        live.filter(has_text="Sound alerts on.").wait_for(state="attached")
    call_id = "s-reload"
    live_server.start_call(call_id, "ann")
    live_server.emit(call_id, escalation("crisis_indicators", "critical", 20.0, "Self-harm."))
    assert pattern(wait_tones(page, 3))[0] == 3
    live_server.emit(call_id, end([]))


def test_recent_calls_are_found_by_words_cue_and_escalation(
    live_server: LiveServer, page: Any
) -> None:
    """Post-call review starts from what happened: the calls with a crisis, with a critical
    page, where a customer said some words. The form asks the history API for each."""
    crisis, plain = "w-find-crisis", "w-find-plain"
    for call_id in (crisis, plain):
        live_server.start_call(call_id, "ann")
    said = "I don't see the point of any of this anymore"
    live_server.emit(crisis, transcript("customer", said, 1, 1.0))
    live_server.emit(crisis, cue("crisis", 3.5, utterance_id=1, phrase="the point", text=said))
    live_server.emit(crisis, escalation("crisis", "critical", 3.6, said))
    live_server.emit(plain, transcript("customer", "my router blinks orange again", 1, 1.0))
    live_server.emit(plain, escalation("user_request", "high", 3.0, "a manager please"))
    for call_id in (crisis, plain):
        live_server.emit(call_id, end([]))
        assert live_server.store_call(call_id) is not None

    sign_in(page, live_server.base, "/supervisor/#history", "sam")
    rows = page.locator("#history-table tbody tr")
    form = page.locator("#history-form")
    status = page.locator("#history-status")
    rows.filter(has_text=plain).wait_for()

    def shown(**fields: str) -> set[str]:
        for name, value in fields.items():
            field = form.locator(f"[name={name}]")
            if field.evaluate("e => e.tagName") == "SELECT":
                field.select_option(value)
            else:
                field.fill(value)
        status.evaluate("e => { e.textContent = '' }")
        form.get_by_role("button", name="Show").click()
        status.filter(has_text="call(s)").wait_for()
        texts = [r.inner_text() for r in rows.all()]
        return {c for c in (crisis, plain) if any(c in t for t in texts)}

    # The cue list comes from the playbook, by title.
    form.locator("select[name=cue] option", has_text="Possible crisis").first.wait_for(
        state="attached"
    )
    assert shown(cue="crisis") == {crisis}
    assert shown(cue="", escalation="critical") == {crisis}
    assert shown(escalation="high") == {crisis, plain}
    assert shown(escalation="", q="router blinks") == {plain}
    assert shown(q="", cue="frustration") == set()


def test_an_ended_call_reopened_keeps_its_trend_metrics_agent_and_one_verdict(
    live_server: LiveServer, page: Any
) -> None:
    """Found by an outside audit of the pages: a call reopened after it ended (streamed from
    the store) showed an empty trend and metrics; a drill-in opened by its URL named no agent;
    the summary, the analytics and the tile judged the call each their own way; and a call
    cut off mid-word kept its grey partial."""
    from coach.events import call_end

    call_id = "w-reopen"
    live_server.start_call(call_id, "ann")

    def said(text: str, uid: int, t0: float, valence: float, label: str) -> dict[str, Any]:
        sentiment = {"valence": valence, "label": label, "scores": {label: 0.8}}
        prosody = {"f0_hz": 180.0, "f0_z": 0.2, "energy_z": 0.1, "rate_wps": 2.5, "arousal": 0.5}
        state = customer_state(valence, 0.5, label)
        return transcript(
            "customer", text, uid, t0, sentiment=sentiment, prosody=prosody, state=state
        )

    live_server.emit(call_id, said("this is the second time it broke", 1, 1.0, -0.6, "frustrated"))
    live_server.emit(call_id, said("oh that sorts it out thank you", 2, 9.0, 0.5, "positive"))
    live_server.emit(
        call_id,
        {
            "type": "metrics",
            "talk_ratio": {"customer": 0.7, "agent": 0.3},
            "overtalk_s": 1.5,
            "silence_s": 2.0,
            "agent_wps": 2.4,
            "t_start": 0,
            "t_end": 14,
            "t_emit": 14.0,
        },
    )
    end = call_end(duration_s=14.0, reason="end", arc=[(3.0, -0.6), (11.0, 0.5)], cues={})
    assert end["summary"]["change"] == "better"
    live_server.emit(call_id, end)
    live_server.stored_end(call_id)

    # Opened by its URL, before the wall's snapshot has drawn a tile.
    sign_in(page, live_server.base, "/supervisor/", "sam")
    page.goto(f"{live_server.base}/supervisor/#call/{call_id}")
    page.locator("#drill-h").filter(has_text=call_id).wait_for()
    page.locator("#drill-agent").filter(has_text="Agent ann").wait_for()
    page.locator("#drill-status").filter(has_text="Call ended.").wait_for()
    view = page.locator("#drill-view")
    # The stored call's state, rebuilt, and its last metrics.
    assert view.locator("svg.trend polyline.line-valence").count() == 1
    emotion = view.locator(".emotion").inner_text()
    assert emotion.startswith("positive · mood very positive (valence 0.50)"), emotion
    assert "improving" in emotion  # -0.6 then +0.5: heading up
    assert "customer 70 % · agent 30 %" in view.locator(".ratio-text").inner_text()
    assert "1.5 s" in view.locator(".metrics").inner_text()

    # One verdict: the tile of the ended call, the post-call summary and the analytics.
    page.goto(f"{live_server.base}/supervisor/#live")
    tile = page.locator(f'#tiles > li[data-call="{call_id}"] .mood')
    tile.filter(has_text="ended better than it started").wait_for()
    page.goto(f"{live_server.base}/supervisor/#summary/{call_id}")
    page.locator("#summary-facts").filter(has_text="ended better than it started").wait_for()


def test_a_call_that_ends_less_upset_but_still_upset_is_not_called_better(
    live_server: LiveServer, page: Any
) -> None:
    """An outside UI audit: a crisis call that ended on "I'm going to kill myself tonight" read
    "ended better than it started" on its tile and in its summary."""
    from coach.events import call_end

    call_id = "w-upset-end"
    live_server.start_call(call_id, "ann")
    for uid, (text, valence) in enumerate(
        (("I cannot cope with any of this", -0.9), ("I am still going to do it", -0.6)), 1
    ):
        sentiment = {"valence": valence, "label": "sad", "scores": {"sad": 0.8}}
        state = customer_state(valence, 0.5, "sad")
        live_server.emit(
            call_id,
            transcript("customer", text, uid, 1.0 + 8 * uid, sentiment=sentiment, state=state),
        )
    end = call_end(duration_s=20.0, reason="end", arc=[(3.0, -0.9), (11.0, -0.6)], cues={})
    assert end["summary"]["change"] == "better"
    live_server.emit(call_id, end)
    live_server.stored_end(call_id)
    sign_in(page, live_server.base, "/supervisor/", "sam")
    tile = page.locator(f'#tiles > li[data-call="{call_id}"] .mood')
    tile.filter(has_text="ended less upset than it started, still upset").wait_for()
    page.goto(f"{live_server.base}/supervisor/#summary/{call_id}")
    facts = page.locator("#summary-facts")
    facts.filter(
        has_text="-0.90 → -0.60 (ended less upset than it started, still upset)"
    ).wait_for()
    assert "ended better" not in facts.inner_text()


def test_a_cut_off_call_drops_its_unfinished_partial(live_server: LiveServer, page: Any) -> None:
    call_id = "w-partial"
    live_server.start_call(call_id, "ann")
    live_server.emit(call_id, transcript("customer", "my router keeps dropping", 1, 1.0))
    live_server.emit(
        call_id,
        {
            "type": "partial",
            "speaker": "customer",
            "text": "and then the",
            "utterance_id": 2,
            "t_start": 5.0,
            "t_end": 6.0,
            "t_emit": 6.1,
        },
    )
    sign_in(page, live_server.base, "/supervisor/", "sam")
    page.goto(f"{live_server.base}/supervisor/#call/{call_id}")
    partial = page.locator("#drill-view li.partial")
    partial.wait_for()
    live_server.emit(
        call_id,
        {
            "type": "call_end",
            "duration_s": 7.0,
            "reason": "interrupted",
            "summary": {"arc": [], "cues": {}},
        },
    )
    page.locator("#drill-status").filter(has_text="cut off").wait_for()
    assert partial.count() == 0
    assert "my router keeps dropping" in page.locator("#drill-view .lines").inner_text()


def test_a_supervisor_puts_an_agent_on_a_live_call_from_the_drill_in(
    live_server: LiveServer, page: Any
) -> None:
    """The assignment API had no page (an outside UI audit): the drill-in of a live call offers
    the supervisor's team and assigns through the call's real session."""
    call_id = "w-assign-drill"
    manager = live_server.app.state.coach.manager

    session = live_server.run(
        manager.open(call_id=call_id, source="synthetic", speakers=("customer", "agent"))
    )
    try:
        sign_in(page, live_server.base, f"/supervisor/#call/{call_id}", "sam")
        page.locator("#drill-agent").filter(has_text="Unassigned").wait_for()
        form = page.locator("#assign-form")
        form.wait_for()
        options = page.locator("#team-members option")
        assert [options.nth(i).get_attribute("value") for i in range(options.count())] == [
            "ann",
            "cal",
        ]
        form.locator("input").fill("ann")
        form.get_by_role("button", name="Assign").click()
        page.locator("#assign-status").filter(has_text="Assigned to ann.").wait_for()
        page.locator("#drill-agent").filter(has_text="Agent ann").wait_for()
        tile = page.locator(f'#tiles > li[data-call="{call_id}"] h3')
        tile.filter(has_text="Agent ann").wait_for(state="attached")
        assert session.meta["agent_id"] == "ann"
        # An agent of another team is refused, and says why.
        form.locator("input").fill("ben")
        form.get_by_role("button", name="Assign").click()
        page.locator("#assign-status").filter(has_text="Not assigned:").wait_for()
        assert session.meta["agent_id"] == "ann"
    finally:
        live_server.run(manager.finish(session, "end"))
    page.locator("#drill-status").filter(has_text="Call ended.").wait_for()
    page.locator("#assign-form").wait_for(state="hidden")  # no assigning an ended call


def test_ended_tiles_leave_a_wall_left_open_when_the_server_drops_them(
    live_server: LiveServer, page: Any
) -> None:
    """A wall open all day kept every ended tile until a reload: the page only ever replaced
    its tiles on a snapshot. It now drops them by the server's rule (the snapshot's `keep`):
    the usual ended call after its time, one with an escalation nobody took stays."""
    wall = live_server.app.state.wall
    saved = (wall.keep_ended_s, wall.keep_open_escalation_s)
    wall.keep_ended_s, wall.keep_open_escalation_s = 2.0, 600.0
    try:
        sign_in(page, live_server.base, "/supervisor/", "sam")
        for call_id in ("w-gone", "w-paged"):
            live_server.start_call(call_id, "ann")
            page.locator(f'#tiles > li[data-call="{call_id}"]').wait_for()
        live_server.emit("w-paged", escalation("user_request", "high", 3.0, "wants a manager"))
        page.locator('#alerts > li[data-call="w-paged"]').wait_for()
        for call_id in ("w-gone", "w-paged"):
            live_server.emit(call_id, end([]))
        gone = page.locator('#tiles > li[data-call="w-gone"]')
        gone.wait_for(state="detached", timeout=8_000)
        page.wait_for_timeout(1500)
        assert page.locator('#tiles > li[data-call="w-paged"]').count() == 1
    finally:
        wall.keep_ended_s, wall.keep_open_escalation_s = saved


def test_a_call_whose_server_is_gone_says_so_until_it_ends(
    live_server: LiveServer, page: Any
) -> None:
    """A killed instance's calls looked live on every other wall for about a minute, until
    the orphan sweep closed them: the wall now says its server is gone (ContactWatcher), on
    the tile, after a reload and in the drill-in, and drops the mark once the call ends."""
    wall = live_server.app.state.wall
    sign_in(page, live_server.base, "/supervisor/", "sam")
    live_server.start_call("w-lost", "ann")
    tile = page.locator('#tiles > li[data-call="w-lost"]')
    tile.wait_for()
    assert tile.locator(".lost").count() == 0
    assert live_server.call_soon(lambda: wall.mark_contact("w-lost", lost=True)) is True
    tile.locator(".lost", has_text="Lost contact with its server").wait_for()
    assert "lost-contact" in (tile.get_attribute("class") or "")
    # Screen readers are told too (the polite live region).
    page.wait_for_function(
        "document.getElementById('announce').textContent.includes('Lost contact')"
    )
    page.reload()
    tile.locator(".lost", has_text="Lost contact").wait_for()  # from the snapshot
    page.goto(f"{live_server.base}/supervisor/#call/w-lost")
    page.locator("#drill-status", has_text="Lost contact with the server").wait_for()
    page.goto(f"{live_server.base}/supervisor/#live")
    live_server.emit("w-lost", {**end([[3.0, -0.5]]), "reason": "interrupted"})
    tile.locator(".duration", has_text="cut off").wait_for()
    assert tile.locator(".lost").count() == 0


def test_recent_calls_go_on_past_a_page_and_filter_by_customer(
    live_server: LiveServer, page: Any
) -> None:
    """An outside audit had 216 calls in the week: the list stopped at 200 with "200
    call(s).", no sign that more matched and no way to reach the oldest; nor could a
    supervisor look a customer up from the page."""
    from coach.store.writes import Received

    store = live_server.app.state.store
    now = time.time()
    events = []
    for i in range(201):
        call_id = f"w-page-{i:03d}"
        meta = {"agent_id": "ann", "customer_id": "cust-pager"}
        start = {"type": "call_start", "call_id": call_id, "seq": 1, "t_emit": 0.0, "meta": meta}
        start |= {"source": "synthetic", "channels": ["customer", "agent"]}
        events += [
            Received(event=start, at=now - 900 + i),
            Received(
                event={**end([]), "call_id": call_id, "seq": 2, "t_emit": 40.0}, at=now - 800 + i
            ),
        ]
    live_server.run(store.write_events(events))
    sign_in(page, live_server.base, "/supervisor/#history", "sam")
    form = page.locator("#history-form")
    form.locator("input[name=customer]").fill("cust-pager")
    form.get_by_role("button", name="Show").click()
    status = page.locator("#history-status")
    status.filter(has_text="more match").wait_for()
    rows = page.locator("#history-table tbody tr")
    assert rows.count() == 200
    assert rows.filter(has_text="w-page-000").count() == 0  # the oldest, on the next page
    page.get_by_role("button", name="Show more").click()
    status.filter(has_text="201 call(s).").wait_for()
    assert rows.count() == 201 and rows.filter(has_text="w-page-000").count() == 1
    assert page.locator("#history-more").is_hidden()


def test_the_summary_of_an_unknown_call_says_so_at_once(live_server: LiveServer, page: Any) -> None:
    """An outside audit opened the summary of an erased call: "Loading…" for 6 s and twelve
    requests, each a 404 in the console, before it said the call was not there."""
    asked: list[str] = []
    page.on(
        "request",
        lambda r: asked.append(r.url) if "/api/history/calls/no-such-summary" in r.url else None,
    )
    sign_in(page, live_server.base, "/supervisor/#summary/no-such-summary", "sam")
    status = page.locator("#summary-status").filter(has_text="not in the history")
    status.wait_for(timeout=3000)
    assert len(asked) <= 2, asked
