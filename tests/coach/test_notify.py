"""The escalation webhook against a real HTTP receiver (aiohttp on a free port): what it
sends, how it signs, when it retries, and that a call never waits for it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from coach.api.app import create_app
from coach.bus import SUPERVISOR_TOPIC, InProcessBus, call_topic
from coach.notify import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    EscalationWebhook,
    WebhookConfig,
    signature,
    verify,
)
from coach.runtime import Runtime
from coach.settings import Settings
from tests.support import free_port


class Receiver:
    """An HTTP endpoint that records each POST and answers with the next planned status."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.posts: list[tuple[dict[str, str], bytes]] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"

    async def handle(self, request: web.Request) -> web.Response:
        self.posts.append((dict(request.headers), await request.read()))
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.posts]


@pytest.fixture
async def receiver() -> AsyncIterator[Callable[..., Any]]:
    runners: list[web.AppRunner] = []

    async def start(statuses: list[int] | None = None) -> Receiver:
        rec = Receiver(statuses)
        app = web.Application()
        app.router.add_post("/hook", rec.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", rec.port).start()
        runners.append(runner)
        return rec

    yield start
    for runner in runners:
        await runner.cleanup()


def _counted(result: str) -> float:
    return REGISTRY.get_sample_value("coach_webhook_deliveries_total", {"result": result}) or 0.0


def _call(bus: InProcessBus, call_id: str, **meta: str) -> None:
    bus.publish(
        SUPERVISOR_TOPIC, {"type": "call_start", "call_id": call_id, "seq": 1, "meta": meta}
    )


def _escalation(call_id: str, urgency: str, seq: int = 5) -> dict[str, Any]:
    return {
        "type": "escalation",
        "call_id": call_id,
        "seq": seq,
        "reason": "crisis_indicators" if urgency == "critical" else "user_request",
        "urgency": urgency,
        "cue": "crisis",
        "detail": "crisis cue",
        "summary": {"text": "Customer said: my card is [CARD]", "trend": "worsening"},
        "t_start": 10.0,
        "t_end": 12.5,
    }


async def _until(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_the_signature_is_an_hmac_of_timestamp_and_body() -> None:
    body = b'{"a":1}'
    assert signature("s3cret", "1700000000", body) == (
        "sha256=" + __import__("hmac").new(b"s3cret", b"1700000000." + body, "sha256").hexdigest()
    )
    now = str(int(time.time()))
    good = signature("s3cret", now, body)
    assert verify("s3cret", now, body, good)
    assert not verify("other", now, body, good)
    assert not verify("s3cret", now, b'{"a":2}', good)
    old = str(int(time.time()) - 3600)
    assert not verify("s3cret", old, body, signature("s3cret", old, body))  # a replay
    assert not verify("s3cret", "soon", body, good)


async def test_an_escalation_is_posted_signed_with_its_agent_and_team(receiver: Any) -> None:
    rec = await receiver()
    bus = InProcessBus()
    hook = EscalationWebhook(WebhookConfig(url=rec.url, secret="s3cret", min_urgency="high"))
    bus.add_listener(hook.listener)
    hook.start()
    delivered = _counted("delivered")
    try:
        _call(bus, "w1", agent_id="ann", team="blue")
        bus.publish(
            SUPERVISOR_TOPIC, {"type": "agent_assigned", "call_id": "w1", "agent_id": "ben"}
        )
        bus.publish(SUPERVISOR_TOPIC, _escalation("w1", "medium", seq=4))  # under the bar
        bus.publish(call_topic("w1"), _escalation("w1", "critical"))  # not the wall's topic
        bus.publish(SUPERVISOR_TOPIC, _escalation("w1", "critical"))
        await _until(lambda: len(rec.posts) == 1)
    finally:
        await hook.stop()
    (sent,) = rec.bodies()
    assert sent["call_id"] == "w1" and sent["agent_id"] == "ben" and sent["team"] == "blue"
    assert (sent["urgency"], sent["reason"], sent["seq"]) == ("critical", "crisis_indicators", 5)
    assert sent["summary"]["text"] == "Customer said: my card is [CARD]"
    headers, body = rec.posts[0]
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"].startswith("voice-coach/")
    assert verify("s3cret", headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
    assert _counted("delivered") == delivered + 1


async def test_busy_or_failing_receivers_are_retried_and_refusals_are_not(receiver: Any) -> None:
    rec = await receiver([503, 429, 200, 400])
    bus = InProcessBus()
    hook = EscalationWebhook(WebhookConfig(url=rec.url, min_urgency="low", backoff_s=0.01))
    bus.add_listener(hook.listener)
    hook.start()
    failed = _counted("failed")
    try:
        bus.publish(SUPERVISOR_TOPIC, _escalation("w2", "low", seq=1))
        await _until(lambda: len(rec.posts) == 3)  # 503, 429, then delivered
        bus.publish(SUPERVISOR_TOPIC, _escalation("w2", "high", seq=2))
        await _until(lambda: _counted("failed") == failed + 1)  # 400: not sent again
    finally:
        await hook.stop()
    assert [b["seq"] for b in rec.bodies()] == [1, 1, 1, 2]
    assert SIGNATURE_HEADER not in rec.posts[0][0]  # no secret, no signature


async def test_an_unreachable_receiver_costs_the_call_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens
    bus = InProcessBus()
    hook = EscalationWebhook(
        WebhookConfig(url=url, min_urgency="low", backoff_s=0.01, attempts=2, queue_size=2)
    )
    bus.add_listener(hook.listener)
    hook.start()
    dropped, failed = _counted("dropped"), _counted("failed")
    try:
        started = time.perf_counter()
        for seq in range(1, 6):  # the listener only enqueues: the bus never waits
            bus.publish(SUPERVISOR_TOPIC, _escalation("w3", "high", seq=seq))
        assert time.perf_counter() - started < 0.05
        await _until(lambda: _counted("failed") + _counted("dropped") >= failed + dropped + 5)
    finally:
        await hook.stop()
    assert _counted("dropped") >= dropped + 2  # a queue of 2: the rest did not fit
    assert "not delivered (ClientConnectorError" in caplog.text
    assert "queue full" in caplog.text
    # Each line carries the call's id in its own field (JSON logs), not only in its text.
    lines = [r for r in caplog.records if r.name == "coach.notify"]
    assert lines and all(getattr(r, "call_id", None) == "w3" for r in lines), lines


@contextlib.contextmanager
def receiver_in_thread() -> Iterator[Receiver]:
    """A Receiver on its own event loop in a thread, for a synchronous test."""
    rec, ready, stop = Receiver(), threading.Event(), threading.Event()

    async def serve() -> None:
        app = web.Application()
        app.router.add_post("/hook", rec.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", rec.port).start()
        ready.set()
        await asyncio.to_thread(stop.wait)
        await runner.cleanup()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield rec
    finally:
        stop.set()
        thread.join(10)


def test_the_server_sends_what_its_calls_raise(runtime: Runtime, tmp_path: Path) -> None:
    """Wired into the app: COACH_ESCALATION_WEBHOOK_URL alone turns it on."""

    async def call_with_a_crisis(bus: InProcessBus) -> None:
        _call(bus, "w4", agent_id="ann")
        bus.publish(SUPERVISOR_TOPIC, _escalation("w4", "high", seq=3))  # under the bar
        bus.publish(SUPERVISOR_TOPIC, _escalation("w4", "critical"))

    with receiver_in_thread() as rec:
        settings = Settings(
            data_dir=tmp_path,
            auth_disabled=True,
            store_enabled=False,
            escalation_webhook_url=rec.url,
            escalation_webhook_min_urgency="critical",
        )
        with TestClient(create_app(settings, runtime)) as client:
            assert client.portal is not None
            client.portal.call(call_with_a_crisis, client.app.state.coach.bus)  # type: ignore[attr-defined]
            deadline = time.monotonic() + 5
            while not rec.posts:
                assert time.monotonic() < deadline, "the server never posted"
                time.sleep(0.05)
    assert [(b["call_id"], b["urgency"]) for b in rec.bodies()] == [("w4", "critical")]
    # The call's meta named no team: the agent's, from the user directory (demo: ann, blue).
    # An outside audit found `team` always null, so paging by team reached nobody.
    assert rec.bodies()[0]["agent_id"] == "ann" and rec.bodies()[0]["team"] == "blue"


def test_the_url_must_be_a_web_address(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="http:// or https://"):
        Settings(data_dir=tmp_path, escalation_webhook_url="ftp://example.com/hook")
    assert Settings(data_dir=tmp_path, escalation_webhook_url=" ").escalation_webhook_url is None
