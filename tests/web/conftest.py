"""Browser tests of the two pages: a real server in a thread, Debian's Chromium via playwright.

`live_server` runs the whole app (auth on, the documented demo logins, SQLite store) with
the session's real models. UI tests may publish synthetic events on the app's bus exactly as
a call session does (`LiveServer.emit`): thread-safe, into the server's own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from coach.api.app import create_app
from coach.api.server import uvicorn_limits
from coach.auth import issue_token
from coach.bus import SUPERVISOR_TOPIC, agent_topic, call_topic
from coach.redaction import redact_event
from coach.runtime import Runtime
from coach.settings import Settings
from tests.support import serve_in_thread

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
SECRET = "browser-test-secret-of-at-least-32-bytes"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
_TO_WALL = frozenset(
    {"call_start", "call_end", "cue", "escalation", "call_update", "agent_assigned"}
)


class LiveServer:
    def __init__(self, app: FastAPI, port: int, loop: asyncio.AbstractEventLoop) -> None:
        self.app = app
        self.port = port
        self.loop = loop
        self.base = f"http://127.0.0.1:{port}"
        self._seq: dict[str, int] = {}

    @property
    def bus(self) -> Any:
        return self.app.state.coach.bus

    def token(self, user: str, role: str, team: str | None = None) -> str:
        return issue_token(user=user, role=role, secret=SECRET, ttl_s=3600, team=team)  # type: ignore[arg-type]

    def run(self, coro: Any) -> Any:
        """Run a coroutine in the server's loop (a call session's, say) and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)

    def call_soon(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` in the server's loop (the bus is not thread-safe) and return its result."""

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=10)

    def emit(self, call_id: str, event: dict[str, Any]) -> dict[str, Any]:
        """Publish one event as CallSession.emit does: seq, agent/redacted/supervisor topics."""
        stamped: dict[str, Any] = {"call_id": call_id, **event}
        if event["type"] != "call_update":
            self._seq[call_id] = self._seq.get(call_id, 0) + 1
            stamped = {"seq": self._seq[call_id], **stamped}
        stamped.setdefault("t_emit", 0.0)
        bus = self.bus

        def publish() -> None:
            if stamped["type"] != "call_update":
                bus.publish(agent_topic(call_id), stamped)
                bus.publish(call_topic(call_id), redact_event(stamped))
            if stamped["type"] in _TO_WALL:
                bus.publish(SUPERVISOR_TOPIC, redact_event(stamped))
            if stamped["type"] == "call_end":
                bus.close_topic(call_topic(call_id))
                bus.close_topic(agent_topic(call_id))

        self.call_soon(publish)
        return stamped

    def start_call(self, call_id: str, agent: str | None) -> None:
        meta = {"agent_id": agent} if agent else {}
        self.emit(
            call_id,
            {
                "type": "call_start",
                "source": "synthetic",
                "channels": ["customer", "agent"],
                "meta": meta,
            },
        )

    def stored_end(self, call_id: str, timeout_s: float = 10.0) -> Any:
        """The stored call detail once its end is written (the writer flushes in batches)."""
        deadline = time.monotonic() + timeout_s
        while (d := self.store_call(call_id)) is None or d.call.ended_at is None:
            assert time.monotonic() < deadline, f"the end of {call_id} was not stored"
            time.sleep(0.2)
        return d

    def store_call(self, call_id: str, timeout_s: float = 10.0) -> Any:
        """The stored call detail, once the store writer has flushed it."""
        store = self.app.state.store
        deadline = time.monotonic() + timeout_s
        while True:
            fut = asyncio.run_coroutine_threadsafe(store.get_call(call_id), self.loop)
            detail = fut.result(timeout=10)
            if detail is not None or time.monotonic() > deadline:
                return detail
            time.sleep(0.2)


def transcript(
    speaker: str, text: str, utterance_id: int, t0: float, **extra: Any
) -> dict[str, Any]:
    words = [{"w": w, "t0": t0, "t1": t0 + 0.3, "p": 0.9} for w in text.split()]
    return {
        "type": "transcript",
        "speaker": speaker,
        "text": text,
        "words": words,
        "t_start": t0,
        "t_end": t0 + 2.0,
        "t_emit": t0 + 2.3,
        "utterance_id": utterance_id,
        **extra,
    }


def customer_state(
    valence: float, arousal: float, emotion: str, trend: float = 0.0
) -> dict[str, Any]:
    return {
        "valence": valence,
        "arousal": arousal,
        "emotion": emotion,
        "confidence": 0.8,
        "trend": {"valence": trend, "arousal": 0.0},
        "why": [f"words: {emotion}"],
    }


def cue(
    cue_id: str, t_emit: float, *, utterance_id: int, phrase: str, text: str, **extra: Any
) -> dict[str, Any]:
    titles = {
        "frustration": ("Customer is frustrated", "Validate the feeling, apologise, give a plan."),
        "escalation_request": ("Customer asks for a manager", "Acknowledge and offer the handoff."),
        "crisis": ("Possible crisis", "Follow the crisis protocol now."),
        "confusion": ("Customer is confused", "Slow down and explain in plain words."),
    }
    title, advice = titles.get(cue_id, (cue_id, "Do something helpful."))
    return {
        "type": "cue",
        "cue": cue_id,
        "title": title,
        "advice": advice,
        "why": f'Customer said "{phrase}"',
        "reasons": [f'words: "{phrase}"', "voice: pitch +1.8 SD"],
        "priority": 1 if cue_id == "crisis" else 2,
        "severity": "critical" if cue_id == "crisis" else "normal",
        "label": "AI suggestion",
        "speaker": "customer",
        "t_start": t_emit - 3,
        "t_end": t_emit - 0.5,
        "t_emit": t_emit,
        "evidence": {
            "text": text,
            "t_start": t_emit - 3,
            "t_end": t_emit - 0.5,
            "utterance_id": utterance_id,
            "phrases": [phrase],
        },
        "expires_s": 60.0,
        **extra,
    }


@pytest.fixture(scope="module")
def live_server(runtime: Runtime, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("web-data"),
        auth_secret=SECRET,
        idle_timeout_s=0,
        store_flush_interval_s=0.1,
    )
    app = create_app(settings, runtime)
    holder: dict[str, asyncio.AbstractEventLoop] = {}
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def capture_loop(a: FastAPI) -> AsyncIterator[Any]:
        holder["loop"] = asyncio.get_running_loop()
        async with inner(a) as state:
            yield state

    app.router.lifespan_context = capture_loop
    with serve_in_thread(app, **uvicorn_limits(settings)) as port:
        yield LiveServer(app, port, holder["loop"])


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip(f"Chromium not installed at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.set_default_timeout(15_000)
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def sign_in(page: Any, base: str, path: str, user: str, password: str = "demo") -> None:
    page.goto(f"{base}{path}")
    page.get_by_label("Name").fill(user)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.locator(".who-am-i").wait_for()


def watch_new_call(page: Any, live_server: LiveServer, call_id: str) -> None:
    """ann signs in to the agent panel, a call of hers starts, and the panel follows it by
    itself."""
    sign_in(page, live_server.base, "/agent/", "ann")
    live_server.start_call(call_id, "ann")
    page.locator("#status").filter(has_text=f"Watching {call_id}").wait_for()


def focused_in(page: Any, container: str, key: str) -> str:
    """What has the keyboard focus: `tag|text|<key>`, where <key> is `data-<key>` of the
    nearest `container` around it (empty outside one)."""
    return str(
        page.evaluate(
            "([container, key]) => { const e = document.activeElement;"
            " const box = e && e.closest(container);"
            " return `${e.tagName}|${e.textContent.trim()}|${box ? box.dataset[key] : ''}`; }",
            [container, key],
        )
    )
